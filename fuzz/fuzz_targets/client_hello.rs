//! Fuzz target: a tunnel's first bytes through the ClientHello sniffer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate_proxy::fuzzing::client_hello(data);
});
