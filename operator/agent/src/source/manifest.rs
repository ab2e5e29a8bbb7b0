//! The manifest-directory source: a directory of YAML/JSON Kubernetes manifests (multi-document)
//! is the cluster state. Used on standalone hosts and by the lab. The directory is polled; a
//! change is published as a snapshot whose log names the objects that changed (found by
//! comparing with the previous snapshot: this source cannot know them otherwise). A file that does not parse is reported with its
//! path, document and field, and the previous snapshot stays in force.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::Deserialize;
use tokio::sync::watch;

use super::{ClusterObject, ClusterSnapshot};

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{origin}: document {doc}: {field}: {message}")]
pub struct ManifestError {
    /// File path (or "-" for stdin).
    pub origin: String,
    /// 1-based index of the YAML document in the file.
    pub doc: usize,
    /// Path of the offending field, e.g. `spec.containers[0].ports[0].containerPort`.
    pub field: String,
    pub message: String,
}

#[derive(Deserialize)]
struct TypeMeta {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Option<serde_yaml::Value>,
}

fn typed<T: serde::de::DeserializeOwned>(
    value: serde_yaml::Value,
    origin: &str,
    doc: usize,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| ManifestError {
        origin: origin.to_owned(),
        doc,
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// Parses a (multi-document) manifest. Validation beyond the schema: every object needs
/// `metadata.name`; a Node's `spec.podCIDR` must be an IPv4 CIDR.
pub fn parse(text: &str, origin: &str) -> Result<Vec<ClusterObject>, ManifestError> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let err = |field: &str, message: String| ManifestError {
            origin: origin.to_owned(),
            doc,
            field: field.to_owned(),
            message,
        };
        let value = serde_yaml::Value::deserialize(de).map_err(|e| err(".", e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let meta: TypeMeta = typed(value.clone(), origin, doc)?;
        if meta.kind.is_empty() {
            return Err(err("kind", "missing".into()));
        }
        if meta.api_version.is_empty() {
            return Err(err("apiVersion", "missing".into()));
        }
        let name =
            meta.metadata.as_ref().and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or_default().to_owned();
        if name.is_empty() {
            return Err(err("metadata.name", "missing".into()));
        }
        let obj = match (meta.api_version.as_str(), meta.kind.as_str()) {
            ("v1", "Node") => {
                let node: k8s_openapi::api::core::v1::Node = typed(value, origin, doc)?;
                if let Some(cidr) = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
                    cidr.parse::<ipnetwork::Ipv4Network>()
                        .map_err(|e| err("spec.podCIDR", format!("{cidr:?} is not an IPv4 CIDR: {e}")))?;
                }
                ClusterObject::Node(Box::new(node))
            }
            ("v1", "Namespace") => ClusterObject::Namespace(Box::new(typed(value, origin, doc)?)),
            ("v1", "Pod") => ClusterObject::Pod(Box::new(typed(value, origin, doc)?)),
            ("v1", "Service") => ClusterObject::Service(Box::new(typed(value, origin, doc)?)),
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                ClusterObject::EndpointSlice(Box::new(typed(value, origin, doc)?))
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                ClusterObject::NetworkPolicy(Box::new(typed(value, origin, doc)?))
            }
            (_, kind) => ClusterObject::Other { kind: kind.to_owned(), name },
        };
        out.push(obj);
    }
    Ok(out)
}

/// Parses a (multi-document) manifest into a snapshot.
pub fn snapshot_of(text: &str, origin: &str) -> Result<ClusterSnapshot, ManifestError> {
    let mut snap = ClusterSnapshot::default();
    for o in parse(text, origin)? {
        snap.insert(o);
    }
    Ok(snap)
}

/// Reads one manifest file.
pub fn load_file(path: &Path) -> Result<Vec<ClusterObject>, ManifestError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
        origin: origin.clone(),
        doc: 0,
        field: ".".into(),
        message: e.to_string(),
    })?;
    parse(&text, &origin)
}

/// The directory as last read: each file's objects from its last good version. A file that
/// stops parsing keeps its previous content in force (or contributes nothing if it never parsed).
#[derive(Default)]
pub struct DirState {
    files: BTreeMap<PathBuf, ((SystemTime, u64), Vec<ClusterObject>)>,
    errors: BTreeMap<PathBuf, ManifestError>,
    /// Whether the objects in force changed since the last [`DirState::take_changed`].
    changed: bool,
}

impl DirState {
    /// Re-reads changed files; returns the errors that are new since the last refresh.
    pub fn refresh(&mut self, dir: &Path) -> Vec<ManifestError> {
        let sig = signature(dir);
        let before = self.files.len();
        self.files.retain(|p, _| sig.contains_key(p));
        self.changed |= self.files.len() != before;
        self.errors.retain(|p, _| sig.contains_key(p));
        let mut new_errors = Vec::new();
        for (path, stamp) in sig {
            if self.files.get(&path).is_some_and(|(s, _)| *s == stamp) {
                continue;
            }
            match load_file(&path) {
                Ok(objs) => {
                    self.errors.remove(&path);
                    self.files.insert(path, (stamp, objs));
                    self.changed = true;
                }
                Err(e) => {
                    if self.errors.get(&path) != Some(&e) {
                        new_errors.push(e.clone());
                    }
                    self.errors.insert(path, e);
                }
            }
        }
        new_errors
    }

