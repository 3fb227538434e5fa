//! sluice: the node agent and the operator's CLI, as a library.
//!
//! Data flow: manifests (or, later, the Kubernetes API) -> [`manifest::Store`]
//! -> the pure [`model`] (kube-proxy's semantics) -> the [`datapath`]
//! reconciler, which writes the pinned BPF maps in an order that never shows
//! a half-built service.
pub mod agent;
pub mod cli;
pub mod datapath;
pub mod ebpf;
pub mod inspect;
pub mod manifest;
pub mod model;
pub mod observe;
pub mod pktgen;
pub mod testbed;
