//! Cluster state sources. Every source (the manifest directory, the Kubernetes API) publishes
//! a [`ClusterSnapshot`] over one channel: the state (persistent maps, so a reader's copy costs
//! nothing and an update costs O(log n)) and a [`ChangeLog`] of the objects that changed, so the
//! reader recomputes only what they touch instead of comparing snapshots. The agent does not care
//! where they came from. A source that reads something unusable logs it, naming the object, and
//! keeps delivering the last good state.
#[cfg(feature = "kubernetes")]
pub mod k8s;
pub mod manifest;
pub mod pod;
pub mod slice;

pub use pod::{HostPort, NamedPort, PodInfo};
pub use slice::SliceInfo;

use std::{collections::BTreeSet, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};

/// Namespaced objects keyed by (namespace, name), in a persistent ordered map: a snapshot is
/// cloned in O(1) (readers keep their copy while the source goes on), and objects are shared
/// (`Arc`), so two versions holding the same object compare by pointer first.
pub type Named<T> = imbl::OrdMap<(String, String), Arc<T>>;
/// Cluster-scoped objects keyed by name.
pub type ByName<T> = imbl::OrdMap<String, Arc<T>>;

/// Everything the agent knows about the cluster, keyed by name (namespace/name for pods), and
/// the log of what changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterSnapshot {
    pub nodes: ByName<Node>,
    pub namespaces: ByName<Namespace>,
    /// Pods, slimmed to what the agent reads ([`PodInfo`]).
    pub pods: Named<PodInfo>,
    pub services: Named<Service>,
    pub endpoint_slices: Named<SliceInfo>,
    /// What NetworkPolicy enforcement compiles.
    pub network_policies: Named<NetworkPolicy>,
    /// The objects that changed, in order: a reader asks for what changed since it last looked.
    pub log: ChangeLog,
}

/// One object a source saw added, updated or removed; or [`Changed::All`] (a relist, a source
/// that cannot tell): every object may have changed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Changed {
    All,
    Node(String),
    Namespace(String),
    Pod((String, String)),
    Service((String, String)),
    EndpointSlice((String, String)),
    NetworkPolicy((String, String)),
}

/// How many changes the log keeps: a reader further behind than this gets a full pass.
pub const CHANGE_LOG_LEN: usize = 1 << 16;

/// The sequence of changes a source made, numbered. Persistent (cloned with the snapshot in
/// O(1)); the oldest entries go once there are [`CHANGE_LOG_LEN`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChangeLog {
    next: u64,
    entries: imbl::Vector<(u64, Changed)>,
}

impl ChangeLog {
    pub fn record(&mut self, c: Changed) {
        self.entries.push_back((self.next, c));
        self.next += 1;
        while self.entries.len() > CHANGE_LOG_LEN {
            self.entries.pop_front();
        }
    }

    /// Where the log is now: hand it back to [`ChangeLog::since`] to get what came after.
    pub fn head(&self) -> u64 {
        self.next
    }

    /// What changed after `seen` (an earlier [`ChangeLog::head`]); everything when the log no
    /// longer reaches back that far.
    pub fn since(&self, seen: u64) -> Changes {
        let first = self.entries.front().map_or(self.next, |(n, _)| *n);
        if seen < first && seen != self.next {
            return Changes::everything();
        }
        let mut out = Changes::default();
        for (_, c) in self.entries.iter().rev().take_while(|(n, _)| *n >= seen) {
            out.add(c.clone());
        }
        out
    }
}

/// The keys of the objects that changed, per kind; `all` when every object may have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub all: bool,
    pub nodes: BTreeSet<String>,
    pub namespaces: BTreeSet<String>,
    pub pods: BTreeSet<(String, String)>,
    pub services: BTreeSet<(String, String)>,
    pub endpoint_slices: BTreeSet<(String, String)>,
    pub network_policies: BTreeSet<(String, String)>,
}

impl Changes {
    pub fn everything() -> Self {
        Changes { all: true, ..Default::default() }
    }

