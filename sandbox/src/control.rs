//! The host side and the sandbox's stage talk over a unix socket in the
//! host side's private run directory (a path both can reach whatever
//! network namespace they are in; SOCK_SEQPACKET keeps messages apart).
//! The host side sends the sandbox's spec (a sealed memfd) and, once its
//! proxy serves, the go for the command; the stage sends the proxy's
//! listener it bound inside the sandbox's network namespace, may ask for
//! subordinate id maps (rootless), and says which process PID 1 is and
//! when it has exited. PID 1,
//! which inherits the stage's end, says itself when it has left the host's
//! filesystem, takes the go and says how the command ended: a relay
//! through the stage cost a wake-up each way (0.4 ms of every start).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    accept4, bind, connect, listen, recvmsg, sendmsg, socket, AddressFamily, Backlog,
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};

use crate::stage_process::StageProcess;
use crate::sys;
use crate::SandboxError;

/// How long the host side waits for the stage to connect and report.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// What travels over the control socket.
#[derive(Debug)]
pub(crate) enum Message {
    /// host -> stage: the handoff (spec.rs), in a sealed memfd.
    Handoff(OwnedFd),
    /// stage -> host: the proxy's listener, bound inside the sandbox.
    Listener(OwnedFd),
    /// stage -> host: write the subordinate id maps of this process.
    MapMe(u32),
    /// host -> stage: the maps are written (or not: `false`).
    Mapped(bool),
    /// stage -> host: PID 1 is this process, as fork(2) named it in the
    /// stage's PID namespace, which is the host side's (a pid PID 1 read
    /// from /proc would be that procfs's, which need not be ours).
    Pid1(u32),
    /// PID 1 -> host: it has left the host's filesystem.
    Started,
    /// host -> PID 1: the proxy serves and the policy is loaded: the
    /// command may run.
    Go,
    /// PID 1 -> host: the command ended with this status (in the shell's
    /// convention), and every other process of the sandbox is gone; PID 1
    /// exits next. (Or, before [`Message::Started`]: PID 1 could not build
    /// the sandbox.)
    Ended(u32),
    /// stage -> host: PID 1 exited with this status, and with it every
    /// process of the sandbox; the stage exits next.
    Exited(u32),
    /// stage -> host: the sandbox could not be set up, and why.
    Failed(String),
}

const HANDOFF: u8 = b'H';
const LISTENER: u8 = b'L';
const MAP_ME: u8 = b'M';
const MAPPED: u8 = b'm';
const NOT_MAPPED: u8 = b'x';
const PID1: u8 = b'1';
const STARTED: u8 = b'P';
const ENDED: u8 = b'D';
const EXITED: u8 = b'E';
const GO: u8 = b'G';
const FAILED: u8 = b'F';
/// The longest failure message sent (a path or two and an errno).
const MAX_MESSAGE: usize = 4096;

/// One end of the control connection.
pub(crate) struct Control(OwnedFd);

/// The host side's listening socket.
pub(crate) struct ControlListener(OwnedFd);

impl ControlListener {
    pub fn bind(path: &Path) -> Result<ControlListener, SandboxError> {
        let step = || format!("listen on {}", path.display());
        let fd = seqpacket().map_err(SandboxError::setup(step()))?;
        let addr = UnixAddr::new(path).map_err(SandboxError::setup(step()))?;
        bind(fd.as_raw_fd(), &addr).map_err(SandboxError::setup(step()))?;
        listen(&fd, Backlog::new(1).map_err(SandboxError::setup(step()))?)
            .map_err(SandboxError::setup(step()))?;
        Ok(ControlListener(fd))
    }

    /// Waits for the stage to connect, as long as it runs.
    pub fn accept(&self, stage: &mut StageProcess) -> Result<Control, SandboxError> {
        wait_readable(&self.0, stage)?;
        let fd = accept4(self.0.as_raw_fd(), SockFlag::SOCK_CLOEXEC).map_err(
            SandboxError::setup("accept the sandbox's control connection"),
        )?;
        Ok(Control(sys::adopt(fd)))
    }
}

