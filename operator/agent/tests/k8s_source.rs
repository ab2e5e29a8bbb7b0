//! Unit tier (no root, no cluster): the Kubernetes API source against a mock API server
//! (tower-test) answering in the real API's JSON shapes — lists, then watch streams with ADDED,
//! MODIFIED, DELETED, BOOKMARK and a 410 Gone that forces a relist — and the same objects through
//! the API source and the manifest source giving the same desired state.
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{json, Value};
use tokio::sync::watch;
use weir_operator_agent::{services, source::k8s, source::manifest::snapshot_of, source::ClusterSnapshot, state};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Reply = tower_test::mock::SendResponse<Response<Body>>;

/// One request the source made.
struct Call {
    path: String,
    query: String,
    reply: Reply,
}

impl Call {
    fn watch(&self) -> bool {
        self.query.split('&').any(|p| p == "watch=true")
    }

    fn answer(self, body: String) {
        self.reply
            .send_response(Response::builder().status(200).body(Body::from(body.into_bytes())).expect("response"));
    }
}

/// The API paths of the six kinds.
const NODES: &str = "/api/v1/nodes";
const NAMESPACES: &str = "/api/v1/namespaces";
const PODS: &str = "/api/v1/pods";
const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const POLICIES: &str = "/apis/networking.k8s.io/v1/networkpolicies";

struct Mock {
    handle: Handle,
    /// Requests not answered (yet): a watch left hanging is a quiet watch.
    parked: Vec<Call>,
}

impl Mock {
    /// The next request for `path` (list or watch as `watch` says); others are parked.
    async fn next(&mut self, path: &str, watch: bool) -> Call {
        if let Some(i) = self.parked.iter().position(|c| c.path == path && c.watch() == watch) {
            return self.parked.swap_remove(i);
        }
        loop {
            let (req, reply) = tokio::time::timeout(Duration::from_secs(20), self.handle.next_request())
                .await
                .unwrap_or_else(|_| panic!("no {} request for {path}", if watch { "watch" } else { "list" }))
                .expect("the client is gone");
            let call = Call {
                path: req.uri().path().to_owned(),
                query: req.uri().query().unwrap_or_default().to_owned(),
                reply,
            };
            assert_eq!(req.method(), http::Method::GET, "the agent only reads: {} {}", req.method(), call.path);
            if call.path == path && call.watch() == watch {
                return call;
            }
            self.parked.push(call);
        }
    }
}

fn list(kind: &str, api_version: &str, rv: &str, items: Vec<Value>) -> String {
    json!({"kind": format!("{kind}List"), "apiVersion": api_version, "metadata": {"resourceVersion": rv}, "items": items})
        .to_string()
}

fn event(kind: &str, object: Value) -> String {
    format!("{}\n", json!({"type": kind, "object": object}))
}

/// The lab's shape of cluster: two nodes, a namespace, pods, a Service and its slice; with the
/// fields a real API server adds (managedFields, annotations, status noise).
fn cluster_yaml() -> String {
    let mut y = String::new();
    for (i, ip) in [(1, "172.30.0.11"), (2, "172.30.0.12")] {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: n{i}, labels: {{kubernetes.io/hostname: n{i}}}}}\n\
             spec: {{podCIDR: 10.244.{i}.0/24, podCIDRs: [10.244.{i}.0/24]}}\n\
             status: {{addresses: [{{type: InternalIP, address: {ip}}}], images: [{{names: [big/image:1], sizeBytes: 99}}]}}\n"
        ));
    }
    y.push_str("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n");
    for (name, node, ip) in [("a1", "n1", "10.244.1.2"), ("b1", "n2", "10.244.2.2")] {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: web}}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: c, image: srv, ports: [{{name: http, containerPort: 8080}}]}}]}}\n\
             status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
        ));
    }
    y.push_str(
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
         spec: {type: NodePort, clusterIP: 10.96.0.10, selector: {app: web}, ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: web-x1, namespace: shop, labels: {kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nports: [{name: http, port: 8080}]\n\
         endpoints: [{addresses: [10.244.1.2], nodeName: n1}, {addresses: [10.244.2.2], nodeName: n2}]\n\
         ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-from-shop, namespace: shop}\n\
         spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {}}], ports: [{port: http}]}]}\n",
    );
    y
}

