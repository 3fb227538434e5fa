//! Runs the built `sluice-cni` binary as a container runtime would.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

fn invoke(command: Option<&str>, stdin: &[u8]) -> (Output, Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice-cni"));
    cmd.env_clear().stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(command) = command {
        cmd.env("CNI_COMMAND", command);
    }
    let mut child = cmd.spawn().expect("start sluice-cni");
    child.stdin.take().unwrap().write_all(stdin).expect("write stdin");
    let output = child.wait_with_output().expect("wait for sluice-cni");
    let stdout: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e}): {:?}", String::from_utf8_lossy(&output.stdout))
    });
    (output, stdout)
}

#[test]
fn version_lists_supported_versions() {
    let (output, stdout) = invoke(Some("VERSION"), b"");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        r#"{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"#
    );
    assert_eq!(stdout["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
}

#[test]
fn version_answers_in_the_config_version() {
    let (output, stdout) = invoke(Some("VERSION"), br#"{"cniVersion":"0.4.0"}"#);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout["cniVersion"], "0.4.0");
}

#[test]
fn unknown_command_is_an_error_object_with_code_4() {
    let (output, stdout) = invoke(Some("FROB"), b"");
    assert!(!output.status.success());
    assert_eq!(stdout["cniVersion"], "1.1.0");
    assert_eq!(stdout["code"], 4);
    assert_eq!(stdout["msg"], "invalid necessary environment variables");
    assert!(stdout["details"].as_str().unwrap().contains("FROB"), "{stdout}");
}

#[test]
fn missing_command_is_code_4() {
    let (output, stdout) = invoke(None, b"");
    assert!(!output.status.success());
    assert_eq!(stdout["code"], 4);
}

#[test]
fn add_without_a_container_id_is_code_4() {
    let config =
        br#"{"cniVersion":"1.0.0","name":"k8s","type":"sluice-cni","podCIDR":"10.244.0.0/24"}"#;
    let (output, stdout) = invoke(Some("ADD"), config);
    assert!(!output.status.success());
    assert_eq!(stdout["cniVersion"], "1.0.0");
    assert_eq!(stdout["code"], 4);
    assert!(stdout["details"].as_str().unwrap().contains("CNI_CONTAINERID"), "{stdout}");
}

#[test]
fn malformed_config_is_code_6_and_unknown_version_code_1() {
    let (output, stdout) = invoke(Some("ADD"), b"{not json");
    assert!(!output.status.success());
    assert_eq!(stdout["code"], 6);
    let (_, stdout) = invoke(Some("DEL"), br#"{"cniVersion":"9.9.9","name":"k8s"}"#);
    assert_eq!(stdout["code"], 1);
}
