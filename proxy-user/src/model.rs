//! TEMPORARY stub of the model API (replaced by the real model).
use std::{collections::BTreeMap, net::Ipv4Addr};

use crate::manifest::{ObjectKey, Store};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    #[must_use]
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
    #[must_use]
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendState {
    Active,
    Terminating,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendSpec {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub state: BackendState,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub service: ObjectKey,
    pub port_name: String,
    pub backends: Vec<BackendSpec>,
}
pub type Desired = BTreeMap<FrontendKey, Frontend>;
#[derive(Clone, Debug)]
pub struct ModelWarning {
    pub object: String,
    pub message: String,
}
#[must_use]
pub fn desired_state(_store: &Store, _node_name: &str) -> (Desired, Vec<ModelWarning>) {
    (Desired::new(), Vec::new())
}
