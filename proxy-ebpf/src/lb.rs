//! Service load balancing for traffic leaving pods: reverse NAT of replies
//! from backends, and DNAT of requests to service frontends. The lookups and
//! the backend choice are shared with the external path (`nodeport`) and
//! socket-level LB (`sock`).

use aya_ebpf::{helpers::bpf_get_prandom_u32, maps::lpm_trie::Key, programs::TcContext};
use proxy_common::{
    BACKEND_STATE_ACTIVE, BACKEND_STATE_MASK, Backend, CT_DIR_REPLY, CT_DIR_SERVICE,
    CT_FLAG_CLOSING, CT_FLAG_EXTERNAL, CT_FLAG_HAIRPIN, CT_FLAG_SNAT, CT_SYN_RETRY_NS, CtEntry,
    DropReason, NODE_ADDR_NODEPORT, NODEPORT_ADDR, SCOPE_ALL, SCOPE_INTERNAL, SRC_RANGE_ID_BITS,
    SVC_FLAG_AFFINITY, SVC_FLAG_DROP_EMPTY, SVC_FLAG_SCOPE_INTERNAL, SVC_FLAG_SOURCE_RANGES,
    SVC_FLAG_TWO_SCOPES, ServiceKey, ServiceValue, SourceRangeKey, proto,
};

use crate::{
    affinity,
    ct::{self, NewFlow},
    drop::Action,
    fib, frag, fwd, icmp,
    maps::{SL_BACKENDS, SL_NODE_ADDRS, SL_REVNAT, SL_SERVICES, SL_SRC_RANGES, SL_VIPS},
    nat::{self, Side},
    parse::{self, Ipv4},
    reject,
    stats::{self, Direction},
};

