//! Bringing up `lo` in a new network namespace, over rtnetlink from this
//! process: one RTM_NEWLINK request and its acknowledgement (rtnetlink(7)),
//! instead of a fork and exec of iproute2.

use nix::errno::Errno;
use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// `RTM_NEWLINK` from <linux/rtnetlink.h>.
const RTM_NEWLINK: u16 = 16;
/// `NLMSG_ERROR`: the kernel's answer to a request with NLM_F_ACK.
const NLMSG_ERROR: u16 = 2;
/// `NLM_F_REQUEST | NLM_F_ACK`.
const REQUEST_WITH_ACK: u16 = 0x1 | 0x4;
/// `IFF_UP` from <net/if.h>.
const IFF_UP: u32 = 0x1;
/// The loopback device is the first one every network namespace gets
/// (`LOOPBACK_IFINDEX` in the kernel).
const LOOPBACK_INDEX: i32 = 1;
/// struct nlmsghdr (16 bytes) followed by struct ifinfomsg (16 bytes).
const REQUEST_LEN: u32 = 32;

/// Sets `lo` up in the calling thread's network namespace.
pub fn loopback_up() -> Result<(), Errno> {
    let sock = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    let mut request = Vec::with_capacity(REQUEST_LEN as usize);
    // struct nlmsghdr: length, type, flags, sequence, port id (0: the kernel)
    request.extend_from_slice(&REQUEST_LEN.to_ne_bytes());
    request.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    request.extend_from_slice(&REQUEST_WITH_ACK.to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    // struct ifinfomsg: family (AF_UNSPEC), padding, device type, index,
    // flags, change mask
    request.extend_from_slice(&[0, 0]);
    request.extend_from_slice(&0u16.to_ne_bytes());
    request.extend_from_slice(&LOOPBACK_INDEX.to_ne_bytes());
    request.extend_from_slice(&IFF_UP.to_ne_bytes());
    request.extend_from_slice(&IFF_UP.to_ne_bytes());
    sendto(
        std::os::fd::AsRawFd::as_raw_fd(&sock),
        &request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut answer = [0u8; 256];
    let len = recv(
        std::os::fd::AsRawFd::as_raw_fd(&sock),
        &mut answer,
        MsgFlags::empty(),
    )?;
    acknowledged(answer.get(..len).unwrap_or_default())
}

/// Reads the kernel's answer: an NLMSG_ERROR carrying 0 is success, a
/// negative errno a refusal.
fn acknowledged(answer: &[u8]) -> Result<(), Errno> {
    let field = |at: usize, len: usize| answer.get(at..at + len).ok_or(Errno::EBADMSG);
    let kind = u16::from_ne_bytes(field(4, 2)?.try_into().map_err(|_| Errno::EBADMSG)?);
    if kind != NLMSG_ERROR {
        return Err(Errno::EBADMSG);
    }
    let code = i32::from_ne_bytes(field(16, 4)?.try_into().map_err(|_| Errno::EBADMSG)?);
    match code {
        0 => Ok(()),
        negative => Err(Errno::from_raw(-negative)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_is_success_and_an_error_is_its_errno() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(acknowledged(&ack), Ok(()));
        ack[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        assert_eq!(acknowledged(&ack), Err(Errno::EPERM));
        assert_eq!(acknowledged(&ack[..10]), Err(Errno::EBADMSG));
        ack[4..6].copy_from_slice(&16u16.to_ne_bytes());
        assert_eq!(acknowledged(&ack), Err(Errno::EBADMSG));
    }
}
