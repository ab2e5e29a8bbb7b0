//! weir-policy-bench: what NetworkPolicy costs, at 10, 1k and 10k rules selecting one pod.
//!
//! * **Per packet**: the real `weir_from_pod` program, loaded with the real policy maps written
//!   by the agent's own `PolicySync`, run with BPF_PROG_TEST_RUN (kernel-timed, 200k repeats)
//!   on a same-node pod-to-pod TCP packet: to a pod no policy selects (the baseline, same
//!   program), to the isolated pod on an allowed port, and on a denied port (which also pays for
//!   the drop report). Flat means the allowed cost does not grow from 10 to 10k rules.
//! * **Convergence**: apply → enforced inside the agent, i.e. the compile and the map writes of
//!   `PolicySync::apply_changes` after a change (as the agent makes it: passes that go on from the
//!   last for pod and policy changes, full ones for namespace changes) — a peer pod's labels, the client's labels (its entry
//!   goes and comes back), a policy created, updated and deleted, a new local pod — 20 times
//!   each, p50/p99. The agent adds its 50 ms coalescing window before a pass; the API watch or
//!   the manifest poll adds its own delivery time (not measured here).
//!
//! Runs in its own network namespace with a private bpffs; removes both at exit.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    time::Instant,
};

use anyhow::{bail, Context as _};
use clap::Parser;
use serde::Serialize;
use weir_bpf_common::programs;
use weir_dataplane::{
    maps::{Ipcache, PolicyEndpoints, PolicyEntries},
    Datapath,
};
use weir_operator_agent::{
    policy::sync::{KernelPolicyMaps, PolicyMaps, PolicySync},
    source::{self, manifest::snapshot_of, Changed, Changes, ClusterSnapshot},
};

use weir_benches::{env, stats::quantile, table::Table};

#[derive(Parser)]
#[command(name = "weir-policy-bench", about = "NetworkPolicy per-packet cost and convergence at 10/1k/10k rules")]
struct Cli {
    /// Rule counts selecting the measured pod.
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
    rules: Vec<usize>,
    /// Pods in the cluster (identities and IP→identity entries).
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    #[arg(long, default_value_t = 200_000)]
    repeat: u32,
    #[arg(long, default_value_t = 20)]
    changes: usize,
    #[arg(long, default_value = "policy-bench-results.json")]
    out: PathBuf,
}

/// This node's endpoints: pod namespace/name → address.
type Local = BTreeMap<(String, String), Ipv4Addr>;

const TARGET: Ipv4Addr = Ipv4Addr::new(10, 250, 200, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 250, 200, 3);
const OPEN: Ipv4Addr = Ipv4Addr::new(10, 250, 200, 4);

#[derive(Debug, Serialize)]
struct SizeResult {
    rules: usize,
    entries: usize,
    identities: usize,
    prefixes: usize,
    first_program_ms: f64,
    packet_open_ns: u64,
    packet_allowed_ns: u64,
    packet_denied_ns: u64,
    /// event → (p50 ms, p99 ms)
    convergence_ms: BTreeMap<&'static str, (f64, f64)>,
}

fn pod(ns: &str, name: &str, app: &str, ip: Ipv4Addr) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\n\
         spec: {{nodeName: n1, containers: [{{name: c, image: i, ports: [{{name: http, containerPort: 80}}]}}]}}\n\
         status: {{phase: Running, podIP: {ip}}}\n"
    )
}

fn policy(name: &str, rules: &[String]) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: ns0}}\n\
         spec: {{podSelector: {{matchLabels: {{app: target}}}}, ingress: [{}]}}\n",
        rules.join(", ")
    )
}

/// `pods` pods in 10 namespaces, the target/client/open pods, and `rules` ingress rules (10 per
/// policy) selecting the target: rule 0 lets the client in on TCP 80; the others each allow
/// one /32 on one port, so every rule is its own entry.
fn cluster_yaml(pods: usize, rules: usize) -> String {
    let mut y = String::new();
    for n in 0..10 {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}, labels: {{team: t{}}}}}\n",
            n % 3
        ));
    }
    for i in 0..pods {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 2)) + i as u32);
        y.push_str(&pod(&format!("ns{}", i % 10), &format!("p{i}"), &format!("app-{}", i % 50), ip));
    }
    y.push_str(&pod("ns0", "target", "target", TARGET));
    y.push_str(&pod("ns0", "client", "client", CLIENT));
    y.push_str(&pod("ns0", "open", "open", OPEN));
    let mut all: Vec<String> =
        vec!["{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}".into()];
    for j in 1..rules {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + j as u32);
        all.push(format!("{{from: [{{ipBlock: {{cidr: {ip}/32}}}}], ports: [{{port: {}}}]}}", 1000 + j % 60000));
    }
    for (k, chunk) in all.chunks(10).enumerate() {
        y.push_str(&policy(&format!("rules-{k}"), chunk));
    }
    y
}

