//! The model's inputs, parsed once when an object arrives: an [`Inputs`]
//! keeps each Service as its proxied ports ([`ServiceIn`]) and each
//! EndpointSlice as its usable endpoints ([`SliceIn`]), never the API
//! objects themselves. At 10k Services with 50k endpoints the API objects
//! were three quarters of the agent's heap (an `Endpoint` of k8s-openapi is
//! about 350 bytes before its strings, a parsed endpoint 64); what the model
//! reads of them is kept here, with the warnings parsing gave, so the
//! model's output and warnings are the same as from the objects.
//!
//! An `Inputs` is built for one node (an endpoint's `is_local` is decided
//! on arrival) and records which Services changed since it was last asked
//! ([`Inputs::take_dirty`]), for the incremental model: a slice that moves
//! to another Service marks both.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::cache::Dirty;
use super::{ModelWarning, ServicePortInfo, SliceEndpoints, service_ports, usable_slice};
use crate::manifest::{ObjectKey, Store};

/// EndpointSlice annotation: when the change it carries was triggered (for
/// `network_programming_duration_seconds`).
pub const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// A Service as the model reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceIn {
    /// The proxied ports; empty when the service is not proxied.
    pub ports: Vec<ServicePortInfo>,
    /// The pieces parsing skipped.
    pub warnings: Vec<ModelWarning>,
    /// An internal or external traffic policy `Local`.
    pub local_policy: bool,
    /// kube-proxy's `NeedsHealthCheck`: the `healthCheckNodePort` of a
    /// proxied LoadBalancer with `externalTrafficPolicy: Local`.
    pub health_check_port: Option<u16>,
}

impl ServiceIn {
    /// Parses `service` (whose key is `key`).
    #[must_use]
    pub fn parse(key: &ObjectKey, service: &Service) -> Self {
        let mut warnings = Vec::new();
        let mut ports = service_ports(key, service, &mut warnings);
        ports.shrink_to_fit();
        let spec = service.spec.as_ref();
        let local = |policy: Option<&String>| policy.is_some_and(|p| p == "Local");
        let local_policy = spec.is_some_and(|s| {
            local(s.internal_traffic_policy.as_ref()) || local(s.external_traffic_policy.as_ref())
        });
        let health_check_port = spec
            .filter(|s| {
                !ports.is_empty()
                    && s.type_.as_deref() == Some("LoadBalancer")
                    && local(s.external_traffic_policy.as_ref())
            })
            .and_then(|s| s.health_check_node_port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        Self { ports, warnings, local_policy, health_check_port }
    }
}

/// An EndpointSlice as the model reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceIn {
    /// Its Service and endpoints; `None` when the model ignores the slice
    /// (another proxy's, no service label, not IPv4).
    pub usable: Option<(ObjectKey, SliceEndpoints)>,
    /// The pieces parsing skipped.
    pub warnings: Vec<ModelWarning>,
    /// `endpoints.kubernetes.io/last-change-trigger-time`.
    pub trigger_time: Option<SystemTime>,
}

impl SliceIn {
    /// Parses `slice` (whose key is `key`) for the node `node_name`.
    #[must_use]
    pub fn parse(key: &ObjectKey, slice: &EndpointSlice, node_name: &str) -> Self {
        let mut warnings = Vec::new();
        let usable = usable_slice(key, slice, node_name, &mut warnings).map(|(s, mut e)| {
            e.endpoints.shrink_to_fit();
            e.ports.shrink_to_fit();
            (s, e)
        });
        Self { usable, warnings, trigger_time: trigger_time(slice) }
    }

    /// The Service this slice's endpoints belong to.
    pub fn service(&self) -> Option<&ObjectKey> {
        self.usable.as_ref().map(|(s, _)| s)
    }
}

fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let ts = slice
        .metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_TRIGGER_TIME)?
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()?;
    let secs = u64::try_from(ts.as_second()).ok()?;
    let nanos = u32::try_from(ts.subsec_nanosecond()).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// The parsed Services and EndpointSlices, and the Nodes, for one node.
#[derive(Debug, Default)]
pub struct Inputs {
    node_name: String,
    services: BTreeMap<ObjectKey, ServiceIn>,
    slices: BTreeMap<ObjectKey, SliceIn>,
    /// The usable slices of each Service, in key order.
    by_service: HashMap<ObjectKey, Vec<ObjectKey>>,
    /// The slices with warnings.
    warned: BTreeSet<ObjectKey>,
    /// Every Node (few, and read whole by routing and health).
    pub nodes: BTreeMap<String, Node>,
    /// What changed since [`Self::take_dirty`].
    dirty: Dirty,
}

