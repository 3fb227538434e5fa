//! sluice-cni: sluice's CNI plugin, as a library.
//!
//! Shaped like the reference plugins (containernetworking/plugins): [`skel`]
//! reads the CNI environment and stdin and dispatches on the verb; [`plugin`]
//! has one function per verb (and documents the wiring); [`error`] is the
//! spec's error object with its codes. [`config`] parses the network
//! configuration, [`store`] is the file-backed attachment store and built-in
//! IPAM, [`netlink`] creates links, addresses and routes (and switches
//! namespaces; [`rtnl`]: blocking requests, for DEL), [`datapath`] hooks pods into the agent's pinned BPF state,
//! [`delegate`] runs a delegated IPAM plugin, [`result`] renders results.

pub mod config;
pub mod datapath;
pub mod delegate;
pub mod error;
pub mod names;
pub mod netlink;
pub mod plugin;
pub mod result;
pub mod rtnl;
pub mod skel;
pub mod store;
pub mod timing;
pub mod version;

pub use error::{Error, Result};
