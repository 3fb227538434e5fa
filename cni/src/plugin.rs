//! One function per CNI verb, as in the reference plugins. Each takes the
//! request and returns the JSON value to print on stdout.

use serde_json::Value;

use crate::skel::Request;
use crate::version::{self, VersionReply};
use crate::{Error, Result};

/// VERSION: the versions this plugin supports, answered in the config's version.
pub fn cmd_version(request: &Request) -> Result<Value> {
    let reply = VersionReply {
        cni_version: version::reply_version(&request.stdin).to_owned(),
        supported_versions: version::SUPPORTED.iter().map(|&v| v.to_owned()).collect(),
    };
    Ok(serde_json::to_value(reply).expect("VersionReply serialises"))
}

/// ADD: veth, address, routes and endpoint entry for a pod. Not yet.
pub fn cmd_add(_request: &Request) -> Result<Value> {
    Err(Error::NotImplemented { verb: "ADD" })
}

/// DEL: undo ADD; idempotent. Not yet.
pub fn cmd_del(_request: &Request) -> Result<Value> {
    Err(Error::NotImplemented { verb: "DEL" })
}

/// CHECK: verify what ADD set up. Not yet.
pub fn cmd_check(_request: &Request) -> Result<Value> {
    Err(Error::NotImplemented { verb: "CHECK" })
}

/// STATUS: readiness to accept ADD. Not yet.
pub fn cmd_status(_request: &Request) -> Result<Value> {
    Err(Error::NotImplemented { verb: "STATUS" })
}

/// GC: release what no attachment owns any more. Not yet.
pub fn cmd_gc(_request: &Request) -> Result<Value> {
    Err(Error::NotImplemented { verb: "GC" })
}