    pub fn add(&mut self, c: Changed) {
        match c {
            Changed::All => self.all = true,
            Changed::Node(k) => drop(self.nodes.insert(k)),
            Changed::Namespace(k) => drop(self.namespaces.insert(k)),
            Changed::Pod(k) => drop(self.pods.insert(k)),
            Changed::Service(k) => drop(self.services.insert(k)),
            Changed::EndpointSlice(k) => drop(self.endpoint_slices.insert(k)),
            Changed::NetworkPolicy(k) => drop(self.network_policies.insert(k)),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    /// These changes and `other`'s.
    pub fn extend(&mut self, other: Changes) {
        self.all |= other.all;
        self.nodes.extend(other.nodes);
        self.namespaces.extend(other.namespaces);
        self.pods.extend(other.pods);
        self.services.extend(other.services);
        self.endpoint_slices.extend(other.endpoint_slices);
        self.network_policies.extend(other.network_policies);
    }

    /// Something NetworkPolicy reads changed: pods, namespaces or policies.
    pub fn policy(&self) -> bool {
        self.all || !(self.pods.is_empty() && self.namespaces.is_empty() && self.network_policies.is_empty())
    }

    /// Something Services read changed: Services or EndpointSlices (node addresses are the
    /// caller's to compare).
    pub fn services(&self) -> bool {
        self.all || !(self.services.is_empty() && self.endpoint_slices.is_empty())
    }
}

/// One parsed Kubernetes object that the agent understands.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterObject {
    Node(Box<Node>),
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    NetworkPolicy(Box<NetworkPolicy>),
    /// A kind the agent does not consume yet (Services, NetworkPolicies, ...): kept by name
    /// so that manifests holding them are still accepted.
    Other {
        kind: String,
        name: String,
    },
}

impl ClusterSnapshot {
    /// True when both hold the very same objects (same keys, same shared `Arc`s): what the API
    /// source uses to tell a real change from a no-op (a relist returning what it had), without
    /// comparing objects field by field.
    pub fn same_objects(&self, other: &Self) -> bool {
        fn same<K: Ord + Clone + PartialEq, T>(a: &imbl::OrdMap<K, Arc<T>>, b: &imbl::OrdMap<K, Arc<T>>) -> bool {
            a.ptr_eq(b)
                || (a.len() == b.len() && a.iter().zip(b).all(|((ka, va), (kb, vb))| ka == kb && Arc::ptr_eq(va, vb)))
        }
        same(&self.nodes, &other.nodes)
            && same(&self.namespaces, &other.namespaces)
            && same(&self.pods, &other.pods)
            && same(&self.services, &other.services)
            && same(&self.endpoint_slices, &other.endpoint_slices)
            && same(&self.network_policies, &other.network_policies)
    }

