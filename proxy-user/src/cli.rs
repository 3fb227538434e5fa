//! Command-line interface: `sluice agent` and the operator's commands.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// The default pin directory of the agent's maps and programs.
pub const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf/sluice";

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "eBPF Kubernetes service proxy: node agent and operator CLI"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: keep the kernel's maps equal to the Services and
    /// EndpointSlices it is given.
    Agent(Box<AgentArgs>),
    /// List programmed frontends and their backends, from the pinned maps
    /// (works while no agent runs).
    Services(InspectArgs),
    /// Say what is loaded, pinned and attached, and how full each map is.
    Status(InspectArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Where the agent pinned its maps and programs.
    #[arg(long, env = "SLUICE_BPFFS_ROOT", default_value = DEFAULT_BPFFS_ROOT)]
    pub bpffs_root: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// `--routing`: who routes pod traffic between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum RoutingMode {
    /// A route per other node's pod CIDR via its InternalIP.
    #[default]
    Native,
    /// Someone else routes (a cloud's route tables, BGP, an overlay).
    None,
}

/// `--tunnel`: whether pods on other nodes are reached through an overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum TunnelMode {
    /// No overlay: `--routing` decides.
    #[default]
    Disabled,
    /// One VXLAN device per node with a static FDB entry per other node
    /// (see the `tunnel` module).
    Vxlan,
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Talk to the API server of this kubeconfig (its current context). Without
    /// it and without --manifests: the in-cluster service account.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Instead of an API server: Service, EndpointSlice and Node objects as
    /// YAML or JSON files in this directory (multi-document and `kind: List`
    /// allowed), followed while running.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// This node's Node object name.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Interfaces that receive external traffic for NodePorts, externalIPs
    /// and LoadBalancer IPs (`eth+` wildcards); default: the interface of
    /// the default route.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Local address ranges (CIDRs) whose addresses serve NodePorts;
    /// default: every address of --devices.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,
    /// cgroup v2 directory where the socket-level LB hooks attach (every
    /// process below it is balanced at connect()); default: the cgroup2 root.
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Where maps and programs are pinned (a bpffs is mounted there if it is not on one).
    #[arg(long, env = "SLUICE_BPFFS_ROOT", default_value = DEFAULT_BPFFS_ROOT)]
    pub bpffs_root: PathBuf,
    /// Connect-time (socket-level) load balancing; the per-packet path is always on.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub socket_lb: bool,
    /// Host-side pod interfaces the pod program attaches to (`sl+` = every
    /// name starting with `sl`).
    #[arg(long, value_delimiter = ',', default_value = "sl+")]
    pub pod_devices: Vec<String>,
    /// Pod address space (masquerade decisions): traffic from it to anything
    /// outside it and not to a node leaves with the node's address. Default:
    /// the union of every Node's IPv4 podCIDRs.
    #[arg(long, value_delimiter = ',')]
    pub cluster_cidr: Vec<String>,
    /// How pods on other nodes are reached: `native` routes each other
    /// Node's podCIDRs via its InternalIP (routes marked `proto 115`);
    /// `none` leaves routing to someone else (and withdraws `proto 115`
    /// routes an earlier run left).
    #[arg(long, value_enum, default_value_t = RoutingMode::Native)]
    pub routing: RoutingMode,
    /// `vxlan`: reach pods on other nodes through the VXLAN device
    /// `vxlan_sluice` (routes `proto 115` via it; no route via InternalIPs,
    /// whatever --routing says; pod MTU lowered by 50). `disabled` removes
    /// that device (and with it its routes) when an earlier run left it.
    #[arg(long, value_enum, default_value_t = TunnelMode::Disabled)]
    pub tunnel: TunnelMode,
    /// VXLAN network identifier of the overlay (the same on every node).
    #[arg(long, default_value_t = crate::tunnel::DEFAULT_VNI, value_parser = vni)]
    pub vxlan_vni: u32,
    /// UDP destination port of the overlay (the same on every node; 8472 is
    /// the Linux default and flannel's, 4789 the IANA one).
    #[arg(long, default_value_t = crate::tunnel::DEFAULT_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub vxlan_port: u16,
    /// Masquerade traffic from pods to destinations outside the cluster CIDR
    /// (nftables table `ip sluice`; `false` removes that table).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub masquerade: bool,
    /// eBPF fast paths for pod traffic: to pods of this node with
    /// `bpf_redirect_peer`, to other pods by FIB lookup and
    /// `bpf_redirect`/`bpf_redirect_neigh`. `false`: the node's stack routes
    /// every packet (same results, slower).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub fast_path: bool,
    /// Address of /healthz, /livez, /readyz (kube-proxy semantics).
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub health_bind: String,
    /// Address of Prometheus /metrics.
    #[arg(long, default_value = "0.0.0.0:10249")]
    pub metrics_bind: String,
    /// Where the agent writes this node's CNI conflist (from the Node's podCIDRs).
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Max entries of SL_SERVICES: frontends plus one slot per active backend.
    #[arg(long, default_value_t = proxy_common::SERVICES_MAX, value_parser = map_size)]
    pub map_size_services: u32,
    /// Max entries of SL_BACKENDS (backends, counted per frontend).
    #[arg(long, default_value_t = proxy_common::BACKENDS_MAX, value_parser = map_size)]
    pub map_size_backends: u32,
    /// Max frontends (service address, port, protocol): SL_REVNAT, SL_VIPS.
    #[arg(long, default_value_t = proxy_common::REVNAT_MAX, value_parser = map_size)]
    pub map_size_frontends: u32,
    /// Max conntrack entries (two per translated flow; LRU, preallocated).
    #[arg(long, default_value_t = proxy_common::CT_MAX, value_parser = map_size)]
    pub map_size_conntrack: u32,
    /// Max session-affinity entries (LRU, preallocated).
    #[arg(long, default_value_t = proxy_common::AFFINITY_MAX, value_parser = map_size)]
    pub map_size_affinity: u32,
    /// Max loadBalancerSourceRanges entries (SL_SRC_RANGES): one per range
    /// per LoadBalancer IP and NodePort frontend of services that have them.
    #[arg(long, default_value_t = proxy_common::SRC_RANGES_MAX, value_parser = map_size)]
    pub map_size_source_ranges: u32,
}

