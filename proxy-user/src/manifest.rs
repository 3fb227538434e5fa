//! The manifest directory reader: `sluice agent --manifests DIR`.
//!
//! Kubernetes objects (Service, `discovery.k8s.io/v1` EndpointSlice, Node) are
//! read from YAML or JSON files in one directory (not recursive). Files ending
//! `.yaml`, `.yml` or `.json` are read in sorted name order; hidden files
//! (including editor lock files such as `.#x.yaml` and the `..data` entries of
//! a mounted ConfigMap) and anything else are ignored. A file may hold several
//! documents (YAML `---`, or a stream of JSON values) and a document may be a
//! `kind: List` whose `items` are objects.
//!
//! Loading never stops at a bad document: a document that does not parse, an
//! object of a kind we handle with a wrong `apiVersion`, a field of the wrong
//! type or an invalid value the model relies on is reported as a
//! [`ManifestError`] (file, 1-based document index, field path) and skipped;
//! everything else still loads. Objects of other kinds (ConfigMap, Deployment,
//! ...) are ignored without an error. When the same object is defined twice,
//! the later one in sorted file order (and document order inside a file)
//! wins and the replacement is reported.
//!
//! [`watch_dir`] follows changes; the caller debounces and refreshes a
//! [`DirInputs`], which re-reads only the files that changed and gives the
//! model [`load_dir`]'s result as changes (see [`incremental`]).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize as _;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub mod incremental;

pub use incremental::{DirInputs, Refresh};

