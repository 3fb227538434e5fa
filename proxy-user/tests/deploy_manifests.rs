//! Every Kubernetes document under deploy/ parses into its typed k8s-openapi
//! object, and serialising that object gives the document back: a misspelt
//! or misplaced field (which serde would otherwise ignore) fails here. Then
//! the pieces are checked against each other and against the agent's flags.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde::{Deserialize as _, de::DeserializeOwned};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// (file, document index, document) of every YAML document under deploy/.
fn documents() -> Vec<(String, usize, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests under deploy/");
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{name} document {i}: not YAML: {e}"));
            if value.is_null() {
                continue; // an empty document (a trailing `---`)
            }
            out.push((name.clone(), i, value));
        }
    }
    out
}

/// Parses `doc` as `T` and checks that nothing was lost on the way.
fn typed<T: DeserializeOwned + serde::Serialize>(where_: &str, doc: &Value) -> T {
    let obj: T = serde_path_to_error::deserialize(doc.clone())
        .unwrap_or_else(|e| panic!("{where_}: {} at {}", e.inner(), e.path()));
    let back = serde_json::to_value(&obj).unwrap();
    if let Some(diff) = first_difference("", doc, &back) {
        panic!("{where_}: field not understood (misspelt or misplaced?): {diff}");
    }
    obj
}

/// The first path where `want` (the document) and `got` (the typed object
/// serialised) differ.
fn first_difference(path: &str, want: &Value, got: &Value) -> Option<String> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let p = format!("{path}.{k}");
                match g.get(k) {
                    None => return Some(format!("{p} is dropped")),
                    Some(gv) => {
                        if let Some(d) = first_difference(&p, wv, gv) {
                            return Some(d);
                        }
                    }
                }
            }
            g.keys().find(|k| !w.contains_key(*k)).map(|k| format!("{path}.{k} appears"))
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => w
            .iter()
            .zip(g)
            .enumerate()
            .find_map(|(i, (wv, gv))| first_difference(&format!("{path}[{i}]"), wv, gv)),
        _ if want == got => None,
        _ => Some(format!("{path}: {want} became {got}")),
    }
}

#[derive(Default)]
struct Objects {
    daemonsets: Vec<DaemonSet>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
}

fn objects() -> Objects {
    let mut o = Objects::default();
    for (file, i, doc) in documents() {
        let at = format!("deploy/{file} document {i}");
        let api = doc["apiVersion"].as_str().unwrap_or_else(|| panic!("{at}: no apiVersion"));
        let kind = doc["kind"].as_str().unwrap_or_else(|| panic!("{at}: no kind"));
        match (api, kind) {
            ("apps/v1", "DaemonSet") => o.daemonsets.push(typed(&at, &doc)),
            ("v1", "ServiceAccount") => o.service_accounts.push(typed(&at, &doc)),
            ("v1", "ConfigMap") => o.config_maps.push(typed(&at, &doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                o.cluster_roles.push(typed(&at, &doc));
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                o.bindings.push(typed(&at, &doc));
            }
            other => panic!("{at}: unexpected {other:?}; teach this test about it"),
        }
    }
    o
}

#[test]
fn the_difference_finder_catches_typos() {
    // The check the manifests rely on: a misspelt field is dropped by serde
    // and so shows up as a difference.
    let doc: Value = serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "x", "namespce": "kube-system"}
    });
    let obj: ServiceAccount = serde_json::from_value(doc.clone()).unwrap();
    let back = serde_json::to_value(&obj).unwrap();
    assert_eq!(first_difference("", &doc, &back).as_deref(), Some(".metadata.namespce is dropped"));
}

#[test]
fn every_manifest_parses_into_its_typed_object() {
    let o = objects();
    assert_eq!(o.daemonsets.len(), 1);
    assert_eq!(o.service_accounts.len(), 1);
    assert_eq!(o.cluster_roles.len(), 1);
    assert_eq!(o.bindings.len(), 1);
    assert_eq!(o.config_maps.len(), 1);
}

fn agent(ds: &DaemonSet) -> &Container {
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    spec.containers.iter().find(|c| c.name == "agent").expect("an `agent` container")
}

