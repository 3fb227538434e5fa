//! A small Kubernetes API server for tests, speaking the real protocol for
//! Services, `discovery.k8s.io/v1` EndpointSlices and Nodes, so the real agent
//! (kube-rs) can be tested without a cluster.
//!
//! Plain HTTP/1.1 on `127.0.0.1`, no authentication (a kubeconfig with
//! `server: http://127.0.0.1:PORT`, see [`ApiServer::write_kubeconfig`]):
//! - LIST `GET /api/v1/services`, `/api/v1/namespaces/{ns}/services`,
//!   `/apis/discovery.k8s.io/v1/[namespaces/{ns}/]endpointslices`,
//!   `/api/v1/nodes`: a `...List` with `metadata.resourceVersion`; filters
//!   `labelSelector` (`key`, `!key`, `key=value`, `key==value`, `key!=value`,
//!   comma-joined) and `fieldSelector` (`metadata.name=`, `metadata.namespace=`);
//!   `limit` pages the list as kube-apiserver does (`metadata.continue`; the
//!   next page asks with `continue=`; no `remainingItemCount`): kube-rs lists
//!   500 objects a page, so a client never holds a whole 10k list at once.
//!   Every page carries the first page's resourceVersion; later pages show the
//!   objects as they are now (the real server serves the first page's
//!   snapshot), which a client following the watch from that version cannot
//!   tell apart: it sees changes made in between twice at most. A token
//!   older than the compacted history is 410 `Expired`, as the real server's.
//! - WATCH (`?watch=1&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=S`):
//!   a chunked stream of JSON lines `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK",
//!   "object":{...}}` with every change after N (no N, or `0`: the current
//!   objects as ADDED first). A label change that moves an object out of (into)
//!   the selector is a DELETED (ADDED), as the real server sends. When N is
//!   older than the compacted history ([`ApiServer::compact`]) the stream is one
//!   `ERROR` event with a `Status` 410 `Expired`, as kube-apiserver sends it.
//!   Bookmarks every second.
//! - GET, POST, PUT (with an optimistic-concurrency check when the body has a
//!   `resourceVersion`), DELETE of single objects.
//! - `GET /version`. Anything else is a 404 `Status`, logged to stderr and in
//!   [`ApiServer::unknown_requests`].
//!
//! One resourceVersion counter for all kinds, as etcd's revision. Tests drive
//! the server through its Rust API ([`ApiServer::apply`], [`ApiServer::delete`],
//! [`ApiServer::compact`], [`ApiServer::drop_watches`],
//! [`ApiServer::block_watches`]) and look at what clients asked
//! ([`ApiServer::requests`]).
//!
//! The server runs a current-thread tokio runtime on its own thread; the
//! listening socket belongs to the network namespace it was bound in
//! ([`ApiServer::start_in`]), so an agent inside a node namespace reaches it
//! on that namespace's loopback.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use futures::SinkExt as _;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, oneshot, watch};

use super::{CMD_TIMEOUT, Netns};

/// How often a watch with `allowWatchBookmarks` gets a BOOKMARK.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);
/// The watch timeout when the client gives none (kube-apiserver: 30-60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// The resources served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
}

impl Resource {
    pub const ALL: [Resource; 3] = [Self::Services, Self::EndpointSlices, Self::Nodes];

    pub fn kind(self) -> &'static str {
        match self {
            Self::Services => "Service",
            Self::EndpointSlices => "EndpointSlice",
            Self::Nodes => "Node",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Self::Services | Self::Nodes => "v1",
            Self::EndpointSlices => "discovery.k8s.io/v1",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Self::Services => "services",
            Self::EndpointSlices => "endpointslices",
            Self::Nodes => "nodes",
        }
    }

    fn namespaced(self) -> bool {
        !matches!(self, Self::Nodes)
    }

    /// The resource of a `kind`.
    pub fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.kind() == kind)
    }
}

/// One request a client made.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The resource addressed, if any.
    pub resource: Option<Resource>,
    /// A WATCH (as opposed to a LIST or a single-object request).
    pub watch: bool,
    /// A collection GET without `watch`.
    pub list: bool,
    pub status: u16,
}

type Body = BoxBody<Bytes, io::Error>;