    pub fn insert(&mut self, obj: ClusterObject) {
        match obj {
            ClusterObject::Node(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                self.nodes.insert(name, Arc::from(n));
            }
            ClusterObject::Namespace(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                self.namespaces.insert(name, Arc::from(n));
            }
            ClusterObject::Pod(p) => {
                let key = namespaced(&p.metadata);
                self.pods.insert(key, Arc::new(PodInfo::from(*p)));
            }
            ClusterObject::Service(s) => {
                let key = namespaced(&s.metadata);
                self.services.insert(key, Arc::from(s));
            }
            ClusterObject::EndpointSlice(s) => {
                let key = namespaced(&s.metadata);
                self.endpoint_slices.insert(key, Arc::new(SliceInfo::from(*s)));
            }
            ClusterObject::NetworkPolicy(p) => {
                let key = namespaced(&p.metadata);
                self.network_policies.insert(key, Arc::from(p));
            }
            ClusterObject::Other { .. } => {}
        }
    }
}

impl ClusterObject {
    /// The object's key, as a change names it (`None` for kinds the agent does not consume).
    pub fn key(&self) -> Option<Changed> {
        let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| m.name.clone().unwrap_or_default();
        Some(match self {
            ClusterObject::Node(n) => Changed::Node(name(&n.metadata)),
            ClusterObject::Namespace(n) => Changed::Namespace(name(&n.metadata)),
            ClusterObject::Pod(p) => Changed::Pod(namespaced(&p.metadata)),
            ClusterObject::Service(s) => Changed::Service(namespaced(&s.metadata)),
            ClusterObject::EndpointSlice(s) => Changed::EndpointSlice(namespaced(&s.metadata)),
            ClusterObject::NetworkPolicy(p) => Changed::NetworkPolicy(namespaced(&p.metadata)),
            ClusterObject::Other { .. } => return None,
        })
    }
}

impl ClusterSnapshot {
    /// Makes the object at `key` be `obj` (`None`: no object), as a watch event does: logged
    /// when it differs from what is there ([`put`]). `obj` must have that key.
    pub fn put_object(&mut self, key: &Changed, obj: Option<&ClusterObject>) {
        let log = &mut self.log;
        match key {
            Changed::All => {}
            Changed::Node(k) => {
                let v = obj.and_then(|o| match o {
                    ClusterObject::Node(n) => Some(Arc::new((**n).clone())),
                    _ => None,
                });
                put(&mut self.nodes, log, k.clone(), v, Changed::Node);
            }
            Changed::Namespace(k) => {
                let v = obj.and_then(|o| match o {
                    ClusterObject::Namespace(n) => Some(Arc::new((**n).clone())),
                    _ => None,
                });
                put(&mut self.namespaces, log, k.clone(), v, Changed::Namespace);
            }
            Changed::Pod(k) => {
                let v = obj.and_then(|o| match o {
                    ClusterObject::Pod(p) => Some(Arc::new(PodInfo::from((**p).clone()))),
                    _ => None,
                });
                put(&mut self.pods, log, k.clone(), v, Changed::Pod);
            }
            Changed::Service(k) => {
                let v = obj.and_then(|o| match o {
                    ClusterObject::Service(s) => Some(Arc::new((**s).clone())),
                    _ => None,
                });
                put(&mut self.services, log, k.clone(), v, Changed::Service);
            }
            Changed::EndpointSlice(k) => {
                let v = obj.and_then(|o| match o {
                    ClusterObject::EndpointSlice(s) => Some(Arc::new(SliceInfo::from((**s).clone()))),
                    _ => None,
                });
                put(&mut self.endpoint_slices, log, k.clone(), v, Changed::EndpointSlice);
            }
            Changed::NetworkPolicy(k) => {
                let v = obj.and_then(|o| match o {
                    ClusterObject::NetworkPolicy(p) => Some(Arc::new((**p).clone())),
                    _ => None,
                });
                put(&mut self.network_policies, log, k.clone(), v, Changed::NetworkPolicy);
            }
        }
    }
}

impl ClusterSnapshot {
    /// The same objects (the log aside).
    pub fn same_state(&self, other: &Self) -> bool {
        self.same_objects(other)
    }
}

/// Puts one object in (or with `None` takes it out of) a snapshot's map and logs the change, as
/// a watch event does; an object equal to the one there (a status heartbeat the agent trimmed
/// away) is no change and is not logged.
pub fn put<K: Ord + Clone, T: PartialEq>(
    map: &mut imbl::OrdMap<K, Arc<T>>,
    log: &mut ChangeLog,
    key: K,
    new: Option<Arc<T>>,
    change: fn(K) -> Changed,
) {
    match new {
        Some(new) => {
            if map.get(&key).is_some_and(|old| **old == *new) {
                return;
            }
            map.insert(key.clone(), new);
        }
        None => {
            if map.remove(&key).is_none() {
                return;
            }
        }
    }
    log.record(change(key));
}

/// (namespace, name), the namespace defaulting to `default` as the API server does.
pub fn namespaced(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (m.namespace.clone().unwrap_or_else(|| "default".into()), m.name.clone().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> (String, String) {
        ("x".to_owned(), n.to_owned())
    }

    #[test]
    fn the_log_gives_what_changed_since_a_head_and_everything_when_it_no_longer_reaches_back() {
        let mut log = ChangeLog::default();
        let start = log.head();
        assert!(log.since(start).is_empty());
        log.record(Changed::Pod(key("a")));
        log.record(Changed::Service(key("s")));
        let mid = log.head();
        log.record(Changed::Pod(key("b")));
        let c = log.since(start);
        assert_eq!(c.pods, [key("a"), key("b")].into());
        assert_eq!(c.services, [key("s")].into());
        assert!(!c.all && c.policy() && c.services());
        let c = log.since(mid);
        assert_eq!((c.pods.len(), c.services.len()), (1, 0));
        assert!(log.since(log.head()).is_empty());
        for i in 0..CHANGE_LOG_LEN {
            log.record(Changed::Namespace(i.to_string()));
        }
        assert!(log.since(mid).all, "trimmed past the reader: a full pass");
    }
}
