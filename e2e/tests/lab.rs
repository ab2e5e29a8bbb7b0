//! Lab e2e: a real multi-node lab (root): pods created through weir-cni on two nodes, the full
//! pod×pod matrix over TCP and UDP, same node and across nodes, in direct-routing and VXLAN mode;
//! masquerade to the outside; Services (socket-level for pods, per-packet for NodePorts from the
//! external namespace on every node); the agent stopped while traffic flows and restarted without
//! duplicating programs; bad manifests rejected; `down` leaves nothing behind.
mod common;

use std::process::Command;

use common::{TestLab, LAB};
use serde_json::Value;
use weir_tests::require_root;

fn pod_yaml(ns: &str, name: &str, node: &str, app: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\n\
         spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: lab/server\n    ports:\n    - {{containerPort: 8080, protocol: TCP}}\n    - {{containerPort: 5353, protocol: UDP}}\n"
    )
}

fn four_pods() -> String {
    let mut y = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n");
    for (name, node) in [("a1", "n1"), ("a2", "n1"), ("b1", "n2"), ("b2", "n2")] {
        y.push_str(&pod_yaml("shop", name, node, "web"));
    }
    y
}

fn counter(dp: &Value, name: &str) -> u64 {
    dp["counters"][name].as_u64().unwrap_or(0)
}

