//! The manifest-directory source: a directory of YAML/JSON Kubernetes manifests (multi-document)
//! is the cluster state. Used on standalone hosts and by the lab. The directory is polled (each
//! file's modification time and size); a file that changed is parsed again and only the objects
//! it held or holds are put into the last snapshot, whose log names those that differ. A file
//! that does not parse is reported with its path, document and field, and its previous version
//! stays in force.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::Deserialize;
use tokio::sync::watch;

use super::{Changed, ClusterObject, ClusterSnapshot};

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
    metadata: Option<serde_json::Value>,
}

fn typed<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
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
    let values = json_documents(text).map_err(|e| ManifestError {
        origin: origin.to_owned(),
        doc: e.location().map_or(1, |l| document_at(text, l.line())),
        field: ".".to_owned(),
        message: e.to_string(),
    })?;
    for (i, value) in values.into_iter().enumerate() {
        let doc = i + 1;
        let err = |field: &str, message: String| ManifestError {
            origin: origin.to_owned(),
            doc,
            field: field.to_owned(),
            message,
        };
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

/// Every document of a (multi-document) YAML text as a JSON value (an empty document is
/// `null`): Kubernetes objects are JSON values written as YAML. Read with YAML 1.2's core schema
/// (`y`, `no`, `on` and `0755` stay strings, as a Kubernetes string field reads them), and an
/// error carries no source excerpt (its message names line and column).
pub fn json_documents(text: &str) -> Result<Vec<serde_json::Value>, serde_saphyr::Error> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        with_snippet: false,
    };
    serde_saphyr::from_multiple_with_options(text, options)
}