/// Namespace given to namespaced objects whose manifest names none (as
/// `kubectl apply` would without `-n`).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Errors that stop [`load_dir`] or [`watch_dir`] as a whole. Problems inside
/// single files are [`ManifestError`]s instead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read manifest directory {}: {source}", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch manifest directory {}: {source}", dir.display())]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Namespace and name of a namespaced object. Orders by namespace, then name.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }

    /// The key of an object's metadata; a missing namespace is
    /// [`DEFAULT_NAMESPACE`].
    pub fn of(meta: &ObjectMeta) -> Self {
        Self::new(
            meta.namespace.as_deref().filter(|ns| !ns.is_empty()).unwrap_or(DEFAULT_NAMESPACE),
            meta.name.as_deref().unwrap_or_default(),
        )
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything the model reads: the objects of the kinds we handle.
#[derive(Default, Clone, Debug)]
pub struct Store {
    pub services: BTreeMap<ObjectKey, Service>,
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    pub nodes: BTreeMap<String, Node>,
}

/// One problem in one document of one manifest file. The document was
/// skipped (or, for a duplicate, replaced an earlier definition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based index of the document in the file; 0 when the problem concerns
    /// the file as a whole (e.g. it cannot be read).
    pub document: usize,
    /// Path of the offending field, e.g. `spec.ports[0].port`; inside a
    /// `kind: List` it starts with `items[i]`.
    pub field: Option<String>,
    /// One line.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// What [`load_dir`] found.
#[derive(Clone, Debug, Default)]
pub struct LoadOutcome {
    pub store: Store,
    pub errors: Vec<ManifestError>,
    /// Manifest files read (whether or not they held usable objects).
    pub files: usize,
}

/// Reads every manifest file of `dir` (see the module documentation).
///
/// # Errors
/// Only when the directory itself cannot be listed; problems in files are in
/// [`LoadOutcome::errors`].
pub fn load_dir(dir: &Path) -> Result<LoadOutcome> {
    let mut outcome = LoadOutcome::default();
    // Where each loaded object was defined, to report duplicates.
    let mut origins = BTreeMap::new();
    for (path, _) in list_dir(dir)? {
        let items = match std::fs::read(&path).and_then(manifest_text) {
            Ok(text) => parse_text(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => vec![Item::Error(read_error(&path, &e))],
        };
        outcome.files += 1;
        for item in items {
            let parsed = match item {
                Item::Error(e) => {
                    outcome.errors.push(e);
                    continue;
                }
                Item::Object(parsed) => parsed,
            };
            let origin = parsed.origin(&path);
            if let Some(earlier) = origins.insert((parsed.kind, parsed.key.clone()), origin) {
                outcome.errors.push(parsed.duplicate(&path, &earlier));
            }
            let Parsed { key, object, .. } = parsed;
            match object {
                Object::Service(s) => {
                    outcome.store.services.insert(key, *s);
                }
                Object::EndpointSlice(s) => {
                    outcome.store.endpoint_slices.insert(key, *s);
                }
                Object::Node(n) => {
                    outcome.store.nodes.insert(key.name, *n);
                }
            }
        }
    }
    Ok(outcome)
}

/// The manifest files of `dir` in sorted order, with their metadata (`None`
/// when it cannot be read; the read will report why).
fn list_dir(dir: &Path) -> Result<Vec<(PathBuf, Option<std::fs::Metadata>)>> {
    let read_dir_error = |source| Error::ReadDir { dir: dir.to_path_buf(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir_error)? {
        let entry = entry.map_err(read_dir_error)?;
        if !is_manifest_name(&entry.file_name()) {
            continue;
        }
        let path = entry.path();
        // Follows symlinks (a mounted ConfigMap's files are symlinks).
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => files.push((path, Some(meta))),
            Ok(_) => tracing::debug!(path = %path.display(), "not a regular file, ignored"),
            // Removed since the listing, or a dangling symlink: not there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Let the read report it.
            Err(_) => files.push((path, None)),
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// A manifest file's bytes as text.
fn manifest_text(bytes: Vec<u8>) -> std::io::Result<String> {
    String::from_utf8(bytes).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "stream did not contain valid UTF-8")
    })
}

/// The problem of a file that cannot be read.
fn read_error(file: &Path, e: &std::io::Error) -> ManifestError {
    problem(file, 0, None, format!("cannot read file: {e}"))
}

/// The objects and problems of one manifest file's text, in file order.
fn parse_text(file: &Path, text: &str) -> Vec<Item<Object>> {
    let mut loader = Loader::default();
    loader.load_text(file, text);
    loader.items
}

/// A problem, on one line.
fn problem(file: &Path, document: usize, field: Option<String>, message: String) -> ManifestError {
    let message = one_line(message);
    tracing::debug!(file = %file.display(), document, ?field, %message, "manifest problem");
    ManifestError { file: file.to_path_buf(), document, field, message }
}

/// Watches `dir` and sends `()` on `tx` whenever something relevant changes
/// (a manifest file added, written, removed or renamed, a ConfigMap's
/// `..data` swapped, the directory itself removed). Reads (including
/// [`load_dir`]'s own) send nothing. Sends never block: when the channel is
/// full a reload is already pending. Drop the returned watcher to stop.
///
/// # Errors
/// When the watch cannot be set up (no such directory, inotify limits).
pub fn watch_dir(
    dir: &Path,
    tx: tokio::sync::mpsc::Sender<()>,
) -> Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;

    let watch_error = |source| Error::Watch { dir: dir.to_path_buf(), source };
    let root = dir.to_path_buf();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) => {
                if is_relevant(&root, &event) {
                    tracing::debug!(?event, "manifest directory changed");
                    notify_change(&tx);
                }
            }
            Err(e) => {
                // Events may have been lost: reload to be sure.
                tracing::warn!(error = %e, "watching the manifest directory");
                notify_change(&tx);
            }
        })
        .map_err(watch_error)?;
    watcher.watch(dir, notify::RecursiveMode::NonRecursive).map_err(watch_error)?;
    Ok(watcher)
}

fn notify_change(tx: &tokio::sync::mpsc::Sender<()>) {
    // Full: a reload is pending anyway. Closed: nobody listens any more.
    let _ = tx.try_send(());
}

fn is_relevant(root: &Path, event: &notify::Event) -> bool {
    if matches!(event.kind, notify::EventKind::Access(_)) {
        return false;
    }
    if event.need_rescan() || event.paths.is_empty() {
        return true;
    }
    event.paths.iter().any(|path| {
        path == root
            || path.file_name().is_some_and(|name| is_manifest_name(name) || name == "..data")
    })
}

/// Whether a directory entry of this name is a manifest file: not hidden,
/// ending `.yaml`, `.yml` or `.json`.
pub fn is_manifest_name(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    !name.starts_with('.')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.len() > ext.len() && name.ends_with(ext))
}

