//! Loopback upstreams: one that answers every request and counts what
//! reached it, and one that streams a byte at a time, forever.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// A one-thread runtime and a listener on an ephemeral loopback port.
pub(super) fn loopback_server() -> (tokio::runtime::Runtime, tokio::net::TcpListener, SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    (runtime, listener, addr)
}

/// A loopback HTTP server that answers every request with
/// `upstream saw METHOD PATH host=HOST` and counts what reached it.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// Connections open right now.
    pub open: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<String>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Upstream {
    pub fn start() -> Upstream {
        let (runtime, listener, addr) = loopback_server();
        let hits = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (h, s, o) = (hits.clone(), seen.clone(), open.clone());
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (h, s, o) = (h.clone(), s.clone(), o.clone());
                o.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (h, s) = (h.clone(), s.clone());
                        async move { Ok::<_, hyper::Error>(answer(req, &h, &s).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            hits,
            open,
            seen,
            _runtime: runtime,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

pub(super) async fn answer(
    req: Request<Incoming>,
    hits: &AtomicUsize,
    seen: &Mutex<Vec<String>>,
) -> Response<Full<Bytes>> {
    hits.fetch_add(1, Ordering::SeqCst);
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut headers: Vec<String> = req
        .headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .collect();
    headers.sort();
    seen.lock().unwrap().push(format!(
        "{} {} host={host} headers={}",
        req.method(),
        req.uri(),
        headers.join(",")
    ));
    let line = format!("upstream saw {} {} host={host}", req.method(), req.uri());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut text = line;
    if !body.is_empty() {
        text.push_str(&format!(" body={}", body.len()));
    }
    Response::new(Full::new(Bytes::from(text)))
}

/// A raw loopback HTTP server that answers the first request with headers
/// and then a byte every 100 ms, forever, and records when that connection
/// was accepted and when it was closed from the other side.
pub struct Dribbler {
    pub port: u16,
    pub accepted: Arc<Mutex<Option<SystemTime>>>,
    pub closed: Arc<Mutex<Option<SystemTime>>>,
    pub dribbled: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    stream: Arc<Mutex<Option<TcpStream>>>,
}

impl Dribbler {
    pub fn start() -> Dribbler {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(Mutex::new(None));
        let closed = Arc::new(Mutex::new(None));
        let dribbled = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let stream_slot = Arc::new(Mutex::new(None));
        let (a, c, d, s, slot) = (
            accepted.clone(),
            closed.clone(),
            dribbled.clone(),
            stop.clone(),
            stream_slot.clone(),
        );
        std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            // The request: read up to the end of its headers.
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            stream.set_read_timeout(None).unwrap();
            *a.lock().unwrap() = Some(SystemTime::now());
            let mark_closed = {
                let c = c.clone();
                move || {
                    let mut closed = c.lock().unwrap();
                    if closed.is_none() {
                        *closed = Some(SystemTime::now());
                    }
                }
            };
            // A close from the other side ends this read at once.
            let mut reader = stream.try_clone().unwrap();
            *slot.lock().unwrap() = stream.try_clone().ok();
            let on_close = mark_closed.clone();
            let stopping = s.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => continue,
                    }
                }
                if !stopping.load(Ordering::SeqCst) {
                    on_close();
                }
            });
            let headers = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
            if stream.write_all(headers.as_bytes()).is_err() {
                mark_closed();
                return;
            }
            while !s.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                if c.lock().unwrap().is_some() {
                    return;
                }
                if stream.write_all(b"1\r\nx\r\n").is_err() {
                    if !s.load(Ordering::SeqCst) {
                        mark_closed();
                    }
                    return;
                }
                d.fetch_add(1, Ordering::SeqCst);
            }
        });
        Dribbler {
            port,
            accepted,
            closed,
            dribbled,
            stop,
            stream: stream_slot,
        }
    }
}

impl Drop for Dribbler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(stream) = self.stream.lock().unwrap().take() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Nanoseconds since the epoch, as `date +%s%N` prints them.
pub fn nanos_since_epoch(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos()
}