/// A stored change, broadcast to the watches.
#[derive(Debug)]
struct Change {
    rv: u64,
    resource: Resource,
    /// ADDED, MODIFIED or DELETED.
    kind: &'static str,
    old: Option<Value>,
    new: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (resource, namespace ("" for nodes), name) -> object.
    objects: BTreeMap<(Resource, String, String), Value>,
    /// Changes after `compacted`, oldest first.
    history: Vec<Arc<Change>>,
    /// Watches from an older resourceVersion get 410 Gone.
    compacted: u64,
    watches_blocked: bool,
    lists_blocked: bool,
    requests: Vec<RequestRecord>,
    unknown: Vec<String>,
    next_uid: u64,
}

struct Shared {
    state: Mutex<State>,
    changes: broadcast::Sender<Arc<Change>>,
    /// Bumped by `drop_watches`: every open watch is cut.
    drops: watch::Sender<u64>,
    active_watches: AtomicUsize,
}

/// An API error, sent as a `Status`.
#[derive(Debug)]
struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into() }
    }

    fn status(&self) -> Value {
        status_object(self.code.as_u16(), self.reason, &self.message)
    }
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl Shared {
    fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            changes: broadcast::channel(1024).0,
            drops: watch::channel(0).0,
            active_watches: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a change (under the state lock, so a watch that subscribes
    /// under the lock sees each change exactly once).
    fn record(
        &self,
        state: &mut State,
        resource: Resource,
        kind: &'static str,
        old: Option<Value>,
        new: Value,
    ) {
        let change = Arc::new(Change { rv: state.rv, resource, kind, old, new });
        state.history.push(change.clone());
        let _ = self.changes.send(change);
    }

    /// Checks kind, name and namespace; returns the object's key.
    fn normalise(
        resource: Resource,
        path_ns: Option<&str>,
        object: &mut Value,
    ) -> Result<(String, String), ApiError> {
        let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", m);
        let Some(map) = object.as_object_mut() else {
            return Err(bad("the body is not an object".into()));
        };
        match map.get("kind").and_then(Value::as_str) {
            Some(k) if k == resource.kind() => {}
            None => {
                map.insert("kind".into(), resource.kind().into());
            }
            Some(k) => return Err(bad(format!("kind {k} sent to {}", resource.plural()))),
        }
        map.insert("apiVersion".into(), resource.api_version().into());
        let meta = map.entry("metadata").or_insert_with(|| json!({}));
        let Some(meta) = meta.as_object_mut() else {
            return Err(bad("metadata is not an object".into()));
        };
        let name = meta.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        if name.is_empty() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name: Required value",
            ));
        }
        let namespace = if resource.namespaced() {
            let body_ns = meta.get("namespace").and_then(Value::as_str).unwrap_or_default();
            let ns = match (path_ns, body_ns) {
                (Some(p), b) if !b.is_empty() && b != p => {
                    return Err(bad(format!(
                        "the namespace of the object ({b}) does not match the namespace on the request ({p})"
                    )));
                }
                (Some(p), _) => p.to_owned(),
                (None, "") => "default".to_owned(),
                (None, b) => b.to_owned(),
            };
            meta.insert("namespace".into(), ns.clone().into());
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        Ok((namespace, name))
    }

    fn create(
        &self,
        resource: Resource,
        path_ns: Option<&str>,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let (ns, name) = Self::normalise(resource, path_ns, &mut object)?;
        let mut state = self.lock();
        let key = (resource, ns, name);
        if state.objects.contains_key(&key) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{} \"{}\" already exists", resource.plural(), key.2),
            ));
        }
        state.rv += 1;
        state.next_uid += 1;
        let (rv, uid) = (state.rv, state.next_uid);
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = rv.to_string().into();
        meta["uid"] = format!("00000000-0000-4000-8000-{uid:012}").into();
        meta["creationTimestamp"] = "2026-01-01T00:00:00Z".into();
        meta["generation"] = 1.into();
        state.objects.insert(key, object.clone());
        self.record(&mut state, resource, "ADDED", None, object.clone());
        Ok(object)
    }

    fn update(
        &self,
        resource: Resource,
        path: Option<(&str, &str)>,
        mut object: Value,
        check_version: bool,
    ) -> Result<Value, ApiError> {
        let (ns, name) = Self::normalise(resource, path.map(|p| p.0), &mut object)?;
        if let Some((_, path_name)) = path
            && path_name != name
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!(
                    "the name of the object ({name}) does not match the name on the URL ({path_name})"
                ),
            ));
        }
        let mut state = self.lock();
        let key = (resource, ns, name);
        let Some(old) = state.objects.get(&key).cloned() else {
            return Err(not_found(resource, &key.2));
        };
        let sent = object["metadata"]["resourceVersion"].as_str().unwrap_or_default();
        if check_version && !sent.is_empty() && sent != old["metadata"]["resourceVersion"] {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": the object has been modified",
                    resource.plural(),
                    key.2
                ),
            ));
        }
        state.rv += 1;
        let rv = state.rv;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = rv.to_string().into();
        for field in ["uid", "creationTimestamp"] {
            meta[field] = old["metadata"][field].clone();
        }
        meta["generation"] = (old["metadata"]["generation"].as_i64().unwrap_or(1) + 1).into();
        state.objects.insert(key, object.clone());
        self.record(&mut state, resource, "MODIFIED", Some(old), object.clone());
        Ok(object)
    }

    fn delete(&self, resource: Resource, ns: &str, name: &str) -> Result<Value, ApiError> {
        let mut state = self.lock();
        let ns = if resource.namespaced() { ns } else { "" };
        let Some(mut object) = state.objects.remove(&(resource, ns.to_owned(), name.to_owned()))
        else {
            return Err(not_found(resource, name));
        };
        state.rv += 1;
        object["metadata"]["resourceVersion"] = state.rv.to_string().into();
        self.record(&mut state, resource, "DELETED", None, object.clone());
        Ok(object)
    }
}

