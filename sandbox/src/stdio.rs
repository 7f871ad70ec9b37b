//! The caller's standard streams, checked before a sandbox inherits them.
//! A descriptor is a capability: a directory opened outside is a path back
//! to the host's tree, a block device is a disk, and a socket that is not
//! a connected stream can be connected (or bound) anywhere the host's
//! network reaches. None of those may be fd 0, 1 or 2 of a sandbox.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::socket::{getpeername, getsockopt, sockopt, SockType, SockaddrStorage};
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
        SFlag::S_IFSOCK => unconnected_socket(fd),
        _ => None,
    }
}

/// A connected stream socket can only talk to its peer; any other socket
/// (listening, unconnected, datagram: a datagram socket can be
/// reconnected) is a way onto the host's network.
fn unconnected_socket(fd: BorrowedFd<'_>) -> Option<&'static str> {
    if getsockopt(&fd, sockopt::SockType).ok() != Some(SockType::Stream) {
        return Some("a socket that is not a stream");
    }
    if getsockopt(&fd, sockopt::AcceptConn).unwrap_or(true) {
        return Some("a listening socket");
    }
    if getpeername::<SockaddrStorage>(std::os::fd::AsRawFd::as_raw_fd(&fd)).is_err() {
        return Some("a socket that is not connected");
    }
    None
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn directories_devices_and_loose_sockets_lead_out_files_pipes_and_streams_do_not() {
        let dir = std::fs::File::open("/").unwrap();
        assert_eq!(leads_out(dir.as_fd()), Some("a directory"));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(leads_out(file.as_fd()), None);
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(leads_out(null.as_fd()), None);
        let (read, _write) = nix::unistd::pipe().unwrap();
        assert_eq!(leads_out(read.as_fd()), None);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(leads_out(listener.as_fd()), Some("a listening socket"));
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(
            leads_out(udp.as_fd()),
            Some("a socket that is not a stream")
        );
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(leads_out(stream.as_fd()), None);
    }
}