fn programs_per_iface(dp: &Value) -> Vec<(String, usize)> {
    dp["attachments"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    let n = |k: &str| x[k].as_array().map_or(0, Vec::len);
                    // Every interface has one program: ingress, or (weir_host) egress.
                    (x["iface"].as_str().unwrap_or_default().to_owned(), n("programs") + n("egress"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn full_lab_story(lab: TestLab, routing: &str) {
    let out = lab.apply(&four_pods());
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));

    let pods = lab.pods();
    assert_eq!(pods.len(), 4);
    for p in &pods {
        let ip = p["ip"].as_str().expect("pod ip");
        let node = p["node"].as_str().expect("node");
        let want_prefix = if node == "n1" { "10.244.1." } else { "10.244.2." };
        assert!(ip.starts_with(want_prefix), "{p} has an address outside its node's pod CIDR");
    }
    let mut ips: Vec<&str> = pods.iter().filter_map(|p| p["ip"].as_str()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 4, "every pod has its own address");

    let failures = lab.matrix();
    assert!(failures.is_empty(), "{routing}: pod×pod matrix failures:\n{}", failures.join("\n"));
    let dp1 = lab.datapath("n1");
    assert!(counter(&dp1, "forwarded_local") > 0 && counter(&dp1, "forwarded_remote") > 0, "{dp1}");

    // A drop shows up in `weir drops` with its reason and the pod that sent it: a cluster
    // address no node owns is dropped at the source, in both routing modes.
    {
        assert_eq!(lab.probe("shop/a1", "10.244.99.1:80", "tcp").0, "timeout");
        let drops: Value =
            serde_json::from_str(&lab.ok(&["weir", "n1", "--", "drops", "-o", "json"])).expect("drops json");
        let hit = drops["events"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["reason"] == "unknown_cluster_destination" && e["dst"] == "10.244.99.1"));
        assert_eq!(hit.map(|e| e["pod"].clone()), Some(Value::from("shop/a1")), "{drops}");
        assert_eq!(drops["lost"], 0);
    }

    // A closed port is refused, not a timeout.
    let b1 = pods.iter().find(|p| p["name"] == "b1").and_then(|p| p["ip"].as_str()).expect("b1").to_owned();
    assert_eq!(lab.probe("shop/a1", &format!("{b1}:9"), "tcp").0, "refused");

    // Outside the cluster: the external namespace has no route to pods, so only masquerade
    // to the node address lets the answer come back.
    let ext = lab.run(&["external", "--", "ip", "route", "get", "10.244.1.2"]);
    assert!(!ext.status.success(), "the external namespace must not have a route to pod CIDRs");
    for from in ["shop/a1", "shop/b2"] {
        for proto in ["tcp", "udp"] {
            assert_eq!(
                lab.probe(from, "172.30.0.200:8000", proto),
                ("connected".into(), "external".into()),
                "{from} {proto} to external"
            );
        }
    }
    assert!(counter(&lab.datapath("n1"), "masqueraded") > 0);
    assert!(counter(&lab.datapath("n2"), "masqueraded") > 0);

    // Services, translated at connect()/sendmsg() for pods: a ClusterIP load-balances over the
    // selected pods on both nodes, TCP and UDP on one Service, the client sees the Service
    // address as its peer, and a Service without endpoints is refused.
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
               spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}, \
               {name: dns, port: 53, targetPort: 5353, protocol: UDP}]}\n\
               ---\napiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: shop}\n\
               spec: {selector: {app: nobody}, ports: [{port: 80}]}\n";
    let out = lab.apply(svc);
    assert!(out.status.success(), "apply services: {}", String::from_utf8_lossy(&out.stderr));
    let vip = |name: &str| lab.cluster_ip(name);
    let (web, empty) = (vip("web"), vip("empty"));
    let backends = ["a1", "a2", "b1", "b2"];
    let served_by = |from: &str, target: &str, proto: &str| -> std::collections::BTreeSet<String> {
        let mut seen = std::collections::BTreeSet::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline && seen.len() < 2 {
            let out = lab.ok(&["probe", from, target, "--protocol", proto, "--timeout", "3s", "-o", "json"]);
            let v: Value = serde_json::from_str(out.trim()).expect("probe json");
            if v["result"] == "connected" {
                assert_eq!(v["peer"], target, "getpeername must show the Service address");
                seen.insert(v["reply"].as_str().unwrap_or_default().to_owned());
            }
        }
        seen
    };
    for from in ["shop/a1", "shop/b2"] {
        for (target, proto) in [(format!("{web}:80"), "tcp"), (format!("{web}:53"), "udp")] {
            let seen = served_by(from, &target, proto);
            assert!(seen.len() >= 2, "{from} -> {target}/{proto}: load-balanced over {seen:?}");
            assert!(seen.iter().all(|s| backends.contains(&s.as_str())), "{seen:?}");
        }
    }
    assert_eq!(lab.probe("shop/a1", &format!("{empty}:80"), "tcp").0, "refused", "no endpoints → refused");
    // `weir services` shows the kernel's view: four backends behind web:80, none behind empty.
    let rows: Value =
        serde_json::from_str(&lab.ok(&["weir", "n2", "--", "services", "-o", "json"])).expect("services json");
    let row = |front: String| {
        rows["frontends"].as_array().and_then(|a| a.iter().find(|r| r["frontend"] == front).cloned()).expect("row")
    };
    assert_eq!(row(format!("{web}:80"))["backends"].as_array().map(Vec::len), Some(4), "{rows}");
    assert_eq!(row(format!("{web}:80"))["service"], "shop/web");
    assert_eq!(row(format!("{empty}:80"))["backends"].as_array().map(Vec::len), Some(0));
    // Re-applied with a selector that matches: the same ClusterIP now serves.
    let out = lab.apply(
        &svc.replace("app: nobody", "app: web").replace("ports: [{port: 80}]", "ports: [{port: 80, targetPort: 8080}]"),
    );
    assert!(out.status.success());
    assert_eq!(vip("empty"), empty, "a Service keeps its ClusterIP across updates");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while lab.probe("shop/a1", &format!("{empty}:80"), "tcp").0 != "connected" {
        assert!(std::time::Instant::now() < deadline, "updated Service never served");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // sessionAffinity: ClientIP pins a client pod to one backend; internalTrafficPolicy: Local
    // keeps clients on endpoints of their own node.
    let more = "apiVersion: v1\nkind: Service\nmetadata: {name: sticky, namespace: shop}\n\
                spec: {selector: {app: web}, sessionAffinity: ClientIP, ports: [{port: 80, targetPort: 8080}]}\n\
                ---\napiVersion: v1\nkind: Service\nmetadata: {name: local, namespace: shop}\n\
                spec: {selector: {app: web}, internalTrafficPolicy: Local, ports: [{port: 80, targetPort: 8080}]}\n";
    assert!(lab.apply(more).status.success());
    let (sticky, local) = (vip("sticky"), vip("local"));
    let answers = |from: &str, target: &str, n: usize| -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < n {
            let (res, reply) = lab.probe(from, target, "tcp");
            if res == "connected" {
                got.push(reply);
            } else {
                assert!(std::time::Instant::now() < deadline, "{from} -> {target}: {res}");
            }
        }
        got
    };
    let stuck = answers("shop/a1", &format!("{sticky}:80"), 15);
    assert!(stuck.iter().all(|r| *r == stuck[0]), "affinity broke: {stuck:?}");
    for (from, mine) in [("shop/a1", ["a1", "a2"]), ("shop/b2", ["b1", "b2"])] {
        let got = answers(from, &format!("{local}:80"), 8);
        assert!(got.iter().all(|r| mine.contains(&r.as_str())), "{from} left its node: {got:?}");
    }
    // Affinity switched off: the same client spreads again.
    assert!(lab.apply(&more.replace("sessionAffinity: ClientIP, ", "")).status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let spread: std::collections::BTreeSet<String> =
            answers("shop/a1", &format!("{sticky}:80"), 12).into_iter().collect();
        if spread.len() >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "affinity never switched off: {spread:?}");
    }

    // Agent down: the pinned datapath keeps forwarding, same node and across nodes.
    let before = programs_per_iface(&lab.datapath("n1"));
    lab.ok(&["agent", "stop", "n1"]);
    for (from, to) in [("shop/a1", "a2"), ("shop/a1", "b1"), ("shop/b2", "a2")] {
        let ip = pods.iter().find(|p| p["name"] == to).and_then(|p| p["ip"].as_str()).expect("ip");
        assert_eq!(
            lab.probe(from, &format!("{ip}:8080"), "tcp").0,
            "connected",
            "{from} -> {to} with n1's agent stopped"
        );
    }
    assert_eq!(lab.probe("shop/a2", "172.30.0.200:8000", "udp").0, "connected", "masquerade with the agent stopped");
    assert_eq!(lab.probe("shop/a2", &format!("{web}:80"), "tcp").0, "connected", "Service with the agent stopped");
    // A CNI ADD while the agent is down fails cleanly and leaves nothing behind.
    let out = lab.apply(&pod_yaml("shop", "late", "n1", "web"));
    assert!(!out.status.success(), "ADD must fail while the agent is down");
    assert_eq!(lab.pods().len(), 4);

    // An interface left behind by an agent that died mid-ADD is swept on restart.
    let stray = Command::new("ip")
        .args([
            "-n",
            &format!("wl-{}-n1", lab.name),
            "link",
            "add",
            "lxc00deadbeef0",
            "type",
            "veth",
            "peer",
            "name",
            "strayp",
        ])
        .status()
        .expect("ip");
    assert!(stray.success());
    // Marked as weir's, as the agent marks every host interface right after creating it.
    let ip_n1 = |args: &[&str]| {
        let mut all = vec!["-n".to_owned(), format!("wl-{}-n1", lab.name)];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        Command::new("ip").args(&all).output().expect("ip")
    };
    assert!(ip_n1(&["link", "set", "lxc00deadbeef0", "alias", "weir:dead/eth0"]).status.success());
    // Another plugin's lxc interface, which weir must leave alone.
    assert!(ip_n1(&["link", "add", "lxcforeign0", "type", "veth", "peer", "name", "foreignp"]).status.success());

    // Restarted, the agent adopts the pinned programs: exactly one program per interface.
    lab.ok(&["agent", "start", "n1"]);
    let links = String::from_utf8_lossy(&ip_n1(&["link", "show"]).stdout).into_owned();
    assert!(!links.contains("lxc00deadbeef0"), "stray interface not swept");
    assert!(links.contains("lxcforeign0"), "an interface weir did not make was swept");
    assert!(ip_n1(&["link", "del", "lxcforeign0"]).status.success());
    let after = programs_per_iface(&lab.datapath("n1"));
    assert_eq!(before, after, "restart changed the attachments");
    assert!(after.iter().all(|(_, n)| *n == 1), "duplicate programs after restart: {after:?}");
    let out = lab.apply(&pod_yaml("shop", "late", "n1", "web"));
    assert!(out.status.success(), "ADD after restart: {}", String::from_utf8_lossy(&out.stderr));
    let failures = lab.matrix();
    assert!(failures.is_empty(), "{routing}: matrix after restart:\n{}", failures.join("\n"));

    // A malformed manifest is rejected naming file and field; nothing changes.
    let bad = pod_yaml("shop", "bad", "n2", "web").replace("containerPort: 8080", "containerPort: eighty");
    let out = lab.apply(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("containerPort") && err.contains("-: document 1"), "{err}");
    assert_eq!(lab.pods().len(), 5);

    // Deleting a pod releases its address into quarantine: the next pod gets another one.
    let late_ip = lab
        .pods()
        .iter()
        .find(|p| p["name"] == "late")
        .and_then(|p| p["ip"].as_str())
        .map(str::to_owned)
        .expect("late ip");
    let del = lab.run_with_stdin(&["delete", "-f", "-"], &pod_yaml("shop", "late", "n1", "web"));
    assert!(del.status.success());
    let out = lab.apply(&pod_yaml("shop", "again", "n1", "web"));
    assert!(out.status.success());
    let again_ip = lab.pods().iter().find(|p| p["name"] == "again").and_then(|p| p["ip"].as_str()).map(str::to_owned);
    assert!(again_ip.is_some() && again_ip.as_deref() != Some(late_ip.as_str()), "a released address rests first");

    services_beyond_pods(&lab);

    // Down removes everything the lab made.
    let name = lab.name.clone();
    drop(lab);
    let netns =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().expect("ip").stdout).into_owned();
    assert!(!netns.contains(&format!("wl-{name}-")), "namespaces left behind:\n{netns}");
    assert!(!std::path::Path::new(&format!("/run/weir-lab/{name}")).exists());
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/unified/weir-lab-{name}")).exists());
    let again = Command::new(LAB).env("WEIR_LAB", &name).arg("down").output().expect("down twice");
    assert!(again.status.success(), "down is safe to run twice");
}

