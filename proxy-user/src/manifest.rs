//! TEMPORARY stub of the manifest API (replaced by the real reader).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}
#[derive(Default, Clone, Debug)]
pub struct Store {
    pub services: BTreeMap<ObjectKey, k8s_openapi::api::core::v1::Service>,
    pub endpoint_slices: BTreeMap<ObjectKey, k8s_openapi::api::discovery::v1::EndpointSlice>,
    pub nodes: BTreeMap<String, k8s_openapi::api::core::v1::Node>,
}
#[derive(Debug)]
pub struct ManifestError {
    pub file: PathBuf,
    pub document: usize,
    pub field: Option<String>,
    pub message: String,
}
impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}
pub struct LoadOutcome {
    pub store: Store,
    pub errors: Vec<ManifestError>,
    pub files: usize,
}
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);
pub fn load_dir(_dir: &Path) -> Result<LoadOutcome, Error> {
    Ok(LoadOutcome {
        store: Store::default(),
        errors: vec![],
        files: 0,
    })
}
pub fn watch_dir(
    _dir: &Path,
    _tx: tokio::sync::mpsc::Sender<()>,
) -> Result<notify::RecommendedWatcher, Error> {
    Err(Error("stub".into()))
}