fn not_found(resource: Resource, name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{} \"{name}\" not found", resource.plural()),
    )
}

// ---------------------------------------------------------------------------
// Selectors
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
}

/// Parses a label selector of `key`, `!key`, `key=value`, `key==value` and
/// `key!=value` terms, comma-joined. Set-based terms (`in`, `notin`) are
/// refused.
fn parse_label_selector(selector: &str) -> Result<Vec<Requirement>, String> {
    let mut out = Vec::new();
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if term.contains('(') || term.contains(' ') {
            return Err(format!("unsupported selector term {term:?}"));
        }
        let req = if let Some(key) = term.strip_prefix('!') {
            Requirement::NotExists(key.to_owned())
        } else if let Some((k, v)) = term.split_once("!=") {
            Requirement::NotEquals(k.to_owned(), v.to_owned())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Requirement::Equals(k.to_owned(), v.to_owned())
        } else {
            Requirement::Exists(term.to_owned())
        };
        let key = match &req {
            Requirement::Exists(k)
            | Requirement::NotExists(k)
            | Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _) => k,
        };
        if key.is_empty() {
            return Err(format!("empty key in selector term {term:?}"));
        }
        out.push(req);
    }
    Ok(out)
}

fn labels_match(reqs: &[Requirement], object: &Value) -> bool {
    let labels = object["metadata"]["labels"].as_object();
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    reqs.iter().all(|r| match r {
        Requirement::Exists(k) => get(k).is_some(),
        Requirement::NotExists(k) => get(k).is_none(),
        Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
        Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
    })
}

/// Which objects a LIST or WATCH wants.
#[derive(Clone, Debug)]
struct Filter {
    resource: Resource,
    namespace: Option<String>,
    labels: Vec<Requirement>,
    name: Option<String>,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        self.namespace.as_deref().is_none_or(|ns| meta["namespace"] == ns)
            && self.name.as_deref().is_none_or(|n| meta["name"] == n)
            && labels_match(&self.labels, object)
    }

    /// What a watch with this filter sees of `change`.
    fn view<'c>(&self, change: &'c Change) -> Option<(&'static str, &'c Value)> {
        if change.resource != self.resource {
            return None;
        }
        let now = self.matches(&change.new);
        match change.kind {
            "MODIFIED" => match (change.old.as_ref().is_some_and(|o| self.matches(o)), now) {
                (true, true) => Some(("MODIFIED", &change.new)),
                (false, true) => Some(("ADDED", &change.new)),
                (true, false) => Some(("DELETED", &change.new)),
                (false, false) => None,
            },
            kind => now.then_some((kind, &change.new)),
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// `/api/v1/...` or `/apis/discovery.k8s.io/v1/...`: resource, namespace,
/// name.
fn route(path: &str) -> Option<(Resource, Option<String>, Option<String>)> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_core, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => (true, rest),
        ["apis", "discovery.k8s.io", "v1", rest @ ..] => (false, rest),
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name) = match rest {
        [plural] => (*plural, None),
        [plural, name] => (*plural, Some((*name).to_owned())),
        _ => return None,
    };
    let resource = Resource::ALL
        .into_iter()
        .find(|r| r.plural() == plural && (r.api_version() == "v1") == group_core)?;
    if ns.is_some() && !resource.namespaced() {
        return None;
    }
    if name.is_some() && ns.is_none() && resource.namespaced() {
        return None;
    }
    Some((resource, ns, name))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed())
        .expect("valid response")
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let params = parse_query(&query);
    let routed = route(&path);
    let is_watch = params.get("watch").is_some_and(|w| w == "1" || w == "true");
    let is_collection = routed.as_ref().is_some_and(|r| r.2.is_none());
    let list = method == Method::GET && is_collection && !is_watch;
    let resource = routed.as_ref().map(|r| r.0);
    let watch = method == Method::GET && is_collection && is_watch;

    let response = match (&method, routed) {
        (&Method::GET, _) if path == "/version" => json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-sluice-testbed",
                    "platform": "linux/amd64"}),
        ),
        (_, None) => {
            let line = format!("{method} {path}?{query}");
            eprintln!("testbed apiserver: unknown request {line}");
            shared.lock().unknown.push(line);
            error_response(&ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            ))
        }
        (m, Some((resource, ns, name))) => {
            match serve(&shared, m, resource, ns, name, &params, is_watch, req).await {
                Ok(r) => r,
                Err(e) => error_response(&e),
            }
        }
    };
    shared.lock().requests.push(RequestRecord {
        method: method.to_string(),
        path,
        query,
        resource,
        watch,
        list,
        status: response.status().as_u16(),
    });
    Ok(response)
}

