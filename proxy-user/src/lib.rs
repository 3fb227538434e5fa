//! sluice: the node agent and the operator's CLI, as a library.
//!
//! Data flow: manifests ([`manifest`]) or the Kubernetes API ([`k8s`]) -> [`manifest::Store`]
//! -> the pure [`model`] (kube-proxy's semantics) -> the [`datapath`]
//! reconciler, which writes the pinned BPF maps in an order that never shows
//! a half-built service.
pub mod agent;
pub mod cli;
pub mod cniconf;
pub mod datapath;
pub mod ebpf;
pub mod inspect;
pub mod k8s;
pub mod manifest;
pub mod model;
pub mod observe;
pub mod pktgen;
pub mod routing;
pub mod testbed;
pub mod tunnel;