/// An established connection's packet (ACK) to `dport`.
fn frame(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    env::tcp_frame(src, dst, 40000, dport, 0x10)
}

struct Bench {
    dp: Datapath,
    maps: KernelPolicyMaps,
    repeat: u32,
    changes: usize,
    pods: usize,
}

impl Bench {
    fn packet_ns(&mut self, f: &[u8]) -> anyhow::Result<u64> {
        // Warm up (the first run records the connection), then the kernel-timed run.
        self.dp.test_run_repeat(programs::FROM_POD, f, 1000)?;
        Ok(self.dp.test_run_repeat(programs::FROM_POD, f, self.repeat)?.1.as_nanos() as u64)
    }

    fn size(&mut self, rules: usize) -> anyhow::Result<SizeResult> {
        let base = snapshot_of(&cluster_yaml(self.pods, rules), "bench").context("generated cluster")?;
        let mut local = Local::new();
        for (name, ip) in [("target", TARGET), ("client", CLIENT), ("open", OPEN)] {
            local.insert(("ns0".into(), name.into()), ip);
        }
        // Another 97 endpoints on this node, as on a busy node.
        for i in 0..97.min(self.pods) {
            local.insert(
                (format!("ns{}", i % 10), format!("p{i}")),
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 2)) + i as u32),
            );
        }
        let mut sync = PolicySync::default();
        let t = Instant::now();
        sync.apply(&base, &local, &mut self.maps)?;
        let first_program_ms = t.elapsed().as_secs_f64() * 1e3;
        let compiled = sync.compiled.clone();
        if compiled.endpoints[&TARGET].fail_closed.is_some() {
            bail!("{rules} rules do not fit the policy map");
        }
        let packet_open_ns = self.packet_ns(&frame(CLIENT, OPEN, 80))?;
        let packet_allowed_ns = self.packet_ns(&frame(CLIENT, TARGET, 80))?;
        let packet_denied_ns = self.packet_ns(&frame(CLIENT, TARGET, 81))?;

        // Convergence: each change and its reverse, timed separately.
        // A variant is the base with some objects put in, as a watch event puts them: its log
        // says what changed, and the agent's writer picks its pass from that. Going back changes the same objects.
        let variant = |extra: &str| -> anyhow::Result<(ClusterSnapshot, Changes)> {
            let mut s = base.clone();
            let more = snapshot_of(extra, "bench change")?;
            let log = &mut s.log;
            for (k, v) in more.pods {
                source::put(&mut s.pods, log, k, Some(v), Changed::Pod);
            }
            for (k, v) in more.namespaces {
                source::put(&mut s.namespaces, log, k, Some(v), Changed::Namespace);
            }
            for (k, v) in more.network_policies {
                source::put(&mut s.network_policies, log, k, Some(v), Changed::NetworkPolicy);
            }
            let changes = s.log.since(base.log.head());
            Ok((s, changes))
        };
        let mut events: Vec<(&'static str, (ClusterSnapshot, Changes), Local)> = Vec::new();
        events.push((
            "peer pod labels",
            variant(&pod("ns1", "p1", "app-changed", Ipv4Addr::new(10, 250, 0, 3)))?,
            local.clone(),
        ));
        events.push((
            "client labels (entry removed)",
            variant(&pod("ns0", "client", "not-client", CLIENT))?,
            local.clone(),
        ));
        let extra_policy =
            policy("extra", &["{from: [{namespaceSelector: {matchLabels: {team: t1}}}], ports: [{port: 443}]}".into()]);
        events.push(("policy created", variant(&extra_policy)?, local.clone()));
        let updated =
            policy("rules-0", &["{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 8080}]}".into()]);
        events.push(("policy updated", variant(&updated)?, local.clone()));
        let mut with_new = local.clone();
        with_new.insert(("ns0".into(), "new".into()), Ipv4Addr::new(10, 250, 200, 9));
        events.push((
            "new local pod",
            variant(&pod("ns0", "new", "target", Ipv4Addr::new(10, 250, 200, 9)))?,
            with_new,
        ));
        let mut convergence_ms = BTreeMap::new();
        let mut deleted_ms = Vec::new();
        let none = BTreeSet::new();
        for (name, (snap, changes), loc) in &events {
            let mut there = Vec::new();
            let mut back = Vec::new();
            for _ in 0..self.changes {
                let t = Instant::now();
                sync.apply_changes(snap, changes, loc, &none, &mut self.maps)?;
                there.push(t.elapsed().as_secs_f64() * 1e3);
                let t = Instant::now();
                sync.apply_changes(&base, changes, &local, &none, &mut self.maps)?;
                back.push(t.elapsed().as_secs_f64() * 1e3);
            }
            if *name == "policy created" {
                deleted_ms = back.clone();
            }
            there.sort_by(f64::total_cmp);
            convergence_ms.insert(*name, (quantile(&there, 0.5), quantile(&there, 0.99)));
        }
        deleted_ms.sort_by(f64::total_cmp);
        convergence_ms.insert("policy deleted", (quantile(&deleted_ms, 0.5), quantile(&deleted_ms, 0.99)));
        // Clean maps for the next size.
        let empty = ClusterSnapshot::default();
        sync.apply(&empty, &BTreeMap::new(), &mut self.maps)?;
        Ok(SizeResult {
            rules,
            entries: compiled.total_entries(),
            identities: compiled.identities.len(),
            prefixes: compiled.ipcache.len(),
            first_program_ms,
            packet_open_ns,
            packet_allowed_ns,
            packet_denied_ns,
            convergence_ms,
        })
    }
}