/// The objects of `yaml` as JSON, by API path, each with what a real API server adds.
fn objects_by_path(yaml: &str) -> std::collections::BTreeMap<&'static str, Vec<Value>> {
    let mut out: std::collections::BTreeMap<&'static str, Vec<Value>> = Default::default();
    let docs = weir_operator_agent::source::manifest::json_documents(yaml).expect("yaml");
    for v in docs {
        if v.is_null() {
            continue;
        }
        let path = match v["kind"].as_str() {
            Some("Node") => NODES,
            Some("Namespace") => NAMESPACES,
            Some("Pod") => PODS,
            Some("Service") => SERVICES,
            Some("EndpointSlice") => SLICES,
            Some("NetworkPolicy") => POLICIES,
            other => panic!("kind {other:?}"),
        };
        out.entry(path).or_default().push(noisy(v));
    }
    out
}

/// What the API server adds that the agent must not keep.
fn noisy(mut v: Value) -> Value {
    v["metadata"]["resourceVersion"] = json!("5");
    v["metadata"]["uid"] = json!(format!("uid-{}", v["metadata"]["name"].as_str().unwrap_or_default()));
    v["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}]);
    v["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/last-applied-configuration": "{...}"});
    v
}

fn api_version(path: &str) -> &'static str {
    match path {
        SLICES => "discovery.k8s.io/v1",
        POLICIES => "networking.k8s.io/v1",
        _ => "v1",
    }
}

fn kind(path: &str) -> &'static str {
    match path {
        NODES => "Node",
        NAMESPACES => "Namespace",
        PODS => "Pod",
        SERVICES => "Service",
        POLICIES => "NetworkPolicy",
        _ => "EndpointSlice",
    }
}

/// Starts the API source on a mock client; answers the six initial lists from `yaml`.
async fn start(yaml: &str) -> (Mock, watch::Receiver<Option<ClusterSnapshot>>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let (tx, rx) = watch::channel(None);
    tokio::spawn(k8s::watch_api(client, tx));
    let mut mock = Mock { handle, parked: Vec::new() };
    let objects = objects_by_path(yaml);
    for path in [NODES, NAMESPACES, PODS, SERVICES, SLICES, POLICIES] {
        let call = mock.next(path, false).await;
        let items = objects.get(path).cloned().unwrap_or_default();
        call.answer(list(kind(path), api_version(path), "10", items));
    }
    (mock, rx)
}

/// Waits until the published snapshot satisfies `ok`.
async fn until(rx: &mut watch::Receiver<Option<ClusterSnapshot>>, what: &str, ok: impl Fn(&ClusterSnapshot) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if rx.borrow_and_update().as_ref().is_some_and(&ok) {
            return;
        }
        if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
            panic!("timed out waiting for {what}; last snapshot: {:?}", rx.borrow().as_ref().map(|s| &s.services));
        }
    }
}

fn svc(name: &str, ip: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "shop", "resourceVersion": "11",
                        "managedFields": [{"manager": "x", "operation": "Update"}]},
           "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": port}]}})
}

fn has(s: &ClusterSnapshot, name: &str) -> bool {
    s.services.contains_key(&("shop".to_owned(), name.to_owned()))
}

fn port_of(s: &ClusterSnapshot, name: &str) -> Option<i32> {
    let svc = s.services.get(&("shop".to_owned(), name.to_owned()))?;
    svc.spec.as_ref()?.ports.as_ref()?.first().map(|p| p.port)
}