/// The kinds we load, with the one `apiVersion` each we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    fn from_kind(kind: &str) -> Option<Self> {
        match kind {
            "Service" => Some(Self::Service),
            "EndpointSlice" => Some(Self::EndpointSlice),
            "Node" => Some(Self::Node),
            _ => None,
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Self::Service | Self::Node => "v1",
            Self::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Node => "Node",
        }
    }
}

/// A field path and what is wrong with it.
pub(crate) type FieldError = (Option<String>, String);

/// One entry of a manifest file, in file order: a problem, or an object
/// (as read, or as the model keeps it).
enum Item<T> {
    Error(ManifestError),
    Object(Parsed<T>),
}

/// An object of a document.
struct Parsed<T> {
    kind: Kind,
    /// A Node's has an empty namespace.
    key: ObjectKey,
    doc: usize,
    /// The object's field path inside its document (empty, or `items[3]`).
    prefix: String,
    object: T,
}

impl<T> Parsed<T> {
    /// Where the object is defined, as a duplicate's message names it.
    fn origin(&self, file: &Path) -> String {
        let mut origin = format!("{} document {}", file.display(), self.doc);
        if !self.prefix.is_empty() {
            origin.push_str(&format!(" {}", self.prefix));
        }
        origin
    }

    /// The problem of this object replacing the one defined at `earlier`.
    fn duplicate(&self, file: &Path, earlier: &str) -> ManifestError {
        let key = &self.key;
        let shown = if self.kind == Kind::Node { key.name.clone() } else { key.to_string() };
        let field = (!self.prefix.is_empty()).then(|| self.prefix.clone());
        let message =
            format!("duplicate {} {shown}: replaces the one in {earlier}", self.kind.name());
        problem(file, self.doc, field, message)
    }
}

/// Parses one file into its [`Item`]s.
#[derive(Default)]
struct Loader {
    items: Vec<Item<Object>>,
}

impl Loader {
    fn error(&mut self, file: &Path, document: usize, field: Option<String>, message: String) {
        self.items.push(Item::Error(problem(file, document, field, message)));
    }

    fn load_text(&mut self, file: &Path, text: &str) {
        let is_json = file.extension().is_some_and(|ext| ext == "json");
        if is_json {
            self.load_json(file, text);
        } else {
            self.load_yaml(file, text);
        }
    }