/// Waits until `probe` (retried) gives `want`, for at most 10 s.
fn eventually(what: &str, want: &str, mut probe: impl FnMut() -> String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = probe();
        if got == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: still {got}, want {want}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Services reached other than from a pod to pods of other nodes: hairpin, the client's source
/// address, the same port on TCP and UDP, the proxy-name label, and NodePorts from outside the
/// cluster on every node (per-packet load balancing on the uplink), with
/// externalTrafficPolicy Cluster and Local. Expects pods a1, a2, again (n1), b1, b2 (n2) labelled
/// app=web.
fn services_beyond_pods(lab: &TestLab) {
    let ip_of = |name: &str| -> String {
        lab.pods().iter().find(|p| p["name"] == name).and_then(|p| p["ip"].as_str()).expect("pod ip").to_owned()
    };
    let probe_json = |from: &str, target: &str, proto: &str| -> Value {
        let out = lab.ok(&["probe", from, target, "--protocol", proto, "--timeout", "3s", "-o", "json"]);
        serde_json::from_str(out.trim()).expect("probe json")
    };
    let solo = pod_yaml("shop", "solo", "n2", "solo");
    let solo_svc = "---\napiVersion: v1\nkind: Service\nmetadata: {name: solo, namespace: shop}\n\
                    spec: {selector: {app: solo}, ports: [{name: t, port: 53, targetPort: 8080}, \
                    {name: u, port: 53, targetPort: 5353, protocol: UDP}]}\n";
    let out = lab.apply(&format!("{solo}{solo_svc}"));
    assert!(out.status.success(), "apply solo: {}", String::from_utf8_lossy(&out.stderr));
    let vip = lab.cluster_ip("solo");
    let (solo_ip, a1_ip) = (ip_of("solo"), ip_of("a1"));
    for from in ["shop/solo", "shop/a1"] {
        eventually("the new Service", "connected", || lab.probe(from, &format!("{vip}:53"), "tcp").0);
    }
    for proto in ["tcp", "udp"] {
        // Hairpin: the only backend reaches its own Service and answers itself.
        let r = probe_json("shop/solo", &format!("{vip}:53"), proto);
        assert_eq!(
            (r["result"].as_str(), r["reply"].as_str()),
            (Some("connected"), Some("solo")),
            "hairpin {proto}: {r}"
        );
        assert!(r["client"].as_str().is_some_and(|c| c.starts_with(&format!("{solo_ip}:"))), "hairpin {proto}: {r}");
        // Same port on TCP and UDP, each to its own targetPort; the client's address is kept.
        let r = probe_json("shop/a1", &format!("{vip}:53"), proto);
        assert_eq!(r["reply"], "solo", "{proto}: {r}");
        assert!(r["client"].as_str().is_some_and(|c| c.starts_with(&format!("{a1_ip}:"))), "source IP {proto}: {r}");
    }
    // Terminating fallback: with no ready endpoint, a serving-but-terminating one still serves;
    // one that is not serving leaves the Service without endpoints (refused). Not serving first,
    // so that "connected" afterwards can only come from the fallback.
    let flip = |annotations: &str| {
        let pod =
            solo.replace("labels: {app: solo}}", &format!("labels: {{app: solo}}, annotations: {{{annotations}}}}}"));
        let out = lab.apply(&pod);
        assert!(out.status.success(), "re-apply solo: {}", String::from_utf8_lossy(&out.stderr));
    };
    flip("lab.weir.dev/ready: 'false'");
    eventually("a Service whose only pod is not ready", "refused", || {
        lab.probe("shop/a1", &format!("{vip}:53"), "tcp").0
    });
    flip("lab.weir.dev/terminating: 'true'");
    eventually("the terminating fallback", "connected", || lab.probe("shop/a1", &format!("{vip}:53"), "tcp").0);
    flip("lab.weir.dev/ready: 'true'");
    // Deleted, the Service stops serving; created again, it serves (at the address it is given).
    let out = lab.run_with_stdin(&["delete", "-f", "-"], solo_svc);
    assert!(out.status.success(), "delete solo: {}", String::from_utf8_lossy(&out.stderr));
    eventually("a deleted Service", "timeout", || lab.probe("shop/a1", &format!("{vip}:53"), "tcp").0);
    assert!(lab.apply(solo_svc).status.success());
    let vip = lab.cluster_ip("solo");
    eventually("a re-created Service", "connected", || lab.probe("shop/a1", &format!("{vip}:53"), "tcp").0);

    // sessionAffinity timeout: sticky while used, free to move once idle longer than it.
    let brief = "---\napiVersion: v1\nkind: Service\nmetadata: {name: brief, namespace: shop}\n\
                 spec: {selector: {app: web}, sessionAffinity: ClientIP, \
                 sessionAffinityConfig: {clientIP: {timeoutSeconds: 1}}, ports: [{port: 80, targetPort: 8080}]}\n";
    assert!(lab.apply(brief).status.success());
    let target = format!("{}:80", lab.cluster_ip("brief"));
    eventually("the affinity Service", "connected", || lab.probe("shop/a1", &target, "tcp").0);
    let first = lab.probe("shop/a1", &target, "tcp").1;
    for _ in 0..8 {
        assert_eq!(lab.probe("shop/a1", &target, "tcp").1, first, "affinity within its timeout");
    }
    // Five backends, a fresh random pick after each 1.5 s pause: eight picks all alike would
    // happen once in 5^7 runs.
    let mut picks = std::collections::BTreeSet::new();
    for _ in 0..8 {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        picks.insert(lab.probe("shop/a1", &target, "tcp").1);
    }
    assert!(picks.len() >= 2, "affinity never expired: {picks:?}");

    // Labelled for another proxy, the Service disappears from weir; unlabelled, it comes back.
    let other = solo_svc.replace(
        "metadata: {name: solo, namespace: shop}",
        "metadata: {name: solo, namespace: shop, labels: {service.kubernetes.io/service-proxy-name: other}}",
    );
    assert!(lab.apply(&other).status.success());
    eventually("a Service for another proxy", "timeout", || lab.probe("shop/a1", &format!("{vip}:53"), "tcp").0);
    assert!(lab.apply(solo_svc).status.success());
    eventually("the Service back from another proxy", "connected", || {
        lab.probe("shop/a1", &format!("{vip}:53"), "tcp").0
    });

    // NodePorts from the external namespace, on every node, TCP and UDP.
    let np = "---\napiVersion: v1\nkind: Service\nmetadata: {name: np, namespace: shop}\n\
              spec: {type: NodePort, selector: {app: web}, ports: [{name: t, port: 80, targetPort: 8080}, \
              {name: u, port: 53, targetPort: 5353, protocol: UDP}]}\n\
              ---\napiVersion: v1\nkind: Service\nmetadata: {name: np-local, namespace: shop}\n\
              spec: {type: NodePort, externalTrafficPolicy: Local, selector: {app: web}, \
              ports: [{name: t, port: 80, targetPort: 8080}]}\n\
              ---\napiVersion: v1\nkind: Service\nmetadata: {name: np-empty, namespace: shop}\n\
              spec: {type: NodePort, selector: {app: nobody}, ports: [{name: t, port: 80}]}\n";
    let out = lab.apply(np);
    assert!(out.status.success(), "apply NodePorts: {}", String::from_utf8_lossy(&out.stderr));
    let on_n1 = ["a1", "a2", "again"];
    let on_n2 = ["b1", "b2"];
    let nodes = [("n1", "172.30.0.11"), ("n2", "172.30.0.12")];
    let port = lab.node_port("np", "t");
    for (_, node_ip) in nodes {
        eventually("a new NodePort", "connected", || {
            lab.probe_external(&format!("{node_ip}:{port}"), "tcp")["result"].as_str().unwrap_or_default().to_owned()
        });
    }
    for (port_name, proto) in [("t", "tcp"), ("u", "udp")] {
        let port = lab.node_port("np", port_name);
        for (node, node_ip) in nodes {
            let target = format!("{node_ip}:{port}");
            // Maglev spreads source ports over all backends: both nodes' pods answer.
            let (mut here, mut there) = (0, 0);
            for _ in 0..40 {
                let r = lab.probe_external(&target, proto);
                assert_eq!(r["result"], "connected", "NodePort {target}/{proto} via {node}: {r}");
                let who = r["reply"].as_str().unwrap_or_default();
                assert!(on_n1.contains(&who) || on_n2.contains(&who), "{target}/{proto}: {r}");
                let local = if node == "n1" { on_n1.contains(&who) } else { on_n2.contains(&who) };
                if local {
                    here += 1;
                    // A local backend sees the external client itself.
                    assert!(r["client"].as_str().is_some_and(|c| c.starts_with("172.30.0.200:")), "{r}");
                } else {
                    there += 1;
                }
                if here > 0 && there > 0 {
                    break;
                }
            }
            assert!(here > 0 && there > 0, "NodePort {target}/{proto} via {node}: local {here}, remote {there}");
        }
    }
    // externalTrafficPolicy: Local — only the node's own pods, and they see the client's address.
    let port = lab.node_port("np-local", "t");
    for (node, node_ip) in nodes {
        let mine: &[&str] = if node == "n1" { &on_n1 } else { &on_n2 };
        for _ in 0..10 {
            let r = lab.probe_external(&format!("{node_ip}:{port}"), "tcp");
            assert!(r["reply"].as_str().is_some_and(|w| mine.contains(&w)), "eTP=Local via {node}: {r}");
            assert!(r["client"].as_str().is_some_and(|c| c.starts_with("172.30.0.200:")), "eTP=Local: {r}");
        }
    }
    // sessionAffinity: ClientIP on a NodePort: one external client, one backend, from either node.
    let sticky = np
        .split("---")
        .nth(1)
        .expect("np")
        .replace("name: np,", "name: np-sticky,")
        .replace("spec: {type: NodePort,", "spec: {type: NodePort, sessionAffinity: ClientIP,");
    assert!(lab.apply(&format!("---{sticky}")).status.success());
    let port = lab.node_port("np-sticky", "t");
    let mut answers = std::collections::BTreeSet::new();
    for (_, node_ip) in nodes {
        eventually("a new NodePort", "connected", || {
            lab.probe_external(&format!("{node_ip}:{port}"), "tcp")["result"].as_str().unwrap_or_default().to_owned()
        });
        for _ in 0..15 {
            let r = lab.probe_external(&format!("{node_ip}:{port}"), "tcp");
            answers.insert(r["reply"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(answers.len(), 1, "NodePort affinity: {answers:?}");
    // No endpoints: refused from outside too.
    let port = lab.node_port("np-empty", "t");
    for (_, node_ip) in nodes {
        let r = lab.probe_external(&format!("{node_ip}:{port}"), "tcp");
        assert_eq!(r["result"], "refused", "empty NodePort: {r}");
    }
    let dp = lab.datapath("n1");
    assert!(counter(&dp, "lb_translated") > 0, "{dp}");

    // More backends than one map value could hold inline: 20 pods behind one Service, served at
    // connect() for pods and per packet for its NodePort.
    let mut wide = String::new();
    for i in 0..20 {
        wide.push_str(&pod_yaml("shop", &format!("w{i}"), if i % 2 == 0 { "n1" } else { "n2" }, "wide"));
    }
    wide.push_str(
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: wide, namespace: shop}\n\
         spec: {type: NodePort, selector: {app: wide}, ports: [{name: t, port: 80, targetPort: 8080}]}\n",
    );
    let out = lab.apply(&wide);
    assert!(out.status.success(), "apply wide: {}", String::from_utf8_lossy(&out.stderr));
    let target = format!("{}:80", lab.cluster_ip("wide"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let rows: Value =
            serde_json::from_str(&lab.ok(&["weir", "n1", "--", "services", "-o", "json"])).expect("services json");
        let n = rows["frontends"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["frontend"] == target.as_str()))
            .and_then(|r| r["backends"].as_array().map(Vec::len));
        if n == Some(20) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "wide never had 20 backends in the kernel: {n:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let is_wide = |r: &str| r.strip_prefix('w').and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n < 20);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (res, reply) = lab.probe("shop/a1", &target, "tcp");
        assert!(res == "connected" && is_wide(&reply), "wide via ClusterIP: {res} {reply}");
        seen.insert(reply);
    }
    assert!(seen.len() >= 10, "40 connects reached only {} of 20 backends: {seen:?}", seen.len());
    let port = lab.node_port("wide", "t");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let r = lab.probe_external(&format!("172.30.0.12:{port}"), "tcp");
        let reply = r["reply"].as_str().unwrap_or_default().to_owned();
        assert!(is_wide(&reply), "wide via NodePort: {r}");
        seen.insert(reply);
    }
    assert!(seen.len() >= 8, "30 NodePort connects reached only {} of 20 backends: {seen:?}", seen.len());

    // Bad input: a port with a protocol weir cannot serve rejects the Service with its reason in
    // `weir services`, and what it had keeps serving.
    let bad = "---\napiVersion: v1\nkind: Service\nmetadata: {name: wide, namespace: shop}\n\
               spec: {type: NodePort, selector: {app: wide}, ports: [{name: t, port: 80, targetPort: 8080}, \
               {name: s, port: 90, protocol: SCTP}]}\n";
    assert!(lab.apply(bad).status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let v: Value =
            serde_json::from_str(&lab.ok(&["weir", "n1", "--", "services", "-o", "json"])).expect("services json");
        let why = v["rejected"].as_array().and_then(|a| a.iter().find(|r| r["service"] == "shop/wide")).cloned();
        if let Some(why) = why {
            assert!(why["reason"].as_str().is_some_and(|r| r.contains("SCTP")), "{why}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the bad Service was never reported rejected: {v}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (res, reply) = lab.probe("shop/a1", &target, "tcp");
    assert!(res == "connected" && is_wide(&reply), "a rejected Service keeps serving: {res} {reply}");
}

#[test]
fn lab_direct_routing() {
    if require_root("lab_direct_routing") {
        // Pods made by containerd's CRI plugin, which runs weir-cni through libcni.
        full_lab_story(TestLab::up("direct"), "direct");
    }
}

/// The VXLAN story runs each node's agent as deploy/kubernetes runs it: the DaemonSet's pod
/// through containerd, from the weir image, install-cni first (its stop and start in the story
/// are a container ending and a new attempt of it, over the DaemonSet's bpffs mount).
#[test]
fn lab_vxlan_routing() {
    if require_root("lab_vxlan_routing") {
        let lab = TestLab::up_with("vxlan", &["--nodes", "2", "--agent", "image"]);
        agent_runs_as_its_daemonset(&lab);
        full_lab_story(lab, "vxlan");
    }
}

/// What only the DaemonSet's own spec gives an agent from its image, checked on each node:
/// weir-cni copied into the CNI bin dir by the init container (a file, not the lab's link), the
/// agent running from the image's root in mount and PID namespaces of its own, with the
/// ConfigMap's settings and the downward API's node name in its environment, and metrics on the
/// node's address (`$(WEIR_HOST_IP):9962`).
fn agent_runs_as_its_daemonset(lab: &TestLab) {
    // The image's binaries: WEIR_IMAGE_BIN_DIR (a musl build, by hand) or the test build's.
    let bin_dir = std::env::var_os("WEIR_IMAGE_BIN_DIR")
        .map_or_else(|| std::path::Path::new(LAB).with_file_name(""), std::path::PathBuf::from);
    let built = std::fs::read(bin_dir.join("weir-cni")).expect("the built weir-cni");
    for node in ["n1", "n2"] {
        let installed = std::path::PathBuf::from(format!("/run/weir-lab/{}/nodes/{node}/cni-bin/weir-cni", lab.name));
        let meta = std::fs::symlink_metadata(&installed).expect("weir-cni installed");
        assert!(meta.file_type().is_file(), "{}: the init container copies a file", installed.display());
        assert!(std::fs::read(&installed).expect("read") == built, "{node}: the installed weir-cni is the built one");
        let pid = lab.ok(&["agent", "pid", node]).trim().to_owned();
        let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
        for ns in ["mnt", "pid"] {
            let theirs = std::fs::read_link(proc.join("ns").join(ns)).expect("agent ns");
            let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).expect("own ns");
            assert_ne!(theirs, ours, "{node}: the agent runs in a {ns} namespace of its container");
        }
        assert!(proc.join("root/bin/busybox").exists(), "{node}: the agent's root is the image's");
        let environ = std::fs::read(proc.join("environ")).expect("environ");
        let env: Vec<String> = environ.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        for want in [format!("WEIR_NODE_NAME={node}"), "WEIR_RESYNC_SECS=30".into(), "WEIR_ROUTING=vxlan".into()] {
            assert!(env.contains(&want), "{node}: {want} missing from the agent's environment {env:?}");
        }
        let metrics = lab.ok(&["metrics", node]);
        assert!(metrics.contains("weir_"), "{node}: metrics on the node's address:\n{metrics}");
    }
}

/// Masquerade ports are freed when their connections end: with the agent's range set to 64
/// ports, 640 sequential short connections from a pod to one outside ip:port (the server
/// closes each first, as a short-lived HTTP server does) all succeed within a minute, and the
/// datapath counts no exhausted ports. Before ports had lifetimes the 65th connection failed.
#[test]
fn masquerade_ports_are_reused_when_connections_end() {
    if !require_root("masquerade_ports_are_reused_when_connections_end") {
        return;
    }
    let lab = TestLab::up_with("direct", &["--nodes", "1", "--nat-ports", "61000-61063"]);
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: default}\n\
               spec: {nodeName: n1, containers: [{name: c, image: lab/server}]}\n";
    let out = lab.apply(pod);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let script = r#"
import json, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok, errors, start = 0, {}, time.time()
for i in range(n):
    try:
        s = socket.create_connection((host, port), timeout=2)
        data = s.recv(256)
        s.close()
        if data:
            ok += 1
        else:
            errors["empty"] = errors.get("empty", 0) + 1
    except OSError as e:
        errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
    if sum(errors.values()) >= 5:
        break
print(json.dumps({"ok": ok, "attempted": i + 1, "errors": errors, "secs": time.time() - start}))
"#;
    let out =
        lab.ok(&["exec", "default/client", "--", "/usr/bin/python3", "-c", script, "172.30.0.200", "8000", "640"]);
    let v: Value = serde_json::from_str(out.trim()).expect("loop json");
    assert_eq!(v["ok"], 640, "every connection got a port: {v}");
    assert!(v["secs"].as_f64().unwrap_or(99.0) < 60.0, "within a minute: {v}");
    let exhausted = lab.datapath("n1")["counters"]["drop_nat_ports_exhausted"].as_u64().unwrap_or(0);
    assert_eq!(exhausted, 0, "no connection found the ports exhausted");
}

/// kill -9 of an agent in the middle of pod churn. A thread creates pods on n1 and deletes the
/// ones three back while the agent on n1 is killed (SIGKILL, no grace) twice and restarted; ADDs
/// that meet a dead agent fail and are retried, as kubelet retries sandbox creation, and DELs
/// are queued by weir-cni. Afterwards nothing leaked on n1 — its host interfaces, the agent's
/// endpoints (each in the datapath map), the interfaces with weir's program and the addresses
/// are exactly the lab's pods on n1 — and every one of them answers a pod on n2.
#[test]
fn agent_killed_during_pod_churn_leaks_nothing() {
    if !require_root("agent_killed_during_pod_churn_leaks_nothing") {
        return;
    }
    // The agent from its image: each kill is its container's process dying, each start a new
    // attempt of the container in the same pod, as the kubelet restarts it.
    let lab = TestLab::up_with("direct", &["--nodes", "2", "--agent", "image"]);
    let pod = |name: &str, node: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: churn}}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: c, image: lab/server, ports: [{{containerPort: 8080}}]}}]}}\n"
        )
    };
    assert!(lab.apply(&pod("prober", "n2")).status.success());
    let name = lab.name.clone();
    let churn = std::thread::spawn(move || {
        let lab = common::TestLab::attach(&name);
        let retries = std::cell::Cell::new(0u32);
        let retry = |what: &str, f: &dyn Fn() -> bool| {
            for _ in 0..60 {
                if f() {
                    return;
                }
                retries.set(retries.get() + 1);
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            panic!("{what} never succeeded");
        };
        for i in 0..24 {
            let y = pod(&format!("c{i}"), "n1");
            retry(&format!("creating c{i}"), &|| lab.apply(&y).status.success());
            if i >= 3 {
                let old = pod(&format!("c{}", i - 3), "n1");
                retry(&format!("deleting c{}", i - 3), &|| {
                    lab.run_with_stdin(&["delete", "-f", "-"], &old).status.success()
                });
            }
        }
        eprintln!("churn: 24 creations, 21 deletions, {} retried while the agent was down", retries.get());
    });
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        lab.ok(&["agent", "kill", "n1"]);
        std::thread::sleep(std::time::Duration::from_millis(700));
        lab.ok(&["agent", "start", "n1"]);
    }
    let keep_link = lab.name.clone();
    churn.join().unwrap_or_else(|_| panic!("churn thread failed (lab {keep_link})"));

    // What the lab holds on n1: c21, c22, c23.
    let pods: Vec<Value> = lab.pods().into_iter().filter(|p| p["node"] == "n1").collect();
    let want_ips: std::collections::BTreeSet<String> =
        pods.iter().map(|p| p["ip"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(want_ips.len(), 3, "{pods:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let state = loop {
        let eps: Value =
            serde_json::from_str(&lab.ok(&["weir", "n1", "--", "endpoints", "-o", "json"])).expect("endpoints");
        let rows = eps.as_array().cloned().unwrap_or_default();
        let ips: std::collections::BTreeSet<String> =
            rows.iter().map(|r| r["endpoint"]["ip"].as_str().unwrap_or_default().to_owned()).collect();
        let ifaces: std::collections::BTreeSet<String> =
            rows.iter().map(|r| r["endpoint"]["host_ifname"].as_str().unwrap_or_default().to_owned()).collect();
        let links: std::collections::BTreeSet<String> = lab
            .ok(&["node-exec", "n1", "--", "ip", "-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_owned()))
            .filter(|n| n.starts_with("lxc"))
            .collect();
        let dp = lab.datapath("n1");
        let attached: std::collections::BTreeSet<String> = dp["attachments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["programs"].as_array().is_some_and(|p| p.iter().any(|n| n == "weir_from_pod")))
            .filter_map(|i| i["iface"].as_str().map(str::to_owned))
            .filter(|n| n.starts_with("lxc"))
            .collect();
        let in_map = rows.iter().all(|r| r["in_datapath"] == true);
        let state = format!(
            "ips {ips:?} want {want_ips:?}; ifaces {ifaces:?}; links {links:?}; attached {attached:?}; in map {in_map}"
        );
        if ips == want_ips && ifaces == links && links == attached && in_map {
            break state;
        }
        assert!(std::time::Instant::now() < deadline, "n1 leaked or lost state after kill -9: {state}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    for ip in &want_ips {
        let (result, _) = lab.probe("default/prober", &format!("{ip}:8080"), "tcp");
        assert_eq!(result, "connected", "pod {ip} reachable after the kills ({state})");
    }
}

/// kill -9 and an upgrade under load. Pod a (n1) runs iperf3 to pod b (n2) and pings it every
/// 50 ms for 25 s while n1's agent is killed (SIGKILL) and restarted, then stopped and started
/// over a pinned datapath made to look like an older ABI version (its pin directory renamed),
/// with a changed setting (the masquerade port range). Nothing is lost: iperf3 finishes without
/// a reset and every ping is answered. Afterwards every hook on n1 has exactly one program,
/// the older version's pins are gone, masquerading uses the new range (the new program runs),
/// and an egress deny policy applied right after is enforced.
#[test]
fn agent_killed_and_upgraded_under_iperf3_and_ping_loses_nothing() {
    if !require_root("agent_killed_and_upgraded_under_iperf3_and_ping_loses_nothing") {
        return;
    }
    // Pods through containerd: b's iperf3 container runs the iperf3 the lab's pod image
    // carries; a's client and ping are `weir-lab exec` in a's namespace and cgroup.
    let lab = TestLab::up("direct");
    let pods = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: default, labels: {app: a}}\n\
                spec: {nodeName: n1, containers: [{name: c, image: lab/server}]}\n---\n\
                apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: default, labels: {app: b}}\n\
                spec:\n  nodeName: n2\n  containers:\n  - {name: c, image: lab/server, ports: [{containerPort: 8080}]}\n  \
                - {name: iperf, image: x, command: [iperf3, -s, -p, '5201']}\n";
    let out = lab.apply(pods);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ip_b =
        lab.pods().iter().find(|p| p["name"] == "b").and_then(|p| p["ip"].as_str().map(str::to_owned)).expect("b");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let spawn = |args: Vec<String>| {
        let name = lab.name.clone();
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            common::TestLab::attach(&name).run(&args)
        })
    };
    let ping = spawn(
        ["exec", "default/a", "--", "ping", "-q", "-i", "0.05", "-c", "500", "-W", "2", &ip_b]
            .map(str::to_owned)
            .to_vec(),
    );
    let iperf =
        spawn(["exec", "default/a", "--", "iperf3", "-c", &ip_b, "-p", "5201", "-t", "25"].map(str::to_owned).to_vec());

    std::thread::sleep(std::time::Duration::from_secs(3));
    lab.ok(&["agent", "kill", "n1"]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    lab.ok(&["agent", "start", "n1"]);
    std::thread::sleep(std::time::Duration::from_secs(3));

    lab.ok(&["agent", "stop", "n1"]);
    let weir_dir = std::path::PathBuf::from("/run/weir-lab").join(&lab.name).join("bpffs").join("n1").join("weir");
    let versions = || -> Vec<String> {
        std::fs::read_dir(&weir_dir)
            .expect("pin dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let current = versions();
    assert_eq!(current.len(), 1, "{current:?}");
    std::fs::rename(weir_dir.join(&current[0]), weir_dir.join("v0")).expect("rename the pin directory");
    lab.ok(&["agent", "start", "n1", "--nat-ports", "40000-40063"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while versions() != current && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(versions(), current, "the older version's pins are removed after the takeover");

    let ping = ping.join().expect("ping thread");
    let iperf = iperf.join().expect("iperf3 thread");
    let ping_out = String::from_utf8_lossy(&ping.stdout).into_owned();
    eprintln!("ping: {}", ping_out.lines().filter(|l| l.contains("packets")).collect::<String>());
    assert!(
        ping.status.success() && ping_out.contains("500 packets transmitted, 500 received"),
        "ping lost packets:\n{ping_out}"
    );
    let iperf_out = String::from_utf8_lossy(&iperf.stdout).into_owned();
    assert!(iperf.status.success(), "iperf3 failed:\n{iperf_out}{}", String::from_utf8_lossy(&iperf.stderr));
    eprintln!("iperf3: {}", iperf_out.lines().filter(|l| l.contains("receiver")).collect::<String>());

    // One program per hook on n1.
    let dp = lab.datapath("n1");
    for att in dp["attachments"].as_array().into_iter().flatten() {
        for dir in ["programs", "egress"] {
            let progs: Vec<&str> = att[dir]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str())
                .filter(|p| p.starts_with("weir"))
                .collect();
            assert!(progs.len() <= 1, "two programs deciding on {} {dir}: {progs:?}", att["iface"]);
        }
    }

    // The new program runs: masquerading from a uses the new port range.
    let server = r#"
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8101)); s.listen(1); s.settimeout(20)
c, peer = s.accept(); print(peer[1]); c.close()
"#;
    let name = lab.name.clone();
    let outside = std::thread::spawn(move || {
        common::TestLab::attach(&name).ok(&["external", "--", "/usr/bin/python3", "-c", server])
    });
    std::thread::sleep(std::time::Duration::from_millis(700));
    let client = "import socket; socket.create_connection(('172.30.0.200', 8101), timeout=5).close()";
    lab.ok(&["exec", "default/a", "--", "/usr/bin/python3", "-c", client]);
    let port: u16 = outside.join().expect("server").trim().parse().expect("port");
    assert!((40000..=40063).contains(&port), "masqueraded with port {port}, not in the new range");

    // A policy change right after is enforced (no older program deciding with frozen maps).
    assert_eq!(lab.probe("default/a", &format!("{ip_b}:8080"), "tcp").0, "connected");
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                metadata: {name: a-no-egress, namespace: default}\n\
                spec: {podSelector: {matchLabels: {app: a}}, policyTypes: [Egress]}\n";
    assert!(lab.apply(deny).status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        last = lab.probe("default/a", &format!("{ip_b}:8080"), "tcp").0;
        if last != "connected" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_ne!(last, "connected", "egress deny applied after the upgrade is enforced");
}

/// A lost or corrupt endpoint store is rebuilt from the kernel (weir's marked interfaces and the
/// pinned endpoint map) without disturbing a pod: first corrupt, with the runtime's CNI cache
/// naming each attachment's pod; then lost during an upgrade that recreated the pinned maps
/// (addresses and MACs from the CNI cache); then lost together with the cache, the pods found by
/// their addresses in the cluster state. Each time the pods keep their interfaces, the agent lists
/// them by name, a NetworkPolicy isolating one of them is still enforced, and a new pod gets an
/// address no other pod holds.
#[test]
fn lost_or_corrupt_store_is_rebuilt_without_disturbing_pods() {
    if !require_root("lost_or_corrupt_store_is_rebuilt_without_disturbing_pods") {
        return;
    }
    let lab = TestLab::up("direct");
    let pod = |name: &str, node: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {name}}}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: c, image: lab/server, ports: [{{containerPort: 8080}}]}}]}}\n"
        )
    };
    for (p, n) in [("x", "n1"), ("y", "n1"), ("z", "n2")] {
        assert!(lab.apply(&pod(p, n)).status.success());
    }
    let only_z = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x-from-z, namespace: default}\n\
                  spec: {podSelector: {matchLabels: {app: x}}, ingress: [{from: [{podSelector: {matchLabels: {app: z}}}]}]}\n";
    assert!(lab.apply(only_z).status.success());
    let ip = |name: &str| {
        lab.pods().iter().find(|p| p["name"] == name).and_then(|p| p["ip"].as_str().map(str::to_owned)).expect("pod ip")
    };
    let (ip_x, ip_y) = (ip("x"), ip("y"));
    let ifaces = || lab.ok(&["node-exec", "n1", "--", "ip", "-o", "link", "show"]);
    let links_before: Vec<String> = ifaces().lines().filter(|l| l.contains("lxc")).map(str::to_owned).collect();
    let check = |when: &str| {
        let eps: Value =
            serde_json::from_str(&lab.ok(&["weir", "n1", "--", "endpoints", "-o", "json"])).expect("endpoints");
        let mut names: Vec<String> = eps
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                format!(
                    "{}/{}",
                    r["endpoint"]["pod_namespace"].as_str().unwrap_or("?"),
                    r["endpoint"]["pod_name"].as_str().unwrap_or("?")
                )
            })
            .collect();
        names.sort();
        assert_eq!(names, ["default/x", "default/y"], "{when}: {eps}");
        let links: Vec<String> = ifaces().lines().filter(|l| l.contains("lxc")).map(str::to_owned).collect();
        assert_eq!(links, links_before, "{when}: the pods' interfaces were not touched");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let probe = |from: &str, to: &str| lab.probe(from, &format!("{to}:8080"), "tcp").0;
        loop {
            let got = [probe("default/z", &ip_x), probe("default/y", &ip_x), probe("default/x", &ip_y)];
            if got == ["connected", "timeout", "connected"] {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{when}: z->x, y->x (denied), x->y: {got:?}");
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    };
    check("before");
    let state = std::path::PathBuf::from("/run/weir-lab").join(&lab.name).join("nodes").join("n1");

    lab.ok(&["agent", "stop", "n1"]);
    std::fs::write(state.join("state").join("endpoints.json"), "[{\"container_id\": ").expect("corrupt the store");
    lab.ok(&["agent", "start", "n1"]);
    check("after a corrupt store (CNI cache)");
    let kept = std::fs::read_dir(state.join("state"))
        .expect("state dir")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("endpoints.json.corrupt-"));
    assert!(kept, "the corrupt store is kept aside");

    // An upgrade whose endpoint map changed layout (the pinned maps are recreated empty, as
    // when the pin directory of an older ABI version is all the node has) and, at the same
    // time, a lost store: the addresses come from the CNI cache.
    lab.ok(&["agent", "stop", "n1"]);
    std::fs::remove_file(state.join("state").join("endpoints.json")).expect("lose the store");
    let weir_dir = std::path::PathBuf::from("/run/weir-lab").join(&lab.name).join("bpffs").join("n1").join("weir");
    let versions: Vec<std::ffi::OsString> =
        std::fs::read_dir(&weir_dir).expect("pin dir").flatten().map(|e| e.file_name()).collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
    std::fs::rename(weir_dir.join(&versions[0]), weir_dir.join("v0")).expect("make the pins an older version's");
    lab.ok(&["agent", "start", "n1"]);
    check("after an upgrade with a lost store (CNI cache)");

    lab.ok(&["agent", "stop", "n1"]);
    std::fs::remove_file(state.join("state").join("endpoints.json")).expect("lose the store");
    std::fs::remove_dir_all(state.join("containerd").join("var-lib-cni").join("results")).expect("lose the CNI cache");
    lab.ok(&["agent", "start", "n1"]);
    check("after a lost store and CNI cache (cluster state)");

    assert!(lab.apply(&pod("w", "n1")).status.success());
    let ip_w = ip("w");
    assert!(ip_w != ip_x && ip_w != ip_y, "a new pod gets a free address: {ip_w}");
}

