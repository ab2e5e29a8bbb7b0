//! `weir-footprint-bench`: the agent's memory and CPU while it ingests a synthetic cluster
//! through its Kubernetes API source.
//!
//! For each (pods, Services) size it runs the real `weir-agent` in a network namespace of its
//! own, pointed (`--kubeconfig`) at a fake API server inside that namespace. The fake server
//! answers list and watch requests in the API's JSON shapes with generated objects shaped like a
//! real cluster's: Pods with managedFields, annotations, volumes, env and container statuses;
//! Nodes with image lists; one EndpointSlice per Service; a NetworkPolicy per namespace. The agent lists everything, loads its
//! datapath and programs every Service. Measured, from /proc:
//!
//! * time and CPU (user + system) until every Service is in the kernel map;
//! * resident memory once settled (VmRSS) and its peak (VmHWM);
//! * CPU while the watch streams pod updates at a fixed rate (churn), and RSS after it.
//!
//! The per-pod cost is the RSS slope between the two pod counts at the same Service count.
//! Cilium cannot run here; its published scalability figures are printed beside ours as such.
//! Everything it creates (two namespaces, a bpffs mount, a cgroup, a temp dir, the agent
//! process) is removed at exit.
use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::Parser;
use serde::Serialize;
use serde_json::{json, Value};
use weir_operator_api::{client::call, Request, Response};

use weir_tests::netns;

/// Cilium's scalability report: agent memory averaged 438 MiB at 50k pods and grew 10.5 KiB per pod.
const CILIUM_MIB_AT_50K: f64 = 438.0;
const CILIUM_KIB_PER_POD: f64 = 10.5;
/// This issue's targets.
const TARGET_MIB: f64 = 48.0;
const TARGET_KIB_PER_POD: f64 = 2.0;

/// Nodes in the synthetic cluster (the agent is the first).
const NODES: usize = 100;
const NAMESPACES: usize = 10;

