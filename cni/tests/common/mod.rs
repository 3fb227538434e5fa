//! Test harness for the privileged CNI tests: a node namespace, a test bpffs
//! with the agent's programs and maps pinned (loaded through the agent's own
//! loader, no agent process needed), a private dataDir, and a way to run the
//! `sluice-cni` binary inside the node namespace as a runtime would.

#![allow(dead_code, reason = "each test file uses a part of the harness")]

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use sluice::datapath::PinPaths;
use sluice::datapath::loader::Datapath;
use sluice::testbed::{BpffsMount, Netns, TestDir};

pub const POD_CIDR: &str = "10.244.0.0/24";

pub fn cni_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sluice-cni"))
}

/// What one plugin run printed and how it exited.
#[derive(Debug)]
pub struct Reply {
    pub ok: bool,
    pub stdout: Value,
    pub raw: String,
    pub stderr: String,
}

impl Reply {
    pub fn code(&self) -> Option<u64> {
        self.stdout.get("code").and_then(Value::as_u64)
    }

    #[track_caller]
    pub fn expect_ok(self, what: &str) -> Value {
        assert!(self.ok, "{what} failed: {} {}", self.raw, self.stderr);
        self.stdout
    }

    #[track_caller]
    pub fn expect_code(&self, code: u64, what: &str) {
        assert!(!self.ok, "{what} should fail with code {code}, succeeded: {}", self.raw);
        assert_eq!(self.code(), Some(code), "{what}: {}", self.raw);
        for k in ["cniVersion", "msg"] {
            assert!(self.stdout.get(k).is_some(), "{what}: error object lacks {k}: {}", self.raw);
        }
    }
}

/// A node namespace with a bpffs holding the agent's pins and a dataDir.
pub struct Fixture {
    // Drop order: node namespace first, then the bpffs, then the directory.
    pub node: Netns,
    pub bpffs: BpffsMount,
    pub dir: TestDir,
    pub root: PathBuf,
    pub data_dir: PathBuf,
}

impl Fixture {
    /// `pinned`: load and pin the agent's data path (as a running agent
    /// would have); otherwise the bpffs root stays empty.
    pub fn new(label: &str, pinned: bool) -> Fixture {
        let dir = TestDir::new(label).unwrap();
        let bpffs = BpffsMount::new_in(&dir).unwrap();
        let root = bpffs.path().join("sluice");
        std::fs::create_dir_all(&root).unwrap();
        if pinned {
            let dp = Datapath::load(&PinPaths::new(&root), &sluice::datapath::MapSizes::small())
                .unwrap();
            drop(dp);
        }
        let node = Netns::new(&format!("{label}-node")).unwrap();
        node.ip(&["addr", "add", "198.18.0.1/32", "dev", "lo"]).unwrap();
        let data_dir = dir.join("data");
        Fixture { node, bpffs, dir, root, data_dir }
    }

