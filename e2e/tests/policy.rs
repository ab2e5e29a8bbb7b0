//! NetworkPolicy in the lab: truth tables. Two namespaces × two pods on two nodes, every pod
//! serving TCP and UDP on ports 80 and 81; every ordered pair of pods probed on all four, and
//! the matrix compared with the spec-level oracle (`policy::oracle`, the reference evaluator)
//! fed the very manifests the agents read. Cases cover each rule of the spec, with updates in
//! the middle (labels, namespaces, policies changed and deleted), and `weir policy explain`
//! must give the verdict the probes saw. Then random policies, oracle vs probes.
mod common;

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf, time::Duration};

use common::TestLab;
use serde_json::Value;
use weir_operator_agent::{
    policy::{compile::Cluster, oracle},
    source::manifest::DirState,
};
use weir_tests::require_root;

const PROBES: [(&str, u16); 4] = [("tcp", 80), ("tcp", 81), ("udp", 80), ("udp", 81)];

#[derive(Clone, Debug)]
struct LabPod {
    key: String,
    ip: Ipv4Addr,
}

fn pod(ns: &str, name: &str, node: &str, app: &str, http: u16) -> String {
    let other = if http == 80 { 81 } else { 80 };
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\n\
         spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: lab/server\n    ports:\n\
         \x20   - {{name: http, containerPort: {http}, protocol: TCP}}\n\
         \x20   - {{name: other, containerPort: {other}, protocol: TCP}}\n\
         \x20   - {{name: u80, containerPort: 80, protocol: UDP}}\n\
         \x20   - {{name: u81, containerPort: 81, protocol: UDP}}\n"
    )
}

fn namespace(name: &str, team: &str) -> String {
    format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{team: {team}}}}}\n")
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
}

struct PolicyLab {
    lab: TestLab,
    pods: Vec<LabPod>,
}

