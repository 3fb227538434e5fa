//! This node's CNI configuration, written by the agent from its Node object
//! (`spec.podCIDRs`) into `--cni-conf-dir`, atomically (a temporary file
//! renamed over the old one, so a runtime never reads half a file), and
//! rewritten when the pod CIDRs change. The plugin is `sluice-cni`, pointed
//! at this agent's pins. With `--tunnel vxlan` the plugin also gets `mtu`:
//! the overlay device's MTU, so pods send packets that fit once encapsulated.

use std::{
    io::{self, Write as _},
    path::Path,
};

use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

/// The file name: sorts early, as runtimes use the first conflist.
pub const FILE_NAME: &str = "10-sluice.conflist";

/// The IPv4 pod CIDRs of a Node (`spec.podCIDRs`, else `spec.podCIDR`).
#[must_use]
pub fn pod_cidrs(node: &Node) -> Vec<String> {
    let spec = node.spec.as_ref();
    let cidrs: Vec<String> = spec
        .and_then(|s| s.pod_cidrs.clone())
        .filter(|c| !c.is_empty())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default();
    cidrs.into_iter().filter(|c| c.parse::<ipnetwork::Ipv4Network>().is_ok()).collect()
}

/// The conflist for `pod_cidrs`, with the agent's pin directory and, when
/// given, the pods' MTU.
#[must_use]
pub fn conflist(pod_cidrs: &[String], bpffs_root: &Path, mtu: Option<u32>) -> Value {
    let mut v = json!({
        "cniVersion": "1.1.0",
        "cniVersions": ["0.4.0", "1.0.0", "1.1.0"],
        "name": "sluice",
        "plugins": [{
            "type": "sluice-cni",
            "podCIDRs": pod_cidrs,
            "bpffsRoot": bpffs_root.display().to_string(),
            "dataDir": "/var/lib/cni/sluice",
        }],
    });
    if let Some(mtu) = mtu {
        v["plugins"][0]["mtu"] = json!(mtu);
    }
    v
}

/// Writes `contents` as `dir/FILE_NAME` atomically; `Ok(false)` when the file
/// already holds exactly that.
pub fn write(dir: &Path, contents: &str) -> io::Result<bool> {
    let path = dir.join(FILE_NAME);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == contents) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NodeSpec;

    use super::*;

    #[test]
    fn pod_cidrs_prefer_the_list_and_skip_ipv6() {
        let node = |cidrs: Option<Vec<&str>>, cidr: Option<&str>| Node {
            spec: Some(NodeSpec {
                pod_cidrs: cidrs.map(|c| c.into_iter().map(String::from).collect()),
                pod_cidr: cidr.map(String::from),
                ..NodeSpec::default()
            }),
            ..Node::default()
        };
        assert_eq!(
            pod_cidrs(&node(Some(vec!["10.244.1.0/24", "fd00::/64"]), None)),
            ["10.244.1.0/24"]
        );
        assert_eq!(pod_cidrs(&node(None, Some("10.244.2.0/24"))), ["10.244.2.0/24"]);
        assert!(pod_cidrs(&node(None, None)).is_empty());
        assert!(pod_cidrs(&node(Some(vec!["nonsense"]), None)).is_empty());
    }

    #[test]
    fn written_atomically_and_only_when_changed() {
        let dir = std::env::temp_dir().join(format!("sluice-cniconf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let text = conflist(&["10.244.1.0/24".into()], Path::new("/b"), None).to_string();
        assert!(write(&dir, &text).unwrap());
        assert!(!write(&dir, &text).unwrap(), "unchanged: not rewritten");
        let read: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(FILE_NAME)).unwrap()).unwrap();
        assert_eq!(read["plugins"][0]["podCIDRs"][0], "10.244.1.0/24");
        assert_eq!(read["plugins"][0]["bpffsRoot"], "/b");
        assert!(read["plugins"][0].get("mtu").is_none(), "no mtu without a tunnel");
        let with_mtu = conflist(&["10.244.1.0/24".into()], Path::new("/b"), Some(1450));
        assert_eq!(with_mtu["plugins"][0]["mtu"], 1450);
        let names: Vec<_> =
            std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary left: {names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
