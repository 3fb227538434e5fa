//! The model kept up to date by change: a [`ModelCache`] holds the desired
//! state of the last update and recomputes only the services whose Service
//! or EndpointSlices changed since, so one change at 10k services costs one
//! service's work, not 10k. The result is the same as [`super::desired_state`] on
//! the whole store (checked by the tests below on random change sequences).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{
    Desired, Frontend, FrontendKey, Inputs, ModelWarning, Scope, ServiceIn, conflict_warning,
    service_frontends,
};
use crate::manifest::ObjectKey;

/// What changed in a store since the last update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dirty {
    /// Anything may have changed (a re-list, a re-read manifest directory).
    All,
    /// Only these Services and EndpointSlices were added, changed or
    /// removed.
    Keys { services: BTreeSet<ObjectKey>, slices: BTreeSet<ObjectKey> },
}

impl Default for Dirty {
    fn default() -> Self {
        Self::Keys { services: BTreeSet::new(), slices: BTreeSet::new() }
    }
}

impl Dirty {
    pub fn service(&mut self, key: ObjectKey) {
        if let Self::Keys { services, .. } = self {
            services.insert(key);
        }
    }

    pub fn slice(&mut self, key: ObjectKey) {
        if let Self::Keys { slices, .. } = self {
            slices.insert(key);
        }
    }
}

/// Which frontends an update may have changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changes {
    /// Any frontend: compare everything.
    All,
    /// Only these (added, changed or removed).
    Keys(BTreeSet<FrontendKey>),
}

/// The model's output, kept up to date by [`ModelCache::update`].
#[derive(Debug, Default)]
pub struct ModelCache {
    /// Node name and zone the cached state was computed for.
    node: Option<(String, String)>,
    /// Warnings of services that have some (beyond parsing's).
    service_warnings: HashMap<ObjectKey, Vec<ModelWarning>>,
    /// The frontend keys each service claims.
    claims: HashMap<ObjectKey, Vec<FrontendKey>>,
    /// The winning claim of every frontend key (the service first in key
    /// order, as in [`super::desired_state`]).
    desired: Desired,
    /// Claims that lost to another service, by key and service.
    losers: BTreeMap<FrontendKey, BTreeMap<ObjectKey, Frontend>>,
    /// Winning frontends per service and the backends of all of them.
    frontends_of: HashMap<ObjectKey, usize>,
    backends: usize,
    /// Services with a Local traffic policy (health checks, no-local counts).
    local_services: BTreeSet<ObjectKey>,
}

