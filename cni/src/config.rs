//! The CNI environment variables and the network configuration on stdin.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::{Error, Result, version};

/// Default pin directory of the agent.
pub const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf/sluice";
/// Default directory of the IPAM and endpoint state.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/sluice";
/// MTU when the node has no device to take it from.
pub const FALLBACK_MTU: u32 = 1500;

/// The CNI environment of one invocation (all optional here; each verb
/// requires what it needs).
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
    /// `SLUICE_CNI_TEST_FAIL_AFTER`: for tests of ADD's rollback only; makes
    /// ADD fail right after the named step (`ipam`, `veth`, `node`, `pod`,
    /// `endpoint`, `attach`).
    pub fail_after: Option<String>,
}

impl Env {
    /// Reads `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`,
    /// `CNI_ARGS` and `CNI_PATH` from the process environment. Empty values
    /// count as unset.
    pub fn from_process() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
            path: get("CNI_PATH"),
            fail_after: get("SLUICE_CNI_TEST_FAIL_AFTER"),
        }
    }

    /// `CNI_CONTAINERID`, validated as the spec says (alphanumerics first,
    /// then alphanumerics, `_`, `.`, `-`).
    pub fn container_id(&self) -> Result<&str> {
        let id = self
            .container_id
            .as_deref()
            .ok_or(Error::InvalidEnv { var: "CNI_CONTAINERID", reason: "not set".into() })?;
        let mut chars = id.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        if !first_ok
            || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            || id.len() > 1024
        {
            return Err(Error::InvalidEnv {
                var: "CNI_CONTAINERID",
                reason: format!(
                    "{id:?} is not a valid container ID (alphanumerics, then alphanumerics, '_', '.', '-')"
                ),
            });
        }
        Ok(id)
    }

    /// `CNI_IFNAME`, validated as a Linux interface name.
    pub fn ifname(&self) -> Result<&str> {
        let name = self
            .ifname
            .as_deref()
            .ok_or(Error::InvalidEnv { var: "CNI_IFNAME", reason: "not set".into() })?;
        validate_ifname(name).map_err(|reason| Error::InvalidEnv { var: "CNI_IFNAME", reason })?;
        Ok(name)
    }

    /// `CNI_NETNS` (required).
    pub fn netns(&self) -> Result<&str> {
        self.netns
            .as_deref()
            .ok_or(Error::InvalidEnv { var: "CNI_NETNS", reason: "not set".into() })
    }

    /// An injected failure after `step` (see `fail_after`).
    pub fn fail_point(&self, step: &str) -> Result<()> {
        if self.fail_after.as_deref() == Some(step) {
            return Err(Error::Internal(format!("injected failure after step {step}")));
        }
        Ok(())
    }

    /// The directories of `CNI_PATH`.
    pub fn path_dirs(&self) -> Vec<PathBuf> {
        self.path
            .as_deref()
            .unwrap_or("")
            .split(':')
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .collect()
    }
}

/// Checks a Linux interface name: 1-15 bytes, not `.`/`..`, no `/`, `:`
/// or whitespace.
pub fn validate_ifname(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("empty interface name".into());
    }
    if name.len() > 15 {
        return Err(format!("interface name {name:?} is longer than 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is not allowed"));
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(format!("interface name {name:?} contains '/', ':' or whitespace"));
    }
    Ok(())
}

