//! Pods wired by the real CNI plugin, `sluice-cni`, run the way a runtime
//! runs it (see [`super::run_cni`]): each pod gets its `SL_ENDPOINTS` entry,
//! its veth and its routes from the plugin, never from the test.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use super::{Agent, Netns, run_cni};
use crate::cniconf::FILE_NAME;

/// The plugin configuration a runtime would pass for the conflist that an
/// agent writes to `conf_dir` (waiting up to `timeout` for it): the list's
/// first plugin with the list's `cniVersion` and `name`, and `dataDir`
/// replaced by `data_dir` (the conflist's is the machine's).
pub fn conf_from_conflist(
    conf_dir: &Path,
    data_dir: &Path,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let path = conf_dir.join(FILE_NAME);
    let deadline = Instant::now() + timeout;
    let text = loop {
        match std::fs::read_to_string(&path) {
            Ok(t) => break t,
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("no {} within {timeout:?}", path.display()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let list: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut conf = list["plugins"][0].clone();
    if !conf.is_object() {
        bail!("{} has no plugin: {list}", path.display());
    }
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    conf["dataDir"] = json!(data_dir);
    Ok(conf)
}

/// Polls `sluice-cni` (`bin`) STATUS inside `node` with `conf` every
/// 100 ms until the plugin says it is ready (the agent's pins are in place),
/// at most `timeout`; fails at once when `agent` exits.
pub fn cni_wait_ready(
    bin: &Path,
    node: &Netns,
    conf: &Value,
    agent: &mut Agent,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let (ok, v) = run_cni(bin, node, &[("CNI_COMMAND", "STATUS")], conf);
        if ok {
            return Ok(());
        }
        if let Some(status) = agent.try_wait()? {
            bail!("agent exited ({status}): {}", agent.log());
        }
        if Instant::now() >= deadline {
            bail!("agent never became ready for the CNI within {timeout:?}: {v}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `sluice-cni` (`bin`) ADD inside `node` for the pod namespace `pod`
/// (container `id`, interface `eth0`) with `conf`; the pod's address.
pub fn cni_add(
    bin: &Path,
    node: &Netns,
    conf: &Value,
    id: &str,
    pod: &Netns,
) -> anyhow::Result<Ipv4Addr> {
    let path = pod.path();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", path.to_str().context("netns path")?),
        ("CNI_IFNAME", "eth0"),
    ];
    let (ok, v) = run_cni(bin, node, &env, conf);
    if !ok {
        bail!("ADD: {v}");
    }
    v["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow!("ADD result without an IPv4 address: {v}"))
}

/// A pod that `sluice-cni` wired: its own network namespace (container id =
/// the namespace's name), removed on drop with its veth pair.
#[derive(Debug)]
pub struct CniPod {
    name: String,
    ip: Ipv4Addr,
    netns: Netns,
}

impl AsRef<Netns> for CniPod {
    fn as_ref(&self) -> &Netns {
        &self.netns
    }
}

impl CniPod {
    /// A new pod namespace labelled `name`, added by `bin` inside `node`
    /// with `conf` (e.g. from [`conf_from_conflist`]).
    pub fn add(bin: &Path, node: &Netns, conf: &Value, name: &str) -> anyhow::Result<CniPod> {
        let netns = Netns::new(name)?;
        let ip = cni_add(bin, node, conf, netns.name(), &netns)
            .with_context(|| format!("pod {name} in {}", node.name()))?;
        Ok(CniPod { name: name.to_owned(), ip, netns })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address the plugin gave the pod.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }
}
