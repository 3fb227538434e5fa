//! kube-proxy's rule sets, generated the way kube-proxy generates them, for
//! the same service set: the `iptables-restore` input of its iptables mode
//! and the `nft -f` transaction of its nftables mode (IPv4, ClusterIP
//! services with Cluster traffic policy, no session affinity).
//!
//! What this follows, from kubernetes/kubernetes pkg/proxy:
//! - chain names: `KUBE-SVC-` / `KUBE-SEP-` + the first 16 characters of
//!   base32(sha256(service port name + protocol [+ endpoint])) (iptables
//!   `servicePortChainName`, `servicePortEndpointChainName`); nftables
//!   `service-` / `endpoint-` + 8 characters of base32(sha256(name)) + `-` +
//!   `ns/name/proto/port[__ip/port]` (`hashAndTruncate`);
//! - iptables: KUBE-SERVICES has one rule per ClusterIP:port and
//!   KUBE-NODEPORTS last; KUBE-SVC-* masquerades off-cluster sources and
//!   picks an endpoint with `-m statistic --mode random --probability
//!   1/(n-i)` (the last one unconditionally); KUBE-SEP-* marks hairpin
//!   traffic for masquerade and DNATs; KUBE-MARK-MASQ, KUBE-POSTROUTING;
//!   the filter table's KUBE-FORWARD, KUBE-FIREWALL and friends; the jumps
//!   from the built-in chains; comments left out of the per-endpoint rules
//!   above 1000 endpoints (its "large cluster mode");
//! - nftables: table `ip kube-proxy`, its base chains and hooks, the
//!   `service-ips` verdict map keyed `ipv4_addr . inet_proto . inet_service`,
//!   `numgen random mod N vmap` per service, endpoint chains that mark
//!   hairpin traffic and `dnat to`, `mark-for-masquerade`, `masquerading`,
//!   the `cluster-ips` set and the endpoint/firewall check chains.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

use sha2::{Digest as _, Sha256};

/// One port of a ClusterIP Service and its ready endpoints.
#[derive(Debug, Clone)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The port's name (`spec.ports[].name`); may be empty.
    pub port_name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<SocketAddrV4>,
}

impl ServicePort {
    /// kube-proxy's `ServicePortName.String()`: `ns/name:port` (`ns/name`
    /// without a port name).
    pub fn port_name_string(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }
}

/// The node-level settings kube-proxy takes from its configuration.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `--cluster-cidr` (the local traffic detector): traffic from outside
    /// it to a ClusterIP is masqueraded.
    pub cluster_cidr: String,
    /// The service CIDR (nftables mode drops traffic to unallocated ClusterIPs in it).
    pub service_cidr: String,
    /// The node's address (nftables `nodeport-ips`).
    pub node_ip: Ipv4Addr,
}

/// The masquerade mark (`--iptables-masquerade-bit` 14).
const MASQ_MARK: &str = "0x4000";

/// Above this many endpoints kube-proxy's iptables mode leaves the comments
/// out of per-endpoint rules (`largeClusterEndpointsThreshold`).
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

const PROTOCOL: &str = "tcp";

/// kube-proxy's nftables table (IPv4).
const NFT_TABLE: &str = "ip kube-proxy";