#[tokio::test]
async fn watch_events_and_a_410_relist_reach_the_snapshot() {
    let (mut mock, mut rx) = start(&cluster_yaml()).await;
    until(&mut rx, "the initial snapshot", |s| s.nodes.len() == 2 && has(s, "web")).await;
    {
        let snap = rx.borrow();
        let snap = snap.as_ref().expect("snapshot");
        let pod = &snap.pods[&("shop".to_owned(), "a1".to_owned())];
        assert_eq!(pod.node_name.as_deref(), Some("n1"));
        assert_eq!(pod.label("app"), Some("web"));
        assert_eq!(pod.named_ports.len(), 1, "named ports are kept");
        assert_eq!(&*pod.ips, ["10.244.1.2".into()]);
        let node = &snap.nodes["n1"];
        assert!(node.status.as_ref().is_some_and(|s| s.images.is_none() && s.addresses.is_some()), "{node:?}");
    }

    // ADDED, MODIFIED, DELETED: one watch response each (the watcher watches again after each).
    let steps: [(&str, Value, &str); 3] = [
        ("ADDED", svc("api", "10.96.0.11", 81), "api added"),
        ("MODIFIED", svc("web", "10.96.0.10", 8000), "web's port changed"),
        ("DELETED", svc("api", "10.96.0.11", 81), "api deleted"),
    ];
    for (i, (kind, object, what)) in steps.into_iter().enumerate() {
        let call = mock.next(SERVICES, true).await;
        if i == 0 {
            assert!(call.query.contains("resourceVersion=10"), "watch resumes from the list: {}", call.query);
        }
        call.answer(event(kind, object));
        match kind {
            "ADDED" => until(&mut rx, what, |s| has(s, "api")).await,
            "MODIFIED" => until(&mut rx, what, |s| port_of(s, "web") == Some(8000)).await,
            _ => until(&mut rx, what, |s| !has(s, "api")).await,
        }
    }
    {
        let snap = rx.borrow();
        let web = &snap.as_ref().expect("snapshot").services[&("shop".to_owned(), "web".to_owned())];
        assert!(web.metadata.managed_fields.is_none(), "events are trimmed too");
    }

    // BOOKMARK: no object changes; the next watch resumes from the bookmark's version.
    let call = mock.next(SERVICES, true).await;
    call.answer(event(
        "BOOKMARK",
        json!({"kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": "42"}}),
    ));
    let call = mock.next(SERVICES, true).await;
    assert!(call.query.contains("resourceVersion=42"), "resumed after the bookmark: {}", call.query);

    // 410 Gone (expired resourceVersion): the watcher lists again; what the new list lacks is gone.
    call.answer(event(
        "ERROR",
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "too old resource version: 42 (50)", "reason": "Expired", "code": 410}),
    ));
    let relist = mock.next(SERVICES, false).await;
    relist.answer(list("Service", "v1", "60", vec![svc("fresh", "10.96.0.12", 82)]));
    until(&mut rx, "the relist", |s| has(s, "fresh") && !has(s, "web")).await;
    assert_eq!(rx.borrow().as_ref().map(|s| s.nodes.len()), Some(2), "other kinds untouched");
}

#[tokio::test]
async fn nothing_is_published_before_every_kind_is_listed() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let (tx, mut rx) = watch::channel(None);
    tokio::spawn(k8s::watch_api(client, tx));
    let mut mock = Mock { handle, parked: Vec::new() };
    let objects = objects_by_path(&cluster_yaml());
    // Five of six kinds listed: still nothing (the datapath and CNI STATUS stay not ready).
    for path in [NODES, NAMESPACES, PODS, SERVICES, POLICIES] {
        let call = mock.next(path, false).await;
        call.answer(list(kind(path), api_version(path), "10", objects.get(path).cloned().unwrap_or_default()));
    }
    assert!(tokio::time::timeout(Duration::from_millis(500), rx.changed()).await.is_err(), "published early");
    let call = mock.next(SLICES, false).await;
    call.answer(list(kind(SLICES), api_version(SLICES), "10", objects[SLICES].clone()));
    until(&mut rx, "the first snapshot", |s| s.endpoint_slices.len() == 1).await;
}

#[tokio::test]
async fn the_api_and_the_manifest_directory_give_the_same_desired_state() {
    let yaml = cluster_yaml();
    let (_mock, mut rx) = start(&yaml).await;
    until(&mut rx, "the snapshot", |s| s.endpoint_slices.len() == 1).await;
    let from_api = rx.borrow().clone().expect("snapshot");
    let from_dir = snapshot_of(&yaml, "cluster.yaml").expect("manifests");
    for node in ["n1", "n2"] {
        assert_eq!(state::desired(&from_api, node), state::desired(&from_dir, node), "{node}");
    }
    let ips = ["172.30.0.11".parse().expect("ip"), "172.30.0.12".parse().expect("ip")];
    let api_table = services::compile(&from_api.services, &from_api.endpoint_slices, &ips, &[]);
    let dir_table = services::compile(&from_dir.services, &from_dir.endpoint_slices, &ips, &[]);
    assert_eq!(api_table, dir_table);
    assert_eq!(api_table.frontends.len(), 3, "ClusterIP and a NodePort on each node");
    assert_eq!(from_api.pods.keys().collect::<Vec<_>>(), from_dir.pods.keys().collect::<Vec<_>>());
    let specs =
        |s: &ClusterSnapshot| s.network_policies.iter().map(|(k, p)| (k.clone(), p.spec.clone())).collect::<Vec<_>>();
    assert_eq!(specs(&from_api), specs(&from_dir));
    assert_eq!(from_api.network_policies.len(), 1);
}