    fn load_yaml(&mut self, file: &Path, text: &str) {
        for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let doc = index + 1;
            // Through the YAML value first: it takes any valid YAML, so an
            // error here is a syntax error, after which the stream is lost.
            let mut yaml = match serde_yaml_ng::Value::deserialize(document) {
                Ok(yaml) => yaml,
                Err(e) => {
                    self.error(file, doc, None, format!("invalid YAML: {e}"));
                    break;
                }
            };
            if yaml.is_null() {
                continue; // an empty document, e.g. after a trailing `---`
            }
            if let Err(e) = yaml.apply_merge() {
                self.error(file, doc, None, format!("invalid YAML: {e}"));
                continue;
            }
            match serde_json::to_value(&yaml) {
                Ok(value) => self.load_value(file, doc, "", value),
                Err(e) => self.error(file, doc, None, format!("unsupported YAML: {e}")),
            }
        }
    }

    fn load_json(&mut self, file: &Path, text: &str) {
        let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        for (index, value) in stream.enumerate() {
            let doc = index + 1;
            match value {
                Ok(value) => self.load_value(file, doc, "", value),
                Err(e) => {
                    self.error(file, doc, None, format!("invalid JSON: {e}"));
                    break;
                }
            }
        }
    }

    /// One object (or `kind: List`); `prefix` is the field path of the object
    /// inside its document (empty, or `items[3]`).
    fn load_value(&mut self, file: &Path, doc: usize, prefix: &str, value: Value) {
        let field = |name: &str| Some(join_path(prefix, name));
        let Value::Object(object) = &value else {
            let field = (!prefix.is_empty()).then(|| prefix.to_owned());
            self.error(file, doc, field, "not an object".to_owned());
            return;
        };
        let kind = match object.get("kind") {
            Some(Value::String(kind)) if !kind.is_empty() => kind.clone(),
            Some(Value::String(_)) | None => {
                self.error(file, doc, field("kind"), "missing kind".to_owned());
                return;
            }
            Some(_) => {
                self.error(file, doc, field("kind"), "kind is not a string".to_owned());
                return;
            }
        };
        let api_version = object.get("apiVersion").and_then(Value::as_str);

        if kind == "List" || (kind.ends_with("List") && object.contains_key("items")) {
            self.load_list(file, doc, prefix, value);
            return;
        }
        let Some(known) = Kind::from_kind(&kind) else {
            tracing::debug!(
                file = %file.display(), document = doc, kind, apiVersion = api_version,
                "ignoring object of a kind sluice does not use"
            );
            return;
        };
        match api_version {
            Some(v) if v == known.api_version() => {}
            Some(v) => {
                let message = format!(
                    "unsupported apiVersion {v:?} for {kind} (want {})",
                    known.api_version()
                );
                self.error(file, doc, field("apiVersion"), message);
                return;
            }
            None => {
                self.error(file, doc, field("apiVersion"), "missing apiVersion".to_owned());
                return;
            }
        }

        let result = match known {
            Kind::Service => typed::<Service>(value).and_then(|mut service| {
                prepare_service(&mut service)?;
                Ok(Object::Service(Box::new(service)))
            }),
            Kind::EndpointSlice => typed::<EndpointSlice>(value).and_then(|mut slice| {
                prepare_endpoint_slice(&mut slice)?;
                Ok(Object::EndpointSlice(Box::new(slice)))
            }),
            Kind::Node => typed::<Node>(value).and_then(|mut node| {
                prepare_node(&mut node)?;
                Ok(Object::Node(Box::new(node)))
            }),
        };
        match result {
            Ok(object) => self.insert(doc, prefix, object),
            Err(errors) => {
                for (path, message) in errors {
                    let field = path.map(|p| join_path(prefix, &p));
                    self.error(file, doc, field, message);
                }
            }
        }
    }

    fn load_list(&mut self, file: &Path, doc: usize, prefix: &str, value: Value) {
        let items_path = join_path(prefix, "items");
        let Value::Object(mut object) = value else {
            return;
        };
        match object.remove("items") {
            Some(Value::Array(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    self.load_value(file, doc, &format!("{items_path}[{i}]"), item);
                }
            }
            None | Some(Value::Null) => {}
            Some(_) => self.error(file, doc, Some(items_path), "items is not a list".to_owned()),
        }
    }

    fn insert(&mut self, doc: usize, prefix: &str, object: Object) {
        let (kind, key) = match &object {
            Object::Service(s) => (Kind::Service, ObjectKey::of(&s.metadata)),
            Object::EndpointSlice(s) => (Kind::EndpointSlice, ObjectKey::of(&s.metadata)),
            Object::Node(n) => {
                (Kind::Node, ObjectKey::new("", n.metadata.name.as_deref().unwrap_or_default()))
            }
        };
        self.items.push(Item::Object(Parsed { kind, key, doc, prefix: prefix.to_owned(), object }));
    }
}

enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Node(Box<Node>),
}

/// Deserialises into a typed object, naming the field of the first error.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, Vec<FieldError>> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        vec![(field, e.inner().to_string())]
    })
}

fn join_path(prefix: &str, path: &str) -> String {
    if prefix.is_empty() {
        path.to_owned()
    } else if path.starts_with('[') {
        format!("{prefix}{path}")
    } else {
        format!("{prefix}.{path}")
    }
}

fn one_line(message: String) -> String {
    if message.contains('\n') {
        message.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        message
    }
}