/// RFC 4648 base32 (Go's `base32.StdEncoding`) of `data`, without padding.
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in data {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The first `len` characters of base32(sha256(`s`)).
fn hash_prefix(s: &str, len: usize) -> String {
    let mut h = base32(&Sha256::digest(s.as_bytes()));
    h.truncate(len);
    h
}

/// `KUBE-SVC-` + 16 characters of base32(sha256(port name + protocol)).
pub fn svc_chain(svc: &ServicePort) -> String {
    format!("KUBE-SVC-{}", hash_prefix(&format!("{}{PROTOCOL}", svc.port_name_string()), 16))
}

/// `KUBE-SEP-` + 16 characters of base32(sha256(port name + protocol + `ip:port`)).
pub fn sep_chain(svc: &ServicePort, endpoint: SocketAddrV4) -> String {
    let s = format!("{}{PROTOCOL}{endpoint}", svc.port_name_string());
    format!("KUBE-SEP-{}", hash_prefix(&s, 16))
}

/// nftables' chain name base: `HASH8-ns/name/proto/port`.
fn nft_name_base(name: &str) -> String {
    format!("{}-{name}", hash_prefix(name, 8))
}

/// `service-HASH8-ns/name/tcp/port`.
pub fn nft_service_chain(svc: &ServicePort) -> String {
    let name = format!("{}/{}/{PROTOCOL}/{}", svc.namespace, svc.name, svc.port_name);
    format!("service-{}", nft_name_base(&name))
}

/// `endpoint-HASH8-ns/name/tcp/port__ip/port`.
pub fn nft_endpoint_chain(svc: &ServicePort, endpoint: SocketAddrV4) -> String {
    let name = format!(
        "{}/{}/{PROTOCOL}/{}__{}/{}",
        svc.namespace,
        svc.name,
        svc.port_name,
        endpoint.ip(),
        endpoint.port()
    );
    format!("endpoint-{}", nft_name_base(&name))
}

/// The probability of the rule for endpoint `i` of `n`: 1/(n-i), printed
/// as kube-proxy prints it (`%0.10f`). The last endpoint has no rule.
pub fn probability(i: usize, n: usize) -> String {
    format!("{:.10}", 1.0 / (n - i) as f64)
}

/// Whether kube-proxy's iptables mode is in its "large cluster mode" for
/// `services` (more than 1000 endpoints in all).
pub fn large_cluster(services: &[ServicePort]) -> bool {
    services.iter().map(|s| s.endpoints.len()).sum::<usize>() > LARGE_CLUSTER_ENDPOINTS
}

/// The `*filter` table as every sync writes it; `jumps` adds the jumps from
/// the built-in chains, which kube-proxy ensures (`iptables -I`) only
/// before full syncs.
fn iptables_filter(out: &mut String, jumps: bool) {
    out.push_str("*filter\n");
    for chain in [
        "KUBE-NODEPORTS",
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FIREWALL",
        "KUBE-FORWARD",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    const NEW: &str = "-m conntrack --ctstate NEW ";
    if jumps {
        for (builtin, extra, comment, target) in [
            (
                "INPUT",
                NEW,
                "kubernetes externally-visible service portals",
                "KUBE-EXTERNAL-SERVICES",
            ),
            (
                "FORWARD",
                NEW,
                "kubernetes externally-visible service portals",
                "KUBE-EXTERNAL-SERVICES",
            ),
            ("INPUT", "", "kubernetes health check service ports", "KUBE-NODEPORTS"),
            ("FORWARD", NEW, "kubernetes service portals", "KUBE-SERVICES"),
            ("OUTPUT", NEW, "kubernetes service portals", "KUBE-SERVICES"),
            ("FORWARD", "", "kubernetes forwarding rules", "KUBE-FORWARD"),
            ("INPUT", NEW, "kubernetes load balancer firewall", "KUBE-PROXY-FIREWALL"),
            ("OUTPUT", NEW, "kubernetes load balancer firewall", "KUBE-PROXY-FIREWALL"),
            ("FORWARD", NEW, "kubernetes load balancer firewall", "KUBE-PROXY-FIREWALL"),
        ] {
            let _ =
                writeln!(out, "-I {builtin} {extra}-m comment --comment \"{comment}\" -j {target}");
        }
        for builtin in ["INPUT", "OUTPUT"] {
            let _ = writeln!(out, "-I {builtin} -j KUBE-FIREWALL");
        }
    }
    out.push_str(
        "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" \
         -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n",
    );
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" \
         -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    );
    out.push_str(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" \
         -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
    );
    out.push_str("COMMIT\n");
}

/// The nat table's top-level chain lines (every sync flushes and rewrites them).
fn iptables_nat_top_chains(out: &mut String) {
    out.push_str("*nat\n");
    for chain in ["KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
}

/// A service's chain lines: its KUBE-SVC chain and one KUBE-SEP per endpoint.
fn iptables_service_chains(out: &mut String, svc: &ServicePort) {
    let _ = writeln!(out, ":{} - [0:0]", svc_chain(svc));
    for &ep in &svc.endpoints {
        let _ = writeln!(out, ":{} - [0:0]", sep_chain(svc, ep));
    }
}

/// KUBE-SERVICES (one rule per service with endpoints, KUBE-NODEPORTS
/// last), KUBE-MARK-MASQ and KUBE-POSTROUTING: written by every sync.
fn iptables_nat_top_rules(out: &mut String, services: &[ServicePort]) {
    for svc in services {
        if svc.endpoints.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m {PROTOCOL} -p {PROTOCOL} \
             -d {} --dport {} -j {}",
            svc.port_name_string(),
            svc.cluster_ip,
            svc.port,
            svc_chain(svc)
        );
    }
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be \
         the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    let _ = writeln!(out, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");
    let _ = writeln!(out, "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN");
    let _ = writeln!(out, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
    out.push_str(
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
         -j MASQUERADE --random-fully\n",
    );
}

/// A service's KUBE-SVC and KUBE-SEP rules.
fn iptables_service_rules(out: &mut String, svc: &ServicePort, cfg: &ClusterConfig, large: bool) {
    let n = svc.endpoints.len();
    if n == 0 {
        return;
    }
    let name = svc.port_name_string();
    let chain = svc_chain(svc);
    let _ = writeln!(
        out,
        "-A {chain} -m comment --comment \"{name} cluster IP\" -m {PROTOCOL} -p {PROTOCOL} \
         -d {} --dport {} ! -s {} -j KUBE-MARK-MASQ",
        svc.cluster_ip, svc.port, cfg.cluster_cidr
    );
    for (i, &ep) in svc.endpoints.iter().enumerate() {
        let comment =
            if large { String::new() } else { format!("-m comment --comment \"{name} -> {ep}\" ") };
        let statistic = if i + 1 < n {
            format!("-m statistic --mode random --probability {} ", probability(i, n))
        } else {
            String::new()
        };
        let _ = writeln!(out, "-A {chain} {comment}{statistic}-j {}", sep_chain(svc, ep));
    }
    for &ep in &svc.endpoints {
        let sep = sep_chain(svc, ep);
        let comment = if large { String::new() } else { format!("-m comment --comment {name} ") };
        let _ = writeln!(out, "-A {sep} {comment}-s {} -j KUBE-MARK-MASQ", ep.ip());
        let _ = writeln!(
            out,
            "-A {sep} {comment}-m {PROTOCOL} -p {PROTOCOL} -j DNAT --to-destination {ep}"
        );
    }
}

/// The `iptables-restore --noflush` input for `services` (filter and nat
/// tables), including the jumps from the built-in chains that kube-proxy
/// installs with `iptables -I` before each restore.
pub fn iptables_restore(services: &[ServicePort], cfg: &ClusterConfig) -> String {
    let large = large_cluster(services);
    let mut out = String::new();
    iptables_filter(&mut out, true);
    iptables_nat_top_chains(&mut out);
    for svc in services.iter().filter(|s| !s.endpoints.is_empty()) {
        iptables_service_chains(&mut out, svc);
    }
    for (builtin, comment, target) in [
        ("OUTPUT", "kubernetes service portals", "KUBE-SERVICES"),
        ("PREROUTING", "kubernetes service portals", "KUBE-SERVICES"),
        ("POSTROUTING", "kubernetes postrouting rules", "KUBE-POSTROUTING"),
    ] {
        let _ = writeln!(out, "-I {builtin} -m comment --comment \"{comment}\" -j {target}");
    }
    iptables_nat_top_rules(&mut out, services);
    for svc in services {
        iptables_service_rules(&mut out, svc, cfg, large);
    }
    out.push_str("COMMIT\n");
    out
}

/// The `iptables-restore --noflush` input of kube-proxy's partial sync
/// after the endpoints of `services[changed]` changed from `old_endpoints`
/// to its current ones (`syncProxyRules` with `tryPartialSync`, the default
/// since v1.27): no jumps from the built-in chains (ensured before full
/// syncs only); the filter table and the nat table's top-level chains
/// (KUBE-SERVICES with one rule per service, KUBE-NODEPORTS, KUBE-MARK-MASQ,
/// KUBE-POSTROUTING) rewritten in full as on every sync; the KUBE-SVC and
/// KUBE-SEP chains of the changed service only; and, outside large cluster
/// mode (where kube-proxy scans for stale chains at most once per sync
/// period), the stale KUBE-SEP chains of the replaced endpoints flushed and
/// deleted (`-X`).
pub fn iptables_partial_restore(
    services: &[ServicePort],
    changed: usize,
    old_endpoints: &[SocketAddrV4],
    cfg: &ClusterConfig,
) -> String {
    let large = large_cluster(services);
    let svc = &services[changed];
    let stale: Vec<String> = if large {
        Vec::new()
    } else {
        old_endpoints
            .iter()
            .filter(|ep| !svc.endpoints.contains(ep))
            .map(|&ep| sep_chain(svc, ep))
            .collect()
    };
    let mut out = String::new();
    iptables_filter(&mut out, false);
    iptables_nat_top_chains(&mut out);
    if !svc.endpoints.is_empty() {
        iptables_service_chains(&mut out, svc);
    }
    for chain in &stale {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    iptables_nat_top_rules(&mut out, services);
    iptables_service_rules(&mut out, svc, cfg, large);
    for chain in &stale {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    out
}

/// The `nft -f` transaction of kube-proxy's nftables mode for `services`
/// (a full sync into an empty namespace).
pub fn nft_ruleset(services: &[ServicePort], cfg: &ClusterConfig) -> String {
    const T: &str = NFT_TABLE;
    let mut out = String::new();
    let _ = writeln!(out, "add table {T} {{ comment \"rules for kube-proxy\" ; }}");
    let _ = writeln!(
        out,
        "add set {T} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"
    );
    let _ = writeln!(
        out,
        "add set {T} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}"
    );
    for (name, key, comment) in [
        (
            "firewall-ips",
            "ipv4_addr . inet_proto . inet_service",
            "destinations that are subject to LoadBalancerSourceRanges",
        ),
        (
            "no-endpoint-nodeports",
            "inet_proto . inet_service",
            "vmap to drop or reject packets to service nodeports with no endpoints",
        ),
        (
            "no-endpoint-services",
            "ipv4_addr . inet_proto . inet_service",
            "vmap to drop or reject packets to services with no endpoints",
        ),
        (
            "service-ips",
            "ipv4_addr . inet_proto . inet_service",
            "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        ),
        ("service-nodeports", "inet_proto . inet_service", "NodePort traffic"),
    ] {
        let _ = writeln!(
            out,
            "add map {T} {name} {{ type {key} : verdict ; comment \"{comment}\" ; }}"
        );
    }
    for (name, spec) in [
        ("cluster-ips-check", ""),
        ("filter-prerouting-pre-dnat", " { type filter hook prerouting priority -110 ; }"),
        ("filter-output-pre-dnat", " { type filter hook output priority -110 ; }"),
        ("filter-forward", " { type filter hook forward priority 0 ; }"),
        ("filter-input", " { type filter hook input priority 0 ; }"),
        ("filter-output", " { type filter hook output priority 0 ; }"),
        ("firewall-check", ""),
        ("mark-for-masquerade", ""),
        ("masquerading", ""),
        ("nat-output", " { type nat hook output priority -100 ; }"),
        ("nat-postrouting", " { type nat hook postrouting priority 100 ; }"),
        ("nat-prerouting", " { type nat hook prerouting priority -100 ; }"),
        ("nodeport-endpoints-check", ""),
        (
            "reject-chain",
            " { comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }",
        ),
        ("services", ""),
        ("service-endpoints-check", ""),
    ] {
        let _ = writeln!(out, "add chain {T} {name}{spec}");
    }
    for rule in [
        "cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"".to_owned(),
        format!(
            "cluster-ips-check ip daddr {{ {} }} drop comment \"Drop traffic to unallocated ClusterIPs\"",
            cfg.service_cidr
        ),
        "filter-prerouting-pre-dnat ct state new jump firewall-check".to_owned(),
        "filter-forward ct state new jump service-endpoints-check".to_owned(),
        "filter-forward ct state new jump cluster-ips-check".to_owned(),
        "filter-input ct state new jump nodeport-endpoints-check".to_owned(),
        "filter-input ct state new jump service-endpoints-check".to_owned(),
        "filter-output ct state new jump service-endpoints-check".to_owned(),
        "filter-output-pre-dnat ct state new jump firewall-check".to_owned(),
        "filter-output ct state new jump cluster-ips-check".to_owned(),
        "firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips".to_owned(),
        format!("mark-for-masquerade mark set mark or {MASQ_MARK}"),
        format!("masquerading mark and {MASQ_MARK} == 0 return"),
        format!("masquerading mark set mark xor {MASQ_MARK}"),
        "masquerading masquerade fully-random".to_owned(),
        "nat-output jump services".to_owned(),
        "nat-postrouting jump masquerading".to_owned(),
        "nat-prerouting jump services".to_owned(),
        "nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports".to_owned(),
        "reject-chain reject".to_owned(),
        "services ip daddr . meta l4proto . th dport vmap @service-ips".to_owned(),
        "services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports".to_owned(),
    ] {
        let _ = writeln!(out, "add rule {T} {rule}");
    }
    let _ = writeln!(out, "add element {T} nodeport-ips {{ {} }}", cfg.node_ip);
    let _ = writeln!(
        out,
        "add rule {T} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
    );
    for svc in services {
        if svc.endpoints.is_empty() {
            continue;
        }
        // As kube-proxy does: the endpoint chains exist before the
        // service's vmap refers to them.
        for &ep in &svc.endpoints {
            let _ = writeln!(out, "add chain {T} {}", nft_endpoint_chain(svc, ep));
        }
        let chain = nft_service_chain(svc);
        let _ = writeln!(out, "add chain {T} {chain}");
        nft_service_rules(&mut out, svc, cfg);
        let _ = writeln!(out, "add element {T} cluster-ips {{ {} }}", svc.cluster_ip);
        let _ = writeln!(
            out,
            "add element {T} service-ips {{ {} . {PROTOCOL} . {} : goto {chain} }}",
            svc.cluster_ip, svc.port
        );
    }
    out
}

/// The rules of a service's chain (masquerade off-cluster sources, then
/// `numgen random` over its endpoint chains) and of its endpoint chains
/// (mark hairpin traffic, DNAT).
fn nft_service_rules(out: &mut String, svc: &ServicePort, cfg: &ClusterConfig) {
    const T: &str = NFT_TABLE;
    let chain = nft_service_chain(svc);
    let _ = writeln!(
        out,
        "add rule {T} {chain} ip daddr {} ip saddr != {} jump mark-for-masquerade",
        svc.cluster_ip, cfg.cluster_cidr
    );
    let vmap: Vec<String> = svc
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, &ep)| format!("{i} : goto {}", nft_endpoint_chain(svc, ep)))
        .collect();
    let _ = writeln!(
        out,
        "add rule {T} {chain} numgen random mod {} vmap {{ {} }}",
        svc.endpoints.len(),
        vmap.join(" , ")
    );
    for &ep in &svc.endpoints {
        let ep_chain = nft_endpoint_chain(svc, ep);
        let _ =
            writeln!(out, "add rule {T} {ep_chain} ip saddr {} jump mark-for-masquerade", ep.ip());
        let _ = writeln!(out, "add rule {T} {ep_chain} meta l4proto {PROTOCOL} dnat to {ep}");
    }
}

/// The `nft -f` transaction of kube-proxy's nftables partial sync after the
/// endpoints of `services[changed]` changed from `old_endpoints` to its
/// current ones (pkg/proxy/nftables `syncProxyRules` with `tryPartialSync`):
/// no table, base chains, sets or maps (`setupNFTables` runs before full
/// syncs only); `ensureChain` (add, then flush) of the changed service's
/// endpoint chains and service chain, and their rules; no map or set
/// element, since the service's `service-ips` and `cluster-ips` entries are
/// unchanged (`ensureElem` writes only new or changed elements); and the
/// stale endpoint chains of the replaced endpoints flushed (kube-proxy
/// deletes them in a transaction of a later sync, once they have been
/// unreferenced for a second).
pub fn nft_partial(
    services: &[ServicePort],
    changed: usize,
    old_endpoints: &[SocketAddrV4],
    cfg: &ClusterConfig,
) -> String {
    const T: &str = NFT_TABLE;
    let svc = &services[changed];
    let mut out = String::new();
    if !svc.endpoints.is_empty() {
        let chains = svc.endpoints.iter().map(|&ep| nft_endpoint_chain(svc, ep));
        for chain in chains.chain([nft_service_chain(svc)]) {
            let _ = writeln!(out, "add chain {T} {chain}");
            let _ = writeln!(out, "flush chain {T} {chain}");
        }
        nft_service_rules(&mut out, svc, cfg);
    }
    for &ep in old_endpoints.iter().filter(|ep| !svc.endpoints.contains(ep)) {
        let _ = writeln!(out, "flush chain {T} {}", nft_endpoint_chain(svc, ep));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(
        ns: &str,
        name: &str,
        port_name: &str,
        ip: [u8; 4],
        port: u16,
        eps: &[(&str, u16)],
    ) -> ServicePort {
        ServicePort {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            port_name: port_name.to_owned(),
            cluster_ip: Ipv4Addr::from(ip),
            port,
            endpoints: eps
                .iter()
                .map(|(ip, p)| SocketAddrV4::new(ip.parse().unwrap(), *p))
                .collect(),
        }
    }

    fn cfg() -> ClusterConfig {
        ClusterConfig {
            cluster_cidr: "10.0.0.0/8".to_owned(),
            service_cidr: "172.30.0.0/16".to_owned(),
            node_ip: Ipv4Addr::new(192, 168, 0, 2),
        }
    }

    #[test]
    fn base32_matches_rfc4648() {
        // RFC 4648 section 10 test vectors (without padding).
        for (input, want) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32(input.as_bytes()), want, "{input:?}");
        }
    }

    // Expect: the chain names kube-proxy prints for well-known services
    // (from real clusters' `iptables-save` and kube-proxy's own tests).
    #[test]
    fn iptables_chain_names_are_kube_proxys() {
        let k = svc("default", "kubernetes", "https", [10, 96, 0, 1], 443, &[]);
        assert_eq!(svc_chain(&k), "KUBE-SVC-NPX46M4PTMTKRN6Y");
        let s1 = svc("ns1", "svc1", "p80", [172, 30, 0, 41], 80, &[("10.0.1.1", 80)]);
        assert_eq!(svc_chain(&s1), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(sep_chain(&s1, s1.endpoints[0]), "KUBE-SEP-SNQ3ZNILQDEJNDQO");
        let s2 = svc("ns2", "svc2", "p8080", [172, 30, 0, 42], 8080, &[("10.0.2.1", 8080)]);
        assert_eq!(svc_chain(&s2), "KUBE-SVC-2VJB64SDSIJUP5T6");
        assert_eq!(sep_chain(&s2, s2.endpoints[0]), "KUBE-SEP-UHEGFW77JX3KXTOV");
    }

    // Expect: nftables chain names as in kube-proxy's TestOverallNFTablesRules.
    #[test]
    fn nft_chain_names_are_kube_proxys() {
        let s1 = svc("ns1", "svc1", "p80", [172, 30, 0, 41], 80, &[("10.180.0.1", 80)]);
        assert_eq!(nft_service_chain(&s1), "service-ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(
            nft_endpoint_chain(&s1, s1.endpoints[0]),
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
        let s4 = svc(
            "ns4",
            "svc4",
            "p80",
            [172, 30, 0, 44],
            80,
            &[("10.180.0.4", 80), ("10.180.0.5", 80)],
        );
        assert_eq!(nft_service_chain(&s4), "service-LAUZTJTB-ns4/svc4/tcp/p80");
        assert_eq!(
            nft_endpoint_chain(&s4, s4.endpoints[0]),
            "endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80"
        );
        assert_eq!(
            nft_endpoint_chain(&s4, s4.endpoints[1]),
            "endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80"
        );
    }

    // Expect: with services of 1 and 3 endpoints, the 3-endpoint service's
    // rules pick with probabilities 1/3, then 1/2, then unconditionally; the
    // 1-endpoint service has no statistic match; KUBE-NODEPORTS is last in
    // KUBE-SERVICES; every SEP chain masquerades hairpin traffic and DNATs.
    #[test]
    fn iptables_probabilities_and_layout() {
        let one = svc("ns1", "svc1", "p80", [172, 30, 0, 41], 80, &[("10.0.1.1", 80)]);
        let three = svc(
            "ns2",
            "svc2",
            "p80",
            [172, 30, 0, 42],
            80,
            &[("10.0.2.1", 8080), ("10.0.2.2", 8080), ("10.0.2.3", 8080)],
        );
        let text = iptables_restore(&[one.clone(), three.clone()], &cfg());
        let rules = |chain: &str| -> Vec<&str> {
            let prefix = format!("-A {chain} ");
            text.lines().filter(|l| l.starts_with(&prefix)).collect()
        };
        let svc3 = rules(&svc_chain(&three));
        assert_eq!(svc3.len(), 4, "{svc3:#?}");
        assert!(svc3[0].ends_with("! -s 10.0.0.0/8 -j KUBE-MARK-MASQ"), "{}", svc3[0]);
        assert!(svc3[1].contains("--probability 0.3333333333 "), "{}", svc3[1]);
        assert!(svc3[2].contains("--probability 0.5000000000 "), "{}", svc3[2]);
        assert!(!svc3[3].contains("statistic"), "{}", svc3[3]);
        for (rule, ep) in svc3[1..].iter().zip(&three.endpoints) {
            assert!(rule.ends_with(&format!("-j {}", sep_chain(&three, *ep))), "{rule}");
        }
        let svc1 = rules(&svc_chain(&one));
        assert_eq!(svc1.len(), 2);
        assert!(!svc1[1].contains("statistic"));
        assert_eq!(
            svc1[1],
            "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 -> 10.0.1.1:80\" \
             -j KUBE-SEP-SNQ3ZNILQDEJNDQO"
        );
        assert_eq!(
            rules("KUBE-SEP-SNQ3ZNILQDEJNDQO"),
            [
                "-A KUBE-SEP-SNQ3ZNILQDEJNDQO -m comment --comment ns1/svc1:p80 -s 10.0.1.1 -j KUBE-MARK-MASQ",
                "-A KUBE-SEP-SNQ3ZNILQDEJNDQO -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.0.1.1:80",
            ]
        );
        let services = rules("KUBE-SERVICES");
        assert_eq!(services.len(), 3);
        assert_eq!(
            services[0],
            "-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp \
             -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O"
        );
        assert!(services[2].ends_with("-j KUBE-NODEPORTS"));
        assert_eq!(rules("KUBE-MARK-MASQ"), ["-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"]);
        assert_eq!(rules("KUBE-POSTROUTING").len(), 3);
        assert_eq!(probability(0, 3), "0.3333333333");
        assert_eq!(probability(1, 3), "0.5000000000");
    }

    // Expect: above 1000 endpoints the per-endpoint rules lose their comments.
    #[test]
    fn iptables_large_cluster_mode_drops_endpoint_comments() {
        let services: Vec<ServicePort> = (0..1001u32)
            .map(|i| {
                let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i);
                let ep = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i);
                ServicePort {
                    namespace: "bench".into(),
                    name: format!("s{i}"),
                    port_name: "http".into(),
                    cluster_ip: ip,
                    port: 80,
                    endpoints: vec![SocketAddrV4::new(ep, 8080)],
                }
            })
            .collect();
        let text = iptables_restore(&services, &cfg());
        let sep = sep_chain(&services[0], services[0].endpoints[0]);
        let line = text.lines().find(|l| l.starts_with(&format!("-A {sep} "))).unwrap();
        assert!(!line.contains("comment"), "{line}");
        let text = iptables_restore(&services[..1000], &cfg());
        let line = text.lines().find(|l| l.starts_with(&format!("-A {sep} "))).unwrap();
        assert!(line.contains("--comment bench/s0:http"), "{line}");
    }

    // Expect: the nftables transaction has kube-proxy's table, the
    // service-ips map keyed address . protocol . port, one numgen rule per
    // service choosing among its endpoint chains, and DNAT in those chains.
    #[test]
    fn nft_layout() {
        let one = svc("ns1", "svc1", "p80", [172, 30, 0, 41], 80, &[("10.180.0.1", 80)]);
        let three = svc(
            "ns2",
            "svc2",
            "p80",
            [172, 30, 0, 42],
            80,
            &[("10.0.2.1", 8080), ("10.0.2.2", 8080), ("10.0.2.3", 8080)],
        );
        let text = nft_ruleset(&[one, three.clone()], &cfg());
        let has = |l: &str| assert!(text.lines().any(|x| x == l), "missing {l:?} in\n{text}");
        has("add table ip kube-proxy { comment \"rules for kube-proxy\" ; }");
        has(
            "add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }",
        );
        has("add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips");
        has(
            "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade",
        );
        has(
            "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }",
        );
        has(
            "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade",
        );
        has(
            "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80",
        );
        has(
            "add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }",
        );
        has("add rule ip kube-proxy masquerading masquerade fully-random");
        let chain = nft_service_chain(&three);
        let numgen = text
            .lines()
            .find(|l| l.starts_with(&format!("add rule ip kube-proxy {chain} numgen")))
            .unwrap();
        assert!(numgen.contains("numgen random mod 3 vmap { 0 : goto endpoint-"), "{numgen}");
        assert_eq!(numgen.matches(": goto endpoint-").count(), 3, "{numgen}");
    }

    /// `n` one-endpoint services and the index of a changed one, before
    /// and after its endpoint 10.0.9.1:8080 was replaced by 10.0.9.2:8080.
    fn changed_set(n: u32) -> (Vec<ServicePort>, usize, Vec<SocketAddrV4>) {
        let mut services: Vec<ServicePort> = (0..n)
            .map(|i| ServicePort {
                namespace: "bench".into(),
                name: format!("s{i}"),
                port_name: "http".into(),
                cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 30, 8, 0)) + i),
                port: 80,
                endpoints: vec![SocketAddrV4::new(
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i),
                    8080,
                )],
            })
            .collect();
        let changed = (n / 2) as usize;
        services[changed].endpoints = vec![SocketAddrV4::new(Ipv4Addr::new(10, 0, 9, 1), 8080)];
        let old = services[changed].endpoints.clone();
        services[changed].endpoints[0] = SocketAddrV4::new(Ipv4Addr::new(10, 0, 9, 2), 8080);
        (services, changed, old)
    }

    // Expect: the partial restore declares the top-level chains and only the
    // changed service's KUBE-SVC / KUBE-SEP chains, rewrites KUBE-SERVICES
    // with every service, has no jumps from built-in chains, and deletes the
    // replaced endpoint's chain outside large cluster mode only.
    #[test]
    fn iptables_partial_has_only_the_changed_service() {
        let (services, changed, old) = changed_set(10);
        let svc = &services[changed];
        let text = iptables_partial_restore(&services, changed, &old, &cfg());
        let chains: Vec<&str> = text.lines().filter(|l| l.starts_with(':')).collect();
        let new_sep = sep_chain(svc, svc.endpoints[0]);
        let old_sep = sep_chain(svc, old[0]);
        let mut want: Vec<String> = [
            "KUBE-NODEPORTS",
            "KUBE-SERVICES",
            "KUBE-EXTERNAL-SERVICES",
            "KUBE-FIREWALL",
            "KUBE-FORWARD",
            "KUBE-PROXY-FIREWALL",
            "KUBE-NODEPORTS",
            "KUBE-SERVICES",
            "KUBE-MARK-MASQ",
            "KUBE-POSTROUTING",
        ]
        .map(String::from)
        .to_vec();
        want.extend([svc_chain(svc), new_sep.clone(), old_sep.clone()]);
        let want: Vec<String> = want.iter().map(|c| format!(":{c} - [0:0]")).collect();
        assert_eq!(chains, want);
        assert!(!text.lines().any(|l| l.starts_with("-I ")), "{text}");
        for (i, other) in services.iter().enumerate().filter(|(i, _)| *i != changed) {
            let svc_c = svc_chain(other);
            let sep_c = sep_chain(other, other.endpoints[0]);
            assert!(!text.contains(&format!("-A {svc_c} ")), "service {i}'s chain in\n{text}");
            assert!(!text.contains(&sep_c), "service {i}'s endpoint chain in\n{text}");
            assert!(text.contains(&format!("-j {svc_c}\n")), "KUBE-SERVICES lacks service {i}");
        }
        let services_rules = text.lines().filter(|l| l.starts_with("-A KUBE-SERVICES ")).count();
        assert_eq!(services_rules, services.len() + 1);
        assert!(text.contains(&format!("-A {} -m comment", svc_chain(svc))), "{text}");
        assert!(text.contains(&format!("-j {new_sep}\n")), "{text}");
        assert!(text.contains("-j DNAT --to-destination 10.0.9.2:8080\n"), "{text}");
        assert!(!text.contains("10.0.9.1:8080"), "{text}");
        assert!(text.ends_with(&format!("-X {old_sep}\nCOMMIT\n")), "{text}");
        assert_eq!(text.matches("COMMIT\n").count(), 2);

        // Large cluster mode: no stale-chain scan, so no deletion.
        let (services, changed, old) = changed_set(1001);
        let text = iptables_partial_restore(&services, changed, &old, &cfg());
        let old_sep = sep_chain(&services[changed], old[0]);
        assert!(!text.contains(&old_sep), "{text}");
        let chains = text.lines().filter(|l| l.starts_with(":KUBE-S")).count();
        assert_eq!(chains, 2 + 2, "top-level KUBE-SERVICES twice, one SVC, one SEP");
    }

    // Expect: the nftables partial transaction adds and flushes the changed
    // service's chains, rewrites their rules, flushes the replaced
    // endpoint's chain, and touches nothing else (no table, chain of another
    // service, set or map element).
    #[test]
    fn nft_partial_has_only_the_changed_service() {
        let (services, changed, old) = changed_set(10);
        let svc = &services[changed];
        let text = nft_partial(&services, changed, &old, &cfg());
        let ep = nft_endpoint_chain(svc, svc.endpoints[0]);
        let sc = nft_service_chain(svc);
        let want = [
            format!("add chain ip kube-proxy {ep}"),
            format!("flush chain ip kube-proxy {ep}"),
            format!("add chain ip kube-proxy {sc}"),
            format!("flush chain ip kube-proxy {sc}"),
            format!(
                "add rule ip kube-proxy {sc} ip daddr {} ip saddr != 10.0.0.0/8 jump mark-for-masquerade",
                svc.cluster_ip
            ),
            format!("add rule ip kube-proxy {sc} numgen random mod 1 vmap {{ 0 : goto {ep} }}"),
            format!("add rule ip kube-proxy {ep} ip saddr 10.0.9.2 jump mark-for-masquerade"),
            format!("add rule ip kube-proxy {ep} meta l4proto tcp dnat to 10.0.9.2:8080"),
            format!("flush chain ip kube-proxy {}", nft_endpoint_chain(svc, old[0])),
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), want);
        for other in services.iter().enumerate().filter(|(i, _)| *i != changed).map(|(_, s)| s) {
            assert!(!text.contains(&nft_service_chain(other)), "{text}");
        }
    }

    fn have(tool: &str) -> bool {
        std::process::Command::new(tool).arg("--version").output().is_ok()
    }

    // Expect: iptables-restore and nft accept both rule sets (`--test` /
    // `-c`, then loaded for real) in a throwaway network namespace, and the
    // loaded rules are the generated ones. Needs root, iptables and nftables;
    // skips otherwise.
    #[test]
    fn rulesets_load_in_a_netns() {
        use sluice::testbed::{Netns, TestDir, require_root, run_checked};
        use std::time::Duration;
        if !require_root() {
            return;
        }
        if !have("iptables-restore") || !have("nft") {
            eprintln!("skipping rulesets_load_in_a_netns: iptables or nftables not installed");
            return;
        }
        let t = Duration::from_secs(30);
        let dir = TestDir::new("rules-check").unwrap();
        let ns = Netns::new("rules-check").unwrap();
        let mut services = vec![
            svc("ns1", "svc1", "p80", [172, 30, 0, 41], 80, &[("10.0.1.1", 80)]),
            svc(
                "ns2",
                "svc2",
                "p80",
                [172, 30, 0, 42],
                80,
                &[("10.0.2.1", 8080), ("10.0.2.2", 8080), ("10.0.2.3", 8080)],
            ),
        ];
        // And enough for the large-cluster form.
        services.extend((0..1000u32).map(|i| ServicePort {
            namespace: "bench".into(),
            name: format!("s{i}"),
            port_name: "http".into(),
            cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 30, 8, 0)) + i),
            port: 80,
            endpoints: vec![SocketAddrV4::new(
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i),
                8080,
            )],
        }));
        for set in [&services[..2], &services[..]] {
            let ipt = dir.join("rules.iptables");
            std::fs::write(&ipt, iptables_restore(set, &cfg())).unwrap();
            let nft = dir.join("rules.nft");
            std::fs::write(&nft, nft_ruleset(set, &cfg())).unwrap();
            for args in [&["--test", "--noflush"][..], &["--noflush"][..]] {
                run_checked(ns.command("iptables-restore").unwrap().args(args).arg(&ipt), t)
                    .unwrap();
            }
            let nat =
                run_checked(ns.command("iptables").unwrap().args(["-t", "nat", "-S"]), t).unwrap();
            assert!(nat.contains("-N KUBE-SVC-XPGD46QRK7WJZT7O"), "{nat}");
            let services_chain = nat.lines().filter(|l| l.starts_with("-A KUBE-SERVICES ")).count();
            assert_eq!(services_chain, set.len() + 1);
            run_checked(ns.command("nft").unwrap().args(["flush", "ruleset"]), t).unwrap();
            run_checked(ns.command("nft").unwrap().args(["-c", "-f"]).arg(&nft), t).unwrap();
            run_checked(ns.command("nft").unwrap().arg("-f").arg(&nft), t).unwrap();
            let map = run_checked(
                ns.command("nft").unwrap().args(["list", "map", "ip", "kube-proxy", "service-ips"]),
                t,
            )
            .unwrap();
            assert!(
                map.contains("172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80"),
                "{map}"
            );
            run_checked(ns.command("nft").unwrap().args(["flush", "ruleset"]), t).unwrap();
        }
    }

    // Expect: on top of a full rule set, the partial iptables-restore and
    // nft transactions load (`--noflush`, `nft -f`), point the changed
    // service at its new endpoint, and leave every other service's chains
    // in place; iptables deletes the replaced endpoint's chain (below 1000
    // endpoints), nftables leaves it empty. Needs root, iptables and
    // nftables; skips otherwise.
    #[test]
    fn partial_syncs_load_on_a_full_set() {
        use sluice::testbed::{Netns, TestDir, require_root, run_checked};
        use std::time::Duration;
        if !require_root() {
            return;
        }
        if !have("iptables-restore") || !have("nft") {
            eprintln!(
                "skipping partial_syncs_load_on_a_full_set: iptables or nftables not installed"
            );
            return;
        }
        let t = Duration::from_secs(30);
        let dir = TestDir::new("partial-check").unwrap();
        let ns = Netns::new("partial-check").unwrap();
        let (after, changed, old) = changed_set(50);
        let mut before = after.clone();
        before[changed].endpoints.clone_from(&old);
        let svc = &after[changed];
        let (full, partial) = (dir.join("full"), dir.join("partial"));

        std::fs::write(&full, iptables_restore(&before, &cfg())).unwrap();
        std::fs::write(&partial, iptables_partial_restore(&after, changed, &old, &cfg())).unwrap();
        run_checked(ns.command("iptables-restore").unwrap().arg("--noflush").arg(&full), t)
            .unwrap();
        run_checked(ns.command("iptables-restore").unwrap().arg("--noflush").arg(&partial), t)
            .unwrap();
        let nat =
            run_checked(ns.command("iptables").unwrap().args(["-t", "nat", "-S"]), t).unwrap();
        let new_sep = sep_chain(svc, svc.endpoints[0]);
        assert!(nat.contains(&format!("-A {} -m comment", svc_chain(svc))), "{nat}");
        assert!(nat.contains(&format!("-j {new_sep}\n")), "{nat}");
        assert!(nat.contains("--to-destination 10.0.9.2:8080"), "{nat}");
        assert!(!nat.contains(&sep_chain(svc, old[0])), "stale chain left:\n{nat}");
        assert_eq!(nat.lines().filter(|l| l.starts_with("-N KUBE-SVC-")).count(), after.len());
        assert_eq!(nat.lines().filter(|l| l.starts_with("-N KUBE-SEP-")).count(), after.len());
        assert_eq!(
            nat.lines().filter(|l| l.starts_with("-A KUBE-SERVICES ")).count(),
            after.len() + 1
        );
        // The jumps from the built-in chains are still there, once each.
        assert_eq!(nat.lines().filter(|l| l.starts_with("-A PREROUTING ")).count(), 1, "{nat}");
        run_checked(ns.command("nft").unwrap().args(["flush", "ruleset"]), t).unwrap();

        std::fs::write(&full, nft_ruleset(&before, &cfg())).unwrap();
        std::fs::write(&partial, nft_partial(&after, changed, &old, &cfg())).unwrap();
        run_checked(ns.command("nft").unwrap().arg("-f").arg(&full), t).unwrap();
        run_checked(ns.command("nft").unwrap().arg("-f").arg(&partial), t).unwrap();
        let sc = nft_service_chain(svc);
        let chain = run_checked(
            ns.command("nft").unwrap().args(["list", "chain", "ip", "kube-proxy", &sc]),
            t,
        )
        .unwrap();
        assert!(chain.contains(&nft_endpoint_chain(svc, svc.endpoints[0])), "{chain}");
        assert!(!chain.contains(&nft_endpoint_chain(svc, old[0])), "{chain}");
        let stale = nft_endpoint_chain(svc, old[0]);
        let stale_chain = run_checked(
            ns.command("nft").unwrap().args(["list", "chain", "ip", "kube-proxy", &stale]),
            t,
        )
        .unwrap();
        assert!(!stale_chain.contains("dnat"), "stale chain not flushed:\n{stale_chain}");
        let map = run_checked(
            ns.command("nft").unwrap().args(["list", "map", "ip", "kube-proxy", "service-ips"]),
            t,
        )
        .unwrap();
        assert_eq!(map.matches(": goto service-").count(), after.len(), "{map}");
        run_checked(ns.command("nft").unwrap().args(["flush", "ruleset"]), t).unwrap();
    }
}