type Matrix = BTreeMap<(String, String, &'static str, u16), bool>;

impl PolicyLab {
    fn apply(&self, yaml: &str) {
        let out = self.lab.apply(yaml);
        assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn delete(&self, yaml: &str) {
        let out = self.lab.run_with_stdin(&["delete", "-f", "-"], yaml);
        assert!(out.status.success(), "delete: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The cluster exactly as the agents read it.
    fn cluster(&self) -> Cluster {
        let mut dir = DirState::default();
        let errors = dir.refresh(&PathBuf::from(format!("/run/weir-lab/{}/cluster", self.lab.name)));
        assert!(errors.is_empty(), "{errors:?}");
        Cluster::from_snapshot(&dir.snapshot(), None)
    }

    fn expected(&self) -> Matrix {
        let c = self.cluster();
        let mut m = Matrix::new();
        for a in &self.pods {
            for b in self.pods.iter().filter(|b| b.key != a.key) {
                for (proto, port) in PROBES {
                    let p = if proto == "tcp" { 6 } else { 17 };
                    let v = oracle::evaluate(&c, a.ip, b.ip, p, port).allowed();
                    m.insert((a.key.clone(), b.key.clone(), proto, port), v);
                }
            }
        }
        m
    }

    /// Probes every ordered pair on every port, all at once (a denied probe waits its timeout).
    fn probe_all(&self) -> Matrix {
        let mut handles = Vec::new();
        for a in &self.pods {
            for b in self.pods.iter().filter(|b| b.key != a.key) {
                for (proto, port) in PROBES {
                    let (name, from, target, want) =
                        (self.lab.name.clone(), a.key.clone(), format!("{}:{port}", b.ip), b.key.clone());
                    handles.push(std::thread::spawn(move || {
                        let out = std::process::Command::new(common::LAB)
                            .env("WEIR_LAB", &name)
                            .args(["probe", &from, &target, "--protocol", proto, "--timeout", "2s", "-o", "json"])
                            .output()
                            .expect("probe");
                        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                        let name_only = want.split('/').nth(1).unwrap_or_default().to_owned();
                        let ok = v["result"] == "connected" && v["reply"] == name_only.as_str();
                        ((from, want, proto, port), ok)
                    }));
                }
            }
        }
        handles.into_iter().map(|h| h.join().expect("probe thread")).collect()
    }

    fn render(&self, m: &Matrix, want: &Matrix) -> String {
        let mut s = format!("{:<8}", "from\\to");
        for b in &self.pods {
            s.push_str(&format!(" {:<18}", b.key));
        }
        s.push_str("   (cells: tcp80 tcp81 udp80 udp81; 1 allowed, . denied, ! differs from expected)\n");
        for a in &self.pods {
            s.push_str(&format!("{:<8}", a.key));
            for b in &self.pods {
                let mut cell = String::new();
                for (proto, port) in PROBES {
                    let k = (a.key.clone(), b.key.clone(), proto, port);
                    cell.push(match (m.get(&k), want.get(&k)) {
                        (None, _) => '-',
                        (Some(g), Some(w)) if g != w => '!',
                        (Some(true), _) => '1',
                        (Some(false), _) => '.',
                    });
                    cell.push(' ');
                }
                s.push_str(&format!(" {cell:<18}"));
            }
            s.push('\n');
        }
        s
    }

    /// Waits (up to 15 s) for the probes to show the oracle's matrix; prints both on failure.
    fn expect(&self, case: &str) -> Matrix {
        let want = self.expected();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.probe_all();
            if got == want {
                eprintln!("case {case}: {} probes as expected\n{}", got.len(), self.render(&got, &want));
                return want;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "case {case}: probes differ from the expected matrix\nexpected:\n{}got:\n{}",
                    self.render(&want, &want),
                    self.render(&got, &want)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `weir-lab policy explain` must say what the probes saw, for every probe of the matrix.
    fn explain_matches(&self, m: &Matrix, case: &str) {
        for ((from, to, proto, port), allowed) in m {
            let port = port.to_string();
            let out = self.lab.run(&[
                "policy",
                "-o",
                "json",
                "explain",
                "--from",
                from,
                "--to",
                to,
                "--port",
                &port,
                "--protocol",
                proto,
            ]);
            let v: Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("explain output: {e}: {}", String::from_utf8_lossy(&out.stderr)));
            assert_eq!(
                v["allowed"].as_bool(),
                Some(*allowed),
                "case {case}: explain {from} -> {to} {proto}/{port}: {v}"
            );
            if *allowed && v["ingress"]["verdict"] == "allowed" {
                assert!(!v["ingress"]["rules"].as_array().is_none_or(|r| r.is_empty()), "attribution: {v}");
            }
        }
    }
}

#[test]
fn lab_network_policy_truth_tables() {
    if !require_root("lab_network_policy_truth_tables") {
        return;
    }
    let lab = TestLab::up("direct");
    let setup = [
        namespace("x", "red"),
        namespace("y", "blue"),
        pod("x", "a", "n1", "web", 80),
        pod("x", "b", "n2", "db", 80),
        pod("y", "a", "n1", "web", 80),
        pod("y", "c", "n2", "api", 81),
    ]
    .concat();
    let out = lab.apply(&setup);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pods: Vec<LabPod> = lab
        .pods()
        .iter()
        .map(|p| LabPod {
            key: format!("{}/{}", p["namespace"].as_str().unwrap_or_default(), p["name"].as_str().unwrap_or_default()),
            ip: p["ip"].as_str().and_then(|s| s.parse().ok()).expect("pod ip"),
        })
        .collect();
    let t = PolicyLab { lab, pods };
    let ip = |k: &str| t.pods.iter().find(|p| p.key == k).expect("pod").ip;
    let n2_cidr = format!("{}/24", Ipv4Addr::from(u32::from(ip("x/b")) & 0xffff_ff00));

    // 1. No policy: everything is allowed.
    let m = t.expect("no policy");
    assert!(m.values().all(|v| *v), "default allow");

    // 2. Default deny ingress in x; y is untouched.
    t.apply(&policy("x", "deny", "{podSelector: {}}"));
    let m = t.expect("default deny ingress in x");
    assert!(!m[&("y/a".into(), "x/a".into(), "tcp", 80)] && m[&("x/a".into(), "y/a".into(), "tcp", 80)]);

    // 3. Allow web pods of any namespace to x/b on the named port http (TCP 80 there).
    let allow = policy(
        "x",
        "db",
        "{podSelector: {matchLabels: {app: db}}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}], ports: [{port: http}]}]}",
    );
    t.apply(&allow);
    let m = t.expect("named port from web pods of any namespace");
    assert!(m[&("y/a".into(), "x/b".into(), "tcp", 80)] && !m[&("y/a".into(), "x/b".into(), "tcp", 81)]);
    assert!(!m[&("y/c".into(), "x/b".into(), "tcp", 80)]);
    t.explain_matches(&m, "named port");

    // 4. AND: namespace team=blue and app=web → only y/a. Then y turns red mid-case: nobody.
    t.apply(&policy(
        "x",
        "db",
        "{podSelector: {matchLabels: {app: db}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}, podSelector: {matchLabels: {app: web}}}]}]}",
    ));
    let m = t.expect("namespace AND pod selector");
    assert!(m[&("y/a".into(), "x/b".into(), "udp", 81)] && !m[&("x/a".into(), "x/b".into(), "tcp", 80)]);
    t.apply(&namespace("y", "red"));
    let m = t.expect("namespace label changed");
    assert!(!m[&("y/a".into(), "x/b".into(), "udp", 81)]);
    t.apply(&namespace("y", "blue"));

    // 5. OR: two peers; then x/a's label changes mid-case.
    t.apply(&policy(
        "x",
        "db",
        "{podSelector: {matchLabels: {app: db}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}, {podSelector: {matchExpressions: [{key: app, operator: In, values: [web, api]}]}}], ports: [{protocol: UDP}, {port: 80, endPort: 80}]}]}",
    ));
    let m = t.expect("two peers (OR), protocol-only UDP and an endPort range");
    assert!(m[&("x/a".into(), "x/b".into(), "udp", 81)] && !m[&("x/a".into(), "x/b".into(), "tcp", 81)]);
    t.apply(&pod("x", "a", "n1", "other", 80));
    let m = t.expect("pod label changed");
    assert!(!m[&("x/a".into(), "x/b".into(), "udp", 81)]);
    t.explain_matches(&m, "label change");
    t.apply(&pod("x", "a", "n1", "web", 80));

    // 6. Egress from y/c: only to the other node's pods (ipBlock with except, which matches pod
    // addresses) on UDP 80-81; SCTP never opens TCP or UDP; NotIn / DoesNotExist selectors.
    t.delete(&[policy("x", "deny", "{podSelector: {}}"), policy("x", "db", "{podSelector: {}}")].concat());
    t.apply(&policy(
        "y",
        "egress",
        &format!(
            "{{podSelector: {{matchLabels: {{app: api}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [{n2_cidr}]}}}}], ports: [{{protocol: UDP, port: 80, endPort: 81}}, {{protocol: SCTP, port: 80}}]}}]}}"
        ),
    ));
    t.apply(&policy(
        "x",
        "sctp-only",
        "{podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [db]}, {key: tier, operator: DoesNotExist}]}, ingress: [{ports: [{protocol: SCTP, port: 80}]}]}",
    ));
    let m = t.expect("ipBlock except, UDP range, SCTP-only");
    assert!(m[&("y/c".into(), "y/a".into(), "udp", 81)] && !m[&("y/c".into(), "y/a".into(), "tcp", 80)]);
    assert!(!m[&("y/c".into(), "x/b".into(), "udp", 80)], "x/b is in the except");
    assert!(!m[&("x/b".into(), "x/a".into(), "tcp", 80)] && !m[&("x/b".into(), "x/a".into(), "udp", 80)]);
    t.explain_matches(&m, "egress ipBlock");

    // 7. An invalid update keeps the previous version; deleting everything opens all again.
    t.apply(&policy(
        "y",
        "egress",
        "{podSelector: {matchLabels: {app: api}}, policyTypes: [Egress], egress: [{ports: [{port: 99999}]}]}",
    ));
    std::thread::sleep(Duration::from_secs(2));
    let show = t.lab.ok(&["policy", "show"]);
    assert!(show.contains("y/egress") && show.contains("99999"), "the rejection is reported:\n{show}");
    let probes = t.probe_all();
    assert!(
        probes[&("y/c".into(), "y/a".into(), "udp", 81)] && !probes[&("y/c".into(), "y/a".into(), "tcp", 80)],
        "previous version still enforced"
    );
    t.delete(&[policy("y", "egress", "{podSelector: {}}"), policy("x", "sctp-only", "{podSelector: {}}")].concat());
    let m = t.expect("all policies deleted");
    assert!(m.values().all(|v| *v));

    // 8. Random policies: the oracle against the kernel.
    let mut rng = 0x5eed_1234_u64;
    for round in 0..4 {
        let mut yaml = String::new();
        for i in 0..3 {
            yaml.push_str(&random_policy(&mut rng, i, &n2_cidr));
        }
        t.apply(&yaml);
        let m = t.expect(&format!("random round {round}"));
        if round == 0 {
            t.explain_matches(&m, "random");
        }
        t.delete(&yaml);
    }
}

fn next(r: &mut u64) -> u64 {
    *r ^= *r << 13;
    *r ^= *r >> 7;
    *r ^= *r << 17;
    *r
}

fn pick<'a>(r: &mut u64, xs: &[&'a str]) -> &'a str {
    xs[(next(r) % xs.len() as u64) as usize]
}

fn random_policy(r: &mut u64, i: usize, n2_cidr: &str) -> String {
    let ns = pick(r, &["x", "y"]);
    let selector = pick(
        r,
        &["{}", "{matchLabels: {app: web}}", "{matchExpressions: [{key: app, operator: NotIn, values: [db]}]}"],
    );
    let block = format!("{{ipBlock: {{cidr: 10.0.0.0/8, except: [{n2_cidr}]}}}}");
    let peers = [
        "",
        "from: [{podSelector: {matchLabels: {app: web}}}], ",
        "from: [{namespaceSelector: {matchLabels: {team: blue}}}], ",
        "from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: app, operator: In, values: [api, db]}]}}], ",
    ];
    let mut peer = pick(r, &peers).to_owned();
    if next(r).is_multiple_of(5) {
        peer = format!("from: [{block}], ");
    }
    let ports = pick(
        r,
        &[
            "",
            "ports: [{port: 80}]",
            "ports: [{protocol: UDP}]",
            "ports: [{port: http}, {protocol: UDP, port: 81}]",
            "ports: [{port: 80, endPort: 81}]",
        ],
    );
    let egress = if next(r).is_multiple_of(3) {
        let to = pick(r, &["", "to: [{podSelector: {}}], ", "to: [{namespaceSelector: {matchLabels: {team: red}}}], "]);
        let eports = pick(r, &["", "ports: [{port: http}]", "ports: [{protocol: UDP, port: 80}]"]);
        format!(", policyTypes: [Ingress, Egress], egress: [{{{to}{eports}}}]")
    } else {
        String::new()
    };
    policy(ns, &format!("r{i}"), &format!("{{podSelector: {selector}, ingress: [{{{peer}{ports}}}]{egress}}}"))
}
