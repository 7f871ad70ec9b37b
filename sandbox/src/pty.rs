//! A terminal of the sandbox's own. When the caller runs tollgate on a
//! terminal, the command does not get that terminal: it gets a new
//! pseudo-terminal whose other end tollgate relays to and from the
//! caller's. What the command does to its terminal's settings, its session
//! or its input (TIOCSTI) stays in the sandbox's terminal and ends with it;
//! the caller's is put in raw mode for the relay and restored after.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::openpty;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};
use nix::unistd::{isatty, pipe2};

use crate::{sys, SandboxError};

/// Which of the caller's standard streams are terminals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Terminals {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl Terminals {
    pub fn of_caller() -> Terminals {
        let tty = |fd: BorrowedFd<'_>| isatty(fd).unwrap_or(false);
        Terminals {
            stdin: tty(std::io::stdin().as_fd()),
            stdout: tty(std::io::stdout().as_fd()),
            stderr: tty(std::io::stderr().as_fd()),
        }
    }

    pub fn any(self) -> bool {
        self.stdin || self.stdout || self.stderr
    }
}

/// The sandbox's terminal while it runs: the relay thread, and the
/// caller's settings to restore.
pub(crate) struct Relay {
    thread: Option<JoinHandle<()>>,
    /// Written to when the relay must stop reading the caller's input.
    stop: Option<OwnedFd>,
    restore: Option<Termios>,
    resize: Option<signal_hook::iterator::Handle>,
}

/// A new pseudo-terminal with the caller's settings and size, its slave
/// end owned by the sandbox's root (`owner`: host uid and gid), which gets
/// it in place of the caller's terminal streams: the master, the slave and
/// the slave's path.
pub(crate) fn open(
    terminals: Terminals,
    owner: (u32, u32),
) -> Result<(OwnedFd, OwnedFd, PathBuf), SandboxError> {
    let caller = caller_terminal(terminals);
    let settings = caller.as_ref().and_then(|fd| tcgetattr(fd).ok());
    let size = caller
        .as_ref()
        .and_then(|fd| sys::window_size(fd.as_fd()).ok());
    let pair = openpty(size.as_ref(), settings.as_ref())
        .map_err(SandboxError::setup("open a terminal for the sandbox"))?;
    nix::unistd::fchown(
        &pair.slave,
        Some(nix::unistd::Uid::from_raw(owner.0)),
        Some(nix::unistd::Gid::from_raw(owner.1)),
    )
    .map_err(SandboxError::setup("give the sandbox its terminal"))?;
    let path = std::fs::read_link(format!("/proc/self/fd/{}", pair.slave.as_raw_fd()))
        .map_err(SandboxError::io("find the sandbox's terminal"))?;
    Ok((pair.master, pair.slave, path))
}

impl Relay {
    /// Starts relaying between the caller's terminal streams and `master`:
    /// the caller's input (in raw mode, so that every key, Ctrl-C included,
    /// reaches the command as typed) to the sandbox's terminal, and its
    /// output to the caller's. The caller's window size follows on resize.
    pub fn start(master: OwnedFd, terminals: Terminals) -> Result<Relay, SandboxError> {
        let restore = if terminals.stdin {
            let stdin = std::io::stdin();
            let saved = tcgetattr(stdin.as_fd())
                .map_err(SandboxError::setup("read the terminal's settings"))?;
            let mut raw = saved.clone();
            cfmakeraw(&mut raw);
            tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
                .map_err(SandboxError::setup("put the terminal in raw mode"))?;
            Some(saved)
        } else {
            None
        };
        let resize = follow_resizes(&master, terminals)?;
        let (stop_read, stop_write) =
            pipe2(OFlag::O_CLOEXEC).map_err(SandboxError::setup("create a pipe"))?;
        let thread = std::thread::Builder::new()
            .name("tollgate-terminal".into())
            .spawn(move || relay(master, terminals, stop_read))
            .map_err(SandboxError::io("start the terminal relay"))?;
        Ok(Relay {
            thread: Some(thread),
            stop: Some(stop_write),
            restore,
            resize,
        })
    }

