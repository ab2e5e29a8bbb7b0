//! The Service model: Services and their EndpointSlices compiled into a table of frontends
//! (address, port, protocol) and the backends behind each. Pure: no I/O, unit-tested. `map`
//! turns the table into this node's Service maps (its one writer, `ServiceSync`), `maglev` builds
//! the per-packet balancer's tables; the eBPF programs serve them.
//!
//! Semantics (Kubernetes): ClusterIP, NodePort (on every node address), externalIPs and
//! LoadBalancer ingress IPs are frontends; headless (`clusterIP: None`) and ExternalName Services
//! have none; Services labelled `service.kubernetes.io/service-proxy-name` or
//! `service.kubernetes.io/headless` are not ours. Backends come from EndpointSlices labelled
//! `kubernetes.io/service-name`, matched to Service ports by port name; ready endpoints serve, and
//! when none is ready, serving-but-terminating ones do.
//!
//! A Pod's `hostPort` is a frontend too: the pod's node's address (or its `hostIP`, which must
//! be one of them) and the host port, with the pod as its one backend. Every node serves it at
//! connect() for its pods; the pod's node also per packet, for clients outside the cluster, with
//! the client's address kept, so the pod's ingress policy judges the real client. A hostPort
//! another frontend already holds (a NodePort, another pod's) is rejected.
pub mod maglev;
pub mod map;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use k8s_openapi::api::core::v1::Service;

use crate::source::{Named, SliceInfo};

