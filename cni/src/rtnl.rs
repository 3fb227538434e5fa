//! Blocking rtnetlink requests, for DEL (and ADD's rollback): no async
//! runtime to build, and a request that blocks in the kernel blocks only the
//! thread that sent it. The kernel handles an rtnetlink request inside
//! `sendmsg(2)`: a link deletion returns from it only after the kernel has
//! waited out its RCU grace periods (most of a DEL).
//!
//! [`Rtnl`] sends one request at a time and waits for its answer.
//! [`LinkEvents`] listens to the namespace's link notifications: the kernel
//! announces a deleted link (`RTM_DELLINK`) once it has unlisted it and
//! flushed its routes and neighbours, before it waits out the grace periods
//! and acknowledges the deletion.

use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd};

use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::protocols::NETLINK_ROUTE;
use rtnetlink::sys::{Socket, SocketAddr};

use crate::{Error, Result};

/// rtnetlink's multicast group of link notifications (`RTNLGRP_LINK`).
const RTNLGRP_LINK: u32 = 1;
/// Receive buffer: one link message without statistics is ~2 KiB.
const RECV_BUF: usize = 32 << 10;

fn netlink_error(what: String, e: &io::Error) -> Error {
    Error::Netlink { what, reason: e.to_string(), errno: e.raw_os_error() }
}

/// Splits one datagram into netlink messages (undecodable ones skipped).
fn messages(buf: &[u8]) -> impl Iterator<Item = NetlinkMessage<RouteNetlinkMessage>> + '_ {
    let mut off = 0;
    std::iter::from_fn(move || {
        while off + 16 <= buf.len() {
            let len =
                u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
            if len < 16 || off + len > buf.len() {
                return None;
            }
            let bytes = &buf[off..off + len];
            off += (len + 3) & !3;
            if let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
                return Some(m);
            }
        }
        None
    })
}

/// An rtnetlink socket in the namespace of the thread that opened it.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Rtnl> {
        let err = |e: io::Error| netlink_error("opening a netlink socket".into(), &e);
        let socket = Socket::new(NETLINK_ROUTE).map_err(err)?;
        // Binds the socket to a port of its own as well.
        socket.connect(&SocketAddr::new(0, 0)).map_err(err)?;
        Ok(Rtnl { socket, seq: 0, buf: vec![0; RECV_BUF] })
    }

    /// Sends `msg` with `NLM_F_ACK` and receives until the kernel's
    /// acknowledgement. The kernel's error is `Err(errno)`.
    fn request(&mut self, msg: RouteNetlinkMessage) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        self.socket.send(&out, 0)?;
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?.min(self.buf.len());
            for m in messages(&self.buf[..n]) {
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(()),
                    _ => {}
                }
            }
        }
    }

    /// Deletes the link named `name` (one request: the kernel looks the
    /// name up) and returns once the kernel is done with it; `Ok(false)`
    /// when there is no such link.
    pub fn delete_link_named(&mut self, name: &str) -> Result<bool> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(RouteNetlinkMessage::DelLink(msg)) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(netlink_error(format!("deleting link {name}"), &e)),
        }
    }
}

/// Link notifications of the namespace of the thread that opened it
/// (subscribe before the change that is to be seen).
pub struct LinkEvents {
    socket: Socket,
}

impl LinkEvents {
    pub fn open() -> Result<LinkEvents> {
        let err = |e: io::Error| netlink_error("subscribing to link notifications".into(), &e);
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(err)?;
        // Bound with the group's bit (RTMGRP_LINK): subscribed in one call.
        socket.bind(&SocketAddr::new(0, 1 << (RTNLGRP_LINK - 1))).map_err(err)?;
        Ok(LinkEvents { socket })
    }

    /// Waits until the kernel announces that the link named `name` is
    /// unregistered (`Ok(Some(index))`: it is unlisted, its routes and
    /// neighbours are flushed), or until `stop` is readable or closed
    /// (`Ok(None)`), whichever comes first. Notifications lost to an overrun
    /// (`ENOBUFS`) leave only `stop`.
    pub fn wait_unregistered(&self, name: &str, stop: BorrowedFd<'_>) -> Result<Option<u32>> {
        let err = |e: io::Error| netlink_error("reading link notifications".into(), &e);
        let mut buf = vec![0u8; RECV_BUF];
        let mut listening = true;
        loop {
            let mut fds = [
                libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            let nfds: libc::nfds_t = if listening { 2 } else { 1 };
            // SAFETY: poll(2) on `nfds` valid pollfd entries of open descriptors.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), nfds, -1) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err(e));
            }
            if fds[0].revents != 0 {
                return Ok(None);
            }
            if fds[1].revents == 0 {
                continue;
            }
            let n = match self.socket.recv(&mut &mut buf[..], libc::MSG_DONTWAIT) {
                Ok(n) => n.min(buf.len()),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    listening = false;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(err(e)),
            };
            // An RTM_DELLINK of another family (AF_BRIDGE: a port left a
            // bridge) is no unregistration.
            let gone = messages(&buf[..n]).find_map(|m| match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l))
                    if l.header.interface_family == AddressFamily::Unspec
                        && l.attributes
                            .iter()
                            .any(|a| matches!(a, LinkAttribute::IfName(n) if n == name)) =>
                {
                    Some(l.header.index)
                }
                _ => None,
            });
            if gone.is_some() {
                return Ok(gone);
            }
        }
    }
}