/// Checks a Service's name, defaults its namespace, checks the fields the
/// model relies on, and strips what nobody needs.
pub(crate) fn prepare_service(service: &mut Service) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    prepare_namespaced_meta(&mut service.metadata, &mut errors);
    if let Some(spec) = &service.spec {
        if let Some(type_) = &spec.type_
            && !matches!(type_.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName")
        {
            errors.push((Some("spec.type".to_owned()), format!("unknown service type {type_:?}")));
        }
        if let Some(ip) = &spec.cluster_ip {
            check_cluster_ip(ip, "spec.clusterIP".to_owned(), &mut errors);
        }
        for (i, ip) in spec.cluster_ips.iter().flatten().enumerate() {
            check_cluster_ip(ip, format!("spec.clusterIPs[{i}]"), &mut errors);
        }
        for (i, port) in spec.ports.iter().flatten().enumerate() {
            check_port(port.port, || format!("spec.ports[{i}].port"), &mut errors);
            if let Some(node_port) = port.node_port
                && node_port != 0
            {
                check_port(node_port, || format!("spec.ports[{i}].nodePort"), &mut errors);
            }
            check_protocol(
                port.protocol.as_deref(),
                || format!("spec.ports[{i}].protocol"),
                &mut errors,
            );
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

pub(crate) fn prepare_endpoint_slice(slice: &mut EndpointSlice) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    prepare_namespaced_meta(&mut slice.metadata, &mut errors);
    let address_type = slice.address_type.as_str();
    if !matches!(address_type, "IPv4" | "IPv6" | "FQDN") {
        errors.push((
            Some("addressType".to_owned()),
            format!("unknown addressType {address_type:?} (want IPv4, IPv6 or FQDN)"),
        ));
    }
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        for (j, address) in endpoint.addresses.iter().enumerate() {
            let ok = match address_type {
                "IPv4" => address.parse::<Ipv4Addr>().is_ok(),
                "IPv6" => address.parse::<Ipv6Addr>().is_ok(),
                _ => !address.is_empty(),
            };
            if !ok {
                errors.push((
                    Some(format!("endpoints[{i}].addresses[{j}]")),
                    format!("{address:?} is not a valid {address_type} address"),
                ));
            }
        }
    }
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        if let Some(number) = port.port {
            check_port(number, || format!("ports[{i}].port"), &mut errors);
        }
        check_protocol(port.protocol.as_deref(), || format!("ports[{i}].protocol"), &mut errors);
    }
    // What the model does not read (it uses the first address only), and
    // the spare capacity deserialising left: most of a big store.
    for endpoint in &mut slice.endpoints {
        endpoint.addresses.truncate(1);
        endpoint.addresses.shrink_to_fit();
        endpoint.target_ref = None;
        endpoint.hostname = None;
        endpoint.deprecated_topology = None;
    }
    slice.endpoints.shrink_to_fit();
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

pub(crate) fn prepare_node(node: &mut Node) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    check_name(&node.metadata, &mut errors);
    strip_metadata(&mut node.metadata);
    if let Some(status) = &mut node.status {
        // The bulk of a real Node object; nothing here needs them.
        status.images = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
        status.runtime_handlers = None;
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn prepare_namespaced_meta(meta: &mut ObjectMeta, errors: &mut Vec<FieldError>) {
    check_name(meta, errors);
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some(DEFAULT_NAMESPACE.to_owned());
    }
    strip_metadata(meta);
}

fn check_name(meta: &ObjectMeta, errors: &mut Vec<FieldError>) {
    if meta.name.as_deref().is_none_or(str::is_empty) {
        errors.push((Some("metadata.name".to_owned()), "missing name".to_owned()));
    }
}

/// Drops `managedFields`, the annotations nobody here reads (notably
/// `kubectl.kubernetes.io/last-applied-configuration`, a copy of the whole
/// object) and the other metadata nothing here reads, to keep the stores
/// small (at 10k+ objects they are most of the agent's memory). Labels,
/// name, namespace and resourceVersion stay.
fn strip_metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.uid = None;
    meta.generate_name = None;
    meta.self_link = None;
    meta.creation_timestamp = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|key, _| keep_annotation(key));
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// Annotations in the Kubernetes project's own domains may carry proxy
/// semantics (`service.kubernetes.io/...`, `endpoints.kubernetes.io/...`);
/// kubectl's and everybody else's do not.
fn keep_annotation(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return false;
    };
    prefix != "kubectl.kubernetes.io"
        && (prefix == "kubernetes.io" || prefix.ends_with(".kubernetes.io"))
}