pub const LABEL_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
pub use crate::source::slice::LABEL_SERVICE_NAME;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// Parses a Kubernetes protocol; SCTP and anything else are rejected (this kernel has no
    /// SCTP, and weir never maps one protocol onto another).
    pub fn parse(p: Option<&str>) -> Result<Self, String> {
        match p.unwrap_or("TCP") {
            "TCP" => Ok(Proto::Tcp),
            "UDP" => Ok(Proto::Udp),
            other => Err(format!("protocol {other:?} is not supported (TCP and UDP are)")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
    HostPort,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The node the endpoint runs on (EndpointSlice `nodeName`), for traffic policies.
    pub node: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// `namespace/name` and the Service port name.
    pub service: String,
    pub port_name: String,
    pub kind: FrontendKind,
    /// Who serves now: the ready endpoints, or the serving-but-terminating ones when none is ready.
    pub backends: Vec<Backend>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
    pub external_traffic_local: bool,
    pub internal_traffic_local: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTable {
    pub frontends: BTreeMap<Frontend, ServiceEntry>,
    /// Services that could not be used, with the reason; the rest of the table is unaffected.
    pub rejected: Vec<(String, String)>,
    /// Some Service was rejected because another one holds its frontend (who wins depends on
    /// the whole table, so incremental updates recompile everything while this holds).
    pub conflicted: bool,
}

fn ip(s: &str, what: &str) -> Result<Ipv4Addr, String> {
    s.parse().map_err(|_| format!("{what} {s:?} is not an IPv4 address"))
}

fn port(p: i32, what: &str) -> Result<u16, String> {
    u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| format!("{what} {p} is outside 1-65535"))
}

/// Backends per Service port name, from the Service's EndpointSlices.
fn backends_by_port_name(slices: &[&SliceInfo]) -> BTreeMap<(String, Proto), (Vec<Backend>, Vec<Backend>)> {
    // (ready, serving-and-terminating)
    let mut out: BTreeMap<(String, Proto), (BTreeSet<Backend>, BTreeSet<Backend>)> = BTreeMap::new();
    for s in slices.iter().filter(|s| &*s.address_type == "IPv4") {
        for p in &s.ports {
            let (Some(num), Ok(proto)) = (p.port, Proto::parse(p.protocol.as_deref())) else { continue };
            let Ok(num) = port(num, "endpoint port") else { continue };
            let entry = out.entry((p.name.as_deref().unwrap_or_default().to_owned(), proto)).or_default();
            for e in &s.endpoints {
                // Unknown conditions count as ready/serving, as the API says.
                let ready = e.ready.unwrap_or(true);
                let serving = e.serving.unwrap_or(ready);
                let terminating = e.terminating.unwrap_or(false);
                for a in &e.addresses {
                    let Ok(addr) = a.parse::<Ipv4Addr>() else { continue };
                    let b = Backend { ip: addr, port: num, node: e.node_name.as_deref().map(str::to_owned) };
                    if ready {
                        entry.0.insert(b);
                    } else if serving && terminating {
                        entry.1.insert(b);
                    }
                }
            }
        }
    }
    out.into_iter().map(|(k, (r, t))| (k, (r.into_iter().collect(), t.into_iter().collect()))).collect()
}

/// Compiles one Service; `Ok(vec![])` for Services that have no frontends or are not ours.
pub fn compile_service(
    svc: &Service,
    slices: &[&SliceInfo],
    node_ips: &[Ipv4Addr],
) -> Result<Vec<(Frontend, ServiceEntry)>, String> {
    let labels = svc.metadata.labels.clone().unwrap_or_default();
    if labels.contains_key(LABEL_PROXY_NAME) || labels.contains_key(LABEL_HEADLESS) {
        return Ok(Vec::new());
    }
    let name = format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or("default"),
        svc.metadata.name.as_deref().unwrap_or_default()
    );
    let spec = svc.spec.clone().unwrap_or_default();
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return Ok(Vec::new());
    }
    if !matches!(kind, "ClusterIP" | "NodePort" | "LoadBalancer") {
        return Err(format!("type {kind:?} is not a Service type"));
    }
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("None") | Some("") => None,
        Some(s) => Some(ip(s, "clusterIP")?),
    };
    let affinity_timeout = match spec.session_affinity.as_deref() {
        Some("ClientIP") => Some(
            spec.session_affinity_config
                .and_then(|c| c.client_ip)
                .and_then(|c| c.timeout_seconds)
                .map_or(Ok(10_800), |t| u32::try_from(t).ok().filter(|t| (1..=86_400).contains(t)).ok_or(t))
                .map_err(|t| format!("sessionAffinityConfig.clientIP.timeoutSeconds {t} is outside 1-86400"))?,
        ),
        None | Some("None") => None,
        Some(other) => return Err(format!("sessionAffinity {other:?} is not None or ClientIP")),
    };
    let external_traffic_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_traffic_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_ips: Vec<Ipv4Addr> =
        spec.external_ips.iter().flatten().map(|s| ip(s, "externalIPs entry")).collect::<Result<_, _>>()?;
    let lb_ips: Vec<Ipv4Addr> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref())
        .map(|s| ip(s, "load balancer ingress IP"))
        .collect::<Result<_, _>>()?;
    let backends = backends_by_port_name(slices);
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for p in spec.ports.iter().flatten() {
        let proto = Proto::parse(p.protocol.as_deref())?;
        let port_name = p.name.clone().unwrap_or_default();
        if !seen.insert((port_name.clone(), proto)) {
            return Err(format!("port name {port_name:?} appears twice for {proto:?}"));
        }
        let svc_port = port(p.port, "port")?;
        let (ready, terminating) = backends.get(&(port_name.clone(), proto)).cloned().unwrap_or_default();
        let serving = if ready.is_empty() { terminating } else { ready };
        let entry = |kind| ServiceEntry {
            service: name.clone(),
            port_name: port_name.clone(),
            kind,
            backends: serving.clone(),
            affinity_timeout,
            external_traffic_local,
            internal_traffic_local,
        };
        let Some(cip) = cluster_ip else { continue };
        out.push((Frontend { ip: cip, port: svc_port, proto }, entry(FrontendKind::ClusterIp)));
        for e in &external_ips {
            out.push((Frontend { ip: *e, port: svc_port, proto }, entry(FrontendKind::ExternalIp)));
        }
        for l in &lb_ips {
            out.push((Frontend { ip: *l, port: svc_port, proto }, entry(FrontendKind::LoadBalancer)));
        }
        if kind != "ClusterIP" {
            if let Some(np) = p.node_port {
                let np = port(np, "nodePort")?;
                for n in node_ips {
                    out.push((Frontend { ip: *n, port: np, proto }, entry(FrontendKind::NodePort)));
                }
            }
        }
    }
    Ok(out)
}

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label).
pub fn slice_service(s: &SliceInfo) -> Option<&str> {
    s.service.as_deref()
}

/// A running pod with host ports, and where it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPortPod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub node: String,
    /// The node's addresses.
    pub node_ips: Vec<Ipv4Addr>,
    pub ports: Vec<crate::source::HostPort>,
}

impl HostPortPod {
    /// How the pod is named among Services (rejections, the owner of a frontend).
    pub fn owner(&self) -> String {
        format!("pod {}/{}", self.namespace, self.name)
    }
}