#[derive(Parser)]
#[command(
    name = "weir-footprint-bench",
    about = "weir-agent RSS and CPU ingesting synthetic clusters via the API source"
)]
struct Cli {
    /// PODSxSERVICES sizes.
    #[arg(long, value_delimiter = ',', default_value = "1000x100,1000x1000,10000x100,10000x1000")]
    sizes: Vec<String>,
    /// Pod updates per second streamed during the churn phase.
    #[arg(long, default_value_t = 100)]
    churn_rate: u32,
    /// Length of the churn phase, seconds.
    #[arg(long, default_value_t = 10)]
    churn_secs: u64,
    /// Runs per size; the run with the median RSS is reported (RSS moves by a few MiB between
    /// identical runs with where the allocator's arenas end up).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value = "footprint-results.json")]
    out: PathBuf,
    /// The weir-agent binary (default: next to this one).
    #[arg(long)]
    agent: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Row {
    pods: usize,
    services: usize,
    /// Bytes of JSON the fake API server served for the lists until the agent was synced.
    listed_bytes: usize,
    sync_s: f64,
    sync_cpu_s: f64,
    rss_mib: f64,
    peak_mib: f64,
    churn_events: u64,
    churn_cpu_percent: f64,
    rss_after_churn_mib: f64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !nix::unistd::Uid::effective().is_root() {
        bail!("weir-footprint-bench needs root (network namespaces, bpffs, cgroups, eBPF)");
    }
    let agent = match cli.agent {
        Some(a) => a,
        None => std::env::current_exe()?.with_file_name("weir-agent"),
    };
    anyhow::ensure!(agent.exists(), "{}: no weir-agent binary (cargo build --release --bins)", agent.display());
    let mut rows = Vec::new();
    for size in &cli.sizes {
        let (p, s) = size.split_once('x').with_context(|| format!("{size:?}: expected PODSxSERVICES"))?;
        let (pods, services): (usize, usize) = (p.parse()?, s.parse()?);
        anyhow::ensure!(pods >= services && services > 0, "{size}: need PODS >= SERVICES > 0");
        anyhow::ensure!(pods <= NODES * 250, "{size}: at most {} pods", NODES * 250);
        let mut runs = Vec::new();
        for round in 1..=cli.rounds.max(1) {
            eprintln!("[footprint] {pods} pods, {services} Services, run {round}/{} ...", cli.rounds.max(1));
            let mut run = Run::new(&agent)?;
            let r = run.measure(pods, services, cli.churn_rate, Duration::from_secs(cli.churn_secs));
            run.teardown();
            let row = r.with_context(|| format!("{pods} pods / {services} Services"))?;
            eprintln!("[footprint]   {row:?}");
            runs.push(row);
        }
        runs.sort_by(|a, b| a.rss_mib.total_cmp(&b.rss_mib));
        let median = runs.swap_remove(runs.len() / 2);
        rows.push(median);
    }
    print_table(&rows);
    std::fs::write(&cli.out, serde_json::to_string_pretty(&rows)?)
        .with_context(|| format!("writing {}", cli.out.display()))?;
    eprintln!("JSON written to {}", cli.out.display());
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| pods | Services | listed JSON | sync time | sync CPU | RSS | peak RSS | churn CPU | RSS after churn |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} MiB | {:.2} s | {:.2} s | {:.1} MiB | {:.1} MiB | {:.1} % ({} events) | {:.1} MiB |",
            r.pods,
            r.services,
            r.listed_bytes as f64 / 1048576.0,
            r.sync_s,
            r.sync_cpu_s,
            r.rss_mib,
            r.peak_mib,
            r.churn_cpu_percent,
            r.churn_events,
            r.rss_after_churn_mib
        );
    }
    println!();
    if let Some(r) = rows.iter().find(|r| r.pods == 10_000 && r.services == 1000) {
        let verdict = if r.rss_mib <= TARGET_MIB { "met" } else { "NOT met" };
        println!("RSS at 10k pods / 1k Services: {:.1} MiB (target ≤ {TARGET_MIB} MiB: {verdict})", r.rss_mib);
    }
    // Per-pod slope at each Service count measured at two pod counts.
    let mut by_svc: HashMap<usize, Vec<&Row>> = HashMap::new();
    for r in rows {
        by_svc.entry(r.services).or_default().push(r);
    }
    let mut svcs: Vec<_> = by_svc.keys().copied().collect();
    svcs.sort();
    for s in svcs {
        let rs = &by_svc[&s];
        let (Some(lo), Some(hi)) = (rs.iter().min_by_key(|r| r.pods), rs.iter().max_by_key(|r| r.pods)) else {
            continue;
        };
        if lo.pods == hi.pods {
            continue;
        }
        let kib = (hi.rss_mib - lo.rss_mib) * 1024.0 / (hi.pods - lo.pods) as f64;
        let verdict = if kib <= TARGET_KIB_PER_POD { "met" } else { "NOT met" };
        println!(
            "per additional pod at {s} Services ({}→{} pods): {kib:.2} KiB (target ≤ {TARGET_KIB_PER_POD} KiB: {verdict}; Cilium published {CILIUM_KIB_PER_POD} KiB = {:.1}× ours)",
            lo.pods,
            hi.pods,
            CILIUM_KIB_PER_POD / kib.max(0.001)
        );
    }
    println!(
        "Cilium's published average at 50k pods: {CILIUM_MIB_AT_50K} MiB (not measured here: Cilium needs a Kubernetes cluster)"
    );
}

// ------------------------------------------------------------------ the synthetic cluster

fn node_name(i: usize) -> String {
    format!("bench-n{i}")
}

fn node_ip(i: usize) -> String {
    format!("192.168.{}.{}", i / 250, i % 250 + 1)
}