fn check_cluster_ip(ip: &str, field: String, errors: &mut Vec<FieldError>) {
    if !(ip.is_empty() || ip == "None" || ip.parse::<IpAddr>().is_ok()) {
        errors.push((Some(field), format!("{ip:?} is not an IP address, \"None\" or empty")));
    }
}

fn check_port(port: i32, field: impl FnOnce() -> String, errors: &mut Vec<FieldError>) {
    if !(1..=65535).contains(&port) {
        errors.push((Some(field()), format!("port {port} is not in 1..=65535")));
    }
}

fn check_protocol(
    protocol: Option<&str>,
    field: impl FnOnce() -> String,
    errors: &mut Vec<FieldError>,
) {
    if let Some(protocol) = protocol
        && !matches!(protocol, "TCP" | "UDP" | "SCTP")
    {
        errors.push((
            Some(field()),
            format!("unknown protocol {protocol:?} (want TCP, UDP or SCTP)"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A throwaway directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("sluice-manifest-{test}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("create temp dir");
            Self(path)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).expect("write manifest");
            path
        }

        fn load(&self) -> LoadOutcome {
            load_dir(&self.0).expect("load_dir")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {app: web}
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{\"huge\": true}'
    example.com/owner: team-a
    service.kubernetes.io/topology-mode: Auto
  managedFields:
  - manager: kubectl
    operation: Apply
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: http
    port: 80
    targetPort: 8080
";

    const SLICE: &str = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- name: http
  port: 8080
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: true}
";

    const NODE: &str = "\
apiVersion: v1
kind: Node
metadata:
  name: node-1
  labels: {topology.kubernetes.io/zone: zone-a}
spec:
  podCIDRs: [10.244.1.0/24]
status:
  images:
  - names: [registry/some-image:v1]
";

    fn only_error(outcome: &LoadOutcome) -> &ManifestError {
        assert_eq!(outcome.errors.len(), 1, "errors: {:#?}", outcome.errors);
        &outcome.errors[0]
    }

    #[test]
    fn yaml_single_document() {
        let dir = TempDir::new("single");
        dir.write("svc.yaml", SERVICE);
        let outcome = dir.load();
        assert!(outcome.errors.is_empty(), "{:#?}", outcome.errors);
        assert_eq!(outcome.files, 1);
        let service = &outcome.store.services[&ObjectKey::new("shop", "web")];
        let spec = service.spec.as_ref().expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
        assert_eq!(spec.ports.as_ref().expect("ports")[0].port, 80);
        // Stripped: managedFields and annotations nobody reads; kept: labels
        // and the proxy's own annotations.
        assert!(service.metadata.managed_fields.is_none());
        let annotations = service.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["service.kubernetes.io/topology-mode"]);
        assert_eq!(service.metadata.labels.as_ref().expect("labels")["app"], "web");
    }

    #[test]
    fn yaml_multi_document_and_default_namespace() {
        let dir = TempDir::new("multi");
        let text = format!(
            "---\n{SERVICE}---\n{SLICE}---\n{NODE}---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: bare}}\n\
             spec: {{clusterIP: 10.96.0.11, ports: [{{port: 53, protocol: UDP}}]}}\n---\n"
        );
        dir.write("all.yml", &text);
        let outcome = dir.load();
        assert!(outcome.errors.is_empty(), "{:#?}", outcome.errors);
        let store = &outcome.store;
        assert_eq!(store.services.len(), 2);
        assert!(store.services.contains_key(&ObjectKey::new("shop", "web")));
        let bare = &store.services[&ObjectKey::new("default", "bare")];
        assert_eq!(bare.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            store.endpoint_slices[&ObjectKey::new("shop", "web-abc")].endpoints[0].addresses,
            ["10.244.1.5"]
        );
        let node = &store.nodes["node-1"];
        assert!(node.metadata.namespace.is_none());
        assert!(node.status.as_ref().expect("status").images.is_none());
    }

    #[test]
    fn json_file_and_json_stream() {
        let dir = TempDir::new("json");
        let service = r#"{"apiVersion":"v1","kind":"Service",
            "metadata":{"name":"api","namespace":"prod"},
            "spec":{"clusterIP":"10.96.1.1","ports":[{"port":443,"name":"https"}]}}"#;
        let node = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-2"}}"#;
        dir.write("api.json", service);
        dir.write("stream.json", &format!("{node}\n{node}"));
        let outcome = dir.load();
        assert_eq!(outcome.files, 2);
        assert!(outcome.store.services.contains_key(&ObjectKey::new("prod", "api")));
        assert!(outcome.store.nodes.contains_key("node-2"));
        // The stream defines node-2 twice: reported as a duplicate.
        let error = only_error(&outcome);
        assert_eq!(error.document, 2);
        assert!(error.message.contains("duplicate Node node-2"), "{error}");
    }

    #[test]
    fn kind_list_items() {
        let dir = TempDir::new("list");
        let indent = |text: &str| {
            text.lines()
                .enumerate()
                .map(|(i, l)| format!("{}{l}\n", if i == 0 { "- " } else { "  " }))
                .collect::<String>()
        };
        let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\n\
                   spec: {ports: [{port: 80}, {port: 99999}]}\n";
        let list = format!(
            "apiVersion: v1\nkind: List\nitems:\n{}{}{}",
            indent(SERVICE),
            indent(SLICE),
            indent(bad)
        );
        dir.write("list.yaml", &list);
        let outcome = dir.load();
        assert!(outcome.store.services.contains_key(&ObjectKey::new("shop", "web")));
        assert!(!outcome.store.services.contains_key(&ObjectKey::new("default", "bad")));
        assert_eq!(outcome.store.endpoint_slices.len(), 1);
        let error = only_error(&outcome);
        assert_eq!(error.document, 1);
        assert_eq!(error.field.as_deref(), Some("items[2].spec.ports[1].port"));
    }

    #[test]
    fn malformed_yaml_names_file_and_document() {
        let dir = TempDir::new("malformed");
        let path = dir.write(
            "broken.yaml",
            &format!("{NODE}---\napiVersion: v1\nkind: Service\nmetadata: {{name: x\n"),
        );
        let outcome = dir.load();
        // The document before the syntax error still loads.
        assert!(outcome.store.nodes.contains_key("node-1"));
        let error = only_error(&outcome);
        assert_eq!(error.file, path);
        assert_eq!(error.document, 2);
        let shown = error.to_string();
        assert!(shown.contains("broken.yaml: document 2"), "{shown}");
        assert!(!shown.contains('\n'), "{shown}");
    }

    #[test]
    fn wrong_field_type_names_field_path() {
        let dir = TempDir::new("wrongtype");
        dir.write(
            "svc.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n\
             spec:\n  ports:\n  - port: eighty\n",
        );
        let outcome = dir.load();
        assert!(outcome.store.services.is_empty());
        let error = only_error(&outcome);
        assert_eq!(error.document, 1);
        assert_eq!(error.field.as_deref(), Some("spec.ports[0].port"));
        assert!(error.to_string().contains("field spec.ports[0].port"), "{error}");
    }

    #[test]
    fn invalid_values_are_reported_with_field_paths() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "cluster ip",
                "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: 10.96.0.300}\n",
                "spec.clusterIP",
            ),
            (
                "cluster ips",
                "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n\
                 spec: {clusterIP: 10.96.0.1, clusterIPs: [10.96.0.1, 'fd00::zz']}\n",
                "spec.clusterIPs[1]",
            ),
            (
                "port zero",
                "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 0}]}\n",
                "spec.ports[0].port",
            ),
            (
                "protocol",
                "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n\
                 spec: {ports: [{port: 80, protocol: tcp}]}\n",
                "spec.ports[0].protocol",
            ),
            (
                "missing name",
                "apiVersion: v1\nkind: Service\nmetadata: {namespace: x}\n",
                "metadata.name",
            ),
            (
                "endpoint address",
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e}\n\
                 addressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}, {addresses: ['fd00::1']}]\n",
                "endpoints[1].addresses[0]",
            ),
            (
                "api version",
                "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: e}\n",
                "apiVersion",
            ),
            ("missing kind", "apiVersion: v1\nmetadata: {name: e}\n", "kind"),
        ];
        for (name, text, field) in cases {
            let dir = TempDir::new("invalid");
            dir.write("x.yaml", text);
            let outcome = dir.load();
            assert!(
                outcome.store.services.is_empty() && outcome.store.endpoint_slices.is_empty(),
                "{name}: bad object loaded"
            );
            let error = only_error(&outcome);
            assert_eq!(error.field.as_deref(), Some(*field), "{name}: {error}");
        }
    }

    #[test]
    fn unknown_kinds_and_other_files_are_ignored() {
        let dir = TempDir::new("unknown");
        dir.write(
            "cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 'x'}\n",
        );
        dir.write("README.md", "not a manifest");
        dir.write(".hidden.yaml", "{{{");
        dir.write("svc.yaml~", "{{{");
        dir.write(".svc.yaml.swp", "{{{");
        std::fs::create_dir(dir.0.join("sub.yaml")).expect("mkdir");
        let outcome = dir.load();
        assert!(outcome.errors.is_empty(), "{:#?}", outcome.errors);
        assert_eq!(outcome.files, 1);
        assert!(outcome.store.services.is_empty());
    }

    #[test]
    fn bad_file_does_not_stop_good_file() {
        let dir = TempDir::new("badgood");
        dir.write("a-bad.yaml", "kind: [\n");
        dir.write("b-bad.json", "{\"kind\": ");
        dir.write("c-good.yaml", SERVICE);
        let outcome = dir.load();
        assert_eq!(outcome.files, 3);
        assert_eq!(outcome.errors.len(), 2, "{:#?}", outcome.errors);
        assert!(outcome.errors[0].file.ends_with("a-bad.yaml"));
        assert!(outcome.errors[1].file.ends_with("b-bad.json"));
        assert!(outcome.store.services.contains_key(&ObjectKey::new("shop", "web")));
    }

    #[test]
    fn duplicates_later_file_wins() {
        let dir = TempDir::new("dup");
        dir.write("10-first.yaml", SERVICE);
        let second = dir.write("20-second.yaml", &SERVICE.replace("10.96.0.10", "10.96.0.20"));
        let outcome = dir.load();
        let service = &outcome.store.services[&ObjectKey::new("shop", "web")];
        assert_eq!(service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()), Some("10.96.0.20"));
        let error = only_error(&outcome);
        assert_eq!(error.file, second);
        assert!(error.message.contains("duplicate Service shop/web"), "{error}");
        assert!(error.message.contains("10-first.yaml"), "{error}");
    }

    #[test]
    fn missing_directory_is_an_error() {
        let dir = TempDir::new("missing");
        let missing = dir.0.join("nope");
        assert!(matches!(load_dir(&missing), Err(Error::ReadDir { .. })));
    }

    #[test]
    fn manifest_names() {
        for (name, want) in [
            ("a.yaml", true),
            ("a.yml", true),
            ("a.json", true),
            (".yaml", false),
            (".a.yaml", false),
            ("..data", false),
            ("a.yaml~", false),
            ("#a.yaml#", false),
            ("a.yaml.swp", false),
            ("a.txt", false),
        ] {
            assert_eq!(is_manifest_name(OsStr::new(name)), want, "{name}");
        }
    }

    #[test]
    fn watch_reports_changes_but_not_reads() {
        let dir = TempDir::new("watch");
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let _watcher = watch_dir(&dir.0, tx).expect("watch");
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        let wait = |rx: &mut tokio::sync::mpsc::Receiver<()>, ms| {
            runtime.block_on(async {
                tokio::time::timeout(std::time::Duration::from_millis(ms), rx.recv()).await.is_ok()
            })
        };
        let drain = |rx: &mut tokio::sync::mpsc::Receiver<()>| while rx.try_recv().is_ok() {};

        dir.write("svc.yaml", SERVICE);
        assert!(wait(&mut rx, 5000), "no event for a new file");
        std::thread::sleep(std::time::Duration::from_millis(200));
        drain(&mut rx);

        // Reading the directory is not a change.
        assert_eq!(dir.load().store.services.len(), 1);
        dir.write("notes.txt", "x");
        assert!(!wait(&mut rx, 300), "event for a read or an unrelated file");

        std::fs::remove_file(dir.0.join("svc.yaml")).expect("rm");
        assert!(wait(&mut rx, 5000), "no event for a removed file");
    }
}