/// Unmounts a tmpfs the test mounted (lazily: the agent may still hold files in it), also when
/// the test fails; declared after the lab, so it goes first.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The agent's state directory full (a 1 MiB tmpfs, filled): an ADD fails with a CNI error that
/// says so and leaves nothing behind (no interface, no endpoint); a DEL still succeeds, because
/// a removal may spend the reserve the store keeps; with space again, ADD works.
#[test]
fn full_state_directory_fails_add_cleanly_and_del_still_succeeds() {
    if !require_root("full_state_directory_fails_add_cleanly_and_del_still_succeeds") {
        return;
    }
    let lab = TestLab::up_with("direct", &["--nodes", "1"]);
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\n\
             spec: {{nodeName: n1, containers: [{{name: c, image: lab/server}}]}}\n"
        )
    };
    assert!(lab.apply(&pod("a")).status.success());
    let state = std::path::PathBuf::from("/run/weir-lab").join(&lab.name).join("nodes").join("n1").join("state");
    lab.ok(&["agent", "stop", "n1"]);
    let files: Vec<(std::ffi::OsString, Vec<u8>)> = std::fs::read_dir(&state)
        .expect("state dir")
        .flatten()
        .map(|e| (e.file_name(), std::fs::read(e.path()).expect("read state file")))
        .collect();
    nix::mount::mount(Some("tmpfs"), &state, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=1m"))
        .expect("mount a tmpfs on the state directory");
    let _unmount = Unmount(state.clone());
    for (name, bytes) in &files {
        std::fs::write(state.join(name), bytes).expect("restore state file");
    }
    lab.ok(&["agent", "start", "n1"]);
    assert!(state.join("reserve").exists(), "the store keeps a reserve");
    // Fill the filesystem.
    let filler = state.join("filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).expect("filler");
        while f.write_all(&[0u8; 4096]).is_ok() {}
    }
    let lxc = || {
        lab.ok(&["node-exec", "n1", "--", "ip", "-o", "link", "show"]).lines().filter(|l| l.contains(": lxc")).count()
    };
    assert_eq!(lxc(), 1);

    let out = lab.apply(&pod("b"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "ADD on a full state directory fails: {text}");
    assert!(text.contains("full"), "the CNI error says the state directory is full: {text}");
    assert_eq!(lxc(), 1, "the failed ADD left no interface");

    let out = lab.run_with_stdin(&["delete", "-f", "-"], &pod("a"));
    assert!(out.status.success(), "DEL succeeds on a full state directory: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lxc(), 0, "a's interface is gone");
    let eps = lab.ok(&["weir", "n1", "--", "endpoints", "-o", "json"]);
    assert_eq!(serde_json::from_str::<Value>(&eps).expect("json"), serde_json::json!([]), "{eps}");
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(state.join("endpoints.json")).expect("store")).expect("store json");
    assert_eq!(on_disk, serde_json::json!([]), "the removal is on disk");

    std::fs::remove_file(&filler).expect("free space");
    assert!(lab.apply(&pod("b")).status.success(), "ADD works again");
    assert_eq!(lxc(), 1);
}

/// A Pod's hostPort, pods made through containerd: served on its node's address to clients
/// outside the cluster (who keep their address), to pods of both nodes, not on another node's
/// address; the pod's ingress policy judges the real client; deleting the pod closes the port.
#[test]
fn host_ports_reach_the_pod_and_its_policy_judges_them() {
    if !require_root("host_ports_reach_the_pod_and_its_policy_judges_them") {
        return;
    }
    let lab = TestLab::up("direct");
    let hp = "apiVersion: v1\nkind: Pod\nmetadata: {name: hp, namespace: hp, labels: {app: hp}}\n\
              spec: {nodeName: n1, containers: [{name: c, image: lab/server, ports: [{containerPort: 8080, hostPort: 9090}]}]}\n";
    let clients = format!("{}{}", pod_yaml("hp", "near", "n1", "other"), pod_yaml("hp", "far", "n2", "client"));
    let out = lab.apply(&format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: hp}}\n---\n{hp}{clients}"));
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    let external = |target: &str| {
        let v = lab.probe_external(target, "tcp");
        (v["result"].as_str().unwrap_or_default().to_owned(), v)
    };
    eventually("hostPort from outside", "connected", || external("172.30.0.11:9090").0);
    let (_, v) = external("172.30.0.11:9090");
    assert_eq!(v["reply"], "hp", "{v}");
    assert_eq!(
        v["client"].as_str().and_then(|c| c.split(':').next()),
        Some("172.30.0.200"),
        "the client keeps its address: {v}"
    );
    assert_ne!(external("172.30.0.12:9090").0, "connected", "not on another node's address");
    for from in ["hp/near", "hp/far"] {
        assert_eq!(lab.probe(from, "172.30.0.11:9090", "tcp"), ("connected".into(), "hp".into()), "{from}");
    }
    // Ingress policy: only pods labelled app=client, on the container port.
    let policy =
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-clients, namespace: hp}\n\
                  spec:\n  podSelector: {matchLabels: {app: hp}}\n  \
                  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 8080}]}]\n";
    assert!(lab.apply(policy).status.success());
    eventually("outside client denied", "timeout", || external("172.30.0.11:9090").0);
    assert_eq!(lab.probe("hp/near", "172.30.0.11:9090", "tcp").0, "timeout", "app=other is denied");
    assert_eq!(lab.probe("hp/far", "172.30.0.11:9090", "tcp"), ("connected".into(), "hp".into()), "app=client allowed");
    assert!(lab.run_with_stdin(&["delete", "-f", "-"], hp).status.success());
    eventually("the port closes with its pod", "refused", || lab.probe("hp/far", "172.30.0.11:9090", "tcp").0);
}