/// A map size: 1 ..= 2^28.
fn map_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if n == 0 || n > 1 << 28 {
        return Err(format!("{n} is outside 1..=268435456"));
    }
    Ok(n)
}

/// A VXLAN network identifier: 1 ..= 2^24 - 1.
fn vni(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if n == 0 || n > 0x00ff_ffff {
        return Err(format!("{n} is outside 1..=16777215 (24 bits)"));
    }
    Ok(n)
}

/// Whether interface `name` matches one of `patterns` (`eth+` matches every
/// name starting with `eth`; anything else matches exactly).
#[must_use]
pub fn device_matches(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_prefixes() {
        let p = vec!["sl+".to_string(), "eth0".to_string()];
        assert!(device_matches(&p, "sl0123456789ab"));
        assert!(device_matches(&p, "eth0"));
        assert!(!device_matches(&p, "eth1"));
        assert!(!device_matches(&p, "lo"));
    }

    #[test]
    fn agent_flags_parse_with_defaults() {
        let cli = Cli::try_parse_from([
            "sluice",
            "agent",
            "--manifests",
            "/m",
            "--node-name",
            "n1",
            "--bpffs-root",
            "/b",
        ])
        .unwrap();
        let Command::Agent(a) = cli.command else { panic!("not agent") };
        assert_eq!(a.pod_devices, vec!["sl+".to_string()]);
        assert!(a.socket_lb);
        assert_eq!(a.bpffs_root, PathBuf::from("/b"));
    }

    #[test]
    fn tunnel_flags_are_checked() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["sluice", "agent", "--manifests", "/m"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv)
        };
        let Command::Agent(a) = parse(&[]).unwrap().command else { panic!("not agent") };
        assert_eq!((a.tunnel, a.vxlan_vni, a.vxlan_port), (TunnelMode::Disabled, 1, 8472));
        let Command::Agent(a) = parse(&["--tunnel", "vxlan"]).unwrap().command else {
            panic!("not agent")
        };
        assert_eq!(a.tunnel, TunnelMode::Vxlan);
        for bad in [
            &["--tunnel", "geneve"][..],
            &["--vxlan-vni", "0"],
            &["--vxlan-vni", "16777216"],
            &["--vxlan-vni", "x"],
            &["--vxlan-port", "0"],
            &["--vxlan-port", "65536"],
        ] {
            let e = parse(bad).expect_err(&format!("{bad:?} must be rejected"));
            assert!(e.to_string().contains(bad[0]), "{bad:?}: {e}");
        }
    }

    #[test]
    fn bad_output_format_is_rejected() {
        assert!(Cli::try_parse_from(["sluice", "services", "-o", "yaml"]).is_err());
    }
}