fn node(i: usize) -> Value {
    let images: Vec<Value> = (0..20)
        .map(|k| json!({"names": [format!("registry.example/team/image-{k}@sha256:{:064x}", k * 7919 + i), format!("registry.example/team/image-{k}:v1.{k}")], "sizeBytes": 50_000_000 + k}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": node_name(i), "uid": format!("00000000-0000-4000-8000-{i:012}"), "resourceVersion": "1",
            "labels": {"kubernetes.io/hostname": node_name(i), "kubernetes.io/os": "linux", "topology.kubernetes.io/zone": format!("zone-{}", i % 3)},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
            "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:status": {"f:conditions": {}, "f:images": {}, "f:nodeInfo": {}}}}]
        },
        "spec": {"podCIDR": format!("10.244.{i}.0/24"), "podCIDRs": [format!("10.244.{i}.0/24")], "providerID": format!("bench://{i}")},
        "status": {
            "addresses": [{"type": "InternalIP", "address": node_ip(i)}, {"type": "Hostname", "address": node_name(i)}],
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "250"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}],
            "images": images,
            "nodeInfo": {"kubeletVersion": "v1.33.0", "containerRuntimeVersion": "containerd://2.0.0", "kernelVersion": "6.18.0",
                "osImage": "Debian GNU/Linux 12", "architecture": "amd64", "operatingSystem": "linux", "machineID": "m", "systemUUID": "s",
                "bootID": "b", "kubeProxyVersion": "", }
        }
    })
}

fn namespace(k: usize) -> Value {
    let name = format!("bench-{k}");
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "uid": format!("10000000-0000-4000-8000-{k:012}"), "resourceVersion": "1",
            "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

/// Pod `i` of a cluster with `services` Services: on node i % NODES, backing Service i % services.
/// `generation` changes a label and the resourceVersion (what the churn phase streams).
fn pod(i: usize, services: usize, generation: u64) -> Value {
    let n = i % NODES;
    let ip = format!("10.244.{n}.{}", i / NODES + 2);
    let svc = i % services;
    let ns = format!("bench-{}", svc % NAMESPACES);
    let name = format!("app-{svc}-{i}");
    let start = "2026-11-01T00:00:00Z";
    let conditions: Vec<Value> =
        ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]
            .iter()
            .map(|t| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": start}))
            .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("20000000-0000-4000-8000-{i:012}"),
            "resourceVersion": (1 + generation).to_string(), "creationTimestamp": start,
            "generateName": format!("app-{svc}-"),
            "labels": {"app": format!("app-{svc}"), "pod-template-hash": "5d8f7c9b6", "generation": generation.to_string()},
            "annotations": {"kubectl.kubernetes.io/restartedAt": start, "prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("app-{svc}-5d8f7c9b6"),
                "uid": format!("30000000-0000-4000-8000-{svc:012}"), "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": start, "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}},
                    "f:ownerReferences": {".": {}, "k:{\"uid\":\"x\"}": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:env": {}, "f:image": {}, "f:imagePullPolicy": {},
                        "f:name": {}, "f:ports": {}, "f:resources": {}, "f:volumeMounts": {}}}, "f:dnsPolicy": {}, "f:restartPolicy": {}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": start, "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {}, "f:phase": {}, "f:podIP": {},
                    "f:podIPs": {}, "f:startTime": {}}}}
            ]
        },
        "spec": {
            "nodeName": node_name(n), "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 30, "schedulerName": "default-scheduler", "priority": 0, "enableServiceLinks": true,
            "containers": [{
                "name": "app", "image": format!("registry.example/team/app:{svc}"), "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}, {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10}
            }],
            "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {
            "phase": "Running", "hostIP": node_ip(n), "hostIPs": [{"ip": node_ip(n)}], "podIP": ip, "podIPs": [{"ip": ip}],
            "qosClass": "Burstable", "startTime": start,
            "conditions": conditions,
            "containerStatuses": [{"name": "app", "ready": true, "started": true, "restartCount": 0,
                "image": format!("registry.example/team/app:{svc}"), "imageID": format!("registry.example/team/app@sha256:{svc:064x}"),
                "containerID": format!("containerd://{i:064x}"), "state": {"running": {"startedAt": start}}}]
        }
    })
}

fn service(s: usize) -> Value {
    let ns = format!("bench-{}", s % NAMESPACES);
    let ip = format!("10.96.{}.{}", s / 250, s % 250 + 1);
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("app-{s}"), "namespace": ns, "uid": format!("40000000-0000-4000-8000-{s:012}"), "resourceVersion": "1",
            "labels": {"app": format!("app-{s}")},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": format!("{{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"name\":\"app-{s}\"}}}}")},
            "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:ports": {}, "f:selector": {}, "f:type": {}}}}]},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "selector": {"app": format!("app-{s}")}, "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]},
        "status": {"loadBalancer": {}}
    })
}