    /// Waits for the sandbox's last output, then gives the caller's
    /// terminal its settings back. Call once the sandbox has ended.
    pub fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = File::from(stop).write_all(b"s");
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Some(handle) = self.resize.take() {
            handle.close();
        }
        if let Some(saved) = self.restore.take() {
            let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &saved);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.end();
    }
}

/// The caller's terminal whose settings the sandbox's starts from: a
/// duplicate of the first standard stream that is one.
fn caller_terminal(terminals: Terminals) -> Option<OwnedFd> {
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let fd = if terminals.stdin {
        stdin.as_fd()
    } else if terminals.stdout {
        stdout.as_fd()
    } else if terminals.stderr {
        stderr.as_fd()
    } else {
        return None;
    };
    fd.try_clone_to_owned().ok()
}

/// Copies the caller's window size to the sandbox's terminal on SIGWINCH.
fn follow_resizes(
    master: &OwnedFd,
    terminals: Terminals,
) -> Result<Option<signal_hook::iterator::Handle>, SandboxError> {
    let Some(caller) = caller_terminal(terminals) else {
        return Ok(None);
    };
    let master = master
        .try_clone()
        .map_err(SandboxError::io("keep the terminal"))?;
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGWINCH])
        .map_err(SandboxError::io("follow the terminal's size"))?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("tollgate-resize".into())
        .spawn(move || {
            for _ in signals.forever() {
                if let Ok(size) = sys::window_size(caller.as_fd()) {
                    let _ = sys::set_window_size(master.as_fd(), &size);
                }
            }
        })
        .map_err(SandboxError::io("follow the terminal's size"))?;
    Ok(Some(handle))
}

/// The relay loop: caller's input to `master`, `master`'s output to the
/// caller, until the sandbox's side is closed (EIO, every slave gone) or
/// `stop` is written.
fn relay(master: OwnedFd, terminals: Terminals, stop: OwnedFd) {
    let mut master_file = File::from(master);
    let mut buffer = vec![0u8; 16 * 1024];
    let mut input_open = terminals.stdin;
    loop {
        let stdin = std::io::stdin();
        let mut fds = vec![
            PollFd::new(master_file.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        if input_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => return,
        }
        let ready = |fd: &PollFd<'_>| {
            fd.revents().is_some_and(|r| {
                r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            })
        };
        let (from_sandbox, stopping) = (ready(&fds[0]), ready(&fds[1]));
        let from_caller = input_open && ready(&fds[2]);
        drop(fds);
        if from_sandbox {
            match master_file.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => write_out(terminals, &buffer[..n]),
            }
        }
        if from_caller {
            match std::io::stdin().lock().read(&mut buffer) {
                Ok(0) | Err(_) => input_open = false,
                Ok(n) => {
                    if master_file.write_all(&buffer[..n]).is_err() {
                        input_open = false;
                    }
                }
            }
        }
        if stopping && !from_sandbox {
            drain(&mut master_file, terminals, &mut buffer);
            return;
        }
    }
}

/// What the sandbox wrote before it ended and was not read yet.
fn drain(master: &mut File, terminals: Terminals, buffer: &mut [u8]) {
    let nonblocking = nix::fcntl::fcntl(&*master, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    if nonblocking.is_err() {
        return;
    }
    while let Ok(n) = master.read(buffer) {
        if n == 0 {
            return;
        }
        write_out(terminals, &buffer[..n]);
    }
}

fn write_out(terminals: Terminals, bytes: &[u8]) {
    let result = if terminals.stdout || !terminals.stderr {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes).and_then(|()| out.flush())
    } else {
        let mut err = std::io::stderr().lock();
        err.write_all(bytes).and_then(|()| err.flush())
    };
    // The caller's terminal going away must not stop the sandbox.
    let _ = result;
}
