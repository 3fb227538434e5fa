//! `deploy/cni`: the example conflist is a valid sluice-cni config, and the
//! install script replaces the binary atomically. No root needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cni")
}

#[test]
fn conflist_plugin_config_parses() {
    let text = std::fs::read_to_string(deploy().join("10-sluice.conflist")).unwrap();
    let list: Value = serde_json::from_str(&text).unwrap();
    let version = list["cniVersion"].as_str().unwrap();
    assert!(sluice_cni::version::is_supported(version));
    for v in list["cniVersions"].as_array().unwrap() {
        assert!(sluice_cni::version::is_supported(v.as_str().unwrap()), "{v}");
    }
    // What a runtime hands the plugin: the plugin's object plus name and version.
    let mut plugin = list["plugins"][0].clone();
    plugin["cniVersion"] = list["cniVersion"].clone();
    plugin["name"] = list["name"].clone();
    let conf = sluice_cni::config::NetConf::parse(plugin.to_string().as_bytes()).unwrap();
    assert_eq!(plugin["type"], "sluice-cni");
    assert_eq!(conf.ranges.len(), 1);
}

#[test]
fn install_script_replaces_the_binary_atomically() {
    let dir = std::env::temp_dir().join(format!("sluice-cni-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bin_dir = dir.join("bin");
    let script = deploy().join("install-cni.sh");
    let src = env!("CARGO_BIN_EXE_sluice-cni");
    for _ in 0..2 {
        let out = Command::new("sh").arg(&script).arg(src).arg(&bin_dir).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let installed = bin_dir.join("sluice-cni");
    assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(src).unwrap());
    let names: Vec<_> =
        std::fs::read_dir(&bin_dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("sluice-cni")], "no temporary files left");
    let out = Command::new(&installed).env("CNI_COMMAND", "VERSION").output().unwrap();
    assert!(out.status.success());

    // A broken source leaves the installed binary alone.
    let bad = dir.join("bad");
    std::fs::write(&bad, "#!/bin/sh\nexit 3\n").unwrap();
    Command::new("chmod").arg("+x").arg(&bad).status().unwrap();
    let out = Command::new("sh").arg(&script).arg(&bad).arg(&bin_dir).output().unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(src).unwrap());
    assert_eq!(std::fs::read_dir(&bin_dir).unwrap().count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