fn endpoint_slice(s: usize, pods: usize, services: usize) -> Value {
    let ns = format!("bench-{}", s % NAMESPACES);
    let endpoints: Vec<Value> = (s..pods)
        .step_by(services)
        .map(|i| {
            let n = i % NODES;
            json!({"addresses": [format!("10.244.{n}.{}", i / NODES + 2)], "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": node_name(n), "zone": format!("zone-{}", n % 3),
                "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("app-{s}-{i}"), "uid": format!("20000000-0000-4000-8000-{i:012}")}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("app-{s}-abcde"), "namespace": ns, "uid": format!("50000000-0000-4000-8000-{s:012}"), "resourceVersion": "1",
            "generateName": format!("app-{s}-"),
            "labels": {"kubernetes.io/service-name": format!("app-{s}"), "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": format!("app-{s}"), "uid": format!("40000000-0000-4000-8000-{s:012}"),
                "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "discovery.k8s.io/v1", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:addressType": {}, "f:endpoints": {}, "f:ports": {}}}]},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

/// A policy per namespace letting its pods take traffic only from the same namespace.
fn network_policy(k: usize) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "same-namespace", "namespace": format!("bench-{k}"),
            "uid": format!("60000000-0000-4000-8000-{k:012}"), "resourceVersion": "1"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": {}}]}]}})
}

/// One kind's objects, each serialized once; lists are assembled per request.
struct Kind {
    kind: &'static str,
    api_version: &'static str,
    items: Vec<Vec<u8>>,
}

impl Kind {
    fn new(kind: &'static str, api_version: &'static str, items: impl Iterator<Item = Value>) -> Self {
        Self { kind, api_version, items: items.map(|v| serde_json::to_vec(&v).expect("item JSON")).collect() }
    }

    /// A list page as the API server sends it: at most `limit` items from offset `from`, and a
    /// `continue` token when more remain.
    fn page(&self, from: usize, limit: Option<usize>) -> Vec<u8> {
        let to = limit.map_or(self.items.len(), |l| (from + l).min(self.items.len()));
        let from = from.min(to);
        let cont = if to < self.items.len() { format!(r#","continue":"{to}""#) } else { String::new() };
        let mut body = format!(
            r#"{{"kind":"{}List","apiVersion":"{}","metadata":{{"resourceVersion":"1"{cont}}},"items":["#,
            self.kind, self.api_version
        )
        .into_bytes();
        for (i, item) in self.items[from..to].iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(item);
        }
        body.extend_from_slice(b"]}");
        body
    }
}

// ------------------------------------------------------------------ the fake API server

/// Answers GET lists with the prepared bodies and holds watches open; pod updates go to every
/// open pod watch.
struct FakeApi {
    lists: HashMap<&'static str, Kind>,
    pod_watches: Mutex<Vec<TcpStream>>,
    served: AtomicU64,
}

impl FakeApi {
    fn new(pods: usize, services: usize) -> Self {
        let mut lists = HashMap::new();
        lists.insert("/api/v1/nodes", Kind::new("Node", "v1", (0..NODES).map(node)));
        lists.insert("/api/v1/namespaces", Kind::new("Namespace", "v1", (0..NAMESPACES).map(namespace)));
        lists.insert("/api/v1/pods", Kind::new("Pod", "v1", (0..pods).map(|i| pod(i, services, 0))));
        lists.insert("/api/v1/services", Kind::new("Service", "v1", (0..services).map(service)));
        let slices = (0..services).map(|s| endpoint_slice(s, pods, services));
        lists.insert(
            "/apis/discovery.k8s.io/v1/endpointslices",
            Kind::new("EndpointSlice", "discovery.k8s.io/v1", slices),
        );
        let policies = (0..NAMESPACES).map(network_policy);
        lists.insert(
            "/apis/networking.k8s.io/v1/networkpolicies",
            Kind::new("NetworkPolicy", "networking.k8s.io/v1", policies),
        );
        Self { lists, pod_watches: Mutex::new(Vec::new()), served: AtomicU64::new(0) }
    }

    fn serve(self: &Arc<Self>, listener: TcpListener) {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let me = self.clone();
            std::thread::spawn(move || {
                let _ = me.connection(conn);
            });
        }
    }

    fn connection(&self, conn: TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut out = conn;
        loop {
            let mut request = String::new();
            if reader.read_line(&mut request)? == 0 {
                return Ok(());
            }
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header)? == 0 || header == "\r\n" {
                    break;
                }
            }
            let target = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let param = |name: &str| query.split('&').find_map(|p| p.strip_prefix(name)?.strip_prefix('='));
            let watch = matches!(param("watch"), Some("true" | "1"));
            match self.lists.get(path) {
                Some(_) if watch => {
                    out.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                    )?;
                    if path == "/api/v1/pods" {
                        self.pod_watches.lock().expect("watches").push(out.try_clone()?);
                    }
                    // Held open until the client goes away; events are written by `push`.
                    let mut sink = String::new();
                    while reader.read_line(&mut sink)? > 0 {
                        sink.clear();
                    }
                    return Ok(());
                }
                Some(kind) => {
                    // Paginated as the API server does: the watcher asks for pages of `limit`.
                    let from = param("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
                    let body = kind.page(from, param("limit").and_then(|l| l.parse().ok()));
                    self.served.fetch_add(body.len() as u64, Ordering::Relaxed);
                    write!(
                        out,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )?;
                    out.write_all(&body)?;
                }
                None => {
                    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                        "message": format!("{path} is not served by the footprint bench")})
                    .to_string();
                    write!(
                        out,
                        "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )?;
                }
            }
        }
    }

    /// Streams one watch event to every open pod watch; returns how many got it.
    fn push(&self, event: &Value) -> usize {
        let line = format!("{event}\n");
        let chunk = format!("{:x}\r\n{line}\r\n", line.len());
        let mut watches = self.pod_watches.lock().expect("watches");
        watches.retain_mut(|w| w.write_all(chunk.as_bytes()).is_ok());
        watches.len()
    }
}

