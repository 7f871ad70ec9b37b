//! The servers inside a [`NetLab`](super::NetLab): TCP on every lab
//! address, and a DNS canary on the lab's 127.0.0.1:53.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::read_head;

/// The lab server's port that keeps connections alive; 80 and 443 close
/// after one response.
pub const KEEPALIVE_PORT: u16 = 8080;

/// TCP on the given ports of every lab address (dual-stack `[::]`). Records
/// the local address of each connection; answers an HTTP request with
/// `netns server at ADDR saw REQUEST-LINE`, so it is both a canary and an
/// upstream.
pub struct NetServer {
    seen: Arc<Mutex<Vec<SocketAddr>>>,
    stopping: Arc<AtomicBool>,
}

impl NetServer {
    pub fn start(ports: &[u16]) -> NetServer {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        for &port in ports {
            let listener = TcpListener::bind(("::", port))
                .or_else(|_| TcpListener::bind(("0.0.0.0", port)))
                .expect("bind the lab server");
            listener
                .set_nonblocking(true)
                .expect("nonblocking listener");
            let (seen, stopping) = (seen.clone(), stopping.clone());
            std::thread::spawn(move || {
                while !stopping.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let local = stream
                                .local_addr()
                                .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()));
                            let Ok(local) = local else { continue };
                            seen.lock().unwrap().push(local);
                            std::thread::spawn(move || answer_http(stream, local));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        NetServer { seen, stopping }
    }

    pub fn seen(&self) -> Vec<SocketAddr> {
        self.seen.lock().unwrap().clone()
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// Answers one request, or on [`KEEPALIVE_PORT`] every request until the
/// peer closes (so the proxy pools the connection).
fn answer_http(mut stream: std::net::TcpStream, local: SocketAddr) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let keepalive = local.port() == KEEPALIVE_PORT;
    while let Ok(head) = read_head(&mut stream) {
        let request_line = head.lines().next().unwrap_or("");
        let body = format!("netns server at {local} saw {request_line}");
        let connection = if keepalive { "keep-alive" } else { "close" };
        let sent = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
            body.len()
        );
        if sent.is_err() || !keepalive {
            return;
        }
    }
}

/// Separates successive DNS answers for one name in [`NetLab::new`](super::NetLab::new).
pub const THEN: &str = "then";

/// name -> the answer to its first query of a type, to its second, ...
pub type Zone = BTreeMap<String, Vec<Vec<IpAddr>>>;

/// UDP (and TCP, which only counts) on the lab's 127.0.0.1:53. Records every
/// question as `name TYPE`, answers from its zone, NXDOMAIN otherwise.
pub struct DnsCanary {
    queries: Arc<Mutex<Vec<String>>>,
    stopping: Arc<AtomicBool>,
}

impl DnsCanary {
    pub fn start(zone: Zone) -> DnsCanary {
        let udp = UdpSocket::bind("127.0.0.1:53").expect("bind the DNS canary (udp)");
        udp.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("udp timeout");
        let tcp = TcpListener::bind("127.0.0.1:53").expect("bind the DNS canary (tcp)");
        tcp.set_nonblocking(true).expect("nonblocking tcp");
        let queries = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let (q, stop) = (queries.clone(), stopping.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, peer)) = udp.recv_from(&mut buf) {
                    let asked = q.lock().unwrap().clone();
                    match dns_answer(&buf[..n], &zone, &asked) {
                        Some((question, reply)) => {
                            q.lock().unwrap().push(question);
                            let _ = udp.send_to(&reply, peer);
                        }
                        None => q.lock().unwrap().push(format!("<{n} unparsed bytes>")),
                    }
                }
                if let Ok((_, peer)) = tcp.accept() {
                    q.lock()
                        .unwrap()
                        .push(format!("<tcp connection from {peer}>"));
                }
            }
        });
        DnsCanary { queries, stopping }
    }

    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// Parses a one-question DNS query; returns `name TYPE` and the response.
/// `asked` (the questions so far) picks the round of a changing answer.
fn dns_answer(query: &[u8], zone: &Zone, asked: &[String]) -> Option<(String, Vec<u8>)> {
    if query.len() < 12 || query[4..6] != [0, 1] {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        let label = query.get(pos..pos + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let question_end = pos + 4;
    if query.len() < question_end {
        return None;
    }
    let name = labels.join(".");
    let type_name = match qtype {
        1 => "A".to_owned(),
        28 => "AAAA".to_owned(),
        other => format!("TYPE{other}"),
    };
    let question = format!("{name} {type_name}");
    let round = asked.iter().filter(|q| **q == question).count();
    let (rcode, answers): (u8, Vec<IpAddr>) = match zone.get(&name) {
        None => (3, Vec::new()),
        Some(rounds) => (
            0,
            rounds[round.min(rounds.len() - 1)]
                .iter()
                .copied()
                .filter(|ip| matches!((qtype, ip), (1, IpAddr::V4(_)) | (28, IpAddr::V6(_))))
                .collect(),
        ),
    };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[0..2]); // id
    out.push(0x80 | (query[2] & 0x79)); // QR, opcode, RD
    out.push(0x80 | rcode); // RA, rcode
    out.extend_from_slice(&[0, 1]); // one question
    out.extend_from_slice(&u16::try_from(answers.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional
    out.extend_from_slice(&query[12..question_end]);
    for ip in answers {
        out.extend_from_slice(&[0xc0, 0x0c]); // the name in the question
        let (rtype, rdata): (u16, Vec<u8>) = match ip {
            IpAddr::V4(v4) => (1, v4.octets().to_vec()),
            IpAddr::V6(v6) => (28, v6.octets().to_vec()),
        };
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&[0, 1]); // class IN
        out.extend_from_slice(&[0, 0, 0, 0]); // TTL 0
        out.extend_from_slice(&u16::try_from(rdata.len()).ok()?.to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    Some((question, out))
}
