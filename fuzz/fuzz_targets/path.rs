//! Fuzz target: tollgate_proxy::fuzzing::path on any UTF-8 text.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        tollgate_proxy::fuzzing::path(text);
    }
});
