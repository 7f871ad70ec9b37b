//! A proxy inside a [`NetLab`](super::NetLab), and the raw HTTP/1.1 client
//! that talks to it: the exact request bytes, no URL normalisation (curl
//! and the `http` crate would canonicalise `0x7f.1` before the proxy saw
//! it).

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::{client_hello, read_audit, Proxy};

/// A reply as it came over the wire.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn failed(error: io::Error) -> Reply {
        Reply {
            status: 0,
            head: String::new(),
            body: format!("no reply from the proxy: {error}"),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads up to and including the blank line ending a message head.
pub fn read_head(stream: &mut impl Read) -> io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            return Err(io::Error::other("head too long"));
        }
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("EOF after {:?}", String::from_utf8_lossy(&head)),
            ));
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Reads a response; after a 2xx to CONNECT the stream is the tunnel.
pub fn read_reply(stream: &mut impl Read, connect: bool) -> io::Result<Reply> {
    let head = read_head(stream)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
    let mut reply = Reply {
        status,
        head,
        body: String::new(),
    };
    if connect && (200..300).contains(&status) {
        return Ok(reply);
    }
    let mut body = Vec::new();
    match reply.header("content-length").map(str::parse::<usize>) {
        Some(Ok(len)) => {
            body.resize(len, 0);
            stream.read_exact(&mut body)?;
        }
        _ => {
            stream.read_to_end(&mut body)?;
        }
    }
    reply.body = String::from_utf8_lossy(&body).into_owned();
    Ok(reply)
}

/// `GET http://{authority}{path}` with a matching Host header.
pub fn get_request(authority: &str, path: &str) -> String {
    format!(
        "GET http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\n\
         User-Agent: tollgate-guard-test\r\nConnection: close\r\n\r\n"
    )
}

/// `CONNECT {authority}`.
pub fn connect_request(authority: &str) -> String {
    format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n")
}

/// A proxy running inside a lab, reached over its unix socket.
pub struct LabProxy {
    pub proxy: Proxy,
    pub socket: PathBuf,
    pub policy_path: PathBuf,
    /// Replies that never came. A proxy whose guard is broken forwards to a
    /// canary that never answers; after two such hangs the remaining
    /// requests wait briefly, so a failing test fails in seconds.
    hangs: Cell<u32>,
}

impl LabProxy {
    pub fn new(proxy: Proxy, socket: PathBuf, policy_path: PathBuf) -> LabProxy {
        LabProxy {
            proxy,
            socket,
            policy_path,
            hangs: Cell::new(0),
        }
    }

    fn stream(&self) -> io::Result<UnixStream> {
        let wait = if self.hangs.get() >= 2 {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(8)
        };
        let stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(wait))?;
        stream.set_write_timeout(Some(wait))?;
        Ok(stream)
    }

    fn failed(&self, error: io::Error) -> Reply {
        if matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            self.hangs.set(self.hangs.get() + 1);
        }
        let mut reply = Reply::failed(error);
        let log = self.proxy.stderr();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        reply
            .body
            .push_str(&format!(" (proxy log, last lines first: {tail:?})"));
        reply
    }

    pub fn get(&self, authority: &str, path: &str) -> Reply {
        let attempt = || -> io::Result<Reply> {
            let mut stream = self.stream()?;
            stream.write_all(get_request(authority, path).as_bytes())?;
            read_reply(&mut stream, false)
        };
        attempt().unwrap_or_else(|e| self.failed(e))
    }

    /// CONNECT; on success also the tunnel.
    pub fn connect(&self, authority: &str) -> (Reply, Option<UnixStream>) {
        let attempt = || -> io::Result<(Reply, Option<UnixStream>)> {
            let mut stream = self.stream()?;
            stream.write_all(connect_request(authority).as_bytes())?;
            let reply = read_reply(&mut stream, true)?;
            let tunnel = (reply.status == 200).then_some(stream);
            Ok((reply, tunnel))
        };
        attempt().unwrap_or_else(|e| (self.failed(e), None))
    }

    /// CONNECT, then a TLS ClientHello through the tunnel (tunnels carry
    /// TLS only) with `sni` as its server name, or none; the CONNECT reply.
    /// The lab server speaks HTTP, so it hangs up on the hello: what shows
    /// the tunnel reached it is its record of accepted connections.
    pub fn tls_through_tunnel(&self, authority: &str, sni: Option<&str>) -> Reply {
        let (reply, tunnel) = self.connect(authority);
        if let Some(mut tunnel) = tunnel {
            let _ = tunnel.write_all(&client_hello(sni));
            let _ = tunnel.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = tunnel.read_to_end(&mut Vec::new());
        }
        reply
    }

    /// The complete audit records so far.
    pub fn audit(&self) -> Vec<Value> {
        read_audit(&self.proxy.audit_path)
    }

    /// At least `n` complete audit records, waiting up to 5 s for them.
    pub fn audit_at_least(&self, n: usize) -> Vec<Value> {
        self.proxy.audit(n)
    }

    /// The audit record with this id, waiting up to 5 s for it.
    pub fn audit_by_id(&self, id: &str) -> Option<Value> {
        self.audit_where(|r| r["id"] == id)
    }

    /// The first audit record matching `pred`, waiting up to 5 s for one.
    pub fn audit_where(&self, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.proxy.audit_where(pred)
    }

    /// Checks one refusal end to end: status, `X-Tollgate-*` headers, and
    /// the audit record it names (decision, reason, kind, and `resolved`:
    /// the refused address, or absent when nothing was resolved). A
    /// transfer that failed (`resolve-failed`, `upstream-failed`) was
    /// allowed by the policy: its record says `allow`, with the failure as
    /// its `outcome`. Returns what is wrong, each line naming `what`.
    pub fn refusal_problems(
        &self,
        what: &str,
        reply: &Reply,
        kind: &str,
        reason: &str,
        resolved: Option<IpAddr>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let failed_transfer = matches!(reason, "resolve-failed" | "upstream-failed");
        let status = match reason {
            _ if failed_transfer => 502,
            "bad-request" => 400,
            _ => 403,
        };
        let (decision, outcome) = if failed_transfer {
            ("allow", reason)
        } else {
            ("deny", "refused")
        };
        if reply.status != status || reply.header("x-tollgate-reason") != Some(reason) {
            problems.push(format!(
                "{what}: want {status} {reason}, got {} {:?}: {}",
                reply.status,
                reply.header("x-tollgate-reason"),
                reply.body.trim()
            ));
            return problems;
        }
        if reply.header("x-tollgate-decision") != Some(decision) {
            problems.push(format!("{what}: no X-Tollgate-Decision: {decision}"));
        }
        let Some(id) = reply.header("x-tollgate-id") else {
            problems.push(format!("{what}: no X-Tollgate-Id header"));
            return problems;
        };
        let Some(record) = self.audit_by_id(id) else {
            problems.push(format!("{what}: no audit record with id {id}"));
            return problems;
        };
        let got_resolved = record["resolved"]
            .as_str()
            .and_then(|s| s.parse::<IpAddr>().ok());
        let got_reason = record.get("reason").and_then(Value::as_str);
        if record["decision"] != decision
            || got_reason != (!failed_transfer).then_some(reason)
            || record["outcome"] != outcome
            || record["kind"] != kind
            || record["status"] != status
            || got_resolved != resolved
        {
            problems.push(format!(
                "{what}: want audit decision {decision}, reason {reason}, outcome {outcome}, \
                 kind {kind}, status {status}, resolved {resolved:?}; got {record}"
            ));
        }
        problems
    }
}
