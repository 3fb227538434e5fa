//! Errors, rendered as the CNI spec's error object
//! (`{"cniVersion", "code", "msg", "details"}`) on stdout with a non-zero exit.

use serde::Serialize;

/// Plugin errors. Each maps to one of the spec's well-known codes (1-99) or to
/// one of ours (100 and up).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `CNI_COMMAND` is not set (or not UTF-8).
    #[error("CNI_COMMAND is not set")]
    MissingCommand,
    /// `CNI_COMMAND` names no verb of the spec.
    #[error("CNI_COMMAND={0:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION")]
    UnknownCommand(String),
    /// A verb of the spec that this plugin does not implement yet.
    #[error("{verb} is not implemented yet (this sluice-cni only answers VERSION)")]
    NotImplemented { verb: &'static str },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The spec's well-known error codes that this plugin uses.
pub mod code {
    /// Invalid necessary environment variables, like `CNI_COMMAND`, `CNI_CONTAINERID`, etc.
    pub const INVALID_ENVIRONMENT_VARIABLES: u32 = 4;
    /// sluice's own: the verb is part of the spec but not implemented yet.
    pub const NOT_IMPLEMENTED: u32 = 100;
}

impl Error {
    /// The spec's error code.
    pub fn code(&self) -> u32 {
        match self {
            Self::MissingCommand | Self::UnknownCommand(_) => code::INVALID_ENVIRONMENT_VARIABLES,
            Self::NotImplemented { .. } => code::NOT_IMPLEMENTED,
        }
    }

    /// The short, fixed message for this kind of error (`msg` in the error object).
    pub fn msg(&self) -> &'static str {
        match self {
            Self::MissingCommand | Self::UnknownCommand(_) => {
                "invalid necessary environment variables"
            }
            Self::NotImplemented { .. } => "not implemented",
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
    fn unimplemented_verbs_use_our_own_range() {
        assert!(Error::NotImplemented { verb: "ADD" }.code() >= 100);
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