/// An IPv4 range (`a.b.c.d/len`) with zero host bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/len`; rejects host bits, IPv6 and prefixes longer
    /// than /30 (no room for pods).
    pub fn parse(s: &str) -> std::result::Result<Cidr, String> {
        let (addr, len) =
            s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR (a.b.c.d/len)"))?;
        if addr.contains(':') {
            return Err(format!("{s:?}: IPv6 pod ranges are not supported (IPv4 only)"));
        }
        let network: Ipv4Addr =
            addr.parse().map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s:?}: prefix length {len:?} is not 0-32"))?;
        if prefix > 30 {
            return Err(format!("{s:?}: a /{prefix} has no room for pods (at most /30)"));
        }
        let cidr = Cidr { network, prefix };
        if u32::from(network) & !cidr.mask() != 0 {
            return Err(format!("{s:?} has host bits set (did you mean {}/{prefix}?)", {
                Ipv4Addr::from(u32::from(network) & cidr.mask())
            }));
        }
        Ok(cidr)
    }

    pub fn mask(&self) -> u32 {
        if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// First and last address that pods get (network and broadcast excluded).
    pub fn hosts(&self) -> (u32, u32) {
        let net = u32::from(self.network);
        (net + 1, (net | !self.mask()) - 1)
    }

    pub fn size(&self) -> u64 {
        let (first, last) = self.hosts();
        u64::from(last - first) + 1
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The plugin's network configuration (what the runtime puts on stdin).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawNetConf {
    pub cni_version: Option<String>,
    /// Accepted for conflists given whole; the runtime picks the version.
    #[serde(default)]
    pub cni_versions: Option<Vec<String>>,
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub plugin_type: Option<String>,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Option<Vec<String>>,
    pub ipam: Option<Value>,
    pub mtu: Option<u32>,
    pub bpffs_root: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub prev_result: Option<Value>,
    pub runtime_config: Option<RuntimeConfig>,
    pub capabilities: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    #[serde(default)]
    pub dns: Option<Value>,
}

/// `runtimeConfig`: accepted; sluice itself uses none of it (port mappings
/// are for a chained `portmap`), but it parses both spellings of
/// `portMappings` so that bad input is reported.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default, alias = "PortMappings")]
    pub port_mappings: Vec<PortMapping>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// One port mapping, camelCase (podman, the spec) or PascalCase (containerd).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort", alias = "HostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort", alias = "ContainerPort")]
    pub container_port: u16,
    #[serde(default, alias = "Protocol")]
    pub protocol: Option<String>,
    #[serde(default, rename = "hostIP", alias = "HostIP", alias = "hostIp")]
    pub host_ip: Option<String>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: &'static str,
    pub name: String,
    pub ranges: Vec<Cidr>,
    /// The delegated IPAM section, when one is configured (replaces `ranges`).
    pub ipam: Option<Value>,
    pub ipam_type: Option<String>,
    pub mtu: Option<u32>,
    pub bpffs_root: PathBuf,
    pub data_dir: PathBuf,
    pub prev_result: Option<Value>,
    pub runtime_config: RuntimeConfig,
    pub valid_attachments: Option<Vec<Attachment>>,
    pub dns: Option<Value>,
    /// The configuration as received (passed to a delegated IPAM plugin).
    pub raw: Vec<u8>,
}