/// A second real client of weir's CNI: podman 4.3 (CNI backend) runs a container on the
/// network `weir` (the conflist the agent installed), in the node's namespace and a private
/// mount namespace (libcni writes /var/lib/cni whatever it is told), with its storage in the
/// lab's directory. A lab pod reaches the container's server; `podman rm` gives the address back.
#[test]
fn podman_runs_a_container_on_weirs_network() {
    if !require_root("podman_runs_a_container_on_weirs_network") {
        return;
    }
    let lab = TestLab::up_with("direct", &["--nodes", "1"]);
    assert!(lab.apply(&pod_yaml("default", "a", "n1", "a")).status.success());
    let dir = std::path::PathBuf::from("/run/weir-lab").join(&lab.name);
    let pd = dir.join("podman");
    for d in ["root", "runroot", "tmp", "var-lib-cni"] {
        std::fs::create_dir_all(pd.join(d)).expect("podman dirs");
    }
    let node = dir.join("nodes").join("n1");
    let conf = format!(
        "[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
         runtime = \"runc\"\ntmp_dir = \"{tmp}\"\nlock_type = \"file\"\n[network]\nnetwork_backend = \"cni\"\n\
         cni_plugin_dirs = [\"{bin}\"]\nnetwork_config_dir = \"{netd}\"\n",
        tmp = pd.join("tmp").display(),
        bin = node.join("cni-bin").display(),
        netd = node.join("net.d").display(),
    );
    std::fs::write(pd.join("containers.conf"), conf).expect("containers.conf");
    let script = format!(
        // /var/lib is a tmpfs in podman's mount namespace: it writes an image cache under
        // /var/lib/containers whatever its root is.
        "#!/bin/sh\nset -e\nmount -t tmpfs tmpfs /var/lib\nmkdir /var/lib/cni\nmount --bind '{cni}' /var/lib/cni\n\
         export CONTAINERS_CONF='{conf}'\n\
         exec podman --root '{root}' --runroot '{runroot}' --storage-driver overlay \"$@\"\n",
        cni = pd.join("var-lib-cni").display(),
        conf = pd.join("containers.conf").display(),
        root = pd.join("root").display(),
        runroot = pd.join("runroot").display(),
    );
    let wrapper = pd.join("podman.sh");
    std::fs::write(&wrapper, script).expect("podman.sh");
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let wrapper = wrapper.display().to_string();
    let podman = |args: &[&str]| {
        let mut all =
            vec!["node-exec", "n1", "--", "unshare", "--mount", "--propagation", "unchanged", wrapper.as_str()];
        all.extend_from_slice(args);
        lab.run(&all)
    };
    /// Removes the container also when an assertion fails (before the lab goes).
    struct Rm<'a>(&'a dyn Fn(&[&str]) -> std::process::Output);
    impl Drop for Rm<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&["rm", "-f", "web"]);
        }
    }
    let image = dir.join("pod-image.tar").display().to_string();
    let out = podman(&["load", "-i", &image]);
    assert!(out.status.success(), "podman load: {}", String::from_utf8_lossy(&out.stderr));
    let _rm = Rm(&podman);
    let cgroup_parent = format!("/weir-lab-{}/n1", lab.name);
    let out = podman(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "weir",
        "--cgroup-parent",
        &cgroup_parent,
        "weir.lab/pod:1",
        "serve",
        "--name",
        "podman",
        "--tcp",
        "8080",
    ]);
    assert!(out.status.success(), "podman run: {}", String::from_utf8_lossy(&out.stderr));
    let out = podman(&["inspect", "web", "--format", "{{.NetworkSettings.Networks.weir.IPAddress}}"]);
    let ip = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        ip.starts_with("10.244.1."),
        "an address from n1's pod CIDR: {ip:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let endpoints = || lab.ok(&["weir", "n1", "--", "endpoints"]);
    assert!(endpoints().contains(&ip), "the agent has the container as an endpoint: {}", endpoints());
    eventually("a lab pod reaches podman's container", "connected", || {
        lab.probe("default/a", &format!("{ip}:8080"), "tcp").0
    });
    assert_eq!(lab.probe("default/a", &format!("{ip}:8080"), "tcp").1, "podman");
    let out = podman(&["rm", "-f", "web"]);
    assert!(out.status.success(), "podman rm: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!endpoints().contains(&ip), "DEL through podman released the endpoint: {}", endpoints());
}
