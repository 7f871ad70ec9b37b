//! Where the proxy listens: TCP addresses and unix sockets.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;
use tokio::net::{TcpListener, UnixListener};

#[derive(Debug, Error)]
pub enum ListenError {
    #[error("`{0}` is not a listen address: use IP:PORT (e.g. 127.0.0.1:3128) or unix:PATH")]
    BadListenAddr(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on unix:{0}: a file that is not a socket is in the way; remove it or pick another path")]
    NotASocket(PathBuf),
    #[error("cannot listen on unix:{0}: another process is serving it")]
    SocketInUse(PathBuf),
}

/// Where to listen: `IP:PORT` or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = ListenError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ListenError::BadListenAddr(text.to_owned()));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        text.parse()
            .map(ListenAddr::Tcp)
            .map_err(|_| ListenError::BadListenAddr(text.to_owned()))
    }
}

/// A bound listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, UnixPath),
}

/// A socket path we created, removed when the listener goes.
pub struct UnixPath(PathBuf);

impl Drop for UnixPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Listener {
    /// Binds; must run inside a tokio runtime.
    pub fn bind(addr: &ListenAddr) -> Result<Listener, ListenError> {
        match addr {
            ListenAddr::Tcp(socket) => {
                let std =
                    std::net::TcpListener::bind(socket).map_err(|source| ListenError::Bind {
                        addr: socket.to_string(),
                        source,
                    })?;
                Listener::from_std(std)
            }
            ListenAddr::Unix(path) => bind_unix(path),
        }
    }

    /// Adopts a TCP listener bound elsewhere (e.g. inside a sandbox's
    /// network namespace).
    pub fn from_std(listener: std::net::TcpListener) -> Result<Listener, ListenError> {
        let addr = listener
            .local_addr()
            .map_or_else(|_| "tcp".to_owned(), |a| a.to_string());
        let bind_error = |source| ListenError::Bind {
            addr: addr.clone(),
            source,
        };
        listener.set_nonblocking(true).map_err(bind_error)?;
        TcpListener::from_std(listener)
            .map(Listener::Tcp)
            .map_err(bind_error)
    }

    /// What to tell a person: `127.0.0.1:3128` or `unix:/path`.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp".into(), |a| a.to_string()),
            Listener::Unix(_, path) => format!("unix:{}", path.0.display()),
        }
    }
}

fn bind_unix(path: &Path) -> Result<Listener, ListenError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(ListenError::NotASocket(path.to_owned()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ListenError::SocketInUse(path.to_owned()));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| ListenError::Bind {
        addr: format!("unix:{}", path.display()),
        source,
    })?;
    Ok(Listener::Unix(listener, UnixPath(path.to_owned())))
}
