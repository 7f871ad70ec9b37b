//! The caller's standard streams, checked before a sandbox inherits them.
//! A descriptor is a capability: a directory opened outside is a path back
//! to the host's tree, a block device is a disk, and a network socket
//! belongs to the host's network namespace: even a connected TCP stream can
//! be disconnected (connect with AF_UNSPEC) and connected again anywhere
//! the host reaches, past the proxy. Only a connected unix stream socket,
//! which can talk to nothing but its peer, is a stream like a pipe. None of
//! the others may be fd 0, 1 or 2 of a sandbox.

use std::os::fd::{AsFd, BorrowedFd};

use std::os::fd::AsRawFd;

use nix::sys::socket::{
    getpeername, getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike,
    SockaddrStorage,
};
use nix::sys::stat::{fstat, SFlag};

use crate::SandboxError;

const STREAMS: [(i32, &str); 3] = [
    (0, "standard input"),
    (1, "standard output"),
    (2, "standard error"),
];

/// Refuses standard streams that would lead out of the sandbox.
pub(crate) fn check_inherited() -> Result<(), SandboxError> {
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let streams = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()];
    for ((_, name), fd) in STREAMS.iter().zip(streams) {
        if let Some(why) = leads_out(fd) {
            return Err(SandboxError::Stdio(format!(
                "{name} is {why}, which would lead out of the sandbox: redirect it from or to a file, a pipe or /dev/null"
            )));
        }
    }
    Ok(())
}

/// Why `fd` must not be handed to a sandbox, if it must not.
fn leads_out(fd: BorrowedFd<'_>) -> Option<&'static str> {
    // A closed stream is nothing to inherit.
    let stat = fstat(fd).ok()?;
    match SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => Some("a directory"),
        SFlag::S_IFBLK => Some("a block device"),
        SFlag::S_IFSOCK => socket_leads_out(fd),
        _ => None,
    }
}

/// A connected unix stream socket can only talk to its peer; any other
/// socket (a network one of any kind, a listening, unconnected or datagram
/// one: a datagram socket can be reconnected) is a way onto the host's
/// network or its unix sockets.
fn socket_leads_out(fd: BorrowedFd<'_>) -> Option<&'static str> {
    let family = getsockname::<SockaddrStorage>(fd.as_raw_fd())
        .ok()
        .and_then(|address| address.family());
    let stream = getsockopt(&fd, sockopt::SockType).ok() == Some(SockType::Stream);
    match family {
        Some(AddressFamily::Unix) => {}
        Some(AddressFamily::Inet | AddressFamily::Inet6) if stream => return Some("a TCP socket"),
        Some(AddressFamily::Inet | AddressFamily::Inet6) => return Some("a network socket"),
        _ => return Some("a socket that is not a unix socket"),
    }
    if !stream {
        return Some("a socket that is not a stream");
    }
    if getsockopt(&fd, sockopt::AcceptConn).unwrap_or(true) {
        return Some("a listening socket");
    }
    if getpeername::<SockaddrStorage>(fd.as_raw_fd()).is_err() {
        return Some("a socket that is not connected");
    }
    None
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

    use super::*;

    #[test]
    fn directories_devices_and_sockets_lead_out_files_pipes_and_unix_streams_do_not() {
        let dir = std::fs::File::open("/").unwrap();
        assert_eq!(leads_out(dir.as_fd()), Some("a directory"));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(leads_out(file.as_fd()), None);
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(leads_out(null.as_fd()), None);
        let (read, _write) = nix::unistd::pipe().unwrap();
        assert_eq!(leads_out(read.as_fd()), None);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(leads_out(listener.as_fd()), Some("a TCP socket"));
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(leads_out(udp.as_fd()), Some("a network socket"));
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(leads_out(stream.as_fd()), Some("a TCP socket"));
        let (unix, _peer) = UnixStream::pair().unwrap();
        assert_eq!(leads_out(unix.as_fd()), None);
        let (datagram, _peer) = UnixDatagram::pair().unwrap();
        assert_eq!(
            leads_out(datagram.as_fd()),
            Some("a socket that is not a stream")
        );
        let path = std::env::temp_dir().join(format!("tollgate-stdio-{}", std::process::id()));
        let unix_listener = UnixListener::bind(&path).unwrap();
        assert_eq!(leads_out(unix_listener.as_fd()), Some("a listening socket"));
        std::fs::remove_file(&path).unwrap();
        let unbound = nix::sys::socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            nix::sys::socket::SockFlag::empty(),
            None,
        )
        .unwrap();
        assert_eq!(
            leads_out(unbound.as_fd()),
            Some("a socket that is not connected")
        );
    }
}