/// Objects the API accepts but weir cannot use (the manifest source refuses their file; the API
/// source must take the rest and leave these out, by name).
const UNUSABLE: &str = "---\napiVersion: v1\nkind: Node\nmetadata: {name: n3}\nspec: {podCIDR: not-a-cidr}\n\
     status: {addresses: [{type: InternalIP, address: 172.30.0.13}]}\n\
     ---\napiVersion: v1\nkind: Service\nmetadata: {name: odd, namespace: shop}\n\
     spec: {clusterIP: 10.96.0.11, selector: {app: web}, ports: [{name: x, port: 81, protocol: QUIC}]}\n";

#[tokio::test]
async fn objects_weir_cannot_use_are_skipped_by_name_and_the_rest_is_served() {
    let yaml = cluster_yaml() + UNUSABLE;
    let (_mock, mut rx) = start(&yaml).await;
    until(&mut rx, "the snapshot", |s| s.nodes.len() == 3 && s.services.len() == 2).await;
    let snap = rx.borrow().clone().expect("snapshot");
    let d = state::desired(&snap, "n1");
    assert!(d.own.is_some() && d.remotes.contains_key("n2"), "good nodes are used: {d:?}");
    assert!(
        d.skipped.iter().any(|(n, why)| n == "n3" && why.contains("not-a-cidr")),
        "n3 skipped by name: {:?}",
        d.skipped
    );
    let ips = ["172.30.0.11".parse().expect("ip"), "172.30.0.12".parse().expect("ip")];
    let table = services::compile(&snap.services, &snap.endpoint_slices, &ips, &[]);
    assert_eq!(table.frontends.len(), 3, "web is served");
    assert!(
        table.rejected.iter().any(|(svc, why)| svc.ends_with("/odd") && why.contains("QUIC")),
        "the Service with an unknown protocol is rejected, by name: {:?}",
        table.rejected
    );
}

/// A plain HTTP stand-in for the API server on `listener`: lists from `objects`, watches held
/// open and quiet. Serves until the process ends.
fn serve_plain_api(listener: std::net::TcpListener, objects: std::collections::BTreeMap<&'static str, Vec<Value>>) {
    use std::io::{BufRead as _, Write as _};
    let objects = std::sync::Arc::new(objects);
    for conn in listener.incoming().flatten() {
        let objects = objects.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            let mut reader = std::io::BufReader::new(conn.try_clone()?);
            let mut out = conn;
            loop {
                let mut request = String::new();
                if reader.read_line(&mut request)? == 0 {
                    return Ok(());
                }
                let mut header = String::new();
                while reader.read_line(&mut header)? > 2 {
                    header.clear();
                }
                let target = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                if query.split('&').any(|p| p == "watch=true") {
                    out.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                    )?;
                    // A quiet watch: hold it until the client goes.
                    let mut sink = String::new();
                    while reader.read_line(&mut sink)? > 0 {}
                    return Ok(());
                }
                let known = [NODES, NAMESPACES, PODS, SERVICES, SLICES, POLICIES];
                let body = match known.iter().find(|p| **p == path) {
                    Some(p) => list(kind(p), api_version(p), "10", objects.get(p).cloned().unwrap_or_default()),
                    None => json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}).to_string(),
                };
                let status = if known.contains(&path) { "200 OK" } else { "404 Not Found" };
                write!(
                    out,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )?;
            }
        });
    }
}

