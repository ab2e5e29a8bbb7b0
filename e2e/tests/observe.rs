//! Observability in the lab: a real DNS server (dnsmasq) in one pod, a real client (dig) in
//! another, a real HTTP server (nginx) and client (curl) across nodes on one keep-alive
//! connection, a TCP session and a NetworkPolicy drop, directly and through Services;
//! `weir-lab observe` must show them with the right pods, verdicts, policies, Services and DNS
//! answers; its filters and formats must select and print what they say; a bad flag is refused
//! by name; the agents' metrics must pass `promtool check metrics`.
mod common;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use common::TestLab;
use serde_json::Value;
use weir_tests::require_root;

const PODS: &str = r#"
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: shop
  labels: {app: client, pod-template-hash: 7c9d5f}
  # As a Deployment's ReplicaSet makes it: flows name the Deployment as its workload.
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: client-7c9d5f, uid: 6f1c1b9e-1d2a-4c33-9a51-0c7d2b1e4f00, controller: true}
spec:
  nodeName: n1
  containers:
  - {name: c, image: lab/server, ports: [{name: http, containerPort: 8080, protocol: TCP}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: n2
  containers:
  - name: c
    image: lab/server
    ports:
    - {name: http, containerPort: 8080, protocol: TCP}
    - {name: other, containerPort: 8081, protocol: TCP}
---
apiVersion: v1
kind: Pod
metadata: {name: dns, namespace: shop, labels: {app: dns}}
spec:
  nodeName: n2
  containers:
  - {name: c, image: lab/server, ports: [{name: http, containerPort: 8080, protocol: TCP}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: shop}
spec: {selector: {app: dns}, ports: [{name: dns, port: 53, protocol: UDP}]}
"#;

const POLICY: &str = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-only-8080, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 8080, protocol: TCP}]
"#;

/// The dnsmasq daemon started in the DNS pod, stopped by the PID it wrote (also on panic).
struct Dnsmasq {
    pid_file: PathBuf,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.pid_file).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// A server started in a pod that puts itself in the background (nginx, the gRPC server),
/// stopped by the PID it wrote (also on panic), with its scratch directory removed.
struct PodDaemon {
    dir: PathBuf,
    pid_file: &'static str,
}

impl PodDaemon {
    /// An nginx serving `/ok` (200), `/boom` (500) and 404 for anything else on `ip:port`.
    fn nginx(lab: &TestLab, pod: &str, ip: &str, port: u16) -> PodDaemon {
        let dir = std::env::temp_dir().join(format!("weir-nginx-{}", lab.name));
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let d = dir.display().to_string();
        let conf = format!(
            "daemon on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             server {{\n  listen {ip}:{port};\n  location = /ok {{ return 200 \"ok\\n\"; }}\n\
             location = /boom {{ return 500; }}\n  location / {{ return 404; }}\n }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
        let n = PodDaemon { dir, pid_file: "nginx.pid" };
        lab.ok(&["exec", pod, "--", "nginx", "-c", &format!("{d}/nginx.conf"), "-p", &format!("{d}/")]);
        n
    }

    /// grpcio's server (`support/grpc_lab.py`) serving `weir.lab.Cart` on `port`.
    fn grpc(lab: &TestLab, pod: &str, python: &str, port: u16) -> PodDaemon {
        let dir = std::env::temp_dir().join(format!("weir-grpc-{}", lab.name));
        std::fs::create_dir_all(&dir).expect("grpc dir");
        let n = PodDaemon { dir, pid_file: "server.pid" };
        let pid_file = n.dir.join(n.pid_file).display().to_string();
        lab.ok(&["exec", pod, "--", python, GRPC_LAB, "serve", &port.to_string(), &pid_file]);
        n
    }
}

/// The gRPC server and client script.
const GRPC_LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/grpc_lab.py");

/// The Python with grpcio that scripts/setup.sh installs (`WEIR_GRPC_PYTHON`); `None` (said so)
/// outside the test command, which requires it.
fn grpc_python() -> Option<String> {
    match std::env::var("WEIR_GRPC_PYTHON") {
        Ok(p) => Some(p),
        Err(_) => {
            assert!(
                std::env::var_os("WEIR_REQUIRE_PRIVILEGED").is_none(),
                "WEIR_GRPC_PYTHON is not set: run scripts/setup.sh (scripts/test.sh does)"
            );
            println!("SKIPPED the gRPC part: WEIR_GRPC_PYTHON not set (scripts/setup.sh installs grpcio)");
            None
        }
    }
}

impl Drop for PodDaemon {
    fn drop(&mut self) {
        let pid_file = self.dir.join(self.pid_file);
        if let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            for _ in 0..50 {
                if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pod_ip(lab: &TestLab, name: &str) -> String {
    let p = lab.pods().into_iter().find(|p| p["name"] == name).expect("pod");
    p["ip"].as_str().expect("ip").to_owned()
}

/// `weir-lab observe ARGS -o json`, one flow per line.
fn observe(lab: &TestLab, args: &[&str]) -> Vec<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = lab.ok(&[&["observe"], all.as_slice()].concat());
    out.lines().map(|l| serde_json::from_str::<Value>(l).expect("flow json")["flow"].clone()).collect()
}

fn pod_of(side: &Value) -> String {
    format!("{}/{}", side["namespace"].as_str().unwrap_or(""), side["pod_name"].as_str().unwrap_or(""))
}

fn dig(lab: &TestLab, server: &str, name: &str, tcp: bool) -> String {
    let mut args = vec!["exec", "shop/client", "--", "dig", "+short", "+tries=1", "+time=2"];
    if tcp {
        args.push("+tcp");
    }
    let at = format!("@{server}");
    args.extend([at.as_str(), name, "A"]);
    lab.ok(&args)
}

#[test]
fn lab_observe_flows_drops_dns_and_metrics() {
    if !require_root("lab_observe_flows_drops_dns_and_metrics") {
        return;
    }
    let lab = TestLab::up("direct");
    let out = lab.apply(PODS);
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    let dns_ip = pod_ip(&lab, "dns");
    let web_ip = pod_ip(&lab, "web");
    // Flows are enriched from the agents' view of the cluster: wait until both agents know
    // every pod's address (they read it from the API after the CNI ADD).
    for node in ["n1", "n2"] {
        let knows = || {
            ["shop/dns", "shop/web"].iter().all(|to| {
                let args =
                    ["weir", node, "--", "policy", "explain", "--from", "shop/client", "--to", to, "--port", "53"];
                lab.run(&args).status.success()
            })
        };
        let mut ok = false;
        for _ in 0..50 {
            ok = knows();
            if ok {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(ok, "the agent of {node} never saw the pods' addresses");
    }

    // A real DNS server in the dns pod: dnsmasq, answering two local names, nothing upstream.
    let dnsmasq = Dnsmasq { pid_file: std::env::temp_dir().join(format!("weir-dnsmasq-{}.pid", lab.name)) };
    lab.ok(&[
        "exec",
        "shop/dns",
        "--",
        "dnsmasq",
        "--no-resolv",
        "--no-hosts",
        "--user=root",
        "--group=root",
        &format!("--pid-file={}", dnsmasq.pid_file.display()),
        &format!("--listen-address={dns_ip}"),
        "--bind-interfaces",
        "--local-ttl=60",
        "--host-record=web.lab.test,10.9.8.7",
        "--cname=www.lab.test,web.lab.test",
    ]);
    // The real client: dig, over UDP then TCP.
    let mut answer = String::new();
    for _ in 0..10 {
        answer = dig(&lab, &dns_ip, "www.lab.test", false);
        if answer.contains("10.9.8.7") {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(answer.contains("10.9.8.7"), "dig over UDP: {answer}");
    assert!(dig(&lab, &dns_ip, "www.lab.test", true).contains("10.9.8.7"), "dig over TCP");
    // The same through the Services (translated at connect()/sendmsg() on n1).
    let (web_vip, dns_vip) = (lab.cluster_ip("web"), lab.cluster_ip("dns"));
    let mut via = (String::new(), String::new());
    for _ in 0..20 {
        via = (lab.probe("shop/client", &format!("{web_vip}:80"), "tcp").0, dig(&lab, &dns_vip, "web.lab.test", false));
        if via.0 == "connected" && via.1.contains("10.9.8.7") {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(via.0 == "connected" && via.1.contains("10.9.8.7"), "through the Services: {via:?}");

    // HTTP: a real server (nginx, in the dns pod on n2) and a real client (curl, on n1), three
    // requests on one keep-alive connection: 200, 404, 500.
    let nginx = PodDaemon::nginx(&lab, "shop/dns", &dns_ip, 8088);
    let base = format!("http://{dns_ip}:8088");
    let mut codes = String::new();
    for _ in 0..20 {
        codes = lab.ok(&[
            "exec",
            "shop/client",
            "--",
            "curl",
            "-s",
            // One -o per URL.
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
            &format!("{base}/ok?token=secret"),
            &format!("{base}/missing"),
            &format!("{base}/boom"),
        ]);
        if codes.starts_with("200") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // One connection: curl connects once, then reuses it.
    assert_eq!(codes.split_whitespace().collect::<Vec<_>>(), ["200", "1", "404", "0", "500", "0"], "curl: {codes}");

    // gRPC over cleartext HTTP/2: grpcio's server (in the dns pod on n2) and client (on n1), two
    // calls on one connection: one answers OK, one NOT_FOUND (a Trailers-Only response).
    let python = grpc_python();
    let grpc_server = python.as_deref().map(|py| {
        let server = PodDaemon::grpc(&lab, "shop/dns", py, 50051);
        let said = lab.ok(&["exec", "shop/client", "--", py, GRPC_LAB, "call", &format!("{dns_ip}:50051")]);
        assert_eq!(said.split_whitespace().collect::<Vec<_>>(), ["Get", "OK", "Remove", "NOT_FOUND"], "{said}");
        server
    });

    // A TCP session, then a policy that lets only 8080 in, and a connection it drops.
    assert_eq!(lab.probe("shop/client", &format!("{web_ip}:8080"), "tcp").0, "connected");
    let out = lab.apply(POLICY);
    assert!(out.status.success(), "apply policy: {}", String::from_utf8_lossy(&out.stderr));
    let mut denied = false;
    for _ in 0..20 {
        if lab.probe("shop/client", &format!("{web_ip}:8081"), "tcp").0 != "connected" {
            denied = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(denied, "the policy never denied 8081");
    assert_eq!(lab.probe("shop/client", &format!("{web_ip}:8080"), "tcp").0, "connected");
    std::thread::sleep(Duration::from_millis(500));

    let flows = observe(&lab, &[]);
    let show = |fs: &[Value]| fs.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("\n");

    // DNS: the answers, the pods, the latency, over UDP and TCP.
    for tcp in [false, true] {
        let answers: Vec<&Value> = flows
            .iter()
            .filter(|f| {
                f["l7"]["type"] == "RESPONSE"
                    && f["l7"]["dns"]["query"] == "www.lab.test."
                    && f["weir"]["dns_tcp"].as_bool().unwrap_or(false) == tcp
            })
            .collect();
        assert!(!answers.is_empty(), "no DNS answer (tcp {tcp}) in:\n{}", show(&flows));
        for a in &answers {
            assert_eq!(pod_of(&a["source"]), "shop/dns");
            assert_eq!(pod_of(&a["destination"]), "shop/client");
            assert_eq!(a["l7"]["dns"]["ips"], serde_json::json!(["10.9.8.7"]), "{a}");
            assert_eq!(a["l7"]["dns"]["cnames"], serde_json::json!(["web.lab.test."]), "{a}");
            assert_eq!(a["l7"]["dns"]["ttl"], 60, "{a}");
            assert_eq!(a["l7"]["dns"]["rcode"], 0);
            assert_eq!(a["is_reply"], true, "an L7 response is a reply, as Hubble marks it: {a}");
        }
        assert!(answers.iter().any(|a| a["l7"]["latency_ns"].as_u64().unwrap_or(0) > 0), "no latency (tcp {tcp})");
    }
    let queries = flows.iter().filter(|f| f["l7"]["type"] == "REQUEST" && f["l7"]["dns"].is_object()).count();
    assert!(queries >= 2, "queries: {}", show(&flows));

    // HTTP: on the client's node (n1) each request leaving the client and each response
    // arriving, paired with its request (method, URL without the query string, latency).
    let http = |node: &str, kind: &str| -> Vec<&Value> {
        flows
            .iter()
            .filter(|f| {
                f["node_name"] == node
                    && f["l7"]["type"] == kind
                    && f["l7"]["http"].is_object()
                    && f["l7"]["http"]["protocol"] != "HTTP/2"
            })
            .collect()
    };
    let url = |path: &str| format!("http://{dns_ip}:8088{path}");
    let requests = http("n1", "REQUEST");
    let paths: Vec<&str> = requests.iter().map(|f| f["l7"]["http"]["url"].as_str().unwrap_or("")).collect();
    assert_eq!(paths, [url("/ok"), url("/missing"), url("/boom")], "requests on n1:\n{}", show(&flows));
    for r in &requests {
        assert_eq!((pod_of(&r["source"]), pod_of(&r["destination"])), ("shop/client".into(), "shop/dns".into()));
        assert_eq!((&r["l7"]["http"]["method"], &r["l7"]["http"]["protocol"]), (&"GET".into(), &"HTTP/1.1".into()));
        assert_eq!((&r["Type"], &r["traffic_direction"]), (&"L7".into(), &"EGRESS".into()), "{r}");
    }
    for node in ["n1", "n2"] {
        let responses = http(node, "RESPONSE");
        let got: Vec<(u64, String)> = responses
            .iter()
            .map(|f| {
                (f["l7"]["http"]["code"].as_u64().unwrap_or(0), f["l7"]["http"]["url"].as_str().unwrap_or("").into())
            })
            .collect();
        assert_eq!(got, [(200, url("/ok")), (404, url("/missing")), (500, url("/boom"))], "responses on {node}");
        for r in &responses {
            let latency = r["l7"]["latency_ns"].as_u64().unwrap_or(0);
            assert!(latency > 0 && latency < 5_000_000_000, "latency {latency}: {r}");
            assert_eq!((pod_of(&r["source"]), r["is_reply"].as_bool()), ("shop/dns".into(), Some(true)), "{r}");
        }
    }
    assert_eq!(http("n2", "REQUEST").len(), 3, "the server's node sees the requests arrive");
    if grpc_server.is_some() {
        grpc_calls_observed(&flows, &dns_ip);
        let line = lab.ok(&["observe", "--node", "n1", "--type", "l7", "--port", "50051"]);
        assert!(line.contains("gRPC call /weir.lab.Cart/Remove (HTTP/2 "), "{line}");
        assert!(line.contains("gRPC NOT_FOUND \"no such cart\" "), "{line}");
    }
    // Flows name the process that opened them: curl's connection, leaving the client on n1
    // (the cgroup hook saw its connect() in curl's own context).
    let by_curl: Vec<&Value> = flows.iter().filter(|f| f["weir"]["process"]["command"] == "curl").collect();
    assert!(
        by_curl.iter().any(|f| f["node_name"] == "n1"
            && f["weir"]["event"] == "new"
            && f["l4"]["TCP"]["destination_port"] == 8088
            && f["weir"]["process"]["pid"].as_u64().unwrap_or(0) > 1),
        "no flow names curl:\n{}",
        show(&flows)
    );
    for f in &by_curl {
        assert_eq!(pod_of(&f["source"]), "shop/client", "{f}");
    }
    // Connections a pod accepted name the process that bound the port (the post_bind4 hook
    // saw nginx's bind in its own context): nginx's replies leaving the server pod on n2 and
    // curl's requests arriving there.
    let accepted: Vec<&Value> = flows
        .iter()
        .filter(|f| f["node_name"] == "n2" && f["weir"]["event"] == "new" && f["weir"]["process"]["bound"] == true)
        .collect();
    for (key, point) in [("source_port", "shop/dns"), ("destination_port", "shop/dns")] {
        assert!(
            accepted.iter().any(|f| f["l4"]["TCP"][key] == 8088
                && pod_of(if key == "source_port" { &f["source"] } else { &f["destination"] }) == point
                && f["weir"]["process"]["command"] == "nginx"
                && f["weir"]["process"]["pid"].as_u64().unwrap_or(0) > 1),
            "no accepted connection on 8088 ({key}) names nginx:\n{}",
            show(&flows)
        );
    }
    // (and the lab's test server in shop/web, which bound 8080 and 8081, names itself).
    assert!(
        accepted.iter().any(|f| f["l4"]["TCP"]["source_port"] == 8080
            && pod_of(&f["source"]) == "shop/web"
            && f["weir"]["process"]["command"] == "weir-lab-pod"),
        "{}",
        show(&accepted.iter().map(|f| (*f).clone()).collect::<Vec<_>>())
    );

    // A client that half-closes right after its request (nc -N: its FIN follows the request):
    // the response that comes after that FIN still answers the request, with its latency.
    let said = lab.ok(&[
        "exec",
        "shop/client",
        "--",
        "sh",
        "-c",
        &format!("printf 'GET /half-closed HTTP/1.1\\r\\nHost: dns\\r\\n\\r\\n' | nc -N -w 5 {dns_ip} 8088"),
    ]);
    assert!(said.starts_with("HTTP/1.1 404"), "nginx after a half-close: {said}");
    let mut answered = Vec::new();
    for _ in 0..25 {
        answered = observe(&lab, &["--node", "n1", "--type", "l7", "--http-path", "/half-closed"]);
        if answered.iter().any(|f| f["l7"]["type"] == "RESPONSE") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let response = answered.iter().find(|f| f["l7"]["type"] == "RESPONSE");
    let response = response.unwrap_or_else(|| panic!("no response to the half-closed request:\n{}", show(&answered)));
    assert_eq!(
        (response["l7"]["http"]["code"].as_u64(), response["l7"]["http"]["url"].as_str()),
        (Some(404), Some("http://dns/half-closed")),
        "{response}"
    );
    assert!(response["l7"]["latency_ns"].as_u64().unwrap_or(0) > 0, "paired with its request: {response}");

    // The exec audit: curl, started in the client pod, with its arguments and its pod.
    let execs = observe(&lab, &["--type", "exec", "--pod", "shop/client"]);
    let curl_exec = execs.iter().find(|f| f["weir"]["exec"]["binary"].as_str().is_some_and(|b| b.ends_with("/curl")));
    let curl_exec = curl_exec.unwrap_or_else(|| panic!("no exec of curl in shop/client:\n{}", show(&execs)));
    assert_eq!(curl_exec["weir"]["exec"]["attribution"], "pod", "{curl_exec}");
    assert_eq!(curl_exec["node_name"], "n1");
    assert_eq!(curl_exec["weir"]["exec"]["arguments"][0], "curl", "{curl_exec}");
    assert!(
        curl_exec["weir"]["exec"]["pid"].as_u64().unwrap_or(0) > 1
            && curl_exec["weir"]["exec"]["ppid"].as_u64().unwrap_or(0) > 0
    );
    assert!(execs.iter().all(|f| pod_of(&f["source"]) == "shop/client" && f["weir"]["exec"].is_object()));
    // dig sends from a worker thread: the name is the thread's (as `ps -L` shows it).
    let dig_flows: Vec<&Value> = flows
        .iter()
        .filter(|f| f["l4"]["UDP"]["destination_port"] == 53 && f["weir"]["event"] == "new" && f["node_name"] == "n1")
        .collect();
    assert!(
        !dig_flows.is_empty() && dig_flows.iter().all(|f| f["weir"]["process"]["pid"].as_u64().unwrap_or(0) > 1),
        "DNS queries without their process:\n{}",
        show(&dig_flows.iter().map(|f| (*f).clone()).collect::<Vec<_>>())
    );

    // The TCP session: forwarded, seen leaving the client on n1 and arriving at web on n2, with
    // the reply marked; after the policy, the allowed connection names the rule.
    let to_web =
        |f: &Value, port: u64| f["l4"]["TCP"]["destination_port"] == port && pod_of(&f["destination"]) == "shop/web";
    let syns: Vec<&Value> = flows
        .iter()
        .filter(|f| to_web(f, 8080) && f["weir"]["event"] == "new" && f["verdict"] == "FORWARDED")
        .collect();
    assert!(syns.iter().any(|f| f["node_name"] == "n1" && f["traffic_direction"] == "EGRESS"), "{}", show(&flows));
    assert!(syns.iter().any(|f| f["node_name"] == "n2" && f["traffic_direction"] == "INGRESS"));
    assert!(
        syns.iter().any(|f| f["ingress_allowed_by"][0]["name"] == "web-only-8080"
            && f["ingress_allowed_by"][0]["rule"] == "ingress[0]"),
        "no flow names the allowing rule:\n{}",
        show(&syns.iter().map(|f| (*f).clone()).collect::<Vec<_>>())
    );
    assert!(flows.iter().any(|f| f["l4"]["TCP"]["source_port"] == 8080
        && pod_of(&f["source"]) == "shop/web"
        && f["weir"]["event"] == "new"
        && f["is_reply"] == true));
    assert!(flows.iter().any(|f| to_web(f, 8080) && f["weir"]["event"] == "close"), "no close report");

    // Through the Service: the connection is TRANSLATED where it starts (the client's node),
    // names its Service and the frontend it asked for, and reaches the backend's port.
    let svc_of = |f: &Value, side: &str| {
        let s = &f[side];
        format!("{}/{}", s["namespace"].as_str().unwrap_or(""), s["name"].as_str().unwrap_or(""))
    };
    let translated: Vec<&Value> = flows.iter().filter(|f| f["verdict"] == "TRANSLATED").collect();
    assert!(
        translated.iter().any(|f| to_web(f, 8080)
            && svc_of(f, "destination_service") == "shop/web"
            && f["weir"]["service_frontend"] == format!("{web_vip}:80")
            && f["node_name"] == "n1"
            && f["traffic_direction"] == "EGRESS"
            && f["weir"]["event"] == "new"),
        "no translated connection to shop/web:\n{}",
        show(&flows)
    );
    for f in &translated {
        assert_eq!(pod_of(&f["source"]), "shop/client", "{f}");
        assert!(f["destination_service"].is_object(), "{f}");
    }
    // DNS through its Service: the query names the Service it was sent to, the answer (back on
    // the client's node) the Service it came from.
    let dns_via = |kind: &str, side: &str| {
        flows.iter().any(|f| {
            f["l7"]["type"] == kind
                && f["l7"]["dns"]["query"] == "web.lab.test."
                && svc_of(f, side) == "shop/dns"
                && f["weir"]["service_frontend"] == format!("{dns_vip}:53")
        })
    };
    assert!(dns_via("REQUEST", "destination_service"), "no DNS query via shop/dns:\n{}", show(&flows));
    assert!(dns_via("RESPONSE", "source_service"), "no DNS answer from shop/dns:\n{}", show(&flows));

    // The drop: at web's node, with its reason and the policy that isolates web.
    let drops: Vec<&Value> = flows.iter().filter(|f| f["verdict"] == "DROPPED").collect();
    assert!(!drops.is_empty(), "no drop in:\n{}", show(&flows));
    for d in &drops {
        assert!(to_web(d, 8081), "unexpected drop {d}");
        assert_eq!(d["node_name"], "n2");
        assert_eq!(d["weir"]["drop_reason"], "policy_denied_ingress");
        assert_eq!(d["drop_reason_desc"], "POLICY_DENIED");
        assert_eq!(d["ingress_denied_by"][0]["name"], "web-only-8080", "{d}");
        assert_eq!(pod_of(&d["source"]), "shop/client");
    }

    // Filters select exactly what they say.
    let only = |args: &[&str], pred: &dyn Fn(&Value) -> bool| {
        let got = observe(&lab, args);
        assert!(!got.is_empty(), "{args:?} selected nothing");
        assert!(got.iter().all(pred), "{args:?} selected:\n{}", show(&got));
        got.len()
    };
    only(&["--protocol", "dns"], &|f| f["Type"] == "L7");
    only(&["--verdict", "dropped"], &|f| f["verdict"] == "DROPPED");
    only(&["--type", "policy-verdict"], &|f| f["ingress_allowed_by"].is_array() || f["ingress_denied_by"].is_array());
    only(&["--to-pod", "shop/web", "--port", "8081"], &|f| to_web(f, 8081));
    only(&["--from-pod", "shop/dns", "--not", "--type", "l7", "--not", "--type", "exec"], &|f| {
        pod_of(&f["source"]) == "shop/dns" && f["Type"] == "L3_L4"
    });
    only(&["--ip", &format!("{dns_ip}/32"), "--port", "53", "--protocol", "udp"], &|f| f["l4"]["UDP"].is_object());
    only(&["-l", "app=web", "--node", "n2"], &|f| f["node_name"] == "n2");
    only(&["--dns-name", "*.lab.test"], &|f| {
        ["www.lab.test.", "web.lab.test."].iter().any(|n| f["l7"]["dns"]["query"] == *n)
    });
    only(&["--to-service", "shop/web"], &|f| svc_of(f, "destination_service") == "shop/web");
    assert_eq!(only(&["--http-status", "5+"], &|f| f["l7"]["http"]["code"] == 500), 2, "n1 and n2 each see it");
    only(&["--http-method", "get", "--http-path", "/ok", "--type", "l7"], &|f| f["l7"]["http"]["url"] == url("/ok"));
    only(&["--protocol", "http", "--node", "n2", "--type", "http"], &|f| {
        f["node_name"] == "n2" && f["l7"]["http"].is_object()
    });
    only(&["--service", "dns"], &|f| {
        svc_of(f, "destination_service") == "shop/dns" || svc_of(f, "source_service") == "shop/dns"
    });
    only(&["--from-workload", "Deployment/client"], &|f| {
        f["source"]["workloads"] == serde_json::json!([{"name": "client", "kind": "Deployment"}])
    });
    only(&["--verdict", "translated"], &|f| f["verdict"] == "TRANSLATED" && f["weir"]["event"] == "new");
    assert_eq!(only(&["--last", "3", "--node", "n1"], &|f| f["node_name"] == "n1"), 3);
    assert!(observe(&lab, &["--not", "--namespace", "shop", "--namespace", "shop"]).is_empty());
    let since_future = observe(&lab, &["--since", "0s", "--verdict", "dropped"]);
    assert!(since_future.len() <= 1, "--since 0s: {}", show(&since_future));

    // Compact and table output name the pods, the verdict and the policy.
    let compact = lab.ok(&["observe", "--verdict", "dropped", "--last", "1"]);
    assert!(compact.contains("shop/client:") && compact.contains("-> shop/web:8081"), "{compact}");
    assert!(
        compact.contains("DROPPED (policy_denied_ingress)") && compact.contains("ingress denied by shop/web-only-8080")
    );
    let dns_line = lab.ok(&["observe", "--protocol", "dns", "--last", "20"]);
    assert!(
        dns_line.contains("DNS answer www.lab.test. A NOERROR: CNAME web.lab.test., 10.9.8.7 TTL 60"),
        "{dns_line}"
    );
    let via_line = lab.ok(&["observe", "--to-service", "shop/web", "--verdict", "translated", "--last", "1"]);
    assert!(via_line.contains(&format!("-> shop/web:8080 (via Service shop/web {web_vip}:80) tcp")), "{via_line}");
    assert!(via_line.contains(" TRANSLATED "), "{via_line}");
    let http_line = lab.ok(&["observe", "--http-status", "404", "--node", "n1"]);
    assert!(
        http_line.contains("HTTP/1.1 404 ") && http_line.contains(&format!("(GET {})", url("/missing"))),
        "{http_line}"
    );
    let curl_line = lab.ok(&["observe", "--port", "8088", "--node", "n1", "--type", "trace"]);
    assert!(curl_line.contains(" by curl (pid "), "{curl_line}");
    let bad = lab.run(&["observe", "--http-status", "6xx"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--http-status"), "{bad:?}");
    let table = lab.ok(&["observe", "-o", "table", "--last", "2"]);
    assert!(table.starts_with("TIMESTAMP") && table.contains("VERDICT"), "{table}");

    // Bad input: named, and no flows printed.
    let bad = lab.run(&["observe", "--colour", "red"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown flag --colour"));
    let bad = lab.run(&["observe", "--protocol", "sctp"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--protocol sctp"));

    grpc_checks(&lab, &web_vip);
    relay_checks(&lab, python.as_deref());
    drop(nginx);
    drop(grpc_server);

    // Metrics: valid exposition, with what this session did.
    for node in ["n1", "n2"] {
        let text = lab.ok(&["metrics", node]);
        let (ok, said) = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .output_with_stdin(&text);
        assert!(ok, "promtool check metrics ({node}):\n{said}\n{text}");
        assert!(text.contains("weir_dns_responses_total{namespace=\"shop\",qtype=\"A\",rcode=\"NOERROR\"}"), "{text}");
        assert!(text.contains("\nweir_events_lost_total 0\n"), "{text}");
        // HTTP requests are counted once, on the client's node (4xx: /missing and the
        // half-closed request).
        let http_series = |status: &str| {
            let n = if status == "4xx" { 2 } else { 1 };
            format!(
                "weir_http_requests_total{{destination_namespace=\"shop\",destination_workload=\"dns\",method=\"GET\",\
                 source_namespace=\"shop\",source_workload=\"client\",status=\"{status}\"}} {n}"
            )
        };
        if node == "n1" {
            assert!(
                text.contains("weir_flows_total{direction=\"egress\",event=\"new\",verdict=\"translated\"}"),
                "{text}"
            );
            for status in ["2xx", "4xx", "5xx"] {
                assert!(text.contains(&http_series(status)), "{status}:\n{text}");
            }
            assert!(text.contains("weir_http_request_duration_seconds_count{"), "{text}");
        } else {
            assert!(!text.contains("weir_http_requests_total{"), "counted on the server's node too:\n{text}");
        }
        assert!(text.contains("\nweir_http_unparsed_total 0\n"), "{text}");
        // gRPC calls: counted once, on the client's node, by status; both connections'
        // directions decoded from their start on both nodes (nothing lost).
        if python.is_some() {
            let grpc_series = |status: &str| {
                format!(
                    "weir_grpc_requests_total{{destination_namespace=\"shop\",destination_workload=\"dns\",\
                     grpc_status=\"{status}\",source_namespace=\"shop\",source_workload=\"client\"}} 1"
                )
            };
            for status in ["OK", "NOT_FOUND"] {
                assert_eq!(text.contains(&grpc_series(status)), node == "n1", "{node} {status}:\n{text}");
            }
            assert!(!text.contains("weir_http2_lost_total{"), "{node}:\n{text}");
        }
        if node == "n1" {
            assert!(text.contains("weir_exec_total{attribution=\"pod\",namespace=\"shop\"}"), "{text}");
        }
        if node == "n2" {
            assert!(text.contains("weir_flow_drops_total{namespace=\"shop\",reason=\"policy_denied_ingress\"}"));
            assert!(text.contains("weir_policy_verdicts_total{direction=\"ingress\",match=\"allowed\"}"));
            assert!(text.contains("weir_datapath_drops{reason=\"policy_denied_ingress\"}"));
        }
    }

    // A restarted agent still names the process that bound a port before it started (the
    // datapath keeps the binds, WEIR_BINDS, and the agent reads them at start): dnsmasq, on a
    // query arriving at n2 after n2's agent restarted.
    lab.ok(&["agent", "restart", "n2"]);
    let mut seen = Vec::new();
    for _ in 0..30 {
        let _ = dig(&lab, &dns_ip, "www.lab.test", false);
        seen = observe(&lab, &["--node", "n2", "--port", "53"]);
        if seen.iter().any(|f| f["weir"]["process"]["bound"] == true && f["weir"]["process"]["command"] == "dnsmasq") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        seen.iter().any(|f| f["weir"]["event"] == "new"
            && f["l4"]["UDP"]["destination_port"] == 53
            && f["weir"]["process"]["bound"] == true
            && f["weir"]["process"]["command"] == "dnsmasq"),
        "after n2's agent restarted, no query to dnsmasq names it:\n{}",
        show(&seen)
    );
}

/// Pods with the many labels real workloads carry: enriched flows make long lines.
fn labelled_pods() -> String {
    // Longer than a pipe's atomic write (4096 bytes) once a flow names both pods' labels.
    let labels: String = (0..24)
        .map(|i| format!("example.com/component-{i}: value-{i}-of-a-long-label-set-as-real-workloads-carry, "))
        .collect::<String>();
    let mut yaml = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: many}\n");
    for (name, node) in [("a1", "n1"), ("b1", "n1"), ("a2", "n2"), ("b2", "n2")] {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: many, labels: {{{labels}app: {name}}}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: c, image: lab/server, ports: [{{containerPort: 8080}}]}}]}}\n"
        ));
    }
    yaml
}

/// `weir-lab observe` merges both nodes into whole records: many long flows on both nodes, read
/// while they are made and after, in every format, and every line must parse. (One `weir
/// observe` per node sharing stdout split lines longer than stdout's buffer into each other.)
#[test]
fn lab_observe_merges_nodes_into_whole_records() {
    if !require_root("lab_observe_merges_nodes_into_whole_records") {
        return;
    }
    let lab = TestLab::up("direct");
    let out = lab.apply(&labelled_pods());
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    let (b1, b2) = (pod_ip(&lab, "b1"), pod_ip(&lab, "b2"));
    // Enrichment (the labels) needs the agents to know every pod.
    for node in ["n1", "n2"] {
        let knows = || {
            let args = ["weir", node, "--", "policy", "explain", "--from", "many/a1", "--to", "many/b2", "--port", "1"];
            lab.run(&args).status.success()
        };
        assert!(
            (0..50).any(|_| knows() || {
                std::thread::sleep(Duration::from_millis(100));
                false
            }),
            "{node}"
        );
    }
    // Follow from the start, as `weir-lab observe -f -o json | jq` would.
    let mut follow = Command::new(common::LAB)
        .env("WEIR_LAB", &lab.name)
        .args(["observe", "--follow", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("observe --follow");
    let follower_out = follow.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        std::io::Read::read_to_string(&mut std::io::BufReader::new(follower_out), &mut all).map(|_| all)
    });
    // New connections across nodes both ways, at once: every one is several flow records.
    let crr = |from: &str, to: String| {
        let lab_name = lab.name.clone();
        let from = from.to_owned();
        std::thread::spawn(move || {
            Command::new(common::LAB)
                .env("WEIR_LAB", lab_name)
                .args(["exec", &from, "--", common::LAB, "crr", &format!("{to}:8080"), "--count", "300"])
                .output()
                .expect("crr")
        })
    };
    let load = [crr("many/a1", b2.clone()), crr("many/a2", b1.clone())];
    let parse_all = |text: &str, what: &str| -> Vec<Value> {
        text.lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{what}: not one JSON record: {e}: {l}"))
                    ["flow"]
                    .clone()
            })
            .collect()
    };
    // Read repeatedly while the load runs and once after.
    let mut reads = 0;
    let mut biggest = 0;
    while load.iter().any(|t| !t.is_finished()) && reads < 20 {
        let flows = parse_all(&lab.ok(&["observe", "-o", "json"]), "observe -o json");
        biggest = biggest.max(flows.len());
        reads += 1;
    }
    for t in load {
        let out = t.join().expect("crr thread");
        assert!(out.status.success(), "crr: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::thread::sleep(Duration::from_millis(300));
    let flows = parse_all(&lab.ok(&["observe", "-o", "json"]), "observe -o json");
    assert!(flows.len() >= 1200 && reads >= 1, "{} flows after the load ({reads} reads during it)", flows.len());
    for node in ["n1", "n2"] {
        assert!(flows.iter().any(|f| f["node_name"] == node), "no flow from {node}");
    }
    let long = flows.iter().filter(|f| f.to_string().len() > 4096).count();
    assert!(long > 100, "only {long} records longer than 4 KiB: the test must print long lines");
    // One history, in time order across the nodes.
    let times: Vec<u64> = flows.iter().map(|f| f["weir"]["unix_ns"].as_u64().expect("unix_ns")).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "not in time order");
    // The newest N of the cluster, not N per node.
    let last = parse_all(&lab.ok(&["observe", "-o", "json", "--last", "50"]), "--last 50");
    assert_eq!(last.len(), 50);
    let newest = last.iter().map(|f| f["weir"]["unix_ns"].as_u64().unwrap_or(0)).min().unwrap_or(0);
    assert!(times.iter().filter(|t| **t >= newest).count() >= 50);
    // Table: one header; compact: one line per record.
    let table = lab.ok(&["observe", "-o", "table"]);
    assert_eq!(table.lines().filter(|l| l.starts_with("TIMESTAMP")).count(), 1, "table headers");
    for l in table.lines().skip(1) {
        assert!(l.len() > 20 && l.as_bytes()[4] == b'-' && l.as_bytes()[10] == b'T', "table row: {l}");
    }
    let compact = lab.ok(&["observe"]);
    for l in compact.lines() {
        let b = l.as_bytes();
        assert!(b.len() > 13 && b[2] == b':' && b[5] == b':' && b[8] == b'.', "compact line: {l}");
    }
    // The follower saw the load, whole records only.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(follow.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("stop the follower");
    let _ = follow.wait();
    let followed = parse_all(&reader.join().expect("reader").expect("read"), "observe --follow -o json");
    assert!(followed.len() >= 1200, "follower read {} records", followed.len());
    eprintln!(
        "{reads} reads during the load (largest {biggest}), {} records after, {} followed",
        flows.len(),
        followed.len()
    );
}

/// A gRPC Observer client on `node`'s observer socket.
async fn observer_client(
    lab: &TestLab,
    node: &str,
) -> weir_operator_agent::observe::grpc::proto::observer::observer_client::ObserverClient<tonic::transport::Channel> {
    observer_client_at(PathBuf::from(lab.ok(&["observer-socket", node]).trim())).await
}

/// A client of the observer (a node's or the relay's) on the unix socket `path`.
async fn observer_client_at(
    path: PathBuf,
) -> weir_operator_agent::observe::grpc::proto::observer::observer_client::ObserverClient<tonic::transport::Channel> {
    let channel = weir_operator_agent::observe::relay::unix_channel(path, Duration::from_secs(5))
        .await
        .expect("connect to the observer socket");
    weir_operator_agent::observe::grpc::proto::observer::observer_client::ObserverClient::new(channel)
}

/// One GetFlows call read to its end: the node named by every response, and the flows.
async fn get_flows(
    client: &mut weir_operator_agent::observe::grpc::proto::observer::observer_client::ObserverClient<
        tonic::transport::Channel,
    >,
    req: weir_operator_agent::observe::grpc::proto::observer::GetFlowsRequest,
) -> (Vec<String>, Vec<weir_operator_agent::observe::grpc::proto::flow::Flow>) {
    use weir_operator_agent::observe::grpc::proto::observer::get_flows_response::ResponseTypes;
    let mut stream = client.get_flows(req).await.expect("GetFlows").into_inner();
    let (mut nodes, mut flows) = (Vec::new(), Vec::new());
    while let Some(r) = stream.message().await.expect("stream") {
        nodes.push(r.node_name);
        if let Some(ResponseTypes::Flow(f)) = r.response_types {
            flows.push(f);
        }
    }
    (nodes, flows)
}

/// The Hubble-compatible gRPC API, through a client generated from the same protos.
fn grpc_checks(lab: &TestLab, web_vip: &str) {
    use weir_operator_agent::observe::grpc::proto::{
        flow::{FlowFilter, Verdict, Workload},
        observer::{GetFlowsRequest, ServerStatusRequest},
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let mut client = observer_client(lab, "n2").await;
        let status = client.server_status(ServerStatusRequest {}).await.expect("ServerStatus").into_inner();
        assert!(status.num_flows > 0 && status.seen_flows >= status.num_flows, "{status:?}");
        assert_eq!(status.max_flows, 16384);
        assert!(status.version.starts_with("weir"));

        let drops = GetFlowsRequest {
            number: 100,
            whitelist: vec![FlowFilter {
                destination_pod: vec!["shop/web".into()],
                verdict: vec![Verdict::Dropped as i32],
                ..Default::default()
            }],
            ..Default::default()
        };
        let (nodes, got) = get_flows(&mut client, drops.clone()).await;
        assert!(nodes.iter().all(|n| n == "n2"), "{nodes:?}");
        assert!(!got.is_empty(), "no dropped flows over gRPC");
        let kind = |f: &weir_operator_agent::observe::grpc::proto::flow::Flow| {
            f.event_type.as_ref().map(|t| (t.r#type, t.sub_type))
        };
        for f in &got {
            assert_eq!(f.verdict, Verdict::Dropped as i32);
            assert_eq!(f.drop_reason_desc, 133, "POLICY_DENIED");
            // Hubble prints TYPE from the sub-type: the drop reason, as Cilium sends it; each
            // drop comes with its policy verdict event (type 5), as Cilium sends one.
            assert!(matches!(kind(f), Some((1, 133)) | Some((5, 0))), "{f:?}");
            assert_eq!(f.destination.as_ref().map(|d| d.pod_name.as_str()), Some("web"));
            assert_eq!(f.ingress_denied_by.first().map(|p| p.name.as_str()), Some("web-only-8080"));
            assert!(f.time.as_ref().is_some_and(|t| t.seconds > 1_700_000_000));
        }
        // Every drop's connection has its verdict event (a report of the same connection that
        // the policy judged may bring one of its own).
        let port = |f: &weir_operator_agent::observe::grpc::proto::flow::Flow| {
            f.l4.as_ref().and_then(|l| match &l.protocol {
                Some(weir_operator_agent::observe::grpc::proto::flow::layer4::Protocol::Tcp(t)) => Some(t.source_port),
                _ => None,
            })
        };
        let judged: Vec<_> = got.iter().filter(|f| kind(f) == Some((5, 0))).map(port).collect();
        assert!(got.iter().filter(|f| kind(f) == Some((1, 133))).all(|d| judged.contains(&port(d))), "{got:?}");

        // `hubble observe -t policy-verdict`: allowed connections into web with the rule's
        // match type (peer and port: L3-L4), denied ones with none; all INGRESS on web's node.
        let verdict_type = GetFlowsRequest {
            number: 200,
            whitelist: vec![FlowFilter {
                event_type: vec![weir_operator_agent::observe::grpc::proto::flow::EventTypeFilter {
                    r#type: 5,
                    ..Default::default()
                }],
                destination_pod: vec!["shop/web".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let (_, got) = get_flows(&mut client, verdict_type).await;
        let allowed: Vec<_> = got.iter().filter(|f| f.verdict == Verdict::Forwarded as i32).collect();
        assert!(!allowed.is_empty() && allowed.len() < got.len(), "allowed and denied verdicts: {got:?}");
        for f in &got {
            assert_eq!(kind(f), Some((5, 0)), "{f:?}");
            assert_eq!(f.traffic_direction, 1, "INGRESS: {f:?}");
            if f.verdict == Verdict::Forwarded as i32 {
                assert_eq!(f.policy_match_type, 2, "L3-L4: {f:?}");
                assert_eq!(f.ingress_allowed_by.first().map(|p| p.name.as_str()), Some("web-only-8080"));
            } else {
                assert_eq!((f.verdict, f.policy_match_type), (Verdict::Dropped as i32, 0), "{f:?}");
            }
        }

        // Hubble 1.19's drop_reason_desc: only drops of that reason (the drops and their
        // verdict events above, nothing forwarded).
        let by_reason = GetFlowsRequest {
            number: 500,
            whitelist: vec![FlowFilter { drop_reason_desc: vec![133], ..Default::default() }],
            ..Default::default()
        };
        let (_, got) = get_flows(&mut client, by_reason).await;
        assert!(!got.is_empty());
        assert!(got.iter().all(|f| f.verdict == Verdict::Dropped as i32 && f.drop_reason_desc == 133), "{got:?}");

        // A field mask (the hubble CLI sends one by default): only the fields asked for.
        let masked = GetFlowsRequest {
            field_mask: Some(weir_operator_agent::observe::grpc::proto::flow::FieldMask {
                paths: vec!["verdict".into(), "destination.pod_name".into(), "ip_trace_id".into()],
            }),
            ..drops
        };
        let (_, got) = get_flows(&mut client, masked.clone()).await;
        assert!(!got.is_empty());
        for f in &got {
            let want = weir_operator_agent::observe::grpc::proto::flow::Flow {
                verdict: Verdict::Dropped as i32,
                destination: Some(weir_operator_agent::observe::grpc::proto::flow::Endpoint {
                    pod_name: "web".into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            assert_eq!(f, &want);
        }
        let bad_mask = GetFlowsRequest {
            field_mask: Some(weir_operator_agent::observe::grpc::proto::flow::FieldMask {
                paths: vec!["destination.podname".into()],
            }),
            ..masked
        };
        let err = client.get_flows(bad_mask).await.expect_err("bad mask");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("destination.podname"), "{}", err.message());

        // The version header Hubble's CLI compares its own with: the Hubble API weir serves.
        let answer = client.server_status(ServerStatusRequest {}).await.expect("ServerStatus");
        let version = answer.metadata().get("hubble-server-version").and_then(|v| v.to_str().ok());
        assert!(version.is_some_and(|v| v.starts_with("1.19.4+weir.")), "{version:?}");

        // Following with no number and no start time (`hubble observe -f`): new flows only, the
        // stored drops are not replayed first; a new drop arrives.
        let follow = GetFlowsRequest {
            follow: true,
            whitelist: vec![FlowFilter { verdict: vec![Verdict::Dropped as i32], ..Default::default() }],
            ..Default::default()
        };
        let mut stream = client.get_flows(follow).await.expect("follow").into_inner();
        let replayed = tokio::time::timeout(Duration::from_millis(700), stream.message()).await;
        assert!(replayed.is_err(), "follow replayed history: {replayed:?}");
        let web_ip = pod_ip(lab, "web");
        assert_ne!(lab.probe("shop/client", &format!("{web_ip}:8081"), "tcp").0, "connected");
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
        let next = next.expect("a new drop while following").expect("stream").expect("message");
        use weir_operator_agent::observe::grpc::proto::observer::get_flows_response::ResponseTypes;
        let Some(ResponseTypes::Flow(f)) = next.response_types else { panic!("not a flow: {next:?}") };
        assert_eq!(f.verdict, Verdict::Dropped as i32);
        drop(stream);

        // Traces carry their observation point as the sub-type (monitor API: 5 from-endpoint,
        // 0 to-endpoint), so `hubble observe -t trace:from-endpoint` selects what left a pod.
        let from_endpoint = GetFlowsRequest {
            number: 50,
            whitelist: vec![FlowFilter {
                event_type: vec![weir_operator_agent::observe::grpc::proto::flow::EventTypeFilter {
                    r#type: 4,
                    match_sub_type: true,
                    sub_type: 5,
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let (_, got) = get_flows(&mut client, from_endpoint).await;
        assert!(!got.is_empty(), "no from-endpoint traces");
        for f in &got {
            assert_eq!(f.event_type.as_ref().map(|t| (t.r#type, t.sub_type)), Some((4, 5)), "{f:?}");
            assert_eq!(f.trace_observation_point, 5, "FROM_ENDPOINT: {f:?}");
        }

        // DNS over gRPC, and the last N.
        let dns = GetFlowsRequest {
            number: 2,
            whitelist: vec![FlowFilter {
                protocol: vec!["dns".into()],
                dns_query: vec![r"^www\.lab".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let (_, got) = get_flows(&mut client, dns).await;
        for f in &got {
            let dns = f.l7.clone().and_then(|l| l.record).expect("l7 dns");
            let weir_operator_agent::observe::grpc::proto::flow::layer7::Record::Dns(d) = dns else {
                panic!("not DNS: {f:?}")
            };
            assert_eq!(d.query, "www.lab.test.");
        }
        assert_eq!(got.len(), 2);

        // HTTP over gRPC with Hubble's filters: the 500 response, seen on n2 leaving the server.
        let http = GetFlowsRequest {
            whitelist: vec![FlowFilter {
                http_status_code: vec!["5+".into()],
                http_method: vec!["GET".into()],
                http_path: vec!["^/bo+m$".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let (_, got) = get_flows(&mut client, http).await;
        assert_eq!(got.len(), 1, "{got:?}");
        let rec = got[0].l7.clone().and_then(|l| l.record).expect("l7 http");
        let weir_operator_agent::observe::grpc::proto::flow::layer7::Record::Http(h) = rec else { panic!("{rec:?}") };
        assert_eq!((h.code, h.method.as_str(), h.protocol.as_str()), (500, "GET", "HTTP/1.1"));
        assert!(h.url.ends_with(":8088/boom"), "{h:?}");
        let bad = GetFlowsRequest {
            whitelist: vec![FlowFilter { http_status_code: vec!["6+".into()], ..Default::default() }],
            ..Default::default()
        };
        let err = client.get_flows(bad).await.expect_err("bad status filter");
        assert!(err.message().contains("http_status_code"), "{}", err.message());

        // A filter weir cannot evaluate is refused by name, not ignored.
        let bad = GetFlowsRequest {
            whitelist: vec![FlowFilter { source_fqdn: vec!["example.com".into()], ..Default::default() }],
            ..Default::default()
        };
        let err = client.get_flows(bad).await.expect_err("unsupported filter");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("source_fqdn"), "{}", err.message());

        // Connections through a Service, on the client's node: Hubble's destination_service.
        let mut client = observer_client(lab, "n1").await;
        let via = GetFlowsRequest {
            number: 10,
            whitelist: vec![FlowFilter {
                destination_service: vec!["shop/web".into()],
                verdict: vec![Verdict::Translated as i32],
                source_workload: vec![Workload { name: "client".into(), kind: "Deployment".into() }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let (_, got) = get_flows(&mut client, via).await;
        for f in &got {
            let svc = f.destination_service.as_ref().map(|s| (s.namespace.as_str(), s.name.as_str()));
            assert_eq!(svc, Some(("shop", "web")), "{f:?}");
            assert_eq!(f.verdict, Verdict::Translated as i32);
            assert!(f.summary.contains("SYN"), "{f:?}");
        }
        assert!(!got.is_empty(), "no flow through {web_vip}:80 over gRPC");
    });
}

trait WithStdin {
    /// Runs with `input` on stdin; (success, stdout + stderr).
    fn output_with_stdin(&mut self, input: &str) -> (bool, String);
}

impl WithStdin for Command {
    fn output_with_stdin(&mut self, input: &str) -> (bool, String) {
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (installed by scripts/setup.sh: Debian package prometheus)");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), input.as_bytes()).expect("write");
        let out = child.wait_with_output().expect("wait");
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }
}

/// The two gRPC calls as both nodes saw them: each request with its method path and the
/// content type that makes it gRPC (on the client's node), each response with its HTTP status,
/// its grpc-status (and message), the request it answers and a latency.
fn grpc_calls_observed(flows: &[Value], server_ip: &str) {
    let show = |fs: &[&Value]| fs.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("\n");
    let grpc = |node: &str, kind: &str| -> Vec<&Value> {
        flows
            .iter()
            .filter(|f| f["node_name"] == node && f["l7"]["type"] == kind && f["l7"]["http"]["protocol"] == "HTTP/2")
            .collect()
    };
    let url = |method: &str| format!("http://{server_ip}:50051/weir.lab.Cart/{method}");
    let header = |f: &Value, key: &str| -> Option<String> {
        f["l7"]["http"]["headers"].as_array()?.iter().find(|h| h["key"] == key)?["value"].as_str().map(str::to_owned)
    };
    let requests = grpc("n1", "REQUEST");
    let urls: Vec<&str> = requests.iter().map(|f| f["l7"]["http"]["url"].as_str().unwrap_or("")).collect();
    assert_eq!(urls, [url("Get"), url("Remove")], "gRPC requests on n1:\n{}", show(&requests));
    for r in &requests {
        assert_eq!(r["l7"]["http"]["method"], "POST", "{r}");
        assert_eq!(header(r, "content-type").as_deref(), Some("application/grpc"), "{r}");
        assert_eq!((pod_of(&r["source"]), pod_of(&r["destination"])), ("shop/client".into(), "shop/dns".into()));
    }
    for node in ["n1", "n2"] {
        let responses = grpc(node, "RESPONSE");
        let got: Vec<(u64, Option<String>, String)> = responses
            .iter()
            .map(|f| {
                (
                    f["l7"]["http"]["code"].as_u64().unwrap_or(0),
                    header(f, "grpc-status"),
                    f["l7"]["http"]["url"].as_str().unwrap_or("").into(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [(200, Some("0".into()), url("Get")), (200, Some("5".into()), url("Remove"))],
            "gRPC responses on {node}:\n{}",
            show(&responses)
        );
        assert_eq!(header(responses[1], "grpc-message").as_deref(), Some("no such cart"));
        for r in &responses {
            let latency = r["l7"]["latency_ns"].as_u64().unwrap_or(0);
            assert!(latency > 0 && latency < 5_000_000_000, "latency {latency}: {r}");
            assert_eq!((pod_of(&r["source"]), r["is_reply"].as_bool()), ("shop/dns".into(), Some(true)), "{r}");
        }
    }
    assert_eq!(grpc("n2", "REQUEST").len(), 2, "the server's node sees the calls arrive");
}

/// The cluster-wide observer: `weir-relay` in front of both nodes' observers and a third node
/// whose observer is not there (down). Flows of both nodes merged in time order, the down node
/// reported and never waited for, totals summed, nodes and namespaces listed. And a gRPC client
/// that is not Go's (grpcio) reads a node's observer over its unix socket.
fn relay_checks(lab: &TestLab, python: Option<&str>) {
    use weir_operator_agent::observe::grpc::proto::{
        flow::{FlowFilter, Verdict},
        observer::{
            get_flows_response::ResponseTypes, GetFlowsRequest, GetNamespacesRequest, GetNodesRequest,
            ServerStatusRequest,
        },
        relay::NodeState,
    };
    let sockets: Vec<String> = ["n1", "n2"].iter().map(|n| lab.ok(&["observer-socket", n]).trim().to_owned()).collect();
    if let Some(py) = python {
        let said = Command::new(py).args([GRPC_LAB, "status", &sockets[0]]).output().expect("grpcio status");
        let size = String::from_utf8_lossy(&said.stdout).trim().parse::<usize>().unwrap_or(0);
        assert!(said.status.success() && size > 0, "grpcio over the unix socket: {said:?}");
        // A filter field of a Hubble newer than the one weir targets is refused, not dropped
        // (it would otherwise widen the filter to every flow).
        let said = Command::new(py).args([GRPC_LAB, "newer-filter", &sockets[0]]).output().expect("grpcio GetFlows");
        let said = String::from_utf8_lossy(&said.stdout);
        assert!(said.starts_with("INVALID_ARGUMENT ") && said.contains("number 41"), "{said}");
    }
    // The lab's own relay (started by `weir-lab up`), which finds the nodes in its peers file:
    // a third node whose observer is not there is added to the file, and the relay follows.
    let socket = PathBuf::from(lab.ok(&["relay-socket"]).trim());
    let peers_file = socket.with_file_name("relay-peers");
    let two_nodes = std::fs::read_to_string(&peers_file).expect("the lab's relay-peers");
    assert_eq!(two_nodes.lines().count(), 2, "{two_nodes}");
    let three = format!("{two_nodes}n3=unix://{}\n", socket.with_file_name("no-such-node.sock").display());
    std::fs::write(&peers_file, three).expect("relay-peers");
    /// Puts the lab's two nodes back in its relay's peers file (also on panic).
    struct Restore(PathBuf, String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, &self.1);
        }
    }
    let _restore = Restore(peers_file.clone(), two_nodes);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let mut relay = observer_client_at(socket.clone()).await;
        let mut n1 = observer_client_at(PathBuf::from(&sockets[0])).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let nodes = relay.get_nodes(GetNodesRequest {}).await.expect("GetNodes").into_inner().nodes;
            if nodes.len() == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "the relay never read the changed peers file: {nodes:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let answer = relay.server_status(ServerStatusRequest {}).await.expect("relay ServerStatus");
        let version = answer.metadata().get("hubble-relay-version").and_then(|v| v.to_str().ok());
        assert!(version.is_some_and(|v| v.starts_with("1.19.4+weir.")), "{version:?}");
        let status = answer.into_inner();
        let one = n1.server_status(ServerStatusRequest {}).await.expect("n1 ServerStatus").into_inner();
        assert_eq!(status.num_connected_nodes.map(|v| v.value), Some(2), "{status:?}");
        assert_eq!(status.num_unavailable_nodes.map(|v| v.value), Some(1), "{status:?}");
        assert_eq!(status.unavailable_nodes, ["n3"]);
        assert_eq!(status.max_flows, 2 * 16384, "summed over the two nodes that answer");
        assert!(status.num_flows > one.num_flows, "{status:?} vs n1 {one:?}");

        let nodes = relay.get_nodes(GetNodesRequest {}).await.expect("GetNodes").into_inner().nodes;
        let states: Vec<(&str, i32)> = nodes.iter().map(|n| (n.name.as_str(), n.state)).collect();
        let (up, down) = (NodeState::NodeConnected as i32, NodeState::NodeUnavailable as i32);
        assert_eq!(states, [("n1", up), ("n2", up), ("n3", down)], "{nodes:?}");
        assert!(nodes[0].version.starts_with("weir ") && nodes[0].num_flows > 0, "{nodes:?}");
        // A node answers for itself too.
        let own = n1.get_nodes(GetNodesRequest {}).await.expect("n1 GetNodes").into_inner().nodes;
        assert_eq!(own.iter().map(|n| (n.name.as_str(), n.state)).collect::<Vec<_>>(), [("n1", up)]);

        let namespaces = relay.get_namespaces(GetNamespacesRequest {}).await.expect("GetNamespaces").into_inner();
        assert!(namespaces.namespaces.iter().any(|n| n.namespace == "shop"), "{namespaces:?}");

        // GetFlows: who answers first, then both nodes' flows in time order, cut to `number`.
        let mut stream =
            relay.get_flows(GetFlowsRequest { number: 40, ..Default::default() }).await.expect("GetFlows").into_inner();
        let (mut statuses, mut flows) = (Vec::new(), Vec::new());
        while let Some(r) = stream.message().await.expect("relay stream") {
            match r.response_types {
                Some(ResponseTypes::NodeStatus(s)) => {
                    assert!(flows.is_empty(), "node status after flows");
                    statuses.push((s.state_change, s.node_names));
                }
                Some(ResponseTypes::Flow(f)) => flows.push((r.node_name, f)),
                _ => {}
            }
        }
        assert_eq!(statuses, [(up, vec!["n1".to_owned(), "n2".to_owned()]), (down, vec!["n3".to_owned()])]);
        assert_eq!(flows.len(), 40);
        let times: Vec<(i64, i32)> =
            flows.iter().map(|(_, f)| f.time.as_ref().map_or((0, 0), |t| (t.seconds, t.nanos))).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "not in time order: {times:?}");
        // Both nodes' flows, over a longer history.
        let mut stream = relay
            .get_flows(GetFlowsRequest { number: 2000, ..Default::default() })
            .await
            .expect("GetFlows")
            .into_inner();
        let mut from = std::collections::BTreeSet::new();
        while let Some(r) = stream.message().await.expect("relay stream") {
            if let Some(ResponseTypes::Flow(_)) = r.response_types {
                from.insert(r.node_name);
            }
        }
        assert_eq!(from.into_iter().collect::<Vec<_>>(), ["n1", "n2"]);

        // A filter weir cannot evaluate is refused by the relay, by name.
        let bad = GetFlowsRequest {
            whitelist: vec![FlowFilter { source_fqdn: vec!["*.example".into()], ..Default::default() }],
            ..Default::default()
        };
        let err = relay.get_flows(bad).await.expect_err("source_fqdn refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("source_fqdn"), "{err:?}");

        // Following through the relay: a new drop arrives, the down node does not hold it up.
        let follow = GetFlowsRequest {
            follow: true,
            whitelist: vec![FlowFilter { verdict: vec![Verdict::Dropped as i32], ..Default::default() }],
            ..Default::default()
        };
        let mut stream = relay.get_flows(follow).await.expect("follow").into_inner();
        let web_ip = pod_ip(lab, "web");
        assert_ne!(lab.probe("shop/client", &format!("{web_ip}:8081"), "tcp").0, "connected");
        let got_drop = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(r) = stream.message().await.expect("follow stream") {
                if let Some(ResponseTypes::Flow(f)) = r.response_types {
                    return Some(f.verdict);
                }
            }
            None
        })
        .await;
        assert_eq!(got_drop, Ok(Some(Verdict::Dropped as i32)), "no drop through the relay");
    });
}