impl Control {
    /// The stage's end, connected to the host side's socket at `path`.
    pub fn connect(path: &Path) -> Result<Control, SandboxError> {
        let step = || format!("connect to {}", path.display());
        let fd = seqpacket().map_err(SandboxError::setup(step()))?;
        let addr = UnixAddr::new(path).map_err(SandboxError::setup(step()))?;
        connect(fd.as_raw_fd(), &addr).map_err(SandboxError::setup(step()))?;
        Ok(Control(fd))
    }

    pub fn send(&self, message: &Message) -> Result<(), SandboxError> {
        let (tag, number, fd, text) = match message {
            Message::Handoff(fd) => (HANDOFF, 0, Some(fd.as_raw_fd()), ""),
            Message::Listener(fd) => (LISTENER, 0, Some(fd.as_raw_fd()), ""),
            Message::MapMe(pid) => (MAP_ME, *pid, None, ""),
            Message::Mapped(true) => (MAPPED, 0, None, ""),
            Message::Mapped(false) => (NOT_MAPPED, 0, None, ""),
            Message::Pid1(pid) => (PID1, *pid, None, ""),
            Message::Started => (STARTED, 0, None, ""),
            Message::Ended(code) => (ENDED, *code, None, ""),
            Message::Exited(code) => (EXITED, *code, None, ""),
            Message::Go => (GO, 0, None, ""),
            Message::Failed(why) => (FAILED, 0, None, why.as_str()),
        };
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&number.to_le_bytes());
        let text = text.as_bytes();
        bytes.extend_from_slice(text.get(..MAX_MESSAGE).unwrap_or(text));
        let fds: Vec<RawFd> = fd.into_iter().collect();
        let rights = [ControlMessage::ScmRights(&fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(
            self.0.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            cmsgs,
            MsgFlags::empty(),
            None,
        )
        .map_err(SandboxError::setup("send on the sandbox's control socket"))?;
        Ok(())
    }

    /// The next message; `None` when the other side closed.
    pub fn recv(&self, stage: Option<&mut StageProcess>) -> Result<Option<Message>, SandboxError> {
        if let Some(stage) = stage {
            wait_readable(&self.0, stage)?;
        }
        let mut bytes = [0u8; 5 + MAX_MESSAGE];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let (len, fd) = {
            let mut iov = [IoSliceMut::new(&mut bytes)];
            let received = recvmsg::<()>(
                self.0.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(SandboxError::setup("read the sandbox's control socket"))?;
            let mut fd = None;
            for cmsg in received
                .cmsgs()
                .map_err(SandboxError::setup("read a control message"))?
            {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    for raw in raw {
                        let owned = sys::adopt(raw);
                        fd.get_or_insert(owned);
                    }
                }
            }
            (received.bytes, fd)
        };
        if len == 0 {
            return Ok(None);
        }
        let number = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let bad = || SandboxError::Spec("a control message neither side sends".into());
        Ok(Some(match bytes[0] {
            HANDOFF => Message::Handoff(fd.ok_or_else(bad)?),
            LISTENER => Message::Listener(fd.ok_or_else(bad)?),
            MAP_ME => Message::MapMe(number),
            MAPPED => Message::Mapped(true),
            NOT_MAPPED => Message::Mapped(false),
            PID1 => Message::Pid1(number),
            STARTED => Message::Started,
            ENDED => Message::Ended(number),
            EXITED => Message::Exited(number),
            GO => Message::Go,
            FAILED => Message::Failed(
                String::from_utf8_lossy(bytes.get(5..len).unwrap_or_default()).into_owned(),
            ),
            _ => return Err(bad()),
        }))
    }
}

fn seqpacket() -> Result<OwnedFd, Errno> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// Waits until `fd` is readable; fails once the stage has exited (it
/// reported why on standard error) or after [`STARTUP_LIMIT`].
fn wait_readable(fd: &OwnedFd, stage: &mut StageProcess) -> Result<(), SandboxError> {
    let started = Instant::now();
    loop {
        let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(fd), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(20u8)) {
            Ok(0) | Err(Errno::EINTR) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(SandboxError::setup("wait for the sandbox's stage")(e)),
        }
        if let Some(status) = stage.try_wait()? {
            return Err(SandboxError::Stage(status));
        }
        if started.elapsed() > STARTUP_LIMIT {
            return Err(SandboxError::Thread("did not start within 30 s"));
        }
    }
}
