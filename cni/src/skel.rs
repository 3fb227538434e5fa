//! The CNI "skeleton": reads the verb from `CNI_COMMAND`, keeps stdin, and
//! dispatches to [`crate::plugin`]. Produces what to print and the exit code,
//! so that it is testable without a process.

use serde_json::Value;

use crate::config::Env;
use crate::{Error, Result, plugin, version};

/// The spec's verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Verb {
    /// Parses `CNI_COMMAND` (case-sensitive, as in the spec).
    pub fn from_env_value(value: Option<&str>) -> Result<Self> {
        match value {
            None | Some("") => Err(Error::MissingCommand),
            Some("ADD") => Ok(Self::Add),
            Some("DEL") => Ok(Self::Del),
            Some("CHECK") => Ok(Self::Check),
            Some("STATUS") => Ok(Self::Status),
            Some("GC") => Ok(Self::Gc),
            Some("VERSION") => Ok(Self::Version),
            Some(other) => Err(Error::UnknownCommand(other.to_owned())),
        }
    }
}

/// One invocation: the verb, the CNI environment and the network
/// configuration from stdin.
#[derive(Debug, Clone)]
pub struct Request {
    pub verb: Verb,
    pub env: Env,
    /// Raw stdin (the network configuration; for VERSION often just `{"cniVersion": ..}`).
    pub stdin: Vec<u8>,
}

/// What the process prints on stdout (nothing for `Null`) and how it exits.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub stdout: Value,
    pub exit_code: u8,
}

/// Runs one invocation with only `CNI_COMMAND` set (`None`: unset).
pub fn run(command: Option<&str>, stdin: Vec<u8>) -> Outcome {
    run_env(&Env { command: command.map(str::to_owned), ..Env::default() }, stdin)
}

/// Runs one invocation: `env` is the CNI environment, `stdin` the config.
pub fn run_env(env: &Env, stdin: Vec<u8>) -> Outcome {
    let reply_version = version::reply_version(&stdin);
    let result = Verb::from_env_value(env.command.as_deref())
        .and_then(|verb| dispatch(&Request { verb, env: env.clone(), stdin }));
    match result {
        Ok(stdout) => Outcome { stdout, exit_code: 0 },
        Err(err) => Outcome {
            stdout: serde_json::to_value(err.to_reply(reply_version))
                .expect("ErrorReply serialises"),
            exit_code: 1,
        },
    }
}

fn dispatch(request: &Request) -> Result<Value> {
    match request.verb {
        Verb::Add => plugin::cmd_add(request),
        Verb::Del => plugin::cmd_del(request),
        Verb::Check => plugin::cmd_check(request),
        Verb::Status => plugin::cmd_status(request),
        Verb::Gc => plugin::cmd_gc(request),
        Verb::Version => plugin::cmd_version(request),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn version_without_stdin() {
        let out = run(Some("VERSION"), Vec::new());
        assert_eq!(out.exit_code, 0);
        assert_eq!(
            out.stdout,
            json!({"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
        );
    }

    #[test]
    fn version_echoes_the_config_version() {
        let out = run(Some("VERSION"), br#"{"cniVersion":"1.0.0"}"#.to_vec());
        assert_eq!(out.exit_code, 0);
        assert_eq!(out.stdout["cniVersion"], "1.0.0");
    }

    #[test]
    fn missing_or_unknown_command_is_code_4() {
        for command in [None, Some(""), Some("FOO"), Some("add")] {
            let out = run(command, Vec::new());
            assert_eq!(out.exit_code, 1, "{command:?}");
            assert_eq!(out.stdout["code"], 4, "{command:?}");
            assert_eq!(out.stdout["msg"], "invalid necessary environment variables");
        }
    }

    #[test]
    fn verbs_check_their_environment() {
        let conf =
            br#"{"cniVersion":"0.4.0","name":"n","type":"sluice-cni","podCIDR":"10.0.0.0/24"}"#;
        for command in ["ADD", "DEL", "CHECK"] {
            let out = run(Some(command), conf.to_vec());
            assert_eq!(out.exit_code, 1);
            assert_eq!(out.stdout["code"], 4, "{command}: {}", out.stdout);
            assert_eq!(out.stdout["cniVersion"], "0.4.0");
        }
        for command in ["STATUS", "GC"] {
            let out = run(Some(command), conf.to_vec());
            assert_eq!(out.stdout["code"], 1, "{command} needs 1.1.0: {}", out.stdout);
        }
    }
}
