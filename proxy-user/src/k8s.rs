//! The Kubernetes API source: `sluice agent --kubeconfig PATH`, or the
//! in-cluster service account.
//!
//! Three kube-rs watchers (Services, `discovery.k8s.io/v1` EndpointSlices,
//! Nodes) keep a [`KubeStore`]: the model's [`Inputs`], which the manifest
//! reader's objects also become, so the model and the reconciler do not know
//! where objects came from. Each object is parsed into what the model reads
//! of it when it arrives and the API object dropped (most of the agent's
//! memory at 10k+ Services otherwise).
//!
//! - Services and EndpointSlices are listed with kube-proxy's label selector
//!   ([`PROXY_LABEL_SELECTOR`]: not another proxy's, not headless); all Nodes
//!   are kept (this node's now, every node's for routing).
//! - Each object goes through the manifest reader's checks and stripping
//!   (`managedFields`, annotations nobody reads, a Node's image list): an
//!   object the model cannot use is left out and reported, naming it; the
//!   rest keeps working.
//! - A (re-)list replaces a kind's objects as a whole when it completes
//!   (`Init` .. `InitDone`), so objects deleted while a watch was down go away.
//! - [`KubeStore::is_ready`] is false until every kind has completed its
//!   first list: the agent must not program (and so withdraw) anything from a
//!   partial view at start.
//! - Watch errors are logged and retried with kube-rs' default backoff.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::manifest::{self, FieldError, ObjectKey};
use crate::model::cache::Dirty;
use crate::model::{Inputs, ServiceIn, SliceIn};

