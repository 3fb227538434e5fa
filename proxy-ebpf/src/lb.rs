//! Service load balancing for traffic leaving pods: reverse NAT of replies
//! from backends, and DNAT of requests to service frontends.

use aya_ebpf::{helpers::bpf_get_prandom_u32, programs::TcContext};
use proxy_common::{
    BACKEND_STATE_ACTIVE, Backend, CT_DIR_REPLY, CT_DIR_SERVICE, CT_FLAG_HAIRPIN, DropReason,
    SVC_FLAG_AFFINITY, ServiceKey, ServiceValue, proto,
};

use crate::{
    affinity, ct,
    drop::Action,
    frag, icmp,
    maps::{SL_BACKENDS, SL_REVNAT, SL_SERVICES, SL_VIPS},
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
            if entry.flags & CT_FLAG_HAIRPIN != 0 {
                // Back to the client, which is the backend itself.
                nat::rewrite(ctx, &ip, Side::Destination, (ip.daddr, dport), (ip.saddr, dport))?;
            }
            nat::rewrite(ctx, &ip, Side::Source, (ip.saddr, sport), (rn.addr, rn.port))?;
            stats::account(
                entry.rev_nat_index,
                entry.backend_id,
                Direction::Reverse,
                ctx.len(),
                false,
            );
        }
        // Else the service is gone: nothing to restore.
        return Ok(Action::Pass);
    }

    // A request to a service frontend: pick (or keep) a backend, DNAT.
    let skey = service_key(ip.daddr, dport, ip.proto, 0);
    // SAFETY: ServiceValue is plain data, copied out at once.
    let Some(svc) = (unsafe { SL_SERVICES.get(skey) }).copied() else {
        // A service address, but no service on this port: reject, as
        // kube-proxy does for cluster IPs.
        if SL_VIPS.get_ptr(ip.daddr).is_some() {
            return reject(ctx, &ip, DropReason::NoServicePort);
        }
        return Ok(Action::Pass);
    };
    let Some(flow) = backend_for_flow(ctx, &ip, sport, dport, &svc)? else {
        // No usable endpoint: reject at once, never a silent timeout.
        return reject(ctx, &ip, DropReason::NoBackend);
    };
    let backend = flow.backend;
    nat::rewrite(ctx, &ip, Side::Destination, (ip.daddr, dport), (backend.addr, backend.port))?;
    if backend.addr == ip.saddr {
        // Hairpin: the pod reached itself. Its stack would drop a packet
        // from its own address, so the source becomes the hairpin address.
        nat::rewrite(ctx, &ip, Side::Source, (ip.saddr, sport), (ct::hairpin_addr(), sport))?;
    }
    stats::account(svc.rev_nat_index, flow.backend_id, Direction::Forward, ctx.len(), flow.new);
    Ok(Action::Pass)
}

/// Whether this is a TCP SYN without ACK (a connection's first packet).
#[inline(always)]
fn is_tcp_syn(ctx: &TcContext, ip: &Ipv4) -> bool {
    if ip.proto != proto::TCP || ip.frag == parse::Frag::Later {
        return false;
    }
    parse::read::<u8>(ctx, ip.l4_off + 13).is_ok_and(|flags| flags & 0x12 == 0x02)
}

#[inline(always)]
fn reject(ctx: &TcContext, ip: &Ipv4, reason: DropReason) -> Result<Action, DropReason> {
    reject::port_unreachable(ctx, ip, reason).map(|verdict| Action::Answered(reason, verdict))
}

/// The backend a packet goes to.
struct Flow {
    backend_id: u32,
    backend: Backend,
    /// Whether this packet started (or re-balanced) the flow.
    new: bool,
}

/// The backend of an established flow if it still exists (also when it is
/// terminating), else a new pick recorded in conntrack; `None` when the
/// service has no backend for a new flow.
#[inline(always)]
fn backend_for_flow(
    ctx: &TcContext,
    ip: &Ipv4,
    sport: u16,
    dport: u16,
    svc: &ServiceValue,
) -> Result<Option<Flow>, DropReason> {
    let fkey = ct::key(ip.saddr, ip.daddr, sport, dport, ip.proto, CT_DIR_SERVICE);
    if let Some(entry) = ct::lookup(&fkey)
        && entry.rev_nat_index == svc.rev_nat_index
        // SAFETY: Backend is plain data, copied out at once.
        && let Some(b) = unsafe { SL_BACKENDS.get(entry.backend_id) }.copied()
        // A SYN on a tuple whose old flow went to a terminating backend is
        // a new connection (a reused port): it must not go there. (The flags
        // are read only in that case, not for every packet.)
        && (b.state == BACKEND_STATE_ACTIVE || !is_tcp_syn(ctx, ip))
    {
        // Established flows keep their backend, also a terminating one.
        return Ok(Some(Flow { backend_id: entry.backend_id, backend: b, new: false }));
    }
    let picked = if svc.flags & SVC_FLAG_AFFINITY != 0 {
        affinity::backend(ip, dport, svc)?
    } else {
        select_backend(ip.daddr, dport, ip.proto, svc)?
    };
    let Some((backend_id, backend)) = picked else {
        return Ok(None);
    };
    ct::create(
        (ip.saddr, sport),
        (ip.daddr, dport),
        (backend.addr, backend.port),
        ip.proto,
        backend_id,
        svc.rev_nat_index,
        backend.addr == ip.saddr,
    )?;
    Ok(Some(Flow { backend_id, backend, new: true }))
}

/// Picks a backend slot uniformly at random.
#[inline(always)]
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
    let key = service_key(addr, dport, proto, slot as u16);
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
pub fn service_key(addr: u32, dport: u16, proto: u8, backend_slot: u16) -> ServiceKey {
    ServiceKey { addr, dport, backend_slot, proto, scope: 0, _pad: [0; 2] }
}