#[expect(clippy::too_many_arguments, reason = "one request's parts")]
async fn serve(
    shared: &Arc<Shared>,
    method: &Method,
    resource: Resource,
    ns: Option<String>,
    name: Option<String>,
    params: &BTreeMap<String, String>,
    is_watch: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", m);
    let body = |req: Request<Incoming>| async move {
        let bytes = req
            .into_body()
            .collect()
            .await
            .map_err(|e| bad(format!("reading the body: {e}")))?
            .to_bytes();
        serde_json::from_slice::<Value>(&bytes).map_err(|e| bad(format!("invalid JSON: {e}")))
    };
    match (method, name) {
        (&Method::GET, None) => {
            let labels =
                parse_label_selector(params.get("labelSelector").map_or("", String::as_str))
                    .map_err(bad)?;
            let mut filter = Filter { resource, namespace: ns, labels, name: None };
            for term in params.get("fieldSelector").map_or("", String::as_str).split(',') {
                match term.trim().split_once('=') {
                    None if term.trim().is_empty() => {}
                    Some(("metadata.name", v)) => {
                        filter.name = Some(v.trim_start_matches('=').to_owned());
                    }
                    Some(("metadata.namespace", v)) => {
                        filter.namespace = Some(v.trim_start_matches('=').to_owned());
                    }
                    _ => return Err(bad(format!("unsupported field selector {term:?}"))),
                }
            }
            if is_watch {
                Ok(start_watch(shared, filter, params)?)
            } else {
                Ok(list(shared, &filter, params)?)
            }
        }
        (&Method::POST, None) => {
            let object = body(req).await?;
            let created = shared.create(resource, ns.as_deref(), object)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (&Method::GET, Some(name)) => {
            let state = shared.lock();
            let key = (resource, ns.unwrap_or_default(), name);
            match state.objects.get(&key) {
                Some(o) => Ok(json_response(StatusCode::OK, o)),
                None => Err(not_found(resource, &key.2)),
            }
        }
        (&Method::PUT, Some(name)) => {
            let object = body(req).await?;
            let path_ns = ns.as_deref().unwrap_or_default();
            let updated = shared.update(resource, Some((path_ns, name.as_str())), object, true)?;
            Ok(json_response(StatusCode::OK, &updated))
        }
        (&Method::DELETE, Some(name)) => {
            let deleted = shared.delete(resource, ns.as_deref().unwrap_or_default(), &name)?;
            Ok(json_response(StatusCode::OK, &deleted))
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not supported here"),
        )),
    }
}

fn list(
    shared: &Shared,
    filter: &Filter,
    params: &BTreeMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    list_value(shared, filter, params).map(|list| json_response(StatusCode::OK, &list))
}

