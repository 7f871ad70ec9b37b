//! What a plain tunnel's TLS handshake tells the policy: the server name a
//! ClientHello asks for (raw, as sent), whether it hides the real one
//! (Encrypted Client Hello), and whether the server asked the client to say
//! hello again (HelloRetryRequest).
//!
//! rustls decides whether bytes are a well-formed ClientHello (the one
//! parser we trust to be strict); tls-parser frames records and lists the
//! extensions, which rustls does not expose (it reports an IP address or an
//! invalid name in the SNI extension as no name at all).

use tls_parser::{
    parse_tls_extensions, parse_tls_message_handshake, parse_tls_raw_record, SNIType, TlsExtension,
    TlsExtensionType, TlsMessage, TlsMessageHandshake, TlsRecordType,
};

/// Handshake message types (RFC 8446 §4).
const CLIENT_HELLO: u8 = 1;
const SERVER_HELLO: u8 = 2;
/// The `random` of a ServerHello that is a HelloRetryRequest: SHA-256 of
/// "HelloRetryRequest" (RFC 8446 §4.1.3).
const HELLO_RETRY_REQUEST_RANDOM: [u8; 32] = [
    0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
    0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
];
/// encrypted_client_hello (draft-ietf-tls-esni-22 §11.1: 0xfe0d), the
/// code points its earlier drafts used (0xfe08 to 0xfe0c, drafts 08-12, some
/// of them deployed), and encrypted_server_name (draft-ietf-tls-esni-02:
/// 0xffce).
const ECH_EXTENSIONS: [u16; 7] = [0xfe08, 0xfe09, 0xfe0a, 0xfe0b, 0xfe0c, 0xfe0d, 0xffce];
/// A handshake message we wait for is at most this long: a ClientHello with
/// post-quantum key shares is about 2 KiB; 64 KiB leaves room for one split
/// over several records.
pub const MAX_HELLO_BYTES: usize = 64 * 1024;

/// What a ClientHello asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The host name of the server_name extension, as sent (not yet checked
    /// to be a name: it may be an IP address, or not UTF-8, replaced
    /// lossily); `None` when there is no such extension.
    pub server_name: Option<String>,
    /// An Encrypted Client Hello extension: the name above is only the
    /// outer one, the server may act on another.
    pub encrypted: bool,
}

impl std::fmt::Display for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.server_name {
            Some(name) => write!(f, "names {name:?}")?,
            None => f.write_str("names no host")?,
        }
        if self.encrypted {
            f.write_str(" (outer name of an Encrypted Client Hello)")?;
        }
        Ok(())
    }
}

/// Where a record stream stands.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstMessage {
    /// Its first handshake message is whole.
    Whole(Message),
    Partial,
    /// A record before the message is of a type not skipped (an alert,
    /// garbage), or the message is longer than we wait for.
    NotHandshake,
}

/// A whole handshake message and where it came from.
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: u8,
    pub body: Vec<u8>,
    /// The handshake records that carried it, as sent.
    pub records: Vec<u8>,
    /// How many bytes of the stream, from its start, up to the end of the
    /// record that completed it.
    pub consumed: usize,
}

/// Records skipped before a message: none (the start of a stream), or
/// those that may come before a client's second ClientHello — TLS 1.3's
/// middlebox-compatibility ChangeCipherSpec, and early data the client
/// sent with its first one (encrypted; the server drops it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Nothing,
    BeforeRetry,
}

