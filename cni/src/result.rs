//! The ADD result, rendered in the config's version, and chaining with a
//! `prevResult`.
//!
//! 0.4.0 and 1.x differ, for what this plugin returns, only in `ips[].version`
//! ("4"/"6"), which 1.0.0 dropped. A `prevResult` of either shape is converted.

use std::net::Ipv4Addr;

use serde_json::{Map, Value, json};

/// What sluice set up for one attachment.
#[derive(Debug, Clone)]
pub struct Wired {
    pub host_if: String,
    pub host_mac: String,
    pub pod_if: String,
    pub pod_mac: String,
    pub netns: String,
    pub mtu: u32,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

fn is_v04(version: &str) -> bool {
    version.starts_with("0.")
}

/// Converts one `ips[]` entry to `version`'s shape.
fn convert_ip(mut ip: Value, version: &str) -> Value {
    if let Some(o) = ip.as_object_mut() {
        if is_v04(version) {
            if !o.contains_key("version") {
                let v6 = o.get("address").and_then(Value::as_str).is_some_and(|a| a.contains(':'));
                o.insert("version".into(), json!(if v6 { "6" } else { "4" }));
            }
        } else {
            o.remove("version");
        }
    }
    ip
}

/// The result of ADD in `version`: `prev` (a chained plugin's `prevResult`)
/// with sluice's interfaces, address and route appended.
pub fn render(version: &str, wired: &Wired, prev: Option<&Value>, dns: Option<&Value>) -> Value {
    let mut out = Map::new();
    out.insert("cniVersion".into(), json!(version));
    let mut interfaces: Vec<Value> = prev
        .and_then(|p| p.get("interfaces"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut ips: Vec<Value> = prev
        .and_then(|p| p.get("ips"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|ip| convert_ip(ip, version))
        .collect();
    let mut routes: Vec<Value> =
        prev.and_then(|p| p.get("routes")).and_then(Value::as_array).cloned().unwrap_or_default();
    let base = interfaces.len();
    interfaces.push(json!({"name": wired.host_if, "mac": wired.host_mac}));
    let mut pod = json!({"name": wired.pod_if, "mac": wired.pod_mac, "sandbox": wired.netns});
    if !is_v04(version) && version != "1.0.0" {
        pod["mtu"] = json!(wired.mtu);
    }
    interfaces.push(pod);
    ips.push(convert_ip(
        json!({"address": format!("{}/32", wired.ip), "gateway": wired.gateway.to_string(), "interface": base + 1}),
        version,
    ));
    routes.push(json!({"dst": "0.0.0.0/0", "gw": wired.gateway.to_string()}));
    out.insert("interfaces".into(), Value::Array(interfaces));
    out.insert("ips".into(), Value::Array(ips));
    out.insert("routes".into(), Value::Array(routes));
    let dns = prev.and_then(|p| p.get("dns")).or(dns).cloned().unwrap_or_else(|| json!({}));
    out.insert("dns".into(), dns);
    Value::Object(out)
}

/// What CHECK expects, read from a `prevResult`: the pod address and MACs of
/// the interfaces named `pod_if` (with sandbox) and `host_if`.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub ip: Option<Ipv4Addr>,
    pub pod_mac: Option<String>,
    pub host_mac: Option<String>,
    pub gateway: Option<Ipv4Addr>,
}

pub fn expected(prev: &Value, pod_if: &str, netns: &str, host_if: &str) -> Expected {
    let mut e = Expected::default();
    let ifaces = prev.get("interfaces").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut pod_index = None;
    for (i, iface) in ifaces.iter().enumerate() {
        let name = iface.get("name").and_then(Value::as_str).unwrap_or("");
        let sandbox = iface.get("sandbox").and_then(Value::as_str).unwrap_or("");
        let mac = iface.get("mac").and_then(Value::as_str).map(str::to_owned);
        if name == pod_if && (sandbox == netns || sandbox.is_empty() && pod_index.is_none()) {
            pod_index = Some(i);
            e.pod_mac = mac;
        } else if name == host_if && sandbox.is_empty() {
            e.host_mac = mac;
        }
    }
    for ip in prev.get("ips").and_then(Value::as_array).into_iter().flatten() {
        let idx = ip.get("interface").and_then(Value::as_u64).map(|i| i as usize);
        if pod_index.is_some() && idx != pod_index {
            continue;
        }
        if let Some(a) = ip.get("address").and_then(Value::as_str)
            && let Some(Ok(addr)) = a.split('/').next().map(str::parse::<Ipv4Addr>)
        {
            e.ip = Some(addr);
            e.gateway = ip.get("gateway").and_then(Value::as_str).and_then(|g| g.parse().ok());
            break;
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wired() -> Wired {
        Wired {
            host_if: "sl0123456789ab".into(),
            host_mac: "aa:aa:aa:aa:aa:aa".into(),
            pod_if: "eth0".into(),
            pod_mac: "bb:bb:bb:bb:bb:bb".into(),
            netns: "/var/run/netns/x".into(),
            mtu: 1500,
            ip: Ipv4Addr::new(10, 244, 0, 5),
            gateway: Ipv4Addr::new(169, 254, 1, 1),
        }
    }

    #[test]
    fn versions_differ_in_ip_version_field() {
        let r = render("0.4.0", &wired(), None, None);
        assert_eq!(r["ips"][0]["version"], "4");
        assert_eq!(r["ips"][0]["interface"], 1);
        let r = render("1.1.0", &wired(), None, None);
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(r["interfaces"][1]["mtu"], 1500);
        assert_eq!(r["cniVersion"], "1.1.0");
    }

    #[test]
    fn chains_after_a_prev_result() {
        let prev = json!({"cniVersion":"0.4.0","interfaces":[{"name":"lo"}],
            "ips":[{"version":"4","address":"1.2.3.4/8","interface":0}],"dns":{"nameservers":["1.1.1.1"]}});
        let r = render("1.0.0", &wired(), Some(&prev), None);
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(r["ips"][1]["interface"], 2);
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(r["dns"]["nameservers"][0], "1.1.1.1");
        let e = expected(&r, "eth0", "/var/run/netns/x", "sl0123456789ab");
        assert_eq!(e.ip, Some(Ipv4Addr::new(10, 244, 0, 5)));
        assert_eq!(e.pod_mac.as_deref(), Some("bb:bb:bb:bb:bb:bb"));
        assert_eq!(e.host_mac.as_deref(), Some("aa:aa:aa:aa:aa:aa"));
    }
}