/// Everything a pod sends passes here (tc ingress on the host-side veth).
#[inline(always)]
pub fn handle_pod_egress(ctx: &TcContext) -> Result<Action, DropReason> {
    let Some(ip) = parse::ipv4(ctx)? else {
        return Ok(Action::Pass);
    };
    match ip.proto {
        proto::TCP | proto::UDP => {}
        proto::ICMP => return icmp::handle_error_from_backend(ctx, &ip).map(|()| Action::Pass),
        proto::SCTP => return unsupported_protocol(ctx, &ip),
        _ => return Ok(Action::Pass),
    }
    let Some((sport, dport)) = frag::ports(ctx, &ip)? else {
        return Ok(Action::Pass);
    };

    // A reply from a backend of a translated flow: restore the frontend.
    let rkey = ct::key(ip.saddr, ip.daddr, sport, dport, ip.proto, CT_DIR_REPLY);
    if let Some(entry) = ct::lookup(&rkey) {
        // SAFETY: RevNat is plain data, copied out at once.
        if let Some(rn) = unsafe { SL_REVNAT.get(entry.rev_nat_index) }.copied() {
            let mut client = ip.daddr;
            if entry.flags & CT_FLAG_SNAT != 0 {
                // An external flow SNATed to the node, answered from a pod
                // here: back to the client.
                client = entry.nat_addr;
                let to = (entry.nat_addr, entry.nat_port);
                nat::rewrite(ctx, &ip, Side::Destination, (ip.daddr, dport), to)?;
            } else if entry.flags & CT_FLAG_HAIRPIN != 0 {
                // Back to the client, which is the backend itself.
                nat::rewrite(ctx, &ip, Side::Destination, (ip.daddr, dport), (ip.saddr, dport))?;
                client = ip.saddr;
            }
            // The address the client used (a NodePort's is a node address).
            let frontend = entry.frontend_addr;
            nat::rewrite(ctx, &ip, Side::Source, (ip.saddr, sport), (frontend, rn.port))?;
            account_reply(ctx, &entry);
            if entry.flags & CT_FLAG_EXTERNAL != 0 {
                // The source may now be a node address: not for the stack.
                return fib::redirect(ctx, ip.proto, frontend, client);
            }
            return fwd::forward(ctx, &ip, frontend, client);
        }
        // Else the service is gone: nothing to restore.
        return fwd::forward(ctx, &ip, ip.saddr, ip.daddr);
    }

    // A request to a service frontend: pick (or keep) a backend, DNAT.
    let Some((svc, svc_addr)) = lookup_service(ip.daddr, dport, ip.proto, Origin::Node) else {
        // A service address, but no service on this port: reject, as
        // kube-proxy does for cluster IPs.
        if SL_VIPS.get_ptr(ip.daddr).is_some() {
            return reject(ctx, &ip, DropReason::NoServicePort);
        }
        // A new connection straight to an address and port that replied to
        // an earlier translated flow from the same client port (socket LB
        // connects to backends directly; ports get reused): that flow is
        // over, and its reply entry would rewrite this connection's replies
        // to the frontend, which the client resets.
        if is_tcp_syn(ctx, &ip) {
            ct::forget_reply(ip.daddr, ip.saddr, dport, sport, ip.proto);
        }
        // Plain pod traffic: no translation.
        return fwd::forward(ctx, &ip, ip.saddr, ip.daddr);
    };
    let (backend_id, backend, new) = match established(ctx, &ip, sport, dport, &svc) {
        Some((entry, backend, syn)) => {
            // A retransmitted SYN (`established` took it for one): the
            // backend stays; the reply entry is written again, since a flow
            // of another frontend with the same backend and client port may
            // have taken it over (the replies would carry that frontend's
            // address, and the client never sees its SYN-ACK).
            if syn {
                ct::create(&NewFlow::new(&ip, (sport, dport), entry.backend_id, &backend, &svc))?;
            }
            (entry.backend_id, backend, false)
        }
        None => {
            check_source_range(&ip, &svc)?;
            let Some((backend_id, backend)) = pick(&ip, svc_addr, dport, &svc)? else {
                return no_backend(ctx, &ip, &svc);
            };
            ct::create(&NewFlow::new(&ip, (sport, dport), backend_id, &backend, &svc))?;
            (backend_id, backend, true)
        }
    };
    nat::rewrite(ctx, &ip, Side::Destination, (ip.daddr, dport), (backend.addr, backend.port))?;
    let mut source = ip.saddr;
    if backend.addr == ip.saddr {
        // Hairpin: the pod reached itself. Its stack would drop a packet
        // from its own address, so the source becomes the hairpin address.
        source = ct::hairpin_addr();
        nat::rewrite(ctx, &ip, Side::Source, (ip.saddr, sport), (source, sport))?;
    }
    stats::account(svc.rev_nat_index, backend_id, Direction::Forward, ctx.len(), new);
    fwd::forward(ctx, &ip, source, backend.addr)
}

#[inline(always)]
pub fn account_reply(ctx: &TcContext, entry: &CtEntry) {
    stats::account(entry.rev_nat_index, entry.backend_id, Direction::Reverse, ctx.len(), false);
}

/// Where a packet or socket operation comes from, for two-scope frontends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A pod of this node or a process of the node (pod program, socket LB).
    Node,
    /// Outside the node (the external program).
    Outside,
}

/// The service a destination belongs to, and the address its entries are
/// keyed by: the destination itself, or `NODEPORT_ADDR` for a NodePort on
/// one of the node's NodePort addresses. Traffic from this node gets a
/// two-scope frontend's internal entries (`SVC_FLAG_TWO_SCOPES`).
#[inline(always)]
pub fn lookup_service(
    daddr: u32,
    dport: u16,
    proto: u8,
    origin: Origin,
) -> Option<(ServiceValue, u32)> {
    let (svc, addr) = lookup_master(daddr, dport, proto)?;
    if origin == Origin::Node && svc.flags & SVC_FLAG_TWO_SCOPES != 0 {
        let key = service_key(addr, dport, proto, 0, SCOPE_INTERNAL);
        // SAFETY: plain data, copied out at once.
        if let Some(internal) = unsafe { SL_SERVICES.get(key) }.copied() {
            return Some((internal, addr));
        }
        // Mid-update (the internal entries not written yet, or going):
        // scope 0 serves.
    }
    Some((svc, addr))
}

