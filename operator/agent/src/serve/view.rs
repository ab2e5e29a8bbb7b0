//! The node as its readers see it. The writer ([`crate::node::Node`]) publishes a [`NodeView`]
//! after every change it makes (a reconcile pass, ADD, DEL, GC); CNI STATUS, the metrics
//! scrape, the CLI's reads and the observers take the latest one from a watch channel and never
//! wait for the writer, even while it waits out an attach or a full policy pass.
//!
//! A view is cheap to publish: the endpoint records are a persistent map, and the policy, the
//! Service owners and the rejected lists are shared (`Arc`) with the writer until it replaces
//! them. Kernel state (counters, the endpoint and Service maps) is read at request time through
//! read-only handles on the pins ([`weir_dataplane::reader::Reader`]).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
};

use weir_bpf_common::{BackendKey, ServiceKey};
use weir_dataplane::reader::Reader;
use weir_operator_api::{
    code, ApiError, DatapathInfo, EndpointRow, IfacePrograms, RejectedService, ServiceRow, Status,
};

use crate::{
    endpoints::store::Records,
    policy::compile::{Cluster, Compiled},
    serve::metrics::Metrics,
};

/// Where the node is on its way to serving ADD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// No Node object with a pod CIDR and an InternalIP for this node yet.
    Waiting,
    /// This node's Node object is refused, and why.
    Refused(String),
    /// The Node is known; the datapath is being loaded.
    Loading,
    /// The datapath is loaded for this pod CIDR.
    Ready { pod_cidr: String },
}

/// Counts the writer keeps, shown as metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tallies {
    pub stage_failures: u64,
    pub fail_closed_total: u64,
    pub quarantine_bypassed: u64,
    pub quarantined: usize,
    pub policy_entries: usize,
}

/// One published state of the node (see the module docs).
#[derive(Clone)]
pub struct NodeView {
    pub node: String,
    pub readiness: Readiness,
    /// The interfaces every node has (uplink, `weir_host`, the tunnel device in VXLAN mode).
    pub node_ifaces: Vec<String>,
    pub records: Records,
    pub rejected_nodes: Arc<Vec<(String, String)>>,
    pub rejected_services: Arc<BTreeMap<String, String>>,
    /// Which Service each frontend belongs to.
    pub service_owners: Arc<BTreeMap<ServiceKey, String>>,
    /// The cluster and compiled policy of the last policy pass (explain, the CLI).
    pub policy: Arc<Cluster>,
    pub compiled: Arc<Compiled>,
    pub tallies: Tallies,
    /// `None` until the datapath is loaded.
    pub kernel: Option<Arc<Reader>>,
}

/// What readers hold: the latest view, replaced by the writer.
pub type SharedView = tokio::sync::watch::Receiver<Arc<NodeView>>;

/// The latest view (a pointer copy; the channel's lock is held only for that).
pub fn latest(v: &SharedView) -> Arc<NodeView> {
    v.borrow().clone()
}

impl NodeView {
    /// A node that has not started yet.
    pub fn new(node: String) -> Self {
        Self {
            node,
            readiness: Readiness::Waiting,
            node_ifaces: Vec::new(),
            records: Records::new(),
            rejected_nodes: Arc::default(),
            rejected_services: Arc::default(),
            service_owners: Arc::default(),
            policy: Arc::default(),
            compiled: Arc::default(),
            tallies: Tallies::default(),
            kernel: None,
        }
    }

    pub fn status(&self) -> Status {
        let (ready, reason, pod_cidr) = match &self.readiness {
            Readiness::Ready { pod_cidr } => (true, "datapath loaded".to_owned(), Some(pod_cidr.clone())),
            Readiness::Loading => (false, "loading the datapath".to_owned(), None),
            Readiness::Refused(why) => (false, format!("Node {} is refused: {why}", self.node), None),
            Readiness::Waiting => {
                (false, format!("waiting for Node {} with spec.podCIDR and an InternalIP", self.node), None)
            }
        };
        let nodes = self.rejected_nodes.iter().map(|(n, why)| format!("node {n}: {why}"));
        let policies = self.policy.rejected.iter().map(ToString::to_string);
        let services = self.rejected_services.iter().map(|(s, why)| format!("service {s}: {why}"));
        Status {
            ready,
            reason,
            node: self.node.clone(),
            pod_cidr,
            rejected: nodes.chain(policies).chain(services).collect(),
        }
    }

    fn kernel(&self) -> Result<&Reader, ApiError> {
        self.kernel.as_deref().ok_or_else(|| {
            ApiError::new(code::TRY_AGAIN_LATER, format!("weir-agent is not ready: {}", self.status().reason), "")
        })
    }

    /// Endpoints as the store records them, each checked against the kernel's endpoint map.
    pub fn endpoints(&self) -> Vec<EndpointRow> {
        let in_map = self.kernel.as_ref().and_then(|k| k.endpoints().ok()).unwrap_or_default();
        self.records
            .values()
            .map(|r| EndpointRow { endpoint: r.to_api(), in_datapath: in_map.get(&r.ip) == Some(&r.datapath_info()) })
            .collect()
    }

    /// `namespace/name` of the pod behind each host-side interface index.
    pub fn pods_by_ifindex(&self) -> BTreeMap<u32, String> {
        self.records.values().map(|r| (r.host_ifindex, format!("{}/{}", r.pod_namespace, r.pod_name))).collect()
    }