    /// True once after the objects in force changed (a file parsed anew or went away).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Every object in force, as parsed (Pods whole, before the snapshot slims them).
    pub fn objects(&self) -> impl Iterator<Item = &ClusterObject> {
        self.files.values().flat_map(|(_, objs)| objs)
    }

    pub fn snapshot(&self) -> ClusterSnapshot {
        let mut snap = ClusterSnapshot::default();
        for (_, objs) in self.files.values() {
            for o in objs {
                snap.insert(o.clone());
            }
        }
        snap
    }
}

fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
            !hidden && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    files
}

/// (path, mtime, size) of every manifest: cheap change detection.
fn signature(dir: &Path) -> BTreeMap<PathBuf, (SystemTime, u64)> {
    manifest_files(dir)
        .into_iter()
        .filter_map(|p| {
            let m = std::fs::metadata(&p).ok()?;
            Some((p, (m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Polls `dir` and publishes each changed snapshot. Runs until the receiver is gone.
/// Re-reads `dir` every `every`, or at once when `kick` is notified (an ADD waiting for its pod).
pub async fn watch_dir(
    dir: PathBuf,
    every: Duration,
    tx: watch::Sender<Option<ClusterSnapshot>>,
    kick: std::sync::Arc<tokio::sync::Notify>,
) {
    let mut state = DirState::default();
    let mut first = true;
    loop {
        for e in state.refresh(&dir) {
            tracing::error!(error = %e, "manifest rejected; its previous version stays in force");
        }
        // Rebuild the snapshot only when a file changed, not on every poll; publish it with
        // what changed (unchanged objects keep their shared copies).
        if state.take_changed() || first {
            first = false;
            let mut snap = state.snapshot();
            let old = tx.borrow().clone().unwrap_or_default();
            snap.succeed(&old);
            let changed = snap.log.head() != old.log.head();
            if (changed || tx.borrow().is_none()) && tx.send(Some(snap)).is_err() {
                return;
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = kick.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDR: 10.244.1.0/24}
status:
  addresses: [{type: InternalIP, address: 172.30.0.1}]
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: n1
  containers:
  - name: c
    image: none
    ports: [{containerPort: 8080, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 80}]}
";

    #[test]
    fn parses_multi_document_manifests() {
        let objs = parse(GOOD, "good.yaml").expect("parse");
        assert_eq!(objs.len(), 4);
        assert!(matches!(objs[3], ClusterObject::Service(_)));
        let mut snap = ClusterSnapshot::default();
        for o in objs {
            snap.insert(o);
        }
        assert_eq!(snap.nodes["n1"].spec.as_ref().and_then(|s| s.pod_cidr.as_deref()), Some("10.244.1.0/24"));
        assert!(snap.pods.contains_key(&("shop".into(), "web".into())));
        assert!(snap.namespaces.contains_key("shop"));
    }

    #[test]
    fn errors_name_the_file_document_and_field() {
        let bad = GOOD.replace("containerPort: 8080", "containerPort: eighty");
        let e = parse(&bad, "apps.yaml").expect_err("bad port");
        assert_eq!(e.origin, "apps.yaml");
        assert_eq!(e.doc, 3);
        assert!(e.field.contains("containerPort"), "{e}");

        let e = parse(&GOOD.replace("10.244.1.0/24", "10.244.1.0/99"), "nodes.yaml").expect_err("bad cidr");
        assert_eq!((e.doc, e.field.as_str()), (1, "spec.podCIDR"));

        let e = parse("apiVersion: v1\nkind: Pod\nmetadata: {}\n", "x.yaml").expect_err("no name");
        assert_eq!(e.field, "metadata.name");

        let e = parse("kind: [unclosed", "y.yaml").expect_err("not yaml");
        assert_eq!(e.doc, 1);
    }

    #[test]
    fn a_bad_file_keeps_the_previous_snapshot() {
        let dir = std::env::temp_dir().join(format!("weir-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("a.yaml"), GOOD).expect("write");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let (tx, mut rx) = watch::channel(None);
            let task = tokio::spawn(watch_dir(dir.clone(), Duration::from_millis(10), tx, Default::default()));
            rx.changed().await.expect("first snapshot");
            assert_eq!(rx.borrow().as_ref().map(|s| s.pods.len()), Some(1));
            std::fs::write(
                dir.join("b.yaml"),
                "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: 5}\n",
            )
            .expect("write bad");
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!rx.has_changed().expect("open"), "a bad new file must not change the state");
            // A good file turning bad keeps its last good content.
            std::fs::write(dir.join("a.yaml"), GOOD.replace("containerPort: 8080", "containerPort: x"))
                .expect("break a");
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(rx.borrow().as_ref().map(|s| s.pods.len()), Some(1));
            assert!(!rx.has_changed().expect("open"));
            std::fs::remove_file(dir.join("a.yaml")).expect("rm");
            rx.changed().await.expect("removal publishes");
            assert_eq!(rx.borrow().as_ref().map(|s| s.pods.len()), Some(0));
            task.abort();
        });
        std::fs::remove_dir_all(&dir).ok();
    }
}
