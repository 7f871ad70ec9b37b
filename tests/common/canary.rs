//! Canaries: listeners that record every connection, datagram and byte
//! that reaches them. Escape tests assert they saw nothing.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A TCP canary on an ephemeral loopback port.
pub struct Canary {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub bytes: Arc<AtomicUsize>,
}

impl Canary {
    pub fn start() -> Canary {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        count_tcp(listener, connections.clone(), bytes.clone());
        Canary {
            addr,
            connections,
            bytes,
        }
    }

    pub fn untouched(&self) -> bool {
        self.connections.load(Ordering::SeqCst) == 0 && self.bytes.load(Ordering::SeqCst) == 0
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }
}

/// TCP and UDP canaries on one address of the host.
pub struct NetCanary {
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub datagrams: Arc<AtomicUsize>,
    pub bytes: Arc<AtomicUsize>,
}

impl NetCanary {
    /// Listens on `ip`, on `port` if it is free (0: any), else on a fresh
    /// port; UDP on the TCP port if it can.
    pub fn start(ip: IpAddr, port: u16) -> Option<NetCanary> {
        let tcp = TcpListener::bind(SocketAddr::new(ip, port)).ok();
        let tcp = match tcp {
            Some(t) => t,
            None => TcpListener::bind(SocketAddr::new(ip, 0)).ok()?,
        };
        let tcp_addr = tcp.local_addr().ok()?;
        let udp = UdpSocket::bind(tcp_addr)
            .or_else(|_| UdpSocket::bind(SocketAddr::new(ip, 0)))
            .ok()?;
        let udp_addr = udp.local_addr().ok()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let datagrams = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        count_tcp(tcp, connections.clone(), bytes.clone());
        let (d, b) = (datagrams.clone(), bytes.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok((n, _)) = udp.recv_from(&mut buf) {
                d.fetch_add(1, Ordering::SeqCst);
                b.fetch_add(n, Ordering::SeqCst);
            }
        });
        Some(NetCanary {
            tcp: tcp_addr,
            udp: udp_addr,
            connections,
            datagrams,
            bytes,
        })
    }

    /// (connections, datagrams, bytes) so far.
    pub fn seen(&self) -> (usize, usize, usize) {
        (
            self.connections.load(Ordering::SeqCst),
            self.datagrams.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
        )
    }
}

/// Accepts on `listener` for good, counting connections and the bytes
/// they send.
fn count_tcp(listener: TcpListener, connections: Arc<AtomicUsize>, bytes: Arc<AtomicUsize>) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            connections.fetch_add(1, Ordering::SeqCst);
            let bytes = bytes.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    bytes.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
}

/// `host:port` as a URL authority (brackets for IPv6).
pub fn authority(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
    }
}