/// kube-proxy's label selector for Services and EndpointSlices
/// (cmd/kube-proxy/app/server.go): skip objects of another proxy
/// (`service.kubernetes.io/service-proxy-name`) and headless services' slices
/// (`service.kubernetes.io/headless`).
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Errors setting up the API source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The messages hold their causes on one line (no `#[source]`: `{:#}`
    // would repeat them).
    /// The kubeconfig file cannot be read or parsed, or its current context
    /// is unusable.
    #[error("--kubeconfig {}: {message}", path.display())]
    Kubeconfig { path: PathBuf, message: String },
    #[error("in-cluster configuration: {0}")]
    InCluster(String),
    #[error("creating the API client: {0}")]
    Client(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the API server is: read and checked while the flags are checked,
/// turned into a client once the agent runs.
#[derive(Clone, Debug)]
pub enum ApiConfig {
    /// A kubeconfig file (its current context).
    Kubeconfig { path: PathBuf, kubeconfig: Box<kube::config::Kubeconfig> },
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`, the mounted token).
    InCluster(Box<kube::Config>),
}

impl ApiConfig {
    /// Reads a kubeconfig file.
    ///
    /// # Errors
    /// When the file cannot be read or is not a kubeconfig.
    pub fn from_kubeconfig(path: &Path) -> Result<Self> {
        let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| {
            Error::Kubeconfig { path: path.to_owned(), message: kubeconfig_message(&e) }
        })?;
        Ok(Self::Kubeconfig { path: path.to_owned(), kubeconfig: Box::new(kubeconfig) })
    }

    /// The in-cluster configuration.
    ///
    /// # Errors
    /// When not running in a pod (no `KUBERNETES_SERVICE_HOST`, no token).
    pub fn in_cluster() -> Result<Self> {
        kube::Config::incluster()
            .map(|c| Self::InCluster(Box::new(c)))
            .map_err(|e| Error::InCluster(one_line(&e)))
    }

    /// What to show in logs: the kubeconfig path or `in-cluster`.
    pub fn describe(&self) -> String {
        match self {
            Self::Kubeconfig { path, .. } => path.display().to_string(),
            Self::InCluster(_) => "in-cluster".to_owned(),
        }
    }

    /// A client for this configuration (needs a tokio runtime).
    ///
    /// # Errors
    /// When the kubeconfig's context is unusable or the client cannot be built.
    pub async fn client(&self) -> Result<Client> {
        let config = match self {
            Self::Kubeconfig { path, kubeconfig } => kube::Config::from_custom_kubeconfig(
                (**kubeconfig).clone(),
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|e| Error::Kubeconfig { path: path.clone(), message: one_line(&e) })?,
            Self::InCluster(config) => (**config).clone(),
        };
        Client::try_from(config).map_err(|e| Error::Client(one_line(&e)))
    }
}

/// A kind the source watches.
pub trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The kind's name in messages (`Service`).
    const NAME: &'static str;
    /// The key in the store.
    type Key: Ord + Clone + fmt::Display + Send;
    /// The label selector of the watch, if any.
    const LABEL_SELECTOR: Option<&'static str>;

    /// What the store keeps of an object: what the model reads of it.
    type Stored: fmt::Debug + Send;

    fn store_key(&self) -> Self::Key;
    /// Checks and strips the object as the manifest reader does.
    ///
    /// # Errors
    /// The fields the model cannot use.
    fn prepare(&mut self) -> Result<(), Vec<FieldError>>;
    /// What the store keeps of the object (parsed for the node `node_name`).
    fn convert(self, key: &Self::Key, node_name: &str) -> Self::Stored;
    /// This kind's tracker, and the inputs.
    fn parts(store: &mut KubeStore) -> (&mut Tracker<Self>, &mut Inputs);
    /// Adds or replaces one object.
    fn put(inputs: &mut Inputs, key: Self::Key, object: Self::Stored);
    /// Removes one object.
    fn remove(inputs: &mut Inputs, key: &Self::Key);
    /// Replaces every object of this kind (a completed list).
    fn replace(inputs: &mut Inputs, objects: BTreeMap<Self::Key, Self::Stored>);
    /// How many objects of this kind `inputs` holds.
    fn count(inputs: &Inputs) -> usize;
}

impl Watched for Service {
    const NAME: &'static str = "Service";
    type Key = ObjectKey;
    const LABEL_SELECTOR: Option<&'static str> = Some(PROXY_LABEL_SELECTOR);
    type Stored = ServiceIn;

    fn store_key(&self) -> ObjectKey {
        ObjectKey::of(&self.metadata)
    }
    fn prepare(&mut self) -> Result<(), Vec<FieldError>> {
        manifest::prepare_service(self)
    }
    fn convert(self, key: &ObjectKey, _node_name: &str) -> ServiceIn {
        ServiceIn::parse(key, &self)
    }
    fn parts(s: &mut KubeStore) -> (&mut Tracker<Self>, &mut Inputs) {
        (&mut s.service_tracker, &mut s.inputs)
    }
    fn put(inputs: &mut Inputs, key: ObjectKey, object: ServiceIn) {
        inputs.put_service(key, object);
    }
    fn remove(inputs: &mut Inputs, key: &ObjectKey) {
        inputs.remove_service(key);
    }
    fn replace(inputs: &mut Inputs, objects: BTreeMap<ObjectKey, ServiceIn>) {
        inputs.replace_services(objects);
    }
    fn count(inputs: &Inputs) -> usize {
        inputs.service_count()
    }
}

impl Watched for EndpointSlice {
    const NAME: &'static str = "EndpointSlice";
    type Key = ObjectKey;
    const LABEL_SELECTOR: Option<&'static str> = Some(PROXY_LABEL_SELECTOR);
    type Stored = SliceIn;

    fn store_key(&self) -> ObjectKey {
        ObjectKey::of(&self.metadata)
    }
    fn prepare(&mut self) -> Result<(), Vec<FieldError>> {
        manifest::prepare_endpoint_slice(self)
    }
    fn convert(self, key: &ObjectKey, node_name: &str) -> SliceIn {
        SliceIn::parse(key, &self, node_name)
    }
    fn parts(s: &mut KubeStore) -> (&mut Tracker<Self>, &mut Inputs) {
        (&mut s.slice_tracker, &mut s.inputs)
    }
    fn put(inputs: &mut Inputs, key: ObjectKey, object: SliceIn) {
        inputs.put_slice(key, object);
    }
    fn remove(inputs: &mut Inputs, key: &ObjectKey) {
        inputs.remove_slice(key);
    }
    fn replace(inputs: &mut Inputs, objects: BTreeMap<ObjectKey, SliceIn>) {
        inputs.replace_slices(objects);
    }
    fn count(inputs: &Inputs) -> usize {
        inputs.slice_count()
    }
}

impl Watched for Node {
    const NAME: &'static str = "Node";
    type Key = String;
    const LABEL_SELECTOR: Option<&'static str> = None;
    type Stored = Node;

    fn store_key(&self) -> String {
        self.metadata.name.clone().unwrap_or_default()
    }
    fn prepare(&mut self) -> Result<(), Vec<FieldError>> {
        manifest::prepare_node(self)
    }
    fn convert(self, _key: &String, _node_name: &str) -> Node {
        self
    }
    fn parts(s: &mut KubeStore) -> (&mut Tracker<Self>, &mut Inputs) {
        (&mut s.node_tracker, &mut s.inputs)
    }
    fn put(inputs: &mut Inputs, key: String, object: Node) {
        inputs.nodes.insert(key, object);
    }
    fn remove(inputs: &mut Inputs, key: &String) {
        inputs.nodes.remove(key);
    }
    fn replace(inputs: &mut Inputs, objects: BTreeMap<String, Node>) {
        inputs.nodes = objects;
    }
    fn count(inputs: &Inputs) -> usize {
        inputs.nodes.len()
    }
}

/// Objects and complaints of a list in progress.
type Buffer<K> =
    (BTreeMap<<K as Watched>::Key, <K as Watched>::Stored>, BTreeMap<<K as Watched>::Key, String>);

/// The list/watch state of one kind.
#[derive(Debug)]
pub struct Tracker<K: Watched> {
    /// The first list has completed.
    listed: bool,
    /// Objects (and complaints) of a list in progress.
    relist: Option<Buffer<K>>,
    /// Objects left out, with the reason.
    complaints: BTreeMap<K::Key, String>,
}

impl<K: Watched> Default for Tracker<K> {
    fn default() -> Self {
        Self { listed: false, relist: None, complaints: BTreeMap::new() }
    }
}

/// What the watchers have seen, as the model's [`Inputs`]: each object is
/// parsed when it arrives and only what the model reads of it is kept.
#[derive(Debug)]
pub struct KubeStore {
    inputs: Inputs,
    service_tracker: Tracker<Service>,
    slice_tracker: Tracker<EndpointSlice>,
    node_tracker: Tracker<Node>,
}

impl KubeStore {
    /// An empty store for the node `node_name` (whose endpoints are local).
    pub fn new(node_name: &str) -> Self {
        Self {
            inputs: Inputs::new(node_name),
            service_tracker: Tracker::default(),
            slice_tracker: Tracker::default(),
            node_tracker: Tracker::default(),
        }
    }

    /// The Services and EndpointSlices changed since the last call (all
    /// of them after a re-list), for the incremental model.
    pub fn take_dirty(&mut self) -> Dirty {
        self.inputs.take_dirty()
    }

    /// The objects; complete only once [`Self::is_ready`].
    pub fn inputs(&self) -> &Inputs {
        &self.inputs
    }

    /// Every kind has completed its first list.
    pub fn is_ready(&self) -> bool {
        self.service_tracker.listed && self.slice_tracker.listed && self.node_tracker.listed
    }

    /// The kinds still waiting for their first list.
    pub fn pending(&self) -> Vec<&'static str> {
        let mut pending = Vec::new();
        if !self.service_tracker.listed {
            pending.push(Service::NAME);
        }
        if !self.slice_tracker.listed {
            pending.push(EndpointSlice::NAME);
        }
        if !self.node_tracker.listed {
            pending.push(Node::NAME);
        }
        pending
    }

    /// One line per object left out: `Service ns/name: field ...: reason`.
    pub fn complaints(&self) -> Vec<String> {
        fn lines<K: Watched>(t: &Tracker<K>, out: &mut Vec<String>) {
            out.extend(t.complaints.iter().map(|(k, m)| format!("{} {k}: {m}", K::NAME)));
        }
        let mut out = Vec::new();
        lines(&self.service_tracker, &mut out);
        lines(&self.slice_tracker, &mut out);
        lines(&self.node_tracker, &mut out);
        out
    }

    /// Applies one watcher event. Returns whether the store changed (what the
    /// model sees): `Init` and `InitApply` only fill a buffer, which `InitDone`
    /// swaps in.
    pub fn apply<K: Watched>(&mut self, event: Event<K>) -> bool {
        let (tracker, inputs) = K::parts(self);
        match event {
            Event::Init => {
                tracker.relist = Some((BTreeMap::new(), BTreeMap::new()));
                false
            }
            Event::InitApply(object) => {
                let (buffer, complaints) = tracker.relist.get_or_insert_default();
                match checked(object) {
                    Ok((key, object)) => {
                        complaints.remove(&key);
                        let stored = object.convert(&key, inputs.node_name());
                        buffer.insert(key, stored);
                    }
                    Err((key, message)) => {
                        buffer.remove(&key);
                        complaints.insert(key, message);
                    }
                }
                false
            }
            Event::InitDone => {
                let (buffer, complaints) = tracker.relist.take().unwrap_or_default();
                tracker.complaints = complaints;
                tracker.listed = true;
                // A re-list may have changed anything of this kind: the
                // model starts over (harmless for kinds it does not read).
                K::replace(inputs, buffer);
                true
            }
            Event::Apply(object) => {
                match checked(object) {
                    Ok((key, object)) => {
                        tracker.complaints.remove(&key);
                        let stored = object.convert(&key, inputs.node_name());
                        K::put(inputs, key, stored);
                    }
                    Err((key, message)) => {
                        // The object as it is now is unusable: what an older
                        // version said no longer holds either.
                        tracker.complaints.insert(key.clone(), message);
                        K::remove(inputs, &key);
                    }
                }
                true
            }
            Event::Delete(object) => {
                let key = object.store_key();
                tracker.complaints.remove(&key);
                K::remove(inputs, &key);
                true
            }
        }
    }

    /// How many objects of kind `K` are stored.
    pub fn count<K: Watched>(&self) -> usize {
        K::count(&self.inputs)
    }
}

/// Checks and strips an object; the error names what is wrong.
fn checked<K: Watched>(mut object: K) -> Result<(K::Key, K), (K::Key, String)> {
    let key = object.store_key();
    match object.prepare() {
        Ok(()) => Ok((key, object)),
        Err(errors) => {
            let message = errors
                .into_iter()
                .map(|(field, message)| match field {
                    Some(field) => format!("field {field}: {message}"),
                    None => message,
                })
                .collect::<Vec<_>>()
                .join("; ");
            Err((key, message))
        }
    }
}

/// The running watchers. Dropping it stops them.
#[derive(Debug)]
pub struct KubeSource {
    shared: Arc<Mutex<KubeStore>>,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeSource {
    /// Starts the three watchers on the current tokio runtime. `changed` gets
    /// `()` (never blocking) whenever the store changed.
    pub fn start(client: &Client, node_name: &str, changed: &mpsc::Sender<()>) -> Self {
        let shared = Arc::new(Mutex::new(KubeStore::new(node_name)));
        let tasks = vec![
            tokio::spawn(follow(
                Api::<Service>::all(client.clone()),
                shared.clone(),
                changed.clone(),
            )),
            tokio::spawn(follow(
                Api::<EndpointSlice>::all(client.clone()),
                shared.clone(),
                changed.clone(),
            )),
            tokio::spawn(follow(Api::<Node>::all(client.clone()), shared.clone(), changed.clone())),
        ];
        Self { shared, tasks }
    }

    /// Runs `f` on the store (under its lock: keep it short).
    pub fn with_store<T>(&self, f: impl FnOnce(&mut KubeStore) -> T) -> T {
        f(&mut self.shared.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Lists and watches one kind for ever, applying events to `shared`.
async fn follow<K: Watched>(api: Api<K>, shared: Arc<Mutex<KubeStore>>, changed: mpsc::Sender<()>) {
    let mut config = watcher::Config::default();
    if let Some(selector) = K::LABEL_SELECTOR {
        config = config.labels(selector);
    }
    let stream = watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut failing = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                if failing {
                    info!(kind = K::NAME, "watching again");
                    failing = false;
                }
                let kind_event = match &event {
                    Event::Init => Some("init"),
                    Event::InitDone => Some("done"),
                    _ => None,
                };
                let mut store = shared.lock().unwrap_or_else(PoisonError::into_inner);
                let ready_before = store.is_ready();
                let change = store.apply(event);
                match kind_event {
                    Some("init") => debug!(kind = K::NAME, "listing"),
                    Some(_) => {
                        info!(kind = K::NAME, objects = store.count::<K>(), "listed");
                        if !ready_before && store.is_ready() {
                            info!("every kind listed: the store is complete");
                        }
                    }
                    None => {}
                }
                drop(store);
                if change {
                    // Full: a sync is pending anyway.
                    let _ = changed.try_send(());
                }
            }
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                // Routine: the history the watch resumed from was compacted.
                failing = true;
                info!(kind = K::NAME, reason = %status.message, "watch expired (410): re-listing");
            }
            Err(e) => {
                failing = true;
                warn!(kind = K::NAME, error = %one_line(&e), "watch error; retrying with backoff");
            }
        }
    }
}

/// A kubeconfig error without the path (the caller names it).
fn kubeconfig_message(e: &kube::config::KubeconfigError) -> String {
    match e {
        kube::config::KubeconfigError::ReadConfig(io, _) => io.to_string(),
        other => one_line(other),
    }
}

/// An error and its sources on one line.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, ip: &str, port: i32) -> Service {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default",
                         "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"clusterIP": ip, "ports": [{"port": port, "targetPort": 8080}]}
        }))
        .expect("service")
    }

    fn slice(name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
        let endpoints: Vec<_> = ips
            .iter()
            .map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true}}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        }))
        .expect("slice")
    }

    fn node(name: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name},
            "spec": {"podCIDRs": ["10.244.0.0/24"]},
            "status": {"images": [{"names": ["big/image:v1"]}]}
        }))
        .expect("node")
    }

    fn list<K: Watched>(store: &mut KubeStore, objects: Vec<K>) -> bool {
        let mut changed = store.apply::<K>(Event::Init);
        for o in objects {
            changed |= store.apply(Event::InitApply(o));
        }
        changed | store.apply::<K>(Event::InitDone)
    }

    fn backends(store: &KubeStore) -> Vec<String> {
        let (desired, _) = crate::model::desired_state_of(store.inputs());
        desired.values().flat_map(|f| f.backends.iter().map(|b| b.addr.to_string())).collect()
    }

    #[test]
    fn not_ready_until_every_kind_listed() {
        let mut store = KubeStore::new("node-a");
        assert!(!store.is_ready());
        assert!(list(&mut store, vec![service("web", "10.96.0.10", 80)]));
        assert!(list(&mut store, vec![slice("web-1", "web", &["10.244.0.11"])]));
        assert!(!store.is_ready());
        assert_eq!(store.pending(), ["Node"]);
        // An empty list completes too.
        assert!(list::<Node>(&mut store, vec![]));
        assert!(store.is_ready());
        assert_eq!(backends(&store), ["10.244.0.11"]);
    }

    #[test]
    fn buffered_list_is_swapped_in_at_init_done() {
        let mut store = KubeStore::new("node-a");
        list(&mut store, vec![service("a", "10.96.0.1", 80), service("b", "10.96.0.2", 80)]);
        // A re-list in progress does not change what the model sees.
        assert!(!store.apply::<Service>(Event::Init));
        assert!(!store.apply(Event::InitApply(service("b", "10.96.0.2", 80))));
        assert_eq!(store.inputs().service_count(), 2);
        // `a` was deleted while the watch was down: gone once the list is done.
        assert!(store.apply::<Service>(Event::InitDone));
        let names: Vec<_> = store.inputs().services().map(|(k, _)| k.name.clone()).collect();
        assert_eq!(names, ["b"]);
    }

    #[test]
    fn apply_and_delete_follow_and_keep_what_the_model_reads() {
        let mut store = KubeStore::new("node-a");
        list::<Service>(&mut store, vec![]);
        list::<EndpointSlice>(&mut store, vec![]);
        list(&mut store, vec![node("node-a")]);
        assert!(store.apply(Event::Apply(service("web", "10.96.0.10", 80))));
        assert!(store.apply(Event::Apply(slice("web-1", "web", &["10.244.0.11", "10.244.0.12"]))));
        assert_eq!(backends(&store), ["10.244.0.11", "10.244.0.12"]);
        let svc = store.inputs().service(&ObjectKey::new("default", "web")).expect("kept");
        assert_eq!(svc.ports.len(), 1);
        assert_eq!(svc.ports[0].cluster_ip, std::net::Ipv4Addr::new(10, 96, 0, 10));
        let web = ObjectKey::new("default", "web");
        assert_eq!(store.inputs().slices_of(&web).len(), 1);
        let n = &store.inputs().nodes["node-a"];
        assert!(n.status.as_ref().expect("status").images.is_none());

        assert!(store.apply(Event::Apply(slice("web-1", "web", &["10.244.0.13"]))));
        assert_eq!(backends(&store), ["10.244.0.13"]);
        assert!(store.apply(Event::Delete(service("web", "10.96.0.10", 80))));
        assert!(backends(&store).is_empty());
        assert_eq!(store.inputs().service_count(), 0);
        // The slice stays (it may outlive its Service), indexed under it.
        assert_eq!(store.inputs().slices_of(&web).len(), 1);
        assert!(store.apply(Event::Delete(slice("web-1", "web", &[]))));
        assert!(store.inputs().slices_of(&web).is_empty());
    }

    #[test]
    fn unusable_object_is_skipped_and_named() {
        let mut store = KubeStore::new("node-a");
        list(
            &mut store,
            vec![service("good", "10.96.0.1", 80), service("bad", "10.96.0.2", 70000)],
        );
        assert_eq!(store.inputs().service_count(), 1);
        let complaints = store.complaints();
        assert_eq!(complaints.len(), 1, "{complaints:?}");
        assert!(complaints[0].starts_with("Service default/bad: field spec.ports[0].port"));
        // A valid version replaces the complaint; an invalid update removes
        // the object and complains again.
        store.apply(Event::Apply(service("bad", "10.96.0.2", 81)));
        assert!(store.complaints().is_empty());
        assert_eq!(store.inputs().service_count(), 2);
        store.apply(Event::Apply(service("good", "not-an-ip", 80)));
        assert_eq!(store.inputs().service_count(), 1);
        assert!(store.complaints()[0].contains("default/good: field spec.clusterIP"));
        store.apply(Event::Delete(service("good", "not-an-ip", 80)));
        assert!(store.complaints().is_empty());
    }

    #[test]
    fn missing_kubeconfig_names_the_path() {
        let e = ApiConfig::from_kubeconfig(Path::new("/nonexistent/sluice-kubeconfig"))
            .expect_err("missing file");
        let shown = e.to_string();
        assert!(shown.starts_with("--kubeconfig /nonexistent/sluice-kubeconfig: "), "{shown}");
        assert!(!shown.contains('\n'), "{shown}");
    }
}