/// The scope-0 master entry for a destination, and the address it is keyed by.
#[inline(always)]
fn lookup_master(daddr: u32, dport: u16, proto: u8) -> Option<(ServiceValue, u32)> {
    let key = service_key(daddr, dport, proto, 0, SCOPE_ALL);
    // SAFETY: ServiceValue is plain data, copied out at once.
    if let Some(svc) = unsafe { SL_SERVICES.get(key) }.copied() {
        return Some((svc, daddr));
    }
    // SAFETY: plain data, copied out at once.
    let flags = unsafe { SL_NODE_ADDRS.get(daddr) }.copied()?;
    if flags & NODE_ADDR_NODEPORT == 0 {
        return None;
    }
    let key = service_key(NODEPORT_ADDR, dport, proto, 0, SCOPE_ALL);
    // SAFETY: plain data, copied out at once.
    let svc = unsafe { SL_SERVICES.get(key) }.copied()?;
    Some((svc, NODEPORT_ADDR))
}

/// `loadBalancerSourceRanges`: a new flow to a frontend with ranges must
/// come from inside one of them. Frontends without ranges pay one flag test.
#[inline(always)]
pub fn check_source_range(ip: &Ipv4, svc: &ServiceValue) -> Result<(), DropReason> {
    if svc.flags & SVC_FLAG_SOURCE_RANGES == 0 || source_in_ranges(ip.saddr, svc.rev_nat_index) {
        return Ok(());
    }
    Err(DropReason::SourceRangeDenied)
}

/// Whether `saddr` lies in one of the frontend's source ranges.
#[inline(never)]
fn source_in_ranges(saddr: u32, rev_nat_index: u32) -> bool {
    let key = Key::new(SRC_RANGE_ID_BITS + 32, SourceRangeKey { rev_nat_index, addr: saddr });
    SL_SRC_RANGES.get(&key).is_some()
}

/// A protocol the data path cannot translate (SCTP: the BPF helpers cannot
/// update its CRC32c). Traffic to a service port of it is rejected at once
/// and counted (`unsupported_protocol`) instead of reaching a frontend
/// address nothing answers on; to another port of a cluster IP it is
/// rejected like TCP and UDP; anything else passes.
#[inline(always)]
pub fn unsupported_protocol(ctx: &TcContext, ip: &Ipv4) -> Result<Action, DropReason> {
    let Some((_, dport)) = frag::ports(ctx, ip)? else {
        return Ok(Action::Pass);
    };
    if lookup_master(ip.daddr, dport, ip.proto).is_some() {
        return reject(ctx, ip, DropReason::UnsupportedProtocol);
    }
    if SL_VIPS.get_ptr(ip.daddr).is_some() {
        return reject(ctx, ip, DropReason::NoServicePort);
    }
    Ok(Action::Pass)
}

/// What to do with a packet of a service that has no backend for it.
#[inline(always)]
pub fn no_backend(ctx: &TcContext, ip: &Ipv4, svc: &ServiceValue) -> Result<Action, DropReason> {
    if svc.flags & SVC_FLAG_DROP_EMPTY != 0 {
        // A Local policy without a local endpoint: kube-proxy drops.
        return Err(DropReason::NoLocalBackend);
    }
    // No usable endpoint: reject at once, never a silent timeout.
    reject(ctx, ip, DropReason::NoBackend)
}

/// Whether this is a TCP SYN without ACK (a connection's first packet).
#[inline(always)]
fn is_tcp_syn(ctx: &TcContext, ip: &Ipv4) -> bool {
    tcp_flags(ctx, ip) & (TCP_SYN | TCP_ACK) == TCP_SYN
}

#[inline(always)]
pub fn reject(ctx: &TcContext, ip: &Ipv4, reason: DropReason) -> Result<Action, DropReason> {
    reject::port_unreachable(ctx, ip, reason).map(|verdict| Action::Answered(reason, verdict))
}

