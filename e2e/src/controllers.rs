//! What kube-apiserver and kube-controller-manager would do for the lab's Services: allocate
//! ClusterIPs and NodePorts, and keep EndpointSlices in line with Service selectors and pod
//! readiness. Pure functions over the cluster state; the lab writes the results as manifests.
//!
//! Pod readiness in the lab: a pod with an IP is ready unless annotated
//! `lab.weir.dev/ready: "false"`; `lab.weir.dev/terminating: "true"` marks it terminating (still
//! serving), so tests can exercise the terminating fallback.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::bail;
use k8s_openapi::{
    api::{
        core::v1::{ContainerPort, Pod, Service, ServicePort},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use weir_operator_agent::source::Named;

pub const ANNOTATION_READY: &str = "lab.weir.dev/ready";
pub const ANNOTATION_TERMINATING: &str = "lab.weir.dev/terminating";
const SERVICE_CIDR_BASE: [u8; 3] = [10, 96, 0];
const NODE_PORTS: std::ops::RangeInclusive<i32> = 30000..=32767;

/// Fills in `spec.clusterIP` and NodePorts the way the API server defaults them, avoiding
/// what `taken` already holds. Rejects an explicit address or port that is in use.
pub fn allocate(svc: &mut Service, taken_ips: &BTreeSet<Ipv4Addr>, taken_ports: &BTreeSet<i32>) -> anyhow::Result<()> {
    let spec = svc.spec.get_or_insert_with(Default::default);
    let kind = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    if kind == "ExternalName" {
        return Ok(());
    }
    match spec.cluster_ip.as_deref() {
        Some("None") => {}
        Some(ip) if !ip.is_empty() => {
            let ip: Ipv4Addr =
                ip.parse().map_err(|_| anyhow::anyhow!("spec.clusterIP {ip:?} is not an IPv4 address"))?;
            if taken_ips.contains(&ip) {
                bail!("spec.clusterIP {ip} is already allocated");
            }
        }
        _ => {
            let [a, b, _] = SERVICE_CIDR_BASE;
            let free = (0u16..=255 * 256)
                .map(|i| Ipv4Addr::new(a, b, (i >> 8) as u8, i as u8))
                .find(|ip| ip.octets()[3] >= 10 && !taken_ips.contains(ip))
                .ok_or_else(|| anyhow::anyhow!("the service CIDR 10.96.0.0/16 is full"))?;
            spec.cluster_ip = Some(free.to_string());
            spec.cluster_ips = Some(vec![free.to_string()]);
        }
    }
    if kind == "NodePort" || kind == "LoadBalancer" {
        let mut used = taken_ports.clone();
        for p in spec.ports.iter_mut().flatten() {
            match p.node_port {
                Some(n) if !NODE_PORTS.contains(&n) => bail!("nodePort {n} is outside {NODE_PORTS:?}"),
                Some(n) if used.contains(&n) => bail!("nodePort {n} is already allocated"),
                Some(n) => {
                    used.insert(n);
                }
                None => {
                    let n = NODE_PORTS
                        .clone()
                        .find(|n| !used.contains(n))
                        .ok_or_else(|| anyhow::anyhow!("no free nodePort"))?;
                    p.node_port = Some(n);
                    used.insert(n);
                }
            }
        }
    }
    Ok(())
}

fn annotation(pod: &Pod, key: &str) -> Option<String> {
    pod.metadata.annotations.as_ref().and_then(|a| a.get(key)).cloned()
}

/// The container port a Service port's targetPort means on this pod (a name is looked up in
/// the pod's containers; a pod without that name is not an endpoint for the port).
fn resolve_target(sp: &ServicePort, pod: &Pod) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let ports: Vec<ContainerPort> = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.clone().unwrap_or_default())
                .collect();
            let proto = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
            ports
                .iter()
                .find(|p| {
                    p.name.as_deref() == Some(name) && p.protocol.clone().unwrap_or_else(|| "TCP".into()) == proto
                })
                .map(|p| p.container_port)
        }
    }
}

/// A Service port as resolved on one pod: (port name, container port, protocol).
type ResolvedPort = (Option<String>, i32, String);

fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// EndpointSlices for every Service with a selector: one slice per distinct set of resolved
/// ports (as the EndpointSlice controller does), named `<service>-<n>`.
pub fn endpoint_slices(services: &Named<Service>, pods: &Named<Pod>) -> Vec<EndpointSlice> {
    let mut out = Vec::new();
    for ((ns, name), svc) in services {
        let spec = svc.spec.clone().unwrap_or_default();
        let Some(selector) = spec.selector.clone().filter(|s| !s.is_empty()) else { continue };
        let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
        let svc_ports = spec.ports.clone().unwrap_or_default();
        // resolved ports → endpoints
        let mut groups: BTreeMap<Vec<ResolvedPort>, Vec<Endpoint>> = BTreeMap::new();
        for ((pns, _), pod) in pods {
            if pns != ns || !selects(&selector, pod) {
                continue;
            }
            let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else { continue };
            let ports: Vec<ResolvedPort> = svc_ports
                .iter()
                .filter_map(|sp| {
                    resolve_target(sp, pod)
                        .map(|t| (sp.name.clone(), t, sp.protocol.clone().unwrap_or_else(|| "TCP".into())))
                })
                .collect();
            if ports.is_empty() && !svc_ports.is_empty() {
                // None of the Service's ports exists on this pod: it serves nothing here.
                continue;
            }
            let terminating = annotation(pod, ANNOTATION_TERMINATING).as_deref() == Some("true");
            let ready_annotated = annotation(pod, ANNOTATION_READY).as_deref() != Some("false");
            let serving = ready_annotated;
            let ready = publish_not_ready || (ready_annotated && !terminating);
            groups.entry(ports).or_default().push(Endpoint {
                addresses: vec![ip],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(serving),
                    terminating: Some(terminating),
                }),
                node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some(ns.clone()),
                    name: pod.metadata.name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        for (i, (ports, endpoints)) in groups.into_iter().enumerate() {
            out.push(EndpointSlice {
                address_type: "IPv4".into(),
                endpoints,
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{i}")),
                    namespace: Some(ns.clone()),
                    labels: Some(
                        [
                            ("kubernetes.io/service-name".to_owned(), name.clone()),
                            ("endpointslice.kubernetes.io/managed-by".to_owned(), "weir-lab".to_owned()),
                        ]
                        .into_iter()
                        .collect(),
                    ),
                    ..Default::default()
                },
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(n, p, proto)| EndpointPort {
                            name: n,
                            port: Some(p),
                            protocol: Some(proto),
                            app_protocol: None,
                        })
                        .collect(),
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use weir_operator_agent::source::manifest::snapshot_of;

    use super::*;

    fn state(yaml: &str) -> (Named<Service>, Named<Pod>) {
        let snap = snapshot_of(yaml, "t").expect("parse");
        let pods = weir_operator_agent::source::manifest::parse(yaml, "t")
            .expect("parse")
            .into_iter()
            .filter_map(|o| match o {
                weir_operator_agent::source::ClusterObject::Pod(p) => {
                    Some((weir_operator_agent::source::namespaced(&p.metadata), std::sync::Arc::from(p)))
                }
                _ => None,
            })
            .collect();
        (snap.services, pods)
    }

    fn pod(name: &str, ip: &str, port_name: &str, port: u16, extra: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: web}}{extra}}}\n\
             spec: {{nodeName: n1, containers: [{{name: c, image: x, ports: [{{name: {port_name}, containerPort: {port}}}]}}]}}\n\
             status: {{podIP: {ip}}}\n"
        )
    }

    const SVC: &str = "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
                       spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}\n";

    #[test]
    fn named_target_ports_resolve_per_pod_into_separate_slices() {
        let y = SVC.to_owned()
            + &pod("a", "10.244.1.2", "http", 8080, "")
            + &pod("b", "10.244.2.2", "http", 9090, "")
            + &pod("c", "10.244.2.3", "other", 7070, "");
        let (s, p) = state(&y);
        let slices = endpoint_slices(&s, &p);
        let mut got: Vec<(i32, Vec<String>)> = slices
            .iter()
            .map(|sl| {
                (
                    sl.ports.as_ref().and_then(|p| p[0].port).unwrap_or(0),
                    sl.endpoints.iter().map(|e| e.addresses[0].clone()).collect(),
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [(8080, vec!["10.244.1.2".into()]), (9090, vec!["10.244.2.2".into()])],
            "pod c has no port named http"
        );
        assert!(slices.iter().all(|s| s
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l["kubernetes.io/service-name"] == "web")));
    }

    #[test]
    fn readiness_terminating_and_publish_not_ready() {
        let y = SVC.to_owned()
            + &pod("a", "10.244.1.2", "http", 8080, ", annotations: {lab.weir.dev/ready: 'false'}")
            + &pod("b", "10.244.1.3", "http", 8080, ", annotations: {lab.weir.dev/terminating: 'true'}");
        let (s, p) = state(&y);
        let eps = &endpoint_slices(&s, &p)[0].endpoints;
        let cond =
            |ip: &str| eps.iter().find(|e| e.addresses[0] == ip).and_then(|e| e.conditions.clone()).expect("endpoint");
        assert_eq!((cond("10.244.1.2").ready, cond("10.244.1.2").serving), (Some(false), Some(false)));
        assert_eq!((cond("10.244.1.3").ready, cond("10.244.1.3").terminating), (Some(false), Some(true)));
        let (s, p) = state(
            &(y.replace(
                "ports: [{name: http, port: 80",
                "publishNotReadyAddresses: true, ports: [{name: http, port: 80",
            )),
        );
        assert!(endpoint_slices(&s, &p)[0]
            .endpoints
            .iter()
            .all(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true)));
    }

    #[test]
    fn allocation_defaults_and_conflicts() {
        let (mut s, _) = state(&SVC.replace("ports:", "type: NodePort, ports:"));
        let mut svc = std::sync::Arc::unwrap_or_clone(s.remove(&("shop".into(), "web".into())).expect("svc"));
        let taken: BTreeSet<Ipv4Addr> = [Ipv4Addr::new(10, 96, 0, 10)].into_iter().collect();
        allocate(&mut svc, &taken, &[30000].into_iter().collect()).expect("allocate");
        let spec = svc.spec.clone().expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.11"));
        assert_eq!(spec.ports.expect("ports")[0].node_port, Some(30001));
        let mut dup = svc.clone();
        dup.spec.as_mut().expect("spec").cluster_ip = Some("10.96.0.10".into());
        assert!(allocate(&mut dup, &taken, &BTreeSet::new()).is_err(), "explicit clusterIP in use");
    }
}