fn run(cli: &Cli, bpffs: PathBuf) -> anyhow::Result<Vec<SizeResult>> {
    let mut dp = env::load_with_pods(bpffs, (Ipv4Addr::new(10, 250, 0, 0), 16), true, false, &[TARGET, CLIENT, OPEN])?;
    let maps = PolicyMaps {
        ipcache: Ipcache::open(&mut dp)?,
        entries: PolicyEntries::open(&mut dp)?,
        endpoints: PolicyEndpoints::open(&mut dp)?,
    };
    let mut b = Bench { dp, maps, repeat: cli.repeat, changes: cli.changes.max(1), pods: cli.pods };
    let mut out = Vec::new();
    for &r in &cli.rules {
        eprintln!("{r} rules ...");
        out.push(b.size(r.max(1))?);
    }
    Ok(out)
}

fn print_table(rs: &[SizeResult]) {
    println!("\nPer packet (weir_from_pod, same-node pod to pod, BPF_PROG_TEST_RUN mean):");
    let mut t = Table::new(&[
        "rules",
        "entries",
        "identities",
        "open ns",
        "allowed ns",
        "allowed/open",
        "denied ns",
        "program ms",
    ]);
    let first = rs.first().map_or(1, |r| r.packet_allowed_ns.max(1));
    for r in rs {
        t.row(&[
            r.rules.to_string(),
            r.entries.to_string(),
            r.identities.to_string(),
            r.packet_open_ns.to_string(),
            r.packet_allowed_ns.to_string(),
            format!("{:.2}", r.packet_allowed_ns as f64 / r.packet_open_ns.max(1) as f64),
            r.packet_denied_ns.to_string(),
            format!("{:.1}", r.first_program_ms),
        ]);
    }
    t.print();
    if let Some(last) = rs.last() {
        println!(
            "flatness: allowed packet at {} rules / at {} rules = {:.2} (target: flat, ~1.0)",
            last.rules,
            rs[0].rules,
            last.packet_allowed_ns as f64 / first as f64
        );
    }
    println!(
        "\nConvergence inside the agent (compile + map writes), p50 / p99 ms (goal p99 <= 100 ms apply->enforced):"
    );
    let mut t = Table::new(&["rules", "change", "p50 ms", "p99 ms"]);
    for r in rs {
        for (k, (p50, p99)) in &r.convergence_ms {
            t.row(&[r.rules.to_string(), k.to_string(), format!("{p50:.2}"), format!("{p99:.2}")]);
        }
    }
    t.print();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cli2 = Cli {
        rules: cli.rules.clone(),
        pods: cli.pods,
        repeat: cli.repeat,
        changes: cli.changes,
        out: cli.out.clone(),
    };
    let result = env::in_bench_netns("wpb", move |bpffs| run(&cli2, bpffs));
    let results = result?;
    print_table(&results);
    std::fs::write(&cli.out, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", cli.out.display()))?;
    eprintln!("JSON written to {}", cli.out.display());
    Ok(())
}