impl Inputs {
    /// Empty inputs for the node `node_name`.
    #[must_use]
    pub fn new(node_name: &str) -> Self {
        Self { node_name: node_name.to_owned(), ..Self::default() }
    }

    /// The objects of `store`, parsed for `node_name` (everything dirty).
    #[must_use]
    pub fn from_store(store: &Store, node_name: &str) -> Self {
        let mut inputs = Self::new(node_name);
        for (key, service) in &store.services {
            inputs.put_service(key.clone(), ServiceIn::parse(key, service));
        }
        for (key, slice) in &store.endpoint_slices {
            inputs.put_slice(key.clone(), SliceIn::parse(key, slice, node_name));
        }
        inputs.nodes = store.nodes.clone();
        inputs.dirty = Dirty::All;
        inputs
    }

    /// The node the slices were parsed for.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The Services and EndpointSlices changed since the last call (all of
    /// them after a replace).
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    pub fn services(&self) -> impl Iterator<Item = (&ObjectKey, &ServiceIn)> {
        self.services.iter()
    }

    pub fn service(&self, key: &ObjectKey) -> Option<&ServiceIn> {
        self.services.get(key)
    }

    pub fn slices(&self) -> impl Iterator<Item = (&ObjectKey, &SliceIn)> {
        self.slices.iter()
    }

    pub fn slice(&self, key: &ObjectKey) -> Option<&SliceIn> {
        self.slices.get(key)
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    pub fn slice_count(&self) -> usize {
        self.slices.len()
    }

    /// The warnings of every slice.
    pub fn slice_warnings(&self) -> impl Iterator<Item = &ModelWarning> {
        self.warned.iter().filter_map(|k| self.slices.get(k)).flat_map(|s| s.warnings.iter())
    }

    /// The usable slices of the Service `key`, in slice-key order.
    pub fn slices_of(&self, key: &ObjectKey) -> Vec<&SliceEndpoints> {
        self.by_service.get(key).map_or_else(Vec::new, |keys| {
            keys.iter()
                .filter_map(|k| self.slices.get(k)?.usable.as_ref().map(|(_, e)| e))
                .collect()
        })
    }

    /// This node's zone label ("" when unknown).
    pub fn zone(&self) -> &str {
        super::zone_of(self.nodes.get(&self.node_name))
    }

    /// Adds or replaces a Service.
    pub fn put_service(&mut self, key: ObjectKey, service: ServiceIn) {
        self.dirty.service(key.clone());
        self.services.insert(key, service);
    }

    pub fn remove_service(&mut self, key: &ObjectKey) {
        if self.services.remove(key).is_some() {
            self.dirty.service(key.clone());
        }
    }

    /// Adds or replaces an EndpointSlice; the Services it left and joined
    /// are marked changed.
    pub fn put_slice(&mut self, key: ObjectKey, slice: SliceIn) {
        self.unindex(&key);
        if let Some(service) = slice.service() {
            self.dirty.service(service.clone());
            let list = self.by_service.entry(service.clone()).or_default();
            let at = list.partition_point(|k| *k < key);
            list.insert(at, key.clone());
        }
        if !slice.warnings.is_empty() {
            self.warned.insert(key.clone());
        }
        self.dirty.slice(key.clone());
        self.slices.insert(key, slice);
    }

    pub fn remove_slice(&mut self, key: &ObjectKey) {
        self.unindex(key);
        if self.slices.remove(key).is_some() {
            self.dirty.slice(key.clone());
        }
    }

    /// Replaces every Service (a re-list).
    pub fn replace_services(&mut self, services: BTreeMap<ObjectKey, ServiceIn>) {
        self.services = services;
        self.dirty = Dirty::All;
    }

    /// Replaces every EndpointSlice (a re-list).
    pub fn replace_slices(&mut self, slices: BTreeMap<ObjectKey, SliceIn>) {
        self.by_service.clear();
        self.warned.clear();
        self.slices.clear();
        for (key, slice) in slices {
            self.put_slice(key, slice);
        }
        self.dirty = Dirty::All;
    }

    /// Forgets the index entry of slice `key`, marking its Service changed.
    fn unindex(&mut self, key: &ObjectKey) {
        self.warned.remove(key);
        let Some(service) = self.slices.get(key).and_then(SliceIn::service) else {
            return;
        };
        self.dirty.service(service.clone());
        if let Some(list) = self.by_service.get_mut(service) {
            list.retain(|k| k != key);
            if list.is_empty() {
                self.by_service.remove(service);
            }
        }
    }
}