/// The conntrack entry and backend of an established flow if the backend
/// still exists (also when it is terminating); `None` when the packet starts
/// a new flow: a TCP SYN on a tracked tuple whose flow closed (the client's
/// FIN or RST was seen), is older than `CT_SYN_RETRY_NS`, or went to a
/// backend that is terminating now. The client's FIN or RST marks the flow
/// closing. The flag: this packet is a SYN (a retransmission of the flow's
/// first), so that callers need not read the TCP flags again.
#[inline(always)]
pub fn established(
    ctx: &TcContext,
    ip: &Ipv4,
    sport: u16,
    dport: u16,
    svc: &ServiceValue,
) -> Option<(CtEntry, Backend, bool)> {
    let fkey = ct::key(ip.saddr, ip.daddr, sport, dport, ip.proto, CT_DIR_SERVICE);
    let entry = ct::lookup(&fkey)?;
    if entry.rev_nat_index != svc.rev_nat_index {
        return None;
    }
    // SAFETY: Backend is plain data, copied out at once.
    let b = unsafe { SL_BACKENDS.get(entry.backend_id) }.copied()?;
    let flags = tcp_flags(ctx, ip);
    let syn = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if syn {
        // A reused client port (nothing else tracks TCP's end), unless this
        // is a retransmission of the flow's own first SYN.
        if !is_active(&b)
            || entry.flags & CT_FLAG_CLOSING != 0
            || ct::age_ns(&entry) > CT_SYN_RETRY_NS
        {
            return None;
        }
    } else if flags & (TCP_FIN | TCP_RST) != 0 && entry.flags & CT_FLAG_CLOSING == 0 {
        ct::mark_closing(&fkey);
    }
    Some((entry, b, syn))
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The TCP flags byte of a TCP packet's first fragment; 0 otherwise.
#[inline(always)]
fn tcp_flags(ctx: &TcContext, ip: &Ipv4) -> u8 {
    if ip.proto != proto::TCP || ip.frag == parse::Frag::Later {
        return 0;
    }
    parse::read::<u8>(ctx, ip.l4_off + 13).unwrap_or(0)
}

/// Whether new flows may go to `b` (it is not terminating).
#[inline(always)]
pub fn is_active(b: &Backend) -> bool {
    b.state & BACKEND_STATE_MASK == BACKEND_STATE_ACTIVE
}

/// A backend for a new flow: the client's affine one, or a random pick.
#[inline(always)]
pub fn pick(
    ip: &Ipv4,
    svc_addr: u32,
    dport: u16,
    svc: &ServiceValue,
) -> Result<Option<(u32, Backend)>, DropReason> {
    if svc.flags & SVC_FLAG_AFFINITY != 0 {
        affinity::backend(ip, svc_addr, dport, svc)
    } else {
        select_backend(svc_addr, dport, ip.proto, svc)
    }
}

/// Picks a backend slot uniformly at random.
///
/// Not inlined: inlined into the packet paths, LLVM kept the (undefined)
/// payload of the error case in a register that the verifier then refused
/// to let the merged code read ("R1 !read_ok").
#[inline(never)]
pub fn select_backend(
    addr: u32,
    dport: u16,
    proto: u8,
    svc: &ServiceValue,
) -> Result<Option<(u32, Backend)>, DropReason> {
    let count = u32::from(svc.count);
    if count == 0 {
        return Ok(None);
    }
    // SAFETY: a plain helper call.
    let slot = unsafe { bpf_get_prandom_u32() } % count + 1;
    let key = service_key(addr, dport, proto, slot as u16, scope_of(svc));
    // SAFETY: plain data, copied out at once.
    let Some(slot) = (unsafe { SL_SERVICES.get(key) }).copied() else {
        return Err(DropReason::BackendMissing);
    };
    // SAFETY: plain data, copied out at once.
    match unsafe { SL_BACKENDS.get(slot.backend_id) }.copied() {
        Some(b) => Ok(Some((slot.backend_id, b))),
        None => Err(DropReason::BackendMissing),
    }
}

#[inline(always)]
pub fn service_key(addr: u32, dport: u16, proto: u8, backend_slot: u16, scope: u8) -> ServiceKey {
    ServiceKey { addr, dport, backend_slot, proto, scope, _pad: [0; 2] }
}

/// The scope of a master entry's backend slots.
#[inline(always)]
fn scope_of(svc: &ServiceValue) -> u8 {
    if svc.flags & SVC_FLAG_SCOPE_INTERNAL != 0 { SCOPE_INTERNAL } else { SCOPE_ALL }
}