/// The pods of `pods` with host ports that run (an address, a node whose addresses are known:
/// `node_ips` by node name), sorted by namespace/name.
pub fn host_port_pods(
    pods: &Named<crate::source::PodInfo>,
    node_ips: &BTreeMap<String, Vec<Ipv4Addr>>,
) -> Vec<HostPortPod> {
    pods.values().filter_map(|p| host_port_pod(p, node_ips)).collect()
}

/// `p` as a hostPort pod, when it has host ports and runs (see [`host_port_pods`]).
pub fn host_port_pod(p: &crate::source::PodInfo, node_ips: &BTreeMap<String, Vec<Ipv4Addr>>) -> Option<HostPortPod> {
    if p.host_ports().is_empty() || p.finished || p.deleting || p.host_network {
        return None;
    }
    let node = p.node_name.as_deref()?;
    let ip = p.ips.iter().find_map(|i| i.parse::<Ipv4Addr>().ok())?;
    Some(HostPortPod {
        namespace: p.namespace.to_string(),
        name: p.name.to_string(),
        ip,
        node: node.to_owned(),
        node_ips: node_ips.get(node)?.clone(),
        ports: p.host_ports().to_vec(),
    })
}

/// One pod's hostPort frontends.
pub fn compile_host_ports(pod: &HostPortPod) -> Result<Vec<(Frontend, ServiceEntry)>, String> {
    let mut out = Vec::new();
    for hp in &pod.ports {
        let proto = Proto::parse(Some(&hp.protocol))?;
        let host_port = port(hp.host_port, "hostPort")?;
        let container_port = port(hp.container_port, "containerPort")?;
        let ips = match &*hp.host_ip {
            "" | "0.0.0.0" => pod.node_ips.clone(),
            s => {
                let a = ip(s, "hostIP")?;
                if !pod.node_ips.contains(&a) {
                    return Err(format!("hostIP {a} is not an address of node {}", pod.node));
                }
                vec![a]
            }
        };
        for a in ips {
            out.push((
                Frontend { ip: a, port: host_port, proto },
                ServiceEntry {
                    service: pod.owner(),
                    port_name: format!("hostPort {host_port}"),
                    kind: FrontendKind::HostPort,
                    backends: vec![Backend { ip: pod.ip, port: container_port, node: Some(pod.node.clone()) }],
                    affinity_timeout: None,
                    external_traffic_local: false,
                    internal_traffic_local: false,
                },
            ));
        }
    }
    Ok(out)
}