/// The `...List` (one page of it) that a LIST gets.
fn list_value(
    shared: &Shared,
    filter: &Filter,
    params: &BTreeMap<String, String>,
) -> Result<Value, ApiError> {
    let state = shared.lock();
    if state.lists_blocked {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "lists are blocked by the test",
        ));
    }
    if params.get("resourceVersionMatch").is_some_and(|m| m == "Exact")
        && let Some(rv) = params.get("resourceVersion").and_then(|v| v.parse::<u64>().ok())
        && rv < state.compacted
    {
        return Err(ApiError::new(
            StatusCode::GONE,
            "Expired",
            format!("too old resource version: {rv} ({})", state.compacted),
        ));
    }
    let resource = filter.resource;
    let bad = |what: &str| {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", format!("invalid {what} parameter"))
    };
    let limit = match params.get("limit").filter(|l| !l.is_empty()) {
        Some(l) => Some(l.parse::<usize>().map_err(|_| bad("limit"))?).filter(|l| *l > 0),
        None => None,
    };
    // The token: the list's resourceVersion and the last key sent.
    let (rv, after) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, rest) = token.split_once('/').ok_or_else(|| bad("continue"))?;
            let (ns, name) = rest.split_once('/').ok_or_else(|| bad("continue"))?;
            let rv: u64 = rv.parse().map_err(|_| bad("continue"))?;
            if rv < state.compacted {
                return Err(ApiError::new(
                    StatusCode::GONE,
                    "Expired",
                    format!(
                        "The provided continue parameter is too old to display a consistent list result. \
                         ({rv} < {})",
                        state.compacted
                    ),
                ));
            }
            (rv, Some((resource, ns.to_owned(), name.to_owned())))
        }
        None => (state.rv, None),
    };
    let start = match after {
        Some(key) => Bound::Excluded(key),
        None => Bound::Included((resource, String::new(), String::new())),
    };
    let mut matching = state
        .objects
        .range((start, Bound::Unbounded))
        .take_while(|((r, _, _), _)| *r == resource)
        .filter(|(_, o)| filter.matches(o));
    let items: Vec<&Value> =
        matching.by_ref().take(limit.unwrap_or(usize::MAX)).map(|(_, o)| o).collect();
    // More to come? (Without counting them: kube-apiserver leaves out
    // `remainingItemCount` when a selector filters, as here mostly.)
    let more = matching.next().is_some();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if more && let Some(last) = items.last() {
        let meta = &last["metadata"];
        let ns = meta["namespace"].as_str().unwrap_or_default();
        let name = meta["name"].as_str().unwrap_or_default();
        metadata["continue"] = json!(format!("{rv}/{ns}/{name}"));
    }
    Ok(json!({
        "kind": format!("{}List", resource.kind()),
        "apiVersion": resource.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn start_watch(
    shared: &Arc<Shared>,
    filter: Filter,
    params: &BTreeMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let bookmarks = params.get("allowWatchBookmarks").is_some_and(|b| b == "true" || b == "1");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let requested = params.get("resourceVersion").filter(|v| !v.is_empty() && *v != "0");
    let requested = match requested {
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("invalid resourceVersion {v:?}"),
            )
        })?),
        None => None,
    };

    let state = shared.lock();
    if state.watches_blocked {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "watches are blocked by the test",
        ));
    }
    let mut initial: Vec<Bytes> = Vec::new();
    let mut gone = false;
    match requested {
        None => {
            for ((r, _, _), o) in &state.objects {
                if *r == filter.resource && filter.matches(o) {
                    initial.push(event_line("ADDED", o));
                }
            }
        }
        Some(rv) if rv < state.compacted => {
            let message = format!("too old resource version: {rv} ({})", state.compacted);
            initial.push(event_line("ERROR", &status_object(410, "Expired", &message)));
            gone = true;
        }
        Some(rv) => {
            for change in state.history.iter().filter(|c| c.rv > rv) {
                if let Some((kind, object)) = filter.view(change) {
                    initial.push(event_line(kind, object));
                }
            }
        }
    }
    let mut changes = shared.changes.subscribe();
    let mut drops = shared.drops.subscribe();
    drops.borrow_and_update();
    let mut last_rv = state.rv;
    drop(state);

    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, io::Error>>(64);
    let shared = shared.clone();
    shared.active_watches.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        struct Active(Arc<Shared>);
        impl Drop for Active {
            fn drop(&mut self) {
                self.0.active_watches.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _active = Active(shared);
        for line in initial {
            if tx.send(Ok(Frame::data(line))).await.is_err() {
                return;
            }
        }
        if gone {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticks = tokio::time::interval(BOOKMARK_EVERY);
        ticks.tick().await;
        let bookmark = |rv: u64| {
            event_line(
                "BOOKMARK",
                &json!({"kind": filter.resource.kind(), "apiVersion": filter.resource.api_version(),
                        "metadata": {"resourceVersion": rv.to_string()}}),
            )
        };
        loop {
            let line = tokio::select! {
                () = &mut deadline => return,
                _ = drops.changed() => {
                    let _ = tx.send(Err(io::Error::other("watch dropped by the test"))).await;
                    return;
                }
                change = changes.recv() => match change {
                    Ok(change) => {
                        last_rv = change.rv;
                        match filter.view(&change) {
                            Some((kind, object)) => event_line(kind, object),
                            None => continue,
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(Err(io::Error::other("watch lagged"))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticks.tick(), if bookmarks => bookmark(last_rv),
            };
            if tx.send(Ok(Frame::data(line))).await.is_err() {
                return;
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(StreamBody::new(rx).boxed())
        .expect("valid response"))
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

/// The test API server; stopped (thread joined, watches cut) on drop.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Listens on `127.0.0.1:<free port>` of the calling thread's network
    /// namespace.
    pub fn start() -> anyhow::Result<ApiServer> {
        let listener =
            StdListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
        Self::serve(listener)
    }

    /// Listens on `127.0.0.1:<free port>` inside `ns` (e.g. a node, so that
    /// an agent running there reaches it on its loopback).
    pub fn start_in(ns: &impl AsRef<Netns>) -> anyhow::Result<ApiServer> {
        let listener = ns
            .as_ref()
            .exec(CMD_TIMEOUT, || StdListener::bind((Ipv4Addr::LOCALHOST, 0)))?
            .context("binding 127.0.0.1:0 in the namespace")?;
        Self::serve(listener)
    }

    fn serve(listener: StdListener) -> anyhow::Result<ApiServer> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new());
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<io::Result<()>>(1);
        let server = shared.clone();
        let thread =
            std::thread::Builder::new().name("test-apiserver".into()).spawn(move || {
                let runtime =
                    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let shared = server.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |req| {
                                    handle(shared.clone(), req)
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                    }
                }
            });
                // Dropping the runtime cancels the connections and watches.
            })?;
        match ready_rx.recv_timeout(CMD_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("test API server did not start: {e}"),
            Err(_) => bail!("test API server did not start within {CMD_TIMEOUT:?}"),
        }
        Ok(ApiServer { addr, shared, stop: Some(stop), thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server (plain HTTP, no credentials).
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: {}\n\
             contexts:\n- name: testbed\n  context:\n    cluster: testbed\n    user: testbed\n    \
             namespace: default\ncurrent-context: testbed\nusers:\n- name: testbed\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    fn resource_of(value: &Value) -> anyhow::Result<Resource> {
        let kind = value["kind"].as_str().ok_or_else(|| anyhow!("object without kind"))?;
        Resource::from_kind(kind)
            .ok_or_else(|| anyhow!("the test API server does not serve {kind}"))
    }

    fn to_value(object: &impl Serialize) -> anyhow::Result<Value> {
        serde_json::to_value(object).context("serialising the object")
    }

    /// Creates an object (a k8s-openapi type or JSON with `kind`); returns it
    /// as stored, with its resourceVersion.
    pub fn create(&self, object: &impl Serialize) -> anyhow::Result<Value> {
        let value = Self::to_value(object)?;
        let resource = Self::resource_of(&value)?;
        self.shared.create(resource, None, value).map_err(|e| anyhow!("create: {}", e.message))
    }

    /// Replaces an existing object (no resourceVersion check).
    pub fn update(&self, object: &impl Serialize) -> anyhow::Result<Value> {
        let value = Self::to_value(object)?;
        let resource = Self::resource_of(&value)?;
        self.shared
            .update(resource, None, value, false)
            .map_err(|e| anyhow!("update: {}", e.message))
    }

    /// Creates or replaces an object.
    pub fn apply(&self, object: &impl Serialize) -> anyhow::Result<Value> {
        let value = Self::to_value(object)?;
        let resource = Self::resource_of(&value)?;
        match self.shared.create(resource, None, value.clone()) {
            Ok(v) => Ok(v),
            Err(e) if e.code == StatusCode::CONFLICT => self
                .shared
                .update(resource, None, value, false)
                .map_err(|e| anyhow!("update: {}", e.message)),
            Err(e) => bail!("create: {}", e.message),
        }
    }

    /// Creates or replaces every object of a YAML stream (e.g.
    /// [`super::ClusterIpService::to_yaml`]); empty documents are skipped.
    pub fn apply_yaml(&self, text: &str) -> anyhow::Result<Vec<Value>> {
        use serde::Deserialize as _;
        let mut out = Vec::new();
        for document in serde_yaml_ng::Deserializer::from_str(text) {
            let value = Value::deserialize(document).context("parsing YAML")?;
            if !value.is_null() {
                out.push(self.apply(&value)?);
            }
        }
        Ok(out)
    }

    /// Deletes object `namespace/name` of kind `K` (namespace ignored for
    /// Nodes).
    pub fn delete<K: k8s_openapi::Resource>(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<()> {
        let resource = Resource::from_kind(K::KIND)
            .ok_or_else(|| anyhow!("the test API server does not serve {}", K::KIND))?;
        self.shared
            .delete(resource, namespace, name)
            .map(drop)
            .map_err(|e| anyhow!("delete: {}", e.message))
    }

    /// The stored object, if any.
    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        let ns = if resource.namespaced() { namespace } else { "" };
        self.shared.lock().objects.get(&(resource, ns.to_owned(), name.to_owned())).cloned()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Forgets the history: watches from an older resourceVersion than now
    /// get 410 Gone (the client must re-list).
    pub fn compact(&self) {
        let mut state = self.shared.lock();
        state.compacted = state.rv;
        state.history.clear();
    }

    /// Cuts every open watch connection (the response ends without its
    /// final chunk, as when a connection breaks).
    pub fn drop_watches(&self) {
        self.shared.drops.send_modify(|n| *n += 1);
    }

    /// While blocked, new watches are refused with 503 (lists still work).
    pub fn block_watches(&self, blocked: bool) {
        self.shared.lock().watches_blocked = blocked;
    }

    /// While blocked, LISTs are refused with 503 (a client cannot complete
    /// its initial list).
    pub fn block_lists(&self, blocked: bool) {
        self.shared.lock().lists_blocked = blocked;
    }

    /// Watches open now.
    pub fn active_watches(&self) -> usize {
        self.shared.active_watches.load(Ordering::Relaxed)
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// LIST requests of `resource` answered 200 so far.
    pub fn lists(&self, resource: Resource) -> usize {
        self.count(resource, |r| r.list)
    }

    /// WATCH requests of `resource` answered 200 so far.
    pub fn watches(&self, resource: Resource) -> usize {
        self.count(resource, |r| r.watch)
    }

    fn count(&self, resource: Resource, what: impl Fn(&RequestRecord) -> bool) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.resource == Some(resource) && r.status == 200 && what(r))
            .count()
    }

    /// Requests for paths this server does not serve.
    pub fn unknown_requests(&self) -> Vec<String> {
        self.shared.lock().unknown.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = route;
        assert_eq!(r("/api/v1/services"), Some((Resource::Services, None, None)));
        assert_eq!(
            r("/api/v1/namespaces/a/services/b"),
            Some((Resource::Services, Some("a".into()), Some("b".into())))
        );
        assert_eq!(
            r("/apis/discovery.k8s.io/v1/namespaces/a/endpointslices"),
            Some((Resource::EndpointSlices, Some("a".into()), None))
        );
        assert_eq!(r("/api/v1/nodes/n1"), Some((Resource::Nodes, None, Some("n1".into()))));
        // Wrong group, namespaced nodes, an unnamespaced service by name.
        assert_eq!(r("/api/v1/endpointslices"), None);
        assert_eq!(r("/apis/discovery.k8s.io/v1/services"), None);
        assert_eq!(r("/api/v1/namespaces/a/nodes"), None);
        assert_eq!(r("/api/v1/services/x"), None);
        assert_eq!(r("/apis/apps/v1/deployments"), None);
    }

    #[test]
    fn label_selectors() {
        let object = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let unlabelled = json!({"metadata": {}});
        for (selector, labelled, bare) in [
            ("", true, true),
            ("app", true, false),
            ("!app", false, true),
            ("app=web", true, false),
            ("app==web", true, false),
            ("app!=web", false, true),
            ("app=web,tier=back", false, false),
            ("app=web, !other", true, false),
            (PROXY_SELECTOR, true, true),
        ] {
            let reqs = parse_label_selector(selector).unwrap();
            assert_eq!(labels_match(&reqs, &object), labelled, "{selector}");
            assert_eq!(labels_match(&reqs, &unlabelled), bare, "{selector}");
        }
        assert!(parse_label_selector("app in (a,b)").is_err());
        assert!(parse_label_selector("=x").is_err());
    }

    const PROXY_SELECTOR: &str =
        "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

    #[test]
    fn query_decoding() {
        let q = parse_query("labelSelector=%21a%2C%21b&watch=true&x=a+b&bad=%zz");
        assert_eq!(q["labelSelector"], "!a,!b");
        assert_eq!(q["watch"], "true");
        assert_eq!(q["x"], "a b");
        assert_eq!(q["bad"], "%zz");
    }

    /// `limit` pages a list in key order; the pages carry the first page's
    /// resourceVersion and together hold every matching object once.
    #[test]
    fn lists_are_paged_with_continue_tokens() {
        let shared = Shared::new();
        for i in 0..7 {
            let labels = if i == 3 { json!({"skip": "1"}) } else { json!({}) };
            let svc = json!({"apiVersion": "v1", "kind": "Service",
                             "metadata": {"name": format!("s{i}"), "namespace": "ns", "labels": labels}});
            shared.create(Resource::Services, None, svc).unwrap();
        }
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}});
        shared.create(Resource::Nodes, None, node).unwrap();
        let filter = Filter {
            resource: Resource::Services,
            namespace: None,
            labels: parse_label_selector("!skip").unwrap(),
            name: None,
        };
        let rv = shared.lock().rv.to_string();
        let mut params = BTreeMap::from([("limit".to_owned(), "4".to_owned())]);
        let first = list_value(&shared, &filter, &params).unwrap();
        let names = |list: &Value| -> Vec<String> {
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["metadata"]["name"].to_string())
                .collect()
        };
        assert_eq!(names(&first), [r#""s0""#, r#""s1""#, r#""s2""#, r#""s4""#]);
        assert_eq!(first["metadata"]["resourceVersion"], json!(rv));
        // A change between pages does not move the list's version.
        let late = json!({"apiVersion": "v1", "kind": "Service",
                          "metadata": {"name": "s9", "namespace": "ns"}});
        shared.create(Resource::Services, None, late).unwrap();
        let token = first["metadata"]["continue"].as_str().unwrap().to_owned();
        params.insert("continue".into(), token.clone());
        let second = list_value(&shared, &filter, &params).unwrap();
        assert_eq!(names(&second), [r#""s5""#, r#""s6""#, r#""s9""#]);
        assert_eq!(second["metadata"]["resourceVersion"], json!(rv));
        assert!(second["metadata"].get("continue").is_none(), "last page");
        // No limit: one page. A bad token or limit is a 400; a token older
        // than the compacted history a 410.
        assert_eq!(names(&list_value(&shared, &filter, &BTreeMap::new()).unwrap()).len(), 7);
        for (k, v) in [("continue", "nonsense"), ("limit", "x")] {
            let e = list_value(&shared, &filter, &BTreeMap::from([(k.into(), v.into())]));
            assert_eq!(e.unwrap_err().code, StatusCode::BAD_REQUEST, "{k}={v}");
        }
        shared.lock().compacted = u64::MAX;
        let e = list_value(&shared, &filter, &params).unwrap_err();
        assert_eq!(e.code, StatusCode::GONE);
    }

    #[test]
    fn label_change_out_of_the_selector_is_a_delete() {
        let filter = Filter {
            resource: Resource::Services,
            namespace: None,
            labels: parse_label_selector("!skip").unwrap(),
            name: None,
        };
        let plain = json!({"metadata": {"name": "s", "namespace": "default"}});
        let skipped =
            json!({"metadata": {"name": "s", "namespace": "default", "labels": {"skip": "1"}}});
        let change = |old: &Value, new: &Value| Change {
            rv: 2,
            resource: Resource::Services,
            kind: "MODIFIED",
            old: Some(old.clone()),
            new: new.clone(),
        };
        assert_eq!(filter.view(&change(&plain, &skipped)).map(|v| v.0), Some("DELETED"));
        assert_eq!(filter.view(&change(&skipped, &plain)).map(|v| v.0), Some("ADDED"));
        assert_eq!(filter.view(&change(&plain, &plain)).map(|v| v.0), Some("MODIFIED"));
        assert_eq!(filter.view(&change(&skipped, &skipped)), None);
    }
}
