//! Delegated IPAM: runs the plugin named by `ipam.type` from `CNI_PATH` the
//! way a runtime runs a plugin (same environment, verb in `CNI_COMMAND`, the
//! whole network configuration on stdin).

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::config::{Env, NetConf};
use crate::{Error, Result};

fn find_plugin(env: &Env, name: &str) -> Result<PathBuf> {
    let dirs = env.path_dirs();
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()).ok_or_else(|| Error::Delegate {
        plugin: name.to_owned(),
        code: crate::error::code::INVALID_ENVIRONMENT_VARIABLES,
        msg: format!(
            "not found in CNI_PATH ({})",
            dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":")
        ),
        details: String::new(),
    })
}

/// Runs the delegate with `verb`; its result (or `Value::Null` when it
/// printed nothing).
pub fn exec(env: &Env, conf: &NetConf, verb: &str, stdin: &[u8]) -> Result<Value> {
    let name = conf.ipam_type.as_deref().unwrap_or("");
    let bin = find_plugin(env, name)?;
    let mut cmd = Command::new(&bin);
    cmd.env("CNI_COMMAND", verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in [
        ("CNI_CONTAINERID", &env.container_id),
        ("CNI_NETNS", &env.netns),
        ("CNI_IFNAME", &env.ifname),
        ("CNI_ARGS", &env.args),
        ("CNI_PATH", &env.path),
    ] {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let fail = |msg: String| Error::Delegate {
        plugin: name.to_owned(),
        code: crate::error::code::IO_FAILURE,
        msg,
        details: String::new(),
    };
    let mut child = cmd.spawn().map_err(|e| fail(format!("running {}: {e}", bin.display())))?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(stdin).map_err(|e| fail(format!("writing its stdin: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(format!("waiting for it: {e}")))?;
    let value: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).map_err(|e| {
            fail(format!("its output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
        })?
    };
    if !out.status.success() {
        return Err(Error::Delegate {
            plugin: name.to_owned(),
            code: value
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(crate::error::code::IO_FAILURE),
            msg: value
                .get("msg")
                .and_then(Value::as_str)
                .map_or_else(|| format!("{verb} failed ({})", out.status), str::to_owned),
            details: value.get("details").and_then(Value::as_str).unwrap_or("").to_owned(),
        });
    }
    Ok(value)
}

/// The first IPv4 address of a delegate's ADD result.
pub fn first_ipv4(result: &Value, plugin: &str) -> Result<Ipv4Addr> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address").and_then(Value::as_str))
        .filter_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok())
        .next()
        .ok_or_else(|| Error::Delegate {
            plugin: plugin.to_owned(),
            code: crate::error::code::DECODING_FAILURE,
            msg: "its result has no IPv4 address".into(),
            details: result.to_string(),
        })
}