    /// The plugin config in `version` (extra fields merged in).
    pub fn conf(&self, version: &str, extra: &Value) -> Value {
        let mut c = json!({
            "cniVersion": version,
            "name": "sluice-test",
            "type": "sluice-cni",
            "podCIDR": POD_CIDR,
            "bpffsRoot": self.root,
            "dataDir": self.data_dir,
        });
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                if v.is_null() {
                    c.remove(k);
                } else {
                    c.insert(k.clone(), v.clone());
                }
            }
        }
        c
    }

    /// Runs the plugin in the node namespace with `env` (`CNI_*`) and `stdin`.
    pub fn run(&self, env: &[(&str, &str)], stdin: &[u8]) -> Reply {
        run_in(&self.node, env, stdin)
    }

    pub fn add(&self, conf: &Value, id: &str, netns: &Netns, ifname: &str) -> Reply {
        let path = netns.path();
        self.run(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", path.to_str().unwrap()),
                ("CNI_IFNAME", ifname),
                ("CNI_PATH", "/usr/lib/cni"),
            ],
            conf.to_string().as_bytes(),
        )
    }

    pub fn verb(&self, verb: &str, conf: &Value, id: &str, netns: &str, ifname: &str) -> Reply {
        self.run(
            &[
                ("CNI_COMMAND", verb),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", ifname),
                ("CNI_PATH", "/usr/lib/cni"),
            ],
            conf.to_string().as_bytes(),
        )
    }

    /// Host-side `sl*` links in the node namespace.
    pub fn host_links(&self) -> Vec<String> {
        let out = self.node.ip(&["-j", "link", "show"]).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| n.starts_with("sl"))
            .map(str::to_owned)
            .collect()
    }

    /// Routes of the node namespace into the pod range.
    pub fn pod_routes(&self) -> Vec<String> {
        let out = self.node.ip(&["route", "show"]).unwrap();
        out.lines().filter(|l| l.starts_with("10.244.")).map(str::to_owned).collect()
    }

    /// Addresses of the SL_ENDPOINTS map.
    pub fn endpoint_entries(&self) -> Vec<Ipv4Addr> {
        sluice_cni::datapath::Pins::new(&self.root).endpoint_addrs().unwrap()
    }

    /// Host links that carry the pod program's tc filter (`tc filter show`:
    /// a `bpf` filter on the clsact ingress at the agent's priority and
    /// handle, direct-action).
    pub fn pod_filters(&self) -> Vec<String> {
        use proxy_common::pins::{POD_FILTER_HANDLE, POD_FILTER_PRIORITY};
        let mut out = Vec::new();
        for link in self.host_links() {
            let mut cmd = std::process::Command::new("tc");
            cmd.args(["-n", self.node.name(), "-j", "filter", "show", "dev", &link, "ingress"]);
            let json = sluice::testbed::run_checked(&mut cmd, Duration::from_secs(10)).unwrap();
            let v: Value = serde_json::from_str(&json).unwrap();
            let ours = v.as_array().unwrap().iter().any(|f| {
                f["kind"] == "bpf"
                    && f["pref"] == u64::from(POD_FILTER_PRIORITY)
                    && f["options"]["handle"] == format!("{POD_FILTER_HANDLE:#x}")
                    && f["options"]["direct-action"] == true
            });
            if ours {
                out.push(link);
            }
        }
        out
    }

    /// Link pins under `<root>/links` (none since the pod program is a tc
    /// filter; older versions pinned tcx links there).
    pub fn link_pins(&self) -> Vec<String> {
        std::fs::read_dir(self.root.join("links"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    /// Attachments recorded in the IPAM store.
    pub fn store_entries(&self) -> usize {
        let Some(st) =
            sluice_cni::store::Store::open_existing(&self.data_dir, "sluice-test").unwrap()
        else {
            return 0;
        };
        st.state.attachments.len()
    }

    /// Asserts nothing of any pod is left: links, routes, endpoint entries,
    /// link pins, IPAM records.
    #[track_caller]
    pub fn assert_clean(&self, what: &str) {
        assert_eq!(self.host_links(), Vec::<String>::new(), "{what}: leaked host links");
        assert_eq!(self.pod_routes(), Vec::<String>::new(), "{what}: leaked routes");
        assert_eq!(
            self.endpoint_entries(),
            Vec::<Ipv4Addr>::new(),
            "{what}: leaked SL_ENDPOINTS entries"
        );
        assert_eq!(self.link_pins(), Vec::<String>::new(), "{what}: leaked link pins");
        assert_eq!(self.store_entries(), 0, "{what}: leaked IPAM records");
    }
}

/// Runs `sluice-cni` inside `ns` with a clean environment.
pub fn run_in(ns: &Netns, env: &[(&str, &str)], stdin: &[u8]) -> Reply {
    let mut cmd = ns.command(cni_bin()).unwrap();
    cmd.env_clear().stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    // Bounded: the plugin does a handful of netlink calls.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("sluice-cni {env:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let out = child.wait_with_output().unwrap();
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let stdout = if raw.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&raw).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {raw:?}"))
    };
    Reply {
        ok: out.status.success(),
        stdout,
        raw,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The pod address of an ADD result.
pub fn result_ip(result: &Value) -> Ipv4Addr {
    let a = result["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().parse().unwrap()
}