/// The first handshake message in `records` (TLS records as read off the
/// wire), reassembled across records.
pub fn first_message(records: &[u8], skip: Skip) -> FirstMessage {
    let mut rest = records;
    let mut stream = Vec::new();
    let mut carried = Vec::new();
    loop {
        if let Some(whole) = whole_message(&stream) {
            return match whole {
                Some((kind, body)) => FirstMessage::Whole(Message {
                    kind,
                    body,
                    records: carried,
                    consumed: records.len() - rest.len(),
                }),
                None => FirstMessage::NotHandshake,
            };
        }
        match parse_tls_raw_record(rest) {
            Ok((after, record)) => {
                let raw = &rest[..rest.len() - after.len()];
                rest = after;
                match record.hdr.record_type {
                    TlsRecordType::Handshake => {
                        stream.extend_from_slice(record.data);
                        carried.extend_from_slice(raw);
                    }
                    TlsRecordType::ChangeCipherSpec | TlsRecordType::ApplicationData
                        if skip == Skip::BeforeRetry && stream.is_empty() => {}
                    _ => return FirstMessage::NotHandshake,
                }
            }
            Err(tls_parser::Err::Incomplete(_)) => return FirstMessage::Partial,
            Err(_) => return FirstMessage::NotHandshake,
        }
    }
}

/// The message at the start of a handshake byte stream once whole
/// (`Some(None)`: it is longer than we wait for).
fn whole_message(stream: &[u8]) -> Option<Option<(u8, Vec<u8>)>> {
    let [kind, a, b, c, body @ ..] = stream else {
        return None;
    };
    let len = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
    if len > MAX_HELLO_BYTES {
        return Some(None);
    }
    let body = body.get(..len)?;
    Some(Some((*kind, body.to_vec())))
}

/// Whether a server's first handshake message is a HelloRetryRequest.
pub fn is_hello_retry_request(message: &Message) -> bool {
    // ServerHello: legacy_version (2 bytes), then random (32).
    message.kind == SERVER_HELLO && message.body.get(2..34) == Some(&HELLO_RETRY_REQUEST_RANDOM[..])
}

/// The Hello `message` (a whole first handshake message) is; `Err` with why
/// when it is not a ClientHello rustls accepts, or its extensions are not
/// well-formed.
pub fn client_hello(message: &Message) -> Result<Hello, String> {
    if message.kind != CLIENT_HELLO {
        return Err("the first handshake message is not a ClientHello".into());
    }
    accepted_by_rustls(&message.records)?;
    let mut whole = vec![CLIENT_HELLO];
    let len = u32::try_from(message.body.len()).map_err(|_| "ClientHello too large".to_owned())?;
    whole.extend_from_slice(&len.to_be_bytes()[1..]);
    whole.extend_from_slice(&message.body);
    let message = whole;
    let parsed = parse_tls_message_handshake(&message).map_err(|e| format!("ClientHello: {e}"))?;
    let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)) = parsed.1 else {
        return Err("the first handshake message is not a ClientHello".into());
    };
    let extensions = match hello.ext {
        Some(bytes) => {
            parse_tls_extensions(bytes)
                .map_err(|e| format!("ClientHello extensions: {e}"))?
                .1
        }
        None => Vec::new(),
    };
    hello_from(&extensions)
}

