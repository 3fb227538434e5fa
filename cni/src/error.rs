//! Errors, rendered as the CNI spec's error object
//! (`{"cniVersion", "code", "msg", "details"}`) on stdout with a non-zero exit.

use std::path::PathBuf;

use serde::Serialize;

/// Plugin errors. Each maps to one of the spec's well-known codes (1-99) or to
/// one of ours (100 and up); see [`code`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `CNI_COMMAND` is not set (or not UTF-8).
    #[error("CNI_COMMAND is not set")]
    MissingCommand,
    /// `CNI_COMMAND` names no verb of the spec.
    #[error("CNI_COMMAND={0:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION")]
    UnknownCommand(String),
    /// A required CNI environment variable is missing or invalid.
    #[error("{var}: {reason}")]
    InvalidEnv { var: &'static str, reason: String },
    /// The config's `cniVersion` is not one this plugin speaks, or the verb
    /// needs a newer one.
    #[error("{0}")]
    IncompatibleVersion(String),
    /// stdin is not a JSON network configuration.
    #[error("cannot decode the network configuration: {0}")]
    Decode(String),
    /// The network configuration is well-formed JSON but not valid.
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    /// `CNI_NETNS` names no network namespace.
    #[error("network namespace {path}: {reason}")]
    NoSuchNetns { path: PathBuf, reason: String },
    /// A file or directory could not be used.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The node's sluice agent has not pinned its state (yet).
    #[error(
        "the node's sluice agent is not ready: {} is missing (is `sluice agent` running with --bpffs-root {}?)",
        missing.display(), root.display()
    )]
    AgentNotReady { root: PathBuf, missing: PathBuf },
    /// A netlink request failed.
    #[error("netlink: {what}: {reason}")]
    Netlink { what: String, reason: String, errno: Option<i32> },
    /// The IPAM store cannot be read or written.
    #[error("IPAM store {path}: {reason}")]
    IpamStore { path: PathBuf, reason: String },
    /// No free address left.
    #[error("no free address in {ranges} ({used} in use)")]
    PoolExhausted { ranges: String, used: usize },
    /// A BPF map or program operation failed.
    #[error("data path: {0}")]
    Datapath(String),
    /// `CNI_IFNAME` already exists in the pod's namespace.
    #[error("interface {ifname} already exists in network namespace {netns}")]
    IfnameTaken { ifname: String, netns: String },
    /// CHECK found differences between `prevResult` and the live state.
    #[error("{} difference(s) from prevResult: {}", .0.len(), .0.join("; "))]
    CheckFailed(Vec<String>),
    /// The delegated IPAM plugin failed; its own code and message.
    #[error("delegated IPAM plugin {plugin}: {msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
    Delegate { plugin: String, code: u32, msg: String, details: String },
    /// STATUS: the plugin cannot serve ADD now.
    #[error("{0}")]
    NotAvailable(String),
    /// Something that should not happen (thread or runtime start-up).
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The spec's well-known error codes, and sluice's own (100 and up).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_CNI_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist (no cleanup needed).
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables, like `CNI_COMMAND`, `CNI_CONTAINERID`, etc.
    pub const INVALID_ENVIRONMENT_VARIABLES: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD requests.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// STATUS: not available, and existing containers' connectivity is limited.
    pub const PLUGIN_NOT_AVAILABLE_LIMITED: u32 = 51;
    /// sluice: a netlink request failed.
    pub const NETLINK: u32 = 100;
    /// sluice: the IPAM store is unreadable or unwritable.
    pub const IPAM_STORE: u32 = 101;
    /// sluice: the address pool is exhausted.
    pub const POOL_EXHAUSTED: u32 = 102;
    /// sluice: a BPF map or program operation failed.
    pub const DATAPATH: u32 = 103;
    /// sluice: `CNI_IFNAME` already exists in the pod's namespace.
    pub const IFNAME_TAKEN: u32 = 104;
    /// sluice: CHECK found differences.
    pub const CHECK_FAILED: u32 = 105;
    /// sluice: internal error.
    pub const INTERNAL: u32 = 106;
}