#[test]
fn the_daemonset_is_a_node_agent_with_minimal_privileges() {
    let o = objects();
    let ds = &o.daemonsets[0];
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(spec.host_network, Some(true));
    let sa = spec.service_account_name.as_deref().unwrap();
    assert!(o.service_accounts.iter().any(|s| s.metadata.name.as_deref() == Some(sa)));

    let agent = agent(ds);
    let sc = agent.security_context.as_ref().unwrap();
    assert_ne!(sc.privileged, Some(true), "the agent runs with capabilities, not privileged");
    let caps = sc.capabilities.as_ref().unwrap();
    let add = caps.add.clone().unwrap_or_default();
    for cap in ["BPF", "NET_ADMIN", "SYS_ADMIN"] {
        assert!(add.iter().any(|c| c == cap), "missing capability {cap}");
    }
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));

    // NODE_NAME from the downward API.
    let node_name = agent.env.iter().flatten().find(|e| e.name == "NODE_NAME").unwrap();
    let field = node_name.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
    assert_eq!(field.field_path, "spec.nodeName");

    // Probes on the health port.
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    for (probe, path) in
        [(agent.liveness_probe.as_ref(), "/livez"), (agent.readiness_probe.as_ref(), "/readyz")]
    {
        let get = probe.unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(10256));
    }

    // bpffs and cgroup host mounts, and the flags that use them.
    let volumes: BTreeMap<&str, &str> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.as_str(), v.host_path.as_ref()?.path.as_str())))
        .collect();
    let mounts: BTreeMap<&str, &str> = agent
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.mount_path.as_str(), volumes[m.name.as_str()]))
        .collect();
    assert_eq!(mounts.get("/sys/fs/bpf"), Some(&"/sys/fs/bpf"));
    assert_eq!(mounts.get("/run/sluice/cgroupv2"), Some(&"/sys/fs/cgroup"));
    let script = agent.command.as_ref().unwrap().join(" ");
    for flag in [
        "--bpffs-root /sys/fs/bpf/sluice",
        "--cgroup-root /run/sluice/cgroupv2",
        "--health-bind 0.0.0.0:10256",
        "--metrics-bind 0.0.0.0:10249",
    ] {
        assert!(script.contains(flag), "agent command lacks {flag}: {script}");
    }
    // The ConfigMap the agent reads exists and has the keys the script uses.
    let cm_name = agent.env_from.iter().flatten().find_map(|e| e.config_map_ref.as_ref()).unwrap();
    let cm = o
        .config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(cm_name.name.as_str()))
        .expect("the ConfigMap the agent names");
    for key in cm.data.as_ref().unwrap().keys().filter(|k| k.starts_with("SLUICE_")) {
        assert!(script.contains(&format!("${{{key}")), "{key} is not used by the agent");
    }
}

#[test]
fn rbac_is_read_only_on_services_endpointslices_and_nodes() {
    let o = objects();
    let role = &o.cluster_roles[0];
    let mut granted = Vec::new();
    for rule in role.rules.iter().flatten() {
        let verbs: Vec<&str> = rule.verbs.iter().map(String::as_str).collect();
        assert_eq!(verbs, ["get", "list", "watch"], "read-only");
        for group in rule.api_groups.iter().flatten() {
            for res in rule.resources.iter().flatten() {
                granted.push(format!("{group}/{res}"));
            }
        }
    }
    granted.sort();
    assert_eq!(granted, ["/nodes", "/services", "discovery.k8s.io/endpointslices"]);

    let binding = &o.bindings[0];
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
    let subject = &binding.subjects.as_ref().unwrap()[0];
    let sa = &o.service_accounts[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);
}

#[test]
fn the_image_holds_what_the_daemonset_runs() {
    let dockerfile = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("FROM debian:bookworm-slim"), "runtime image");
    assert!(dockerfile.contains("/usr/local/bin/"), "binaries installed in /usr/local/bin");
    for bin in ["sluice", "sluice-cni"] {
        assert!(dockerfile.contains(&format!("/out/{bin}")), "{bin} not in the image");
    }
    let o = objects();
    let spec = o.daemonsets[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let install = spec.init_containers.iter().flatten().find(|c| c.name == "install-cni").unwrap();
    assert!(install.command.as_ref().unwrap().join(" ").contains("/usr/local/bin/sluice-cni"));
}

#[test]
fn container_shell_scripts_parse() {
    let o = objects();
    let spec = o.daemonsets[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    let mut checked = 0;
    for c in containers {
        let Some(cmd) = &c.command else { continue };
        if cmd.first().map(String::as_str) != Some("/bin/sh") {
            continue;
        }
        let script = cmd.last().unwrap();
        let out = std::process::Command::new("sh").args(["-n", "-c", script]).output().unwrap();
        assert!(
            out.status.success(),
            "{}: sh -n: {}",
            c.name,
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert_eq!(checked, 3, "mount-bpffs, install-cni and agent use sh");
}