fn hello_from(extensions: &[TlsExtension<'_>]) -> Result<Hello, String> {
    let mut server_name = None;
    let mut encrypted = false;
    for extension in extensions {
        match extension {
            TlsExtension::SNI(names) => {
                let [(SNIType::HostName, name)] = names.as_slice() else {
                    return Err("the server_name extension must hold one host name".into());
                };
                if server_name.is_some() {
                    return Err("two server_name extensions".into());
                }
                server_name = Some(String::from_utf8_lossy(name).into_owned());
            }
            TlsExtension::EncryptedServerName { .. } => encrypted = true,
            TlsExtension::Unknown(TlsExtensionType(kind), _) if ECH_EXTENSIONS.contains(kind) => {
                encrypted = true
            }
            _ => {}
        }
    }
    Ok(Hello {
        server_name,
        encrypted,
    })
}

/// rustls, strict, must read a ClientHello from these records.
fn accepted_by_rustls(mut records: &[u8]) -> Result<(), String> {
    let mut acceptor = rustls::server::Acceptor::default();
    while !records.is_empty() {
        match acceptor.read_tls(&mut records) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        match acceptor.accept() {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {}
            Err((e, _alert)) => return Err(e.to_string()),
        }
    }
    Err("the ClientHello is incomplete".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of `kind` holding `payload`.
    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind, 3, 3];
        out.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn handshake(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn a_message_split_over_records_is_reassembled_and_ccs_before_it_skipped() {
        let message = handshake(SERVER_HELLO, &[7; 100]);
        let mut records = record(0x14, &[1]);
        let ccs = records.len();
        records.extend(record(0x16, &message[..30]));
        assert_eq!(
            first_message(&records, Skip::BeforeRetry),
            FirstMessage::Partial
        );
        assert_eq!(
            first_message(&records, Skip::Nothing),
            FirstMessage::NotHandshake
        );
        records.extend(record(0x16, &message[30..]));
        let whole = records.len();
        records.extend(record(0x17, &[9; 8]));
        let FirstMessage::Whole(found) = first_message(&records, Skip::BeforeRetry) else {
            panic!("no message in {records:?}");
        };
        assert_eq!((found.kind, found.body), (SERVER_HELLO, vec![7; 100]));
        assert_eq!(found.records, records[ccs..whole]);
        assert_eq!(found.consumed, whole);
    }

    #[test]
    fn alerts_and_application_data_are_not_a_handshake() {
        for skip in [Skip::Nothing, Skip::BeforeRetry] {
            assert_eq!(
                first_message(&record(0x15, &[2, 40]), skip),
                FirstMessage::NotHandshake
            );
        }
        assert_eq!(
            first_message(&record(0x17, &[0; 20]), Skip::Nothing),
            FirstMessage::NotHandshake
        );
        let mut long = record(0x16, &[SERVER_HELLO, 0x10, 0, 0]);
        long.extend(record(0x16, &[0; 16]));
        assert_eq!(
            first_message(&long, Skip::Nothing),
            FirstMessage::NotHandshake
        );
    }

    #[test]
    fn a_hello_retry_request_is_told_from_a_server_hello() {
        let mut body = vec![3, 3];
        body.extend_from_slice(&HELLO_RETRY_REQUEST_RANDOM);
        body.extend_from_slice(&[0; 10]);
        let message = |kind, body: &[u8]| Message {
            kind,
            body: body.to_vec(),
            records: Vec::new(),
            consumed: 0,
        };
        assert!(is_hello_retry_request(&message(SERVER_HELLO, &body)));
        assert!(!is_hello_retry_request(&message(CLIENT_HELLO, &body)));
        body[5] ^= 1;
        assert!(!is_hello_retry_request(&message(SERVER_HELLO, &body)));
    }

    #[test]
    fn extensions_give_the_raw_name_and_ech() {
        let name = |n: &'static [u8]| TlsExtension::SNI(vec![(SNIType::HostName, n)]);
        let hello = hello_from(&[name(b"a.example")]).unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("a.example"));
        assert!(!hello.encrypted);
        let ip = hello_from(&[name(b"127.0.0.1")]).unwrap();
        assert_eq!(ip.server_name.as_deref(), Some("127.0.0.1"));
        for kind in [0xfe0d, 0xfe0a, 0xfe08] {
            let ech = TlsExtension::Unknown(TlsExtensionType(kind), &[]);
            assert!(
                hello_from(&[name(b"a.example"), ech]).unwrap().encrypted,
                "{kind:#x}"
            );
        }
        let other = TlsExtension::Unknown(TlsExtensionType(0xfe07), &[]);
        assert!(!hello_from(&[name(b"a.example"), other]).unwrap().encrypted);
        assert!(hello_from(&[name(b"a.example"), name(b"b.example")]).is_err());
        let two = TlsExtension::SNI(vec![
            (SNIType::HostName, b"a.example"),
            (SNIType::HostName, b"b.example"),
        ]);
        assert!(hello_from(&[two]).is_err());
    }
}