impl Error {
    /// The spec's error code.
    pub fn code(&self) -> u32 {
        match self {
            Self::MissingCommand | Self::UnknownCommand(_) | Self::InvalidEnv { .. } => {
                code::INVALID_ENVIRONMENT_VARIABLES
            }
            Self::IncompatibleVersion(_) => code::INCOMPATIBLE_CNI_VERSION,
            Self::Decode(_) => code::DECODING_FAILURE,
            Self::InvalidConfig(_) => code::INVALID_NETWORK_CONFIG,
            Self::NoSuchNetns { .. } => code::UNKNOWN_CONTAINER,
            Self::Io { .. } => code::IO_FAILURE,
            Self::AgentNotReady { .. } => code::TRY_AGAIN_LATER,
            Self::Netlink { .. } => code::NETLINK,
            Self::IpamStore { .. } => code::IPAM_STORE,
            Self::PoolExhausted { .. } => code::POOL_EXHAUSTED,
            Self::Datapath(_) => code::DATAPATH,
            Self::IfnameTaken { .. } => code::IFNAME_TAKEN,
            Self::CheckFailed(_) => code::CHECK_FAILED,
            Self::Delegate { code, .. } => *code,
            Self::NotAvailable(_) => code::PLUGIN_NOT_AVAILABLE,
            Self::Internal(_) => code::INTERNAL,
        }
    }

    /// The short, fixed message for this kind of error (`msg` in the error object).
    pub fn msg(&self) -> &'static str {
        match self {
            Self::MissingCommand | Self::UnknownCommand(_) | Self::InvalidEnv { .. } => {
                "invalid necessary environment variables"
            }
            Self::IncompatibleVersion(_) => "incompatible CNI version",
            Self::Decode(_) => "failed to decode content",
            Self::InvalidConfig(_) => "invalid network config",
            Self::NoSuchNetns { .. } => "container unknown or does not exist",
            Self::Io { .. } => "I/O failure",
            Self::AgentNotReady { .. } => "try again later: the node's sluice agent is not ready",
            Self::Netlink { .. } => "netlink request failed",
            Self::IpamStore { .. } => "IPAM store failure",
            Self::PoolExhausted { .. } => "address pool exhausted",
            Self::Datapath(_) => "data path hookup failed",
            Self::IfnameTaken { .. } => "interface name already in use",
            Self::CheckFailed(_) => "live state differs from prevResult",
            Self::Delegate { .. } => "delegated IPAM failed",
            Self::NotAvailable(_) => "plugin not available",
            Self::Internal(_) => "internal error",
        }
    }

    /// The error object for a reply in CNI version `cni_version`.
    pub fn to_reply(&self, cni_version: &str) -> ErrorReply {
        ErrorReply {
            cni_version: cni_version.to_owned(),
            code: self.code(),
            msg: self.msg().to_owned(),
            details: self.to_string(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
        let what = what.into();
        move |e| Error::Netlink { what, reason: netlink_reason(&e), errno: netlink_errno(&e) }
    }
}

/// A readable reason for a netlink error (the errno text when there is one).
pub(crate) fn netlink_reason(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    }
}

/// The errno of a netlink error, if it is one.
pub(crate) fn netlink_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// The spec's error object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorReply {
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_errors_are_code_4() {
        assert_eq!(Error::MissingCommand.code(), 4);
        assert_eq!(Error::UnknownCommand("FOO".into()).code(), 4);
    }

    #[test]
    fn agent_not_ready_is_try_again_later() {
        let e = Error::AgentNotReady { root: "/r".into(), missing: "/r/progs/x".into() };
        assert_eq!(e.code(), 11);
        assert!(e.to_string().starts_with("the node's sluice agent is not ready"), "{e}");
    }

    #[test]
    fn our_codes_are_100_and_up() {
        assert!(Error::PoolExhausted { ranges: String::new(), used: 0 }.code() >= 100);
        assert!(Error::Datapath(String::new()).code() >= 100);
    }

    #[test]
    fn reply_serialises_as_the_spec_error_object() {
        let reply = Error::UnknownCommand("FOO".into()).to_reply("1.1.0");
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"cniVersion":"1.1.0","code":4,"msg":"invalid necessary environment variables","details":"CNI_COMMAND=\"FOO\" is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"}"#
        );
    }
}