impl NetConf {
    /// Decodes and validates stdin.
    pub fn parse(stdin: &[u8]) -> Result<NetConf> {
        if stdin.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::Decode("no network configuration on stdin".into()));
        }
        let raw: RawNetConf =
            serde_json::from_slice(stdin).map_err(|e| Error::Decode(e.to_string()))?;
        let version = raw
            .cni_version
            .as_deref()
            .ok_or_else(|| Error::InvalidConfig("cniVersion is missing".into()))?;
        let cni_version =
            version::SUPPORTED.iter().copied().find(|v| *v == version).ok_or_else(|| {
                Error::IncompatibleVersion(format!(
                    "cniVersion {version:?} is not supported (supported: {})",
                    version::SUPPORTED.join(", ")
                ))
            })?;
        let name = raw.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(Error::InvalidConfig("name is missing".into()));
        }
        if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
            return Err(Error::InvalidConfig(format!("name {name:?} is not a valid network name")));
        }
        let mut strings: Vec<&str> = Vec::new();
        if let Some(c) = &raw.pod_cidr {
            strings.push(c);
        }
        if let Some(cs) = &raw.pod_cidrs {
            for c in cs {
                if !strings.contains(&c.as_str()) {
                    strings.push(c);
                }
            }
        }
        let mut ranges = Vec::new();
        for s in strings {
            let c = Cidr::parse(s).map_err(Error::InvalidConfig)?;
            if let Some(o) = ranges.iter().find(|o: &&Cidr| o.overlaps(&c)) {
                return Err(Error::InvalidConfig(format!("pod ranges {o} and {c} overlap")));
            }
            ranges.push(c);
        }
        if ranges.len() > 1 {
            return Err(Error::InvalidConfig(format!(
                "one pod range per family is allowed, got {}",
                ranges.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            )));
        }
        let ipam = raw.ipam.clone().filter(|v| v.as_object().is_some_and(|o| !o.is_empty()));
        let ipam_type = match &ipam {
            Some(v) => {
                let t = v.get("type").and_then(Value::as_str).unwrap_or("");
                if t.is_empty() || t.contains('/') {
                    return Err(Error::InvalidConfig(format!(
                        "ipam.type {t:?} is not a plugin name"
                    )));
                }
                Some(t.to_owned())
            }
            None => None,
        };
        if ipam.is_none() && ranges.is_empty() {
            return Err(Error::InvalidConfig(
                "neither podCIDR/podCIDRs nor a delegated ipam section is set".into(),
            ));
        }
        if let Some(mtu) = raw.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(Error::InvalidConfig(format!("mtu {mtu} is not 68-65535")));
        }
        Ok(NetConf {
            cni_version,
            name,
            ranges,
            ipam,
            ipam_type,
            mtu: raw.mtu,
            bpffs_root: raw.bpffs_root.unwrap_or_else(|| DEFAULT_BPFFS_ROOT.into()),
            data_dir: raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            prev_result: raw.prev_result.filter(|v| !v.is_null()),
            runtime_config: raw.runtime_config.unwrap_or_default(),
            valid_attachments: raw.valid_attachments,
            dns: raw.dns,
            raw: stdin.to_vec(),
        })
    }

    /// True when the config's version is at least `major.minor.0`.
    pub fn version_at_least(&self, major: u32, minor: u32) -> bool {
        let mut parts = self.cni_version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (ma, mi) >= (major, minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> Result<NetConf> {
        let s = format!(r#"{{"cniVersion":"1.1.0","name":"k8s","type":"sluice-cni"{extra}}}"#);
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn parses_ranges_and_defaults() {
        let c = conf(r#","podCIDR":"10.244.0.0/24""#).unwrap();
        assert_eq!(c.ranges, vec![Cidr::parse("10.244.0.0/24").unwrap()]);
        assert_eq!(c.bpffs_root, PathBuf::from(DEFAULT_BPFFS_ROOT));
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        let c = conf(r#","podCIDRs":["10.244.0.0/24"],"podCIDR":"10.244.0.0/24""#).unwrap();
        assert_eq!(c.ranges.len(), 1);
    }

    #[test]
    fn bad_configs_have_the_right_codes() {
        for (extra, code) in [
            (r#","podCIDR":"10.244.0.1/24""#, 7),
            (r#","podCIDR":"10.244.0.0/33""#, 7),
            (r#","podCIDR":"nope""#, 7),
            (r#","podCIDRs":["10.244.0.0/16","10.244.1.0/24"]"#, 7),
            (r#","podCIDR":"10.244.0.0/31""#, 7),
            ("", 7),
            (r#","podCIDR":"10.244.0.0/24","mtu":20"#, 7),
            (r#","podCIDR":5"#, 6),
        ] {
            let e = conf(extra).unwrap_err();
            assert_eq!(e.code(), code, "{extra}: {e}");
        }
        assert_eq!(NetConf::parse(b"{").unwrap_err().code(), 6);
        assert_eq!(NetConf::parse(b"").unwrap_err().code(), 6);
        let e = NetConf::parse(br#"{"cniVersion":"0.3.1","name":"x","podCIDR":"10.0.0.0/24"}"#)
            .unwrap_err();
        assert_eq!(e.code(), 1);
    }

    #[test]
    fn port_mappings_in_both_spellings() {
        let c = conf(
            r#","podCIDR":"10.0.0.0/24","runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}"#,
        )
        .unwrap();
        assert_eq!(c.runtime_config.port_mappings[0].host_port, 8080);
        let c = conf(
            r#","podCIDR":"10.0.0.0/24","runtimeConfig":{"PortMappings":[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp"}]}"#,
        )
        .unwrap();
        assert_eq!(c.runtime_config.port_mappings[0].container_port, 80);
    }

    #[test]
    fn ifnames() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("a234567890123456").is_err());
        assert!(validate_ifname("a/b").is_err());
        assert!(validate_ifname("").is_err());
    }

    #[test]
    fn cidr_hosts() {
        let c = Cidr::parse("10.244.0.0/24").unwrap();
        assert_eq!(c.size(), 254);
        assert!(c.contains(Ipv4Addr::new(10, 244, 0, 9)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 1, 9)));
    }
}