/// Bootstrap without kube-proxy. The configured address (as the in-cluster one would be) is the
/// `kubernetes` Service's ClusterIP, which nothing serves until weir does; here a closed local
/// port stands for it (a unit test sends nothing off the machine). With it alone the source
/// never publishes a snapshot, so the agent could never become ready; with the API server's
/// real address configured (`--k8s-service-host`/`--k8s-service-port`, a plain-HTTP stand-in
/// here) it lists the cluster and publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_api_address_lets_the_agent_start_without_kube_proxy() {
    let api = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let api_port = api.local_addr().expect("addr").port();
    let objects = objects_by_path(&cluster_yaml());
    std::thread::spawn(move || serve_plain_api(api, objects));
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let kubeconfig = std::env::temp_dir().join(format!("weir-bootstrap-{}.kubeconfig", std::process::id()));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"http://127.0.0.1:{dead_port}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
        ),
    )
    .expect("kubeconfig");

    let (tx, mut rx) = watch::channel(None);
    let client = k8s::client(Some(&kubeconfig), None).await.expect("client");
    let source = tokio::spawn(k8s::watch_api(client, tx));
    let waited = tokio::time::timeout(Duration::from_secs(3), rx.wait_for(Option::is_some)).await;
    assert!(waited.is_err(), "nothing serves the in-cluster address, so nothing can be published");
    source.abort();

    let (tx, mut rx) = watch::channel(None);
    let client = k8s::client(Some(&kubeconfig), Some(("127.0.0.1", api_port))).await.expect("client");
    let source = tokio::spawn(k8s::watch_api(client, tx));
    until(&mut rx, "the first snapshot through the configured address", |s| s.nodes.len() == 2).await;
    let snap = rx.borrow().clone().expect("snapshot");
    assert!(state::desired(&snap, "n1").own.is_some(), "this node's pod CIDR and address are known: ready");
    source.abort();
    let _ = std::fs::remove_file(&kubeconfig);
}

#[test]
fn the_api_address_replaces_host_and_port_only() {
    let url: http::Uri = "https://10.96.0.1:443/".parse().expect("uri");
    assert_eq!(k8s::api_server_url(&url, "172.18.0.2", 6443).expect("v4").to_string(), "https://172.18.0.2:6443/");
    assert_eq!(k8s::api_server_url(&url, "fd00::2", 6443).expect("v6").to_string(), "https://[fd00::2]:6443/");
    assert_eq!(
        k8s::api_server_url(&url, "weir-control-plane", 6443).expect("name").to_string(),
        "https://weir-control-plane:6443/"
    );
    assert!(k8s::api_server_url(&url, "  ", 6443).is_err(), "an empty host is an error, not a guess");
    assert!(k8s::api_server_url(&url, "bad host", 6443).is_err());
}

/// The API server unreachable for 30 s (every request fails as a refused connection; virtual
/// time): the source keeps publishing nothing new — the last snapshot, and so the datapath built
/// from it, stays in force — retries with backoff rather than in a loop, and once the API
/// answers again it catches up with what changed meanwhile.
#[tokio::test(start_paused = true)]
async fn an_api_outage_of_30_seconds_keeps_the_last_snapshot_and_the_source_catches_up() {
    let (mut mock, mut rx) = start(&cluster_yaml()).await;
    until(&mut rx, "the initial snapshot", |s| s.nodes.len() == 2 && has(s, "web")).await;
    let before = rx.borrow().as_ref().map(|s| s.log.head());
    let refuse =
        |reply: Reply| reply.send_error(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "API down"));
    // The open watches break, and every request for 30 s is refused.
    let mut refused = 0u32;
    for call in std::mem::take(&mut mock.parked) {
        refuse(call.reply);
        refused += 1;
    }
    let outage_end = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(next) = tokio::time::timeout_at(outage_end, mock.handle.next_request()).await {
        let (_, reply) = next.expect("the client is gone");
        refuse(reply);
        refused += 1;
    }
    {
        let snap = rx.borrow();
        let snap = snap.as_ref().expect("the snapshot is still there");
        assert!(snap.nodes.len() == 2 && has(snap, "web"), "the last snapshot stays in force");
        assert_eq!(Some(snap.log.head()), before, "nothing was published during the outage");
    }
    // Six watchers for 30 s: backoff, not a busy loop (at least one retry each).
    eprintln!("{refused} requests refused during the outage");
    assert!((6..=6 * 30).contains(&refused), "{refused} requests during the outage");

    // Back: the Services watcher (re-watch or relist) learns of a Service created meanwhile.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let (req, reply) = tokio::time::timeout_at(deadline, mock.handle.next_request())
            .await
            .expect("the source came back to the API")
            .expect("the client is gone");
        let call =
            Call { path: req.uri().path().to_owned(), query: req.uri().query().unwrap_or_default().to_owned(), reply };
        if call.path != SERVICES {
            mock.parked.push(call);
            continue;
        }
        if call.watch() {
            call.answer(event("ADDED", svc("api", "10.96.0.11", 81)));
        } else {
            call.answer(list("Service", "v1", "70", vec![svc("web", "10.96.0.10", 80), svc("api", "10.96.0.11", 81)]));
        }
        break;
    }
    until(&mut rx, "the Service created during the outage", |s| has(s, "api") && has(s, "web")).await;
}
