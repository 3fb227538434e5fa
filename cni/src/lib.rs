//! sluice-cni: sluice's CNI plugin, as a library.
//!
//! Shaped like the reference plugins (containernetworking/plugins): [`skel`]
//! reads the CNI environment and stdin and dispatches on the verb; [`plugin`]
//! has one function per verb; [`error`] is the spec's error object with its
//! codes. This version answers VERSION; the other verbs report that they are
//! not implemented yet.

pub mod error;
pub mod plugin;
pub mod skel;
pub mod version;

pub use error::{Error, Result};
