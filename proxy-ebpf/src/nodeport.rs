//! Traffic arriving from outside the node (tc ingress of `--devices`):
//! NodePorts on the node's addresses, externalIPs and LoadBalancer IPs, and
//! the replies of flows translated on this node whose backend is elsewhere.
//!
//! A new flow to a backend on this node is only DNATed: the backend sees the
//! client's address. A flow to a backend on another node is also SNATed to
//! the node address (`SL_CONFIG`) with a source port of its own, so the
//! reply comes back here, unless the service has
//! `externalTrafficPolicy: Local` (its backends are all local). Translated
//! packets are forwarded by FIB lookup and redirect: their source may be a
//! node address, which the stack would drop as a martian.

use aya_ebpf::{helpers::bpf_get_prandom_u32, programs::TcContext};
use proxy_common::{
    BACKEND_FLAG_LOCAL, CT_DIR_REPLY, CT_FLAG_SNAT, DropReason, SNAT_PORT_MAX, SNAT_PORT_MIN,
    SVC_FLAG_LOCAL, proto,
};

use crate::{
    ct::{self, NewFlow},
    drop::Action,
    fib, frag, fwd,
    lb::{self, account_reply},
    maps::{SL_CONFIG, SL_ENDPOINTS, SL_REVNAT, SL_VIPS},
    nat::{self, Side},
    parse,
    stats::{self, Direction},
};

/// How many source ports an SNATed flow tries before it is dropped.
const SNAT_TRIES: u32 = 8;

#[inline(always)]
pub fn handle_external(ctx: &TcContext) -> Result<Action, DropReason> {
    let Some(ip) = parse::ipv4(ctx)? else {
        return Ok(Action::Pass);
    };
    match ip.proto {
        proto::TCP | proto::UDP => {}
        proto::SCTP => return lb::unsupported_protocol(ctx, &ip),
        _ => return Ok(Action::Pass),
    }
    let Some((sport, dport)) = frag::ports(ctx, &ip)? else {
        return Ok(Action::Pass);
    };

    // A reply of a flow translated here: an SNATed one (addressed to the
    // node), or one from a pod whose backend is on another node.
    let rkey = ct::key(ip.saddr, ip.daddr, sport, dport, ip.proto, CT_DIR_REPLY);
    if let Some(entry) = ct::lookup(&rkey) {
        // SAFETY: RevNat is plain data, copied out at once.
        let Some(rn) = unsafe { SL_REVNAT.get(entry.rev_nat_index) }.copied() else {
            return Ok(Action::Pass);
        };
        let mut client = ip.daddr;
        if entry.flags & CT_FLAG_SNAT != 0 {
            client = entry.nat_addr;
            nat::rewrite(
                ctx,
                &ip,
                Side::Destination,
                (ip.daddr, dport),
                (entry.nat_addr, entry.nat_port),
            )?;
        }
        let frontend = entry.frontend_addr;
        nat::rewrite(ctx, &ip, Side::Source, (ip.saddr, sport), (frontend, rn.port))?;
        account_reply(ctx, &entry);
        return fib::redirect(ctx, ip.proto, frontend, client);
    }

    let Some((svc, svc_addr)) = lb::lookup_service(ip.daddr, dport, ip.proto, lb::Origin::Outside)
    else {
        if SL_VIPS.get_ptr(ip.daddr).is_some() {
            return lb::reject(ctx, &ip, DropReason::NoServicePort);
        }
        // Plain traffic, e.g. from a pod on another node: to a local pod
        // by the fast path.
        return fwd::deliver_local(ctx, &ip);
    };
    let (backend_id, backend, snat, new) = match lb::established(ctx, &ip, sport, dport, &svc) {
        Some((entry, backend, _)) => {
            let snat =
                (entry.flags & CT_FLAG_SNAT != 0).then_some((entry.nat_addr, entry.nat_port));
            (entry.backend_id, backend, snat, false)
        }
        None => {
            lb::check_source_range(&ip, &svc)?;
            let Some((backend_id, backend)) = lb::pick(&ip, svc_addr, dport, &svc)? else {
                return lb::no_backend(ctx, &ip, &svc);
            };
            let mut flow = NewFlow::new(&ip, (sport, dport), backend_id, &backend, &svc);
            // Whatever the frontend: its replies leave through the device.
            flow.external = true;
            // On this node by its EndpointSlice, or a pod the CNI wired here.
            let local = backend.state & BACKEND_FLAG_LOCAL != 0
                || SL_ENDPOINTS.get_ptr(backend.addr).is_some();
            if local || svc.flags & SVC_FLAG_LOCAL != 0 {
                ct::create(&flow)?;
            } else {
                flow.snat = Some(snat_flow(&mut flow)?);
            }
            (backend_id, backend, flow.snat, true)
        }
    };
    nat::rewrite(ctx, &ip, Side::Destination, (ip.daddr, dport), (backend.addr, backend.port))?;
    let mut source = ip.saddr;
    if let Some((addr, port)) = snat {
        nat::rewrite(ctx, &ip, Side::Source, (ip.saddr, sport), (addr, port))?;
        source = addr;
    }
    stats::account(svc.rev_nat_index, backend_id, Direction::Forward, ctx.len(), new);
    fib::redirect(ctx, ip.proto, source, backend.addr)
}

/// Records `flow` SNATed to the node address with a free source port.
#[inline(always)]
fn snat_flow(flow: &mut NewFlow) -> Result<(u32, u16), DropReason> {
    let addr = SL_CONFIG.get(0).map_or(0, |c| c.snat_addr);
    if addr == 0 {
        return Err(DropReason::SnatFailed);
    }
    let range = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
    for _ in 0..SNAT_TRIES {
        // SAFETY: a plain helper call.
        let port = (SNAT_PORT_MIN + (unsafe { bpf_get_prandom_u32() } % range) as u16).to_be();
        flow.snat = Some((addr, port));
        match ct::create(flow) {
            Ok(()) => return Ok((addr, port)),
            // Taken: try another port.
            Err(DropReason::SnatFailed) => {}
            Err(e) => return Err(e),
        }
    }
    Err(DropReason::SnatFailed)
}
