//! CNI spec versions: which ones this plugin accepts, and which one a reply uses.

use serde::{Deserialize, Serialize};

/// The spec version this plugin implements.
pub const CURRENT: &str = "1.1.0";

/// Every spec version whose configs this plugin accepts, oldest first.
pub const SUPPORTED: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// The reply to VERSION.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionReply {
    pub cni_version: String,
    pub supported_versions: Vec<String>,
}

/// Just the `cniVersion` of a network configuration; everything else is ignored here.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionOnly {
    cni_version: Option<String>,
}

pub fn is_supported(version: &str) -> bool {
    SUPPORTED.contains(&version)
}

/// The version to answer in: the config's `cniVersion` when stdin holds a
/// config with a supported one, else [`CURRENT`]. Lenient by design: also
/// used to render errors about configs that may be broken.
pub fn reply_version(stdin: &[u8]) -> &'static str {
    serde_json::from_slice::<VersionOnly>(stdin)
        .ok()
        .and_then(|config| config.cni_version)
        .and_then(|version| SUPPORTED.iter().copied().find(|&v| v == version))
        .unwrap_or(CURRENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_a_supported_config_version() {
        assert_eq!(reply_version(br#"{"cniVersion":"0.4.0","name":"x"}"#), "0.4.0");
        assert_eq!(reply_version(br#"{"cniVersion":"1.0.0"}"#), "1.0.0");
    }

    #[test]
    fn falls_back_to_current() {
        assert_eq!(reply_version(b""), CURRENT);
        assert_eq!(reply_version(b"not json"), CURRENT);
        assert_eq!(reply_version(br#"{"name":"x"}"#), CURRENT);
        assert_eq!(reply_version(br#"{"cniVersion":"0.3.1"}"#), CURRENT);
        assert_eq!(reply_version(br#"{"cniVersion":7}"#), CURRENT);
    }

    #[test]
    fn current_is_supported() {
        assert!(is_supported(CURRENT));
        assert_eq!(SUPPORTED.last(), Some(&CURRENT));
    }
}