/// The 1-based document that 1-based `line` of `text` lies in: one more for every `---` line
/// that follows content (a leading `---` opens the first document).
fn document_at(text: &str, line: u64) -> usize {
    let (mut doc, mut content) = (1, false);
    for l in text.lines().take(line.saturating_sub(1) as usize) {
        if l.starts_with("---") {
            doc += usize::from(content);
            content = false;
        } else if !l.trim().is_empty() && !l.trim_start().starts_with('#') {
            content = true;
        }
    }
    doc
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
///
/// It knows its changes: a file parsed anew or gone marks the keys of the objects it held and
/// holds as dirty, and [`DirState::apply_to`] puts only those into the last snapshot. Finding a
/// change costs in proportion to the files that changed, not to the cluster.
#[derive(Default)]
pub struct DirState {
    files: BTreeMap<PathBuf, DirFile>,
    errors: BTreeMap<PathBuf, ManifestError>,
    /// The files defining each object; where several do, the last by path is in force (as a
    /// snapshot built from the files in order would have it).
    owners: HashMap<Changed, BTreeSet<PathBuf>>,
    /// Objects whose version in force may have changed since the last [`DirState::apply_to`].
    dirty: BTreeSet<Changed>,
}

struct DirFile {
    stamp: (SystemTime, u64),
    objects: Vec<ClusterObject>,
    /// Object key → index of its last document in `objects` (a later document wins).
    index: HashMap<Changed, usize>,
}

impl DirState {
    /// Re-reads changed files; returns the errors that are new since the last refresh.
    pub fn refresh(&mut self, dir: &Path) -> Vec<ManifestError> {
        let sig = signature(dir);
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !sig.contains_key(*p)).cloned().collect();
        for path in gone {
            self.remove_file(&path);
        }
        self.errors.retain(|p, _| sig.contains_key(p));
        let mut new_errors = Vec::new();
        for (path, stamp) in sig {
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            match load_file(&path) {
                Ok(objs) => {
                    self.errors.remove(&path);
                    self.set_file(path, stamp, objs);
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

    /// `path` now holds `objects` (read at `stamp`): what [`DirState::refresh`] does with each
    /// file that parsed anew.
    pub fn set_file(&mut self, path: PathBuf, stamp: (SystemTime, u64), objects: Vec<ClusterObject>) {
        self.remove_file(&path);
        let mut index = HashMap::new();
        for (i, o) in objects.iter().enumerate() {
            if let Some(k) = o.key() {
                index.insert(k, i);
            }
        }
        for k in index.keys() {
            self.owners.entry(k.clone()).or_default().insert(path.clone());
            self.dirty.insert(k.clone());
        }
        self.files.insert(path, DirFile { stamp, objects, index });
    }

    /// `path` is gone: its objects are no longer in force (unless another file defines them).
    pub fn remove_file(&mut self, path: &Path) {
        let Some(f) = self.files.remove(path) else { return };
        for k in f.index.into_keys() {
            if let Some(o) = self.owners.get_mut(&k) {
                o.remove(path);
                if o.is_empty() {
                    self.owners.remove(&k);
                }
            }
            self.dirty.insert(k);
        }
    }

    /// Whether objects may have changed since the last [`DirState::apply_to`].
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The object in force at `key`.
    fn in_force(&self, key: &Changed) -> Option<&ClusterObject> {
        let path = self.owners.get(key)?.last()?;
        let f = self.files.get(path)?;
        f.objects.get(*f.index.get(key)?)
    }

    /// Brings `snap` (the snapshot this state last brought up to date, or an empty one) to the
    /// objects in force, putting in only those whose files changed; each object that differs
    /// is logged ([`ClusterSnapshot::put_object`]).
    pub fn apply_to(&mut self, snap: &mut ClusterSnapshot) {
        for key in std::mem::take(&mut self.dirty) {
            snap.put_object(&key, self.in_force(&key));
        }
    }

    /// Every object in force, as parsed (Pods whole, before the snapshot slims them).
    pub fn objects(&self) -> impl Iterator<Item = &ClusterObject> {
        self.files.values().flat_map(|f| &f.objects)
    }

    /// A snapshot of the objects in force, built from scratch.
    pub fn snapshot(&self) -> ClusterSnapshot {
        let mut snap = ClusterSnapshot::default();
        for f in self.files.values() {
            for o in &f.objects {
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
        // Publish only when a file changed, putting in only its objects; the first time, every
        // object (they are all new).
        if state.has_changes() || first {
            first = false;
            let mut snap = tx.borrow().clone().unwrap_or_default();
            let head = snap.log.head();
            state.apply_to(&mut snap);
            let changed = snap.log.head() != head;
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
    use std::sync::Arc;

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

        // Names YAML 1.1 would read as booleans or octal numbers are names.
        let objs = parse(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: y, namespace: no}\n---\n\
                          apiVersion: v1\nkind: Namespace\nmetadata: {name: 0755}\n",
            "names.yaml",
        )
        .expect("names");
        assert!(matches!(&objs[0], ClusterObject::Pod(p) if p.metadata.name.as_deref() == Some("y")
            && p.metadata.namespace.as_deref() == Some("no")));
        assert!(matches!(&objs[1], ClusterObject::Namespace(n) if n.metadata.name.as_deref() == Some("0755")));

        let e = parse("kind: [unclosed", "y.yaml").expect_err("not yaml");
        assert_eq!(e.doc, 1);
        let e = parse(&format!("---\n{GOOD}---\nkind: [unclosed\n"), "z.yaml").expect_err("not yaml");
        assert_eq!(e.doc, 5, "{e}");
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

    fn pod(name: &str, app: &str) -> ClusterObject {
        let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!(
            {"metadata": {"name": name, "namespace": "x", "labels": {"app": app}}}
        ))
        .expect("pod");
        ClusterObject::Pod(Box::new(p))
    }

    fn key(name: &str) -> (String, String) {
        ("x".into(), name.into())
    }

    #[test]
    fn a_changed_file_puts_in_only_its_objects() {
        let stamp = (SystemTime::UNIX_EPOCH, 0);
        let mut dir = DirState::default();
        dir.set_file("a.yaml".into(), stamp, vec![pod("a", "1")]);
        dir.set_file("b.yaml".into(), stamp, vec![pod("b", "1")]);
        let mut snap = ClusterSnapshot::default();
        dir.apply_to(&mut snap);
        assert_eq!(snap.log.since(0).pods, [key("a"), key("b")].into());
        let (old, seen) = (snap.clone(), snap.log.head());

        // b changes, c comes: a keeps its shared copy and is not logged.
        dir.set_file("b.yaml".into(), stamp, vec![pod("b", "2"), pod("c", "1")]);
        dir.apply_to(&mut snap);
        assert!(Arc::ptr_eq(&snap.pods[&key("a")], &old.pods[&key("a")]), "unchanged: the same shared copy");
        assert_eq!(snap.log.since(seen).pods, [key("b"), key("c")].into());

        // A file rewritten with the same objects is no change.
        let seen = snap.log.head();
        dir.set_file("b.yaml".into(), stamp, vec![pod("b", "2"), pod("c", "1")]);
        dir.apply_to(&mut snap);
        assert!(snap.log.since(seen).is_empty());

        // Two files define a: the last by path is in force; removing it brings back the other.
        dir.set_file("z.yaml".into(), stamp, vec![pod("a", "9")]);
        dir.apply_to(&mut snap);
        assert_eq!(snap.pods[&key("a")].label("app"), Some("9"));
        let seen = snap.log.head();
        dir.remove_file(Path::new("z.yaml"));
        dir.apply_to(&mut snap);
        assert_eq!(snap.pods[&key("a")].label("app"), Some("1"));
        assert_eq!(snap.log.since(seen).pods, [key("a")].into());

        // Removals are changes too.
        let seen = snap.log.head();
        dir.remove_file(Path::new("b.yaml"));
        dir.apply_to(&mut snap);
        assert_eq!(snap.log.since(seen).pods, [key("b"), key("c")].into());
        assert_eq!(snap.pods.len(), 1);
    }

    #[test]
    fn incremental_snapshots_match_ones_built_from_scratch() {
        let stamp = (SystemTime::UNIX_EPOCH, 0);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut dir = DirState::default();
        let mut snap = ClusterSnapshot::default();
        for step in 0..400 {
            let file = PathBuf::from(format!("f{}.yaml", next() % 6));
            if next() % 5 == 0 {
                dir.remove_file(&file);
            } else {
                let objs =
                    (0..next() % 4).map(|_| pod(&format!("p{}", next() % 8), &format!("{}", next() % 3))).collect();
                dir.set_file(file, stamp, objs);
            }
            let seen = snap.log.head();
            let before = snap.clone();
            dir.apply_to(&mut snap);
            let full = dir.snapshot();
            assert_eq!(snap.pods, full.pods, "step {step}");
            // The log names exactly the pods that differ.
            let differ: BTreeSet<(String, String)> = before
                .pods
                .keys()
                .chain(full.pods.keys())
                .filter(|k| before.pods.get(*k) != full.pods.get(*k))
                .cloned()
                .collect();
            assert_eq!(snap.log.since(seen).pods, differ, "step {step}");
        }
    }
}