/// Compiles every Service, then every pod's host ports. A bad Service or pod is rejected with
/// its reason and contributes nothing; two claiming one frontend: the first keeps it (Services
/// by name before pods by name), the second is rejected.
pub fn compile(
    services: &Named<Service>,
    slices: &Named<SliceInfo>,
    node_ips: &[Ipv4Addr],
    host_ports: &[HostPortPod],
) -> ServiceTable {
    let mut table = ServiceTable::default();
    // Slices by (namespace, Service name): one pass, so compiling N Services stays O(N log N).
    let mut by_service: BTreeMap<(&str, &str), Vec<&SliceInfo>> = BTreeMap::new();
    for ((ns, _), s) in slices {
        if let Some(svc) = slice_service(s) {
            by_service.entry((ns.as_str(), svc)).or_default().push(s);
        }
    }
    for ((ns, name), svc) in services {
        let mine = by_service.get(&(ns.as_str(), name.as_str())).map_or(&[][..], Vec::as_slice);
        let key = format!("{ns}/{name}");
        match compile_service(svc, mine, node_ips) {
            Ok(entries) => {
                if let Some((f, _)) = entries.iter().find(|(f, _)| table.frontends.contains_key(f)) {
                    table.rejected.push((key, format!("frontend {}:{} {:?} is already taken", f.ip, f.port, f.proto)));
                    table.conflicted = true;
                    continue;
                }
                table.frontends.extend(entries);
            }
            Err(why) => table.rejected.push((key, why)),
        }
    }
    for pod in host_ports {
        match compile_host_ports(pod) {
            Ok(entries) => {
                if let Some((f, e)) =
                    entries.iter().find_map(|(f, _)| table.frontends.get(f).map(|e| (f, e.service.clone())))
                {
                    table.rejected.push((
                        pod.owner(),
                        format!("hostPort {}:{} {:?} is already taken by {e}", f.ip, f.port, f.proto),
                    ));
                    table.conflicted = true;
                    continue;
                }
                table.frontends.extend(entries);
            }
            Err(why) => table.rejected.push((pod.owner(), why)),
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifest::snapshot_of;

    fn load(yaml: &str) -> (Named<Service>, Named<SliceInfo>) {
        let snap = snapshot_of(yaml, "t").expect("parse");
        (snap.services, snap.endpoint_slices)
    }

    const WEB: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  externalIPs: [172.30.0.100]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}
  ports:
  - {name: http, port: 80, targetPort: http, protocol: TCP, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: [10.244.1.2], conditions: {ready: true}}
- {addresses: [10.244.2.2], conditions: {ready: false, serving: true, terminating: true}}
";

    #[test]
    fn cluster_ip_node_port_and_external_ips_get_the_ready_backends() {
        let (s, e) = load(WEB);
        let nodes = [Ipv4Addr::new(172, 30, 0, 11), Ipv4Addr::new(172, 30, 0, 12)];
        let t = compile(&s, &e, &nodes, &[]);
        assert!(t.rejected.is_empty(), "{:?}", t.rejected);
        let http = Frontend { ip: Ipv4Addr::new(10, 96, 0, 10), port: 80, proto: Proto::Tcp };
        let entry = &t.frontends[&http];
        assert_eq!(
            entry.backends,
            [Backend { ip: Ipv4Addr::new(10, 244, 1, 2), port: 8080, node: None }],
            "terminating one not used"
        );
        assert_eq!(entry.affinity_timeout, Some(30));
        let np = Frontend { ip: nodes[1], port: 30080, proto: Proto::Tcp };
        assert_eq!(t.frontends[&np].kind, FrontendKind::NodePort);
        assert!(t.frontends.contains_key(&Frontend {
            ip: Ipv4Addr::new(172, 30, 0, 100),
            port: 80,
            proto: Proto::Tcp
        }));
        let dns = Frontend { ip: Ipv4Addr::new(10, 96, 0, 10), port: 53, proto: Proto::Udp };
        assert_eq!(t.frontends[&dns].backends[0].port, 5353, "multi-port, per-port target");
        assert_eq!(t.frontends.len(), 2 + 2 + 2, "ClusterIP and externalIP for both ports, NodePort (http) on 2 nodes");
    }

    #[test]
    fn terminating_endpoints_serve_when_none_is_ready() {
        let (s, e) = load(&WEB.replace("conditions: {ready: true}", "conditions: {ready: false, serving: false}"));
        let t = compile(&s, &e, &[], &[]);
        let http = Frontend { ip: Ipv4Addr::new(10, 96, 0, 10), port: 80, proto: Proto::Tcp };
        assert_eq!(t.frontends[&http].backends, [Backend { ip: Ipv4Addr::new(10, 244, 2, 2), port: 8080, node: None }]);
    }

    #[test]
    fn headless_external_name_and_foreign_proxies_get_no_frontend() {
        for variant in [
            WEB.replace("clusterIP: 10.96.0.10", "clusterIP: None").replace("type: NodePort", "type: ClusterIP"),
            WEB.replace("type: NodePort", "type: ExternalName"),
            WEB.replace(
                "{name: web, namespace: shop}",
                "{name: web, namespace: shop, labels: {service.kubernetes.io/service-proxy-name: other}}",
            ),
            WEB.replace(
                "{name: web, namespace: shop}",
                "{name: web, namespace: shop, labels: {service.kubernetes.io/headless: ''}}",
            ),
        ] {
            let (s, e) = load(&variant);
            let t = compile(&s, &e, &[Ipv4Addr::new(172, 30, 0, 11)], &[]);
            assert!(t.frontends.is_empty() && t.rejected.is_empty(), "{variant}\n{t:?}");
        }
    }

    #[test]
    fn bad_services_are_rejected_with_a_reason_and_others_unaffected() {
        let other = "---\napiVersion: v1\nkind: Service\nmetadata: {name: ok, namespace: shop}\n\
                     spec: {clusterIP: 10.96.0.11, ports: [{port: 443}]}\n";
        for (bad, reason) in [
            (WEB.replace("protocol: UDP}", "protocol: SCTP}"), "SCTP"),
            (WEB.replace("port: 80,", "port: 70000,"), "70000"),
            (WEB.replace("clusterIP: 10.96.0.10", "clusterIP: 10.96.0.999"), "clusterIP"),
            (WEB.replace("timeoutSeconds: 30", "timeoutSeconds: 0"), "timeoutSeconds"),
        ] {
            let (s, e) = load(&(bad.clone() + other));
            let t = compile(&s, &e, &[], &[]);
            assert_eq!(t.rejected.len(), 1, "{bad}");
            assert_eq!(t.rejected[0].0, "shop/web");
            assert!(t.rejected[0].1.contains(reason), "{:?}", t.rejected);
            assert_eq!(t.frontends.len(), 1, "the good Service still compiles");
        }
    }

    #[test]
    fn a_frontend_claimed_twice_goes_to_the_first_service() {
        let twin = "---\napiVersion: v1\nkind: Service\nmetadata: {name: zzz, namespace: shop}\n\
                    spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}\n";
        let (s, e) = load(&(WEB.to_owned() + twin));
        let t = compile(&s, &e, &[], &[]);
        assert_eq!(t.rejected.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["shop/zzz"]);
    }

    /// A hostPort is a frontend on its node's address (or its hostIP) with the pod behind it;
    /// a hostIP that is not the node's, or a port a NodePort or an earlier pod holds, is
    /// rejected with a reason and leaves the rest.
    #[test]
    fn host_ports_are_frontends_of_their_node_and_conflicts_are_rejected() {
        let snap = snapshot_of(
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDR: 10.244.1.0/24}\n\
             status: {addresses: [{type: InternalIP, address: 172.30.0.11}]}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec:\n  nodeName: n1\n  containers:\n  \
             - {name: c, image: i, ports: [{containerPort: 8080, hostPort: 9090}, {containerPort: 53, hostPort: 30080, protocol: UDP}]}\n\
             status: {podIP: 10.244.1.5, phase: Running}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\nspec:\n  nodeName: n1\n  containers:\n  \
             - {name: c, image: i, ports: [{containerPort: 80, hostPort: 9090}]}\n\
             status: {podIP: 10.244.1.6, phase: Running}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: x}\nspec:\n  nodeName: n1\n  containers:\n  \
             - {name: c, image: i, ports: [{containerPort: 80, hostPort: 9091, hostIP: 10.0.0.1}]}\n\
             status: {podIP: 10.244.1.7, phase: Running}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: x}\nspec:\n  nodeName: n1\n  containers:\n  \
             - {name: c, image: i, ports: [{containerPort: 80, hostPort: 30080}]}\n\
             status: {podIP: 10.244.1.8, phase: Running}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: pending, namespace: x}\nspec:\n  nodeName: n1\n  containers:\n  \
             - {name: c, image: i, ports: [{containerPort: 80, hostPort: 9999}]}\n",
            "t",
        )
        .expect("parse");
        let node = Ipv4Addr::new(172, 30, 0, 11);
        let by_node: BTreeMap<String, Vec<Ipv4Addr>> = [("n1".to_owned(), vec![node])].into();
        let pods = host_port_pods(&snap.pods, &by_node);
        assert_eq!(
            pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c", "d"],
            "no address: not yet"
        );
        let (s, e) = load(WEB);
        let t = compile(&s, &e, &[node], &pods);
        let f = Frontend { ip: node, port: 9090, proto: Proto::Tcp };
        assert_eq!(t.frontends[&f].kind, FrontendKind::HostPort);
        assert_eq!(t.frontends[&f].service, "pod x/a");
        assert_eq!(
            t.frontends[&f].backends,
            [Backend { ip: Ipv4Addr::new(10, 244, 1, 5), port: 8080, node: Some("n1".into()) }]
        );
        let udp = Frontend { ip: node, port: 30080, proto: Proto::Udp };
        assert_eq!(t.frontends[&udp].kind, FrontendKind::HostPort, "a NodePort on TCP leaves UDP free");
        let rejected: BTreeMap<&str, &str> = t.rejected.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert!(rejected["pod x/b"].contains("already taken by pod x/a"), "{rejected:?}");
        assert!(rejected["pod x/c"].contains("hostIP 10.0.0.1 is not an address of node n1"), "{rejected:?}");
        assert!(rejected["pod x/d"].contains("already taken by shop/web"), "{rejected:?}");
        assert!(t.conflicted);
    }
}