impl ModelCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything this node must program (as [`super::desired_state`] gives it).
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Services with at least one frontend.
    pub fn services(&self) -> usize {
        self.frontends_of.len()
    }

    /// Backends over all frontends.
    pub fn backends(&self) -> usize {
        self.backends
    }

    /// The Services with a Local traffic policy.
    pub fn local_services(&self) -> impl Iterator<Item = &ObjectKey> {
        self.local_services.iter()
    }

    /// Every piece of `inputs` the model skipped (in no particular order).
    pub fn warnings(&self, inputs: &Inputs) -> Vec<ModelWarning> {
        let mut out: Vec<ModelWarning> = inputs
            .slice_warnings()
            .chain(self.service_warnings.values().flatten())
            .cloned()
            .collect();
        // A two-scope frontend's internal twin loses with it: one warning.
        for (key, losers) in self.losers.iter().filter(|(k, _)| k.scope == Scope::All) {
            let winner = &self.desired[key].service;
            out.extend(losers.values().map(|f| conflict_warning(key, f, winner)));
        }
        out
    }

    /// Brings the cache up to `inputs` after the changes in `dirty` and
    /// says which frontends may differ from before.
    pub fn update(&mut self, inputs: &Inputs, dirty: Dirty) -> Changes {
        let (node_name, zone) = (inputs.node_name(), inputs.zone());
        let same_node = self.node.as_ref().is_some_and(|(n, z)| n == node_name && z == zone);
        let services = match dirty {
            Dirty::Keys { services, .. } if same_node => services,
            _ => {
                *self = Self { node: Some((node_name.to_owned(), zone.to_owned())), ..Self::new() };
                let mut changed = BTreeSet::new();
                for (key, service) in inputs.services() {
                    self.compute(inputs, key, service, &mut changed);
                }
                return Changes::All;
            }
        };
        let mut changed = BTreeSet::new();
        for key in &services {
            for fk in self.claims.remove(key).unwrap_or_default() {
                self.withdraw(key, fk);
                changed.insert(fk);
            }
            self.service_warnings.remove(key);
            self.local_services.remove(key);
        }
        for key in &services {
            if let Some(service) = inputs.service(key) {
                self.compute(inputs, key, service, &mut changed);
            }
        }
        Changes::Keys(changed)
    }

    /// Computes one service's frontends and claims them.
    fn compute(
        &mut self,
        inputs: &Inputs,
        key: &ObjectKey,
        service: &ServiceIn,
        changed: &mut BTreeSet<FrontendKey>,
    ) {
        if service.local_policy {
            self.local_services.insert(key.clone());
        }
        let mut warnings = Vec::new();
        let slices = inputs.slices_of(key);
        let frontends =
            service_frontends(service, &slices, inputs.node_name(), inputs.zone(), &mut warnings);
        if !warnings.is_empty() {
            self.service_warnings.insert(key.clone(), warnings);
        }
        let mut keys = Vec::with_capacity(frontends.len());
        for (fk, frontend) in frontends {
            keys.push(fk);
            changed.insert(fk);
            self.claim(key, fk, frontend);
        }
        if !keys.is_empty() {
            self.claims.insert(key.clone(), keys);
        }
    }

    fn claim(&mut self, service: &ObjectKey, fk: FrontendKey, frontend: Frontend) {
        match self.desired.get(&fk) {
            Some(winner) if winner.service < *service => {
                self.losers.entry(fk).or_default().insert(service.clone(), frontend);
            }
            Some(winner) if winner.service == *service => {
                self.install(fk, frontend);
            }
            Some(_) => {
                let old = self.install(fk, frontend);
                if let Some(old) = old {
                    self.losers.entry(fk).or_default().insert(old.service.clone(), old);
                }
            }
            None => {
                self.install(fk, frontend);
            }
        }
    }

    /// Removes `service`'s claim of `fk`; the next claimant, if any, wins.
    fn withdraw(&mut self, service: &ObjectKey, fk: FrontendKey) {
        if self.desired.get(&fk).is_some_and(|f| f.service == *service) {
            self.uninstall(fk);
            if let Some(mut losers) = self.losers.remove(&fk) {
                if let Some((_, next)) = losers.pop_first() {
                    self.install(fk, next);
                }
                if !losers.is_empty() {
                    self.losers.insert(fk, losers);
                }
            }
        } else if let Some(losers) = self.losers.get_mut(&fk) {
            losers.remove(service);
            if losers.is_empty() {
                self.losers.remove(&fk);
            }
        }
    }

    /// Makes `frontend` the winner of `fk`; returns the one it replaced.
    fn install(&mut self, fk: FrontendKey, frontend: Frontend) -> Option<Frontend> {
        let old = self.uninstall(fk);
        self.backends += frontend.backends.len();
        *self.frontends_of.entry(frontend.service.clone()).or_default() += 1;
        self.desired.insert(fk, frontend);
        old
    }

    fn uninstall(&mut self, fk: FrontendKey) -> Option<Frontend> {
        let old = self.desired.remove(&fk)?;
        self.backends -= old.backends.len();
        if let Some(n) = self.frontends_of.get_mut(&old.service) {
            *n -= 1;
            if *n == 0 {
                self.frontends_of.remove(&old.service);
            }
        }
        Some(old)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::manifest::Store;
    use crate::model::{LABEL_SERVICE_NAME, LABEL_TOPOLOGY_ZONE, SliceIn, desired_state};
    use crate::observe::{hcnode::local_policy_of, local_policy};
    use crate::testbed::{Rng, sorted_lines};

    const NODE: &str = "node-1";

    /// A random Service from a small space, so keys collide between services.
    fn random_service(rng: &mut Rng, name: &str) -> Value {
        let ip = rng.pick(&["10.96.0.1", "10.96.0.2", "10.96.0.3", "None", "bad"]);
        let ty = rng.pick(&["ClusterIP", "NodePort", "LoadBalancer"]);
        let mut ports = vec![json!({"name": "http", "port": 80, "targetPort": 8080,
                                    "nodePort": 30000 + rng.below(3)})];
        if rng.below(2) == 0 {
            ports.push(json!({"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53,
                              "nodePort": 30000 + rng.below(3)}));
        }
        if rng.below(6) == 0 {
            ports.push(json!({"name": "zero", "port": 0}));
        }
        let mut spec = json!({"clusterIP": ip, "type": ty, "ports": ports,
                              "externalTrafficPolicy": rng.pick(&["Cluster", "Local"]),
                              "internalTrafficPolicy": rng.pick(&["Cluster", "Local"])});
        if ty == "LoadBalancer" && rng.below(2) == 0 {
            spec["healthCheckNodePort"] = json!(32000 + rng.below(2));
        }
        if rng.below(3) == 0 {
            spec["externalIPs"] = json!([rng.pick(&["192.0.2.1", "192.0.2.2", "10.96.0.1"])]);
        }
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "ns"}, "spec": spec})
    }

    fn random_slice(rng: &mut Rng, name: &str, services: &[&str]) -> Value {
        let endpoints: Vec<Value> = (0..rng.below(4))
            .map(|_| {
                json!({"addresses": [rng.pick(&["10.0.0.1", "10.0.0.2", "10.0.1.1", "nope"])],
                       "nodeName": rng.pick(&[NODE, "node-2"]),
                       "conditions": {"ready": rng.below(4) != 0, "serving": true,
                                      "terminating": rng.below(4) == 0}})
            })
            .collect();
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": name, "namespace": "ns",
                            "labels": {LABEL_SERVICE_NAME: rng.pick(services)}},
               "addressType": rng.pick(&["IPv4", "IPv4", "IPv4", "IPv6"]),
               "ports": [{"name": "http", "port": 8080 + rng.below(2), "protocol": "TCP"},
                         {"name": "dns", "port": 53, "protocol": "UDP"}],
               "endpoints": endpoints})
    }

    /// Random changes, one at a time: after each, the cache equals the model
    /// computed from scratch, and every frontend that differs from before is
    /// among the reported changes.
    #[test]
    fn incremental_equals_from_scratch() {
        let services = ["a", "b", "c", "d", "e"];
        let slices = ["a-1", "a-2", "b-1", "c-1", "x-1", "x-2"];
        // Both kinds of Local-policy output occur, so their check means something.
        let (mut seen_no_local, mut seen_hc) = (false, false);
        for seed in 1..=8 {
            let mut rng = Rng(seed);
            // The same objects as API objects (for the model from scratch)
            // and as the incrementally kept inputs.
            let mut store = Store::default();
            let mut inputs = Inputs::new(NODE);
            let mut cache = ModelCache::new();
            assert_eq!(cache.update(&inputs, Dirty::All), Changes::All);
            let mut before = cache.desired().clone();
            for step in 0..300 {
                for _ in 0..=rng.below(3) {
                    if rng.below(2) == 0 {
                        let name = rng.pick(&services);
                        let key = ObjectKey::new("ns", name);
                        if rng.below(4) == 0 {
                            store.services.remove(&key);
                            inputs.remove_service(&key);
                        } else {
                            let object = random_service(&mut rng, name);
                            let object: k8s_openapi::api::core::v1::Service =
                                serde_json::from_value(object).unwrap();
                            inputs.put_service(key.clone(), ServiceIn::parse(&key, &object));
                            store.services.insert(key, object);
                        }
                    } else {
                        let name = rng.pick(&slices);
                        let key = ObjectKey::new("ns", name);
                        if rng.below(4) == 0 {
                            store.endpoint_slices.remove(&key);
                            inputs.remove_slice(&key);
                        } else {
                            let object = random_slice(&mut rng, name, &services);
                            let object: k8s_openapi::api::discovery::v1::EndpointSlice =
                                serde_json::from_value(object).unwrap();
                            inputs.put_slice(key.clone(), SliceIn::parse(&key, &object, NODE));
                            store.endpoint_slices.insert(key, object);
                        }
                    }
                }
                let dirty = inputs.take_dirty();
                let changes = cache.update(&inputs, dirty);
                let (expected, warnings) = desired_state(&store, NODE);
                assert_eq!(cache.desired(), &expected, "seed {seed} step {step}");
                assert_eq!(
                    sorted_lines(&cache.warnings(&inputs)),
                    sorted_lines(&warnings),
                    "seed {seed} step {step}"
                );
                let Changes::Keys(changed) = changes else {
                    panic!("a partial update reported All")
                };
                let keys: BTreeSet<&FrontendKey> = before.keys().chain(expected.keys()).collect();
                for key in keys {
                    if before.get(key) != expected.get(key) {
                        assert!(
                            changed.contains(key),
                            "seed {seed} step {step}: {key} not reported"
                        );
                    }
                }
                let services: BTreeSet<&ObjectKey> =
                    expected.values().map(|f| &f.service).collect();
                assert_eq!(cache.services(), services.len());
                assert_eq!(
                    cache.backends(),
                    expected.values().map(|f| f.backends.len()).sum::<usize>()
                );
                // The Local-policy accounting over the cache's Local services
                // and the kept inputs equals the one over the whole store.
                let local = local_policy_of(&inputs, cache.local_services());
                assert_eq!(local, local_policy(&store, NODE), "seed {seed} step {step}");
                seen_no_local |= local.no_local_internal + local.no_local_external > 0;
                seen_hc |= !local.hc_services.is_empty();
                before = expected;
            }
        }
        assert!(seen_no_local && seen_hc, "no_local {seen_no_local}, health checks {seen_hc}");
    }

    /// A change of this node's zone (topology) recomputes everything.
    #[test]
    fn zone_change_is_a_full_update() {
        let mut inputs = Inputs::new(NODE);
        let mut cache = ModelCache::new();
        cache.update(&inputs, Dirty::All);
        assert_eq!(cache.update(&inputs, Dirty::default()), Changes::Keys(BTreeSet::new()));
        let node = json!({"apiVersion": "v1", "kind": "Node",
                          "metadata": {"name": NODE, "labels": {LABEL_TOPOLOGY_ZONE: "z1"}}});
        inputs.nodes.insert(NODE.into(), serde_json::from_value(node).unwrap());
        assert_eq!(cache.update(&inputs, Dirty::default()), Changes::All);
        assert_eq!(cache.update(&Inputs::new("node-2"), Dirty::default()), Changes::All);
    }
}