// ------------------------------------------------------------------ one measured run

struct Run {
    agent_bin: PathBuf,
    ns: String,
    peer_ns: String,
    dir: PathBuf,
    bpffs: PathBuf,
    cgroup: PathBuf,
    agent: Option<Child>,
}

fn proc_status_kib(pid: u32, key: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line =
        status.lines().find(|l| l.starts_with(key)).with_context(|| format!("no {key} in /proc/{pid}/status"))?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

/// User + system CPU seconds of `pid` (all its threads).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at state.
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok(ticks / hz)
}

impl Run {
    fn new(agent_bin: &Path) -> anyhow::Result<Self> {
        let id = format!("wfp{}{}", std::process::id(), &netns::random_hex()[..4]);
        Ok(Self {
            agent_bin: agent_bin.to_owned(),
            ns: format!("{id}a"),
            peer_ns: format!("{id}p"),
            dir: std::env::temp_dir().join(&id),
            bpffs: PathBuf::from("/run").join(format!("weir-footprint-{id}")),
            cgroup: PathBuf::from("/sys/fs/cgroup/unified").join(format!("weir-footprint-{id}")),
            agent: None,
        })
    }

    fn setup(&mut self) -> anyhow::Result<()> {
        let (a, p) = (&self.ns, &self.peer_ns);
        netns::ip(&["netns", "add", a])?;
        netns::ip(&["netns", "add", p])?;
        // The agent's uplink, eth0, with this node's InternalIP; its peer sits in a namespace
        // of its own (no route anywhere else).
        netns::ip(&["-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", p])?;
        netns::ip(&["-n", a, "addr", "add", &format!("{}/16", node_ip(0)), "dev", "eth0"])?;
        for ns in [a, p] {
            netns::ip(&["-n", ns, "link", "set", "lo", "up"])?;
            netns::ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        std::fs::create_dir_all(&self.dir)?;
        std::fs::create_dir_all(&self.cgroup).context("creating the cgroup")?;
        std::fs::create_dir_all(&self.bpffs)?;
        nix::mount::mount(Some("bpf"), &self.bpffs, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .context("mounting bpffs")?;
        Ok(())
    }

    /// A listener on 127.0.0.1 inside the agent's namespace (bound from a thread that entered it).
    fn listen_in_ns(&self) -> anyhow::Result<TcpListener> {
        let path = netns::netns_path(&self.ns);
        std::thread::spawn(move || -> anyhow::Result<TcpListener> {
            let ns = std::fs::File::open(&path)?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            Ok(TcpListener::bind("127.0.0.1:0")?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("listener thread panicked"))?
    }

    fn measure(&mut self, pods: usize, services: usize, churn_rate: u32, churn: Duration) -> anyhow::Result<Row> {
        self.setup()?;
        let api = Arc::new(FakeApi::new(pods, services));
        let listener = self.listen_in_ns()?;
        let port = listener.local_addr()?.port();
        std::thread::spawn({
            let api = api.clone();
            move || api.serve(listener)
        });
        let kubeconfig = self.dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: bench, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
                 users: [{{name: bench, user: {{}}}}]\ncontexts: [{{name: bench, context: {{cluster: bench, user: bench}}}}]\n\
                 current-context: bench\n"
            ),
        )?;
        let socket = self.dir.join("agent.sock");
        let log = std::fs::File::create(self.dir.join("agent.log"))?;
        let started = Instant::now();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns::netns_path(&self.ns).display()))
            .arg("--")
            .arg(&self.agent_bin)
            .args([
                "--node-name",
                &node_name(0),
                "--uplink",
                "eth0",
                "--routing",
                "direct",
                "--cluster-cidr",
                "10.244.0.0/16",
            ])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--socket")
            .arg(&socket)
            .arg("--delete-queue")
            .arg(self.dir.join("delete-queue"))
            .arg("--cgroup-root")
            .arg(&self.cgroup)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting weir-agent")?;
        let pid = child.id();
        self.agent = Some(child);

        // Synced: ready, and every Service's frontend has its backends in the kernel map.
        let deadline = started + Duration::from_secs(300);
        loop {
            if let Some(st) = self.agent.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("weir-agent exited ({st}); log:\n{}", self.log_tail());
            }
            let programmed = match call(&socket, &Request::Services, Duration::from_secs(10)) {
                Ok(Response::Services { rows, .. }) => rows.iter().filter(|r| !r.backends.is_empty()).count(),
                _ => 0,
            };
            if programmed >= services {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "not synced after 300 s ({programmed}/{services} Services programmed); log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let sync_s = started.elapsed().as_secs_f64();
        let sync_cpu_s = cpu_seconds(pid)?;
        let listed_bytes = api.served.load(Ordering::Relaxed) as usize;
        std::thread::sleep(Duration::from_secs(3));
        let rss_kib = proc_status_kib(pid, "VmRSS:")?;

        // Churn: pod updates (a label changes) at `churn_rate` per second over the pod watch.
        let cpu0 = cpu_seconds(pid)?;
        let t0 = Instant::now();
        let mut sent = 0u64;
        let interval = Duration::from_secs_f64(1.0 / f64::from(churn_rate.max(1)));
        while t0.elapsed() < churn {
            let i = (sent as usize * 7919) % pods;
            if api.push(&json!({"type": "MODIFIED", "object": pod(i, services, sent + 1)})) == 0 {
                bail!("the agent holds no pod watch");
            }
            sent += 1;
            let next = interval * sent as u32;
            if let Some(wait) = next.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let churn_cpu = cpu_seconds(pid)? - cpu0;
        let churn_wall = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(1));
        let rss_after = proc_status_kib(pid, "VmRSS:")?;
        let peak = proc_status_kib(pid, "VmHWM:")?;
        if self.agent.as_mut().and_then(|c| c.try_wait().ok().flatten()).is_some() {
            bail!("weir-agent exited during the run; log:\n{}", self.log_tail());
        }
        Ok(Row {
            pods,
            services,
            listed_bytes,
            sync_s,
            sync_cpu_s,
            rss_mib: rss_kib / 1024.0,
            peak_mib: peak / 1024.0,
            churn_events: sent,
            churn_cpu_percent: churn_cpu / churn_wall * 100.0,
            rss_after_churn_mib: rss_after / 1024.0,
        })
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn teardown(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.ns, &self.peer_ns] {
            let _ = netns::ip(&["netns", "del", ns]);
        }
        let _ = nix::mount::umount2(&self.bpffs, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.bpffs);
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