    /// Events the datapath could not put on its ring buffer.
    pub fn events_lost(&self) -> u64 {
        self.kernel.as_ref().and_then(|k| k.counters().ok()).map_or(0, |s| s.events_lost)
    }

    /// Services the agent rejected, with the reason.
    pub fn rejected_services(&self) -> Vec<RejectedService> {
        self.rejected_services
            .iter()
            .map(|(service, reason)| RejectedService { service: service.clone(), reason: reason.clone() })
            .collect()
    }

    /// The Service maps as the kernel holds them (each frontend with the backends of its set),
    /// with the owning Service where known.
    pub fn service_rows(&self) -> Result<Vec<ServiceRow>, ApiError> {
        let k = self.kernel()?;
        let map = k.services().map_err(|e| super::api_err(code::DATAPATH, "reading the service map", e))?;
        let slots = k.backends().map_err(|e| super::api_err(code::DATAPATH, "reading the backend map", e))?;
        Ok(map
            .into_iter()
            .map(|(k, v)| ServiceRow {
                service: self.service_owners.get(&k).cloned(),
                frontend: format!("{}:{}", Ipv4Addr::from(k.addr.v4_octets()), u16::from_be(k.port_be)),
                protocol: match k.proto {
                    6 => "TCP".into(),
                    17 => "UDP".into(),
                    p => format!("ip-proto-{p}"),
                },
                backends: (0..u32::from(v.count))
                    .map(|slot| match slots.get(&BackendKey { set: v.set, slot }) {
                        Some(b) => format!("{}:{}", Ipv4Addr::from(b.addr.v4_octets()), u16::from_be(b.port_be)),
                        None => format!("(slot {slot} of set {} missing)", v.set),
                    })
                    .collect(),
            })
            .collect())
    }

    /// Attached programs per interface and the counters, read back from the kernel.
    pub fn datapath_info(&self) -> Result<DatapathInfo, ApiError> {
        let k = self.kernel()?;
        let ifaces = self.node_ifaces.iter().cloned().chain(self.records.values().map(|r| r.host_ifname.clone()));
        let mut attachments = Vec::new();
        let mut seen = BTreeSet::new();
        for iface in ifaces.filter(|i| seen.insert(i.clone())) {
            // An endpoint whose interface went with its pod's namespace (its DEL not here yet)
            // is reported missing, not an error: the rest of the node is still worth seeing.
            let name = std::ffi::CString::new(iface.clone()).unwrap_or_default();
            // SAFETY: a NUL-terminated name; returns 0 when no such interface exists here.
            if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
                attachments.push(IfacePrograms { iface, missing: true, ..Default::default() });
                continue;
            }
            let query = |e| super::api_err(code::DATAPATH, format!("querying {iface}"), e);
            let programs = weir_dataplane::tcx::ingress_program_names(&iface).map_err(query)?;
            let egress = weir_dataplane::tcx::egress_program_names(&iface).map_err(query)?;
            attachments.push(IfacePrograms { iface, programs, egress, missing: false });
        }
        let snap = k.counters().map_err(|e| super::api_err(code::DATAPATH, "reading counters", e))?;
        let mut counters: BTreeMap<String, u64> =
            snap.drops.iter().map(|(r, n)| (format!("drop_{}", r.label()), *n)).collect();
        counters.insert("events_lost".into(), snap.events_lost);
        counters.extend(snap.outcomes().into_iter().map(|(name, n)| (name.to_owned(), n)));
        Ok(DatapathInfo { attachments, counters })
    }

    /// Sets the scrape-time metrics: the datapath's counters, map use, rejected objects.
    pub fn refresh_metrics(&self, m: &Metrics) {
        if let Some(c) = self.kernel.as_ref().and_then(|k| k.counters().ok()) {
            for (reason, n) in &c.drops {
                m.datapath_drops.with_label_values(&[reason.label()]).set(*n as i64);
            }
            for (outcome, n) in c.outcomes() {
                m.datapath.with_label_values(&[outcome]).set(n as i64);
            }
            m.set_events_lost(c.events_lost);
        }
        let t = &self.tallies;
        m.maps.with_label_values(&["WEIR_POLICY", "entries"]).set(t.policy_entries as i64);
        m.maps.with_label_values(&["WEIR_POLICY", "capacity"]).set(i64::from(weir_bpf_common::sizes::POLICY));
        m.maps.with_label_values(&["WEIR_ENDPOINTS", "entries"]).set(self.records.len() as i64);
        m.maps.with_label_values(&["WEIR_ENDPOINTS", "capacity"]).set(i64::from(weir_bpf_common::sizes::ENDPOINTS));
        m.state.with_label_values(&["services_rejected"]).set(self.rejected_services.len() as i64);
        m.state.with_label_values(&["policies_rejected"]).set(self.policy.rejected.len() as i64);
        m.state.with_label_values(&["nodes_rejected"]).set(self.rejected_nodes.len() as i64);
        m.state.with_label_values(&["reconcile_stage_failures_total"]).set(t.stage_failures as i64);
        m.state.with_label_values(&["endpoints_fail_closed_total"]).set(t.fail_closed_total as i64);
        m.state.with_label_values(&["ipam_quarantine_bypassed_total"]).set(t.quarantine_bypassed as i64);
        m.state.with_label_values(&["ipam_quarantined"]).set(t.quarantined as i64);
    }
}
