//! `weir-sandbox-bench`: a pod sandbox's start and removal as the kubelet sees them, weir
//! against Debian's `bridge` plugin (host-local IPAM) through the same containerd, in one run.
//!
//! weir's side is a one-node weir lab whose containerd runs weir-cni (`weir-lab up --runtime
//! containerd`); the bridge side is a second containerd, same build and same configuration, in
//! a network namespace of its own with a bridge conflist. Both import the lab's offline pod
//! image. For each of N pods, alternating between the two: RunPodSandbox until
//! PodSandboxStatus reports the address (start), then later StopPodSandbox + RemovePodSandbox
//! (removal). weir's Pod objects are in the cluster state before their sandboxes start, as the
//! kubelet only starts sandboxes for pods the API server has. Two warm-up pods per side are
//! not counted. Everything made (the lab, the namespace, the containerd, cgroups, files) is
//! removed at exit.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::Parser;
use serde::Serialize;
use weir_benches::{stats::quantile, table::Table};
use weir_e2e::{containerd, cri::Cri};
use weir_tests::netns;

/// The target: weir's start at most the bridge plugin's, at the median.
const TARGET_START_P50_RATIO: f64 = 1.0;
const WARMUP: usize = 2;

#[derive(Parser)]
#[command(name = "weir-sandbox-bench", about = "pod sandbox start/removal through containerd: weir vs bridge")]
struct Cli {
    /// Pods per side (measured; two more warm up).
    #[arg(long, default_value_t = 30)]
    pods: usize,
    #[arg(long, default_value = "sandbox-bench-results.json")]
    out: PathBuf,
    /// weir-lab (default: next to this binary).
    #[arg(long)]
    lab: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Side {
    start_p50_ms: f64,
    start_p99_ms: f64,
    remove_p50_ms: f64,
    remove_p99_ms: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    pods: usize,
    containerd: String,
    weir: Side,
    bridge: Side,
    start_p50_ratio: f64,
    start_p99_ratio: f64,
    remove_p50_ratio: f64,
    remove_p99_ratio: f64,
    target_start_p50_ratio: f64,
}

/// One side: a containerd socket, the cgroup parent its pods go under, and (weir) where the
/// Pod objects are written.
struct Runtime {
    cri: Cri,
    cgroup_parent: String,
    logs: PathBuf,
    cluster_dir: Option<PathBuf>,
}

impl Runtime {
    fn pod(&self, name: &str) -> (k8s_openapi::api::core::v1::Pod, String) {
        let uid = format!(
            "00000000-0000-4000-8000-{:012x}",
            name.bytes().fold(0u64, |h, b| h * 131 + b as u64) & 0xffff_ffff_ffff
        );
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "bench", "uid": uid, "labels": {"app": "bench"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "lab/server"}]},
            "status": {"phase": "Pending"},
        }))
        .expect("pod");
        (pod, uid)
    }

    /// Writes the Pod object where the agent reads the cluster (weir only).
    fn publish(&self, name: &str) -> anyhow::Result<()> {
        if let Some(dir) = &self.cluster_dir {
            let (pod, _) = self.pod(name);
            let text = serde_json::to_string(&pod)?;
            std::fs::write(dir.join(format!("pod-bench-{name}.yaml")), text)?;
        }
        Ok(())
    }

    /// RunPodSandbox until its address is known: (sandbox id, time).
    fn start(&self, name: &str) -> anyhow::Result<(String, Duration)> {
        let (pod, uid) = self.pod(name);
        let config = weir_e2e::cri::sandbox_config(&pod, &uid, &self.cgroup_parent, &self.logs, &[])?;
        let t = Instant::now();
        let id = self.cri.run_pod_sandbox(config).with_context(|| format!("RunPodSandbox {name}"))?;
        let sandbox = self.cri.sandbox(&id)?;
        let took = t.elapsed();
        if sandbox.ip.is_none() {
            bail!("sandbox {name}: no address in PodSandboxStatus");
        }
        Ok((id, took))
    }

    fn remove(&self, id: &str) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.cri.remove_sandbox(id)?;
        Ok(t.elapsed())
    }
}

/// What the run made, removed on drop (also after a failure).
struct Made {
    /// The two runtimes' sockets: sandboxes left by a failed run are removed through them.
    sockets: Vec<PathBuf>,
    lab_bin: PathBuf,
    lab: String,
    netns: String,
    bridge: Option<containerd::Node>,
    cgroup: PathBuf,
    work: PathBuf,
}

impl Drop for Made {
    fn drop(&mut self) {
        for s in &self.sockets {
            if let Ok(cri) = Cri::connect(s, Duration::from_secs(2)) {
                for id in cri.sandboxes_labelled("app", "bench").unwrap_or_default() {
                    let _ = cri.remove_sandbox(&id);
                }
            }
        }
        if let Some(b) = &self.bridge {
            b.stop();
        }
        let kill = self.cgroup.join("containerd").join("cgroup.kill");
        if kill.exists() {
            let _ = std::fs::write(&kill, "1");
            std::thread::sleep(Duration::from_millis(300));
        }
        let name = self.cgroup.file_name().map(|n| n.to_owned()).unwrap_or_default();
        let _ = containerd::remove_tree(&self.cgroup);
        for h in containerd::v1_hierarchies() {
            let _ = containerd::remove_tree(&h.join(&name));
        }
        let _ = netns::ip(&["netns", "del", &self.netns]);
        let _ = std::fs::remove_dir_all(&self.work);
        let _ = Command::new(&self.lab_bin).env("WEIR_LAB", &self.lab).arg("down").output();
    }
}

fn ms(d: &[Duration]) -> Vec<f64> {
    let mut v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn side(start: &[Duration], remove: &[Duration]) -> Side {
    let (s, r) = (ms(start), ms(remove));
    Side {
        start_p50_ms: quantile(&s, 0.5),
        start_p99_ms: quantile(&s, 0.99),
        remove_p50_ms: quantile(&r, 0.5),
        remove_p99_ms: quantile(&r, 0.99),
    }
}

fn bridge_conflist() -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "bench-bridge",
        "plugins": [{
            "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.98.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]},
        }],
    })
}

fn main() -> anyhow::Result<()> {
    netns::trampoline_if_invoked();
    let cli = Cli::parse();
    if !nix::unistd::Uid::effective().is_root() {
        bail!("weir-sandbox-bench needs root (containerd, namespaces, cgroups)");
    }
    if !(1..=500).contains(&cli.pods) {
        bail!("--pods {}: 1 to 500", cli.pods);
    }
    let exe = std::env::current_exe()?;
    let lab_bin = match &cli.lab {
        Some(p) => p.clone(),
        None => exe.parent().context("exe dir")?.join("weir-lab"),
    };
    let pid = std::process::id();
    let made = Made {
        sockets: Vec::new(),
        lab_bin: lab_bin.clone(),
        lab: format!("sb{}", pid % 100_000),
        netns: format!("wsb{pid}-bridge"),
        bridge: None,
        cgroup: PathBuf::from("/sys/fs/cgroup/unified").join(format!("weir-sbench-{pid}")),
        work: PathBuf::from(format!("/run/weir-sbench-{pid}")),
    };
    let mut made = made;
    let out = Command::new(&lab_bin)
        .env("WEIR_LAB", &made.lab)
        .args(["up", "--nodes", "1", "--runtime", "containerd"])
        .output()
        .context("running weir-lab up")?;
    if !out.status.success() {
        bail!("weir-lab up: {}", String::from_utf8_lossy(&out.stderr));
    }
    let lab_dir = PathBuf::from("/run/weir-lab").join(&made.lab);
    made.sockets.push(lab_dir.join("nodes/n1/containerd/containerd.sock"));
    let weir = Runtime {
        cri: Cri::connect(&made.sockets[0], Duration::from_secs(10))?,
        cgroup_parent: format!("/weir-lab-{}/n1", made.lab),
        logs: lab_dir.join("pods/bench"),
        cluster_dir: Some(lab_dir.join("cluster")),
    };

    // The bridge side: its own namespace, CNI dirs and containerd.
    netns::ip(&["netns", "add", &made.netns])?;
    netns::ip_in(&made.netns, &["link", "set", "lo", "up"])?;
    let (bin, conf) = (made.work.join("cni-bin"), made.work.join("net.d"));
    for d in [&bin, &conf] {
        std::fs::create_dir_all(d)?;
    }
    for p in ["bridge", "host-local", "loopback"] {
        std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(p), bin.join(p))?;
    }
    std::fs::write(conf.join("10-bridge.conflist"), serde_json::to_vec_pretty(&bridge_conflist())?)?;
    std::fs::create_dir_all(made.cgroup.join("containerd"))?;
    let node = containerd::Node { dir: made.work.join("containerd") };
    node.start(&netns::netns_path(&made.netns), &made.cgroup.join("containerd"), &bin, &conf, None)?;
    made.bridge = Some(containerd::Node { dir: node.dir.clone() });
    made.sockets.push(node.socket());
    node.import(&lab_dir.join("pod-image.tar"))?;
    let bridge = Runtime {
        cri: Cri::connect(&node.socket(), Duration::from_secs(10))?,
        cgroup_parent: format!("/weir-sbench-{pid}/pods"),
        logs: made.work.join("pods"),
        cluster_dir: None,
    };

    let total = cli.pods + WARMUP;
    let names: Vec<String> = (0..total).map(|i| format!("p{i}")).collect();
    for n in &names {
        weir.publish(n)?;
    }
    // The agent has read the Pod objects (it would wait for them otherwise, which is not
    // what a kubelet's pod start meets).
    std::thread::sleep(Duration::from_secs(2));
    let (mut ws, mut bs, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for (i, n) in names.iter().enumerate() {
        let (wid, wt) = weir.start(n)?;
        let (bid, bt) = bridge.start(n)?;
        if i >= WARMUP {
            ws.push(wt);
            bs.push(bt);
        }
        ids.push((wid, bid));
    }
    let (mut wr, mut br) = (Vec::new(), Vec::new());
    for (i, (wid, bid)) in ids.iter().enumerate() {
        let w = weir.remove(wid)?;
        let b = bridge.remove(bid)?;
        if i >= WARMUP {
            wr.push(w);
            br.push(b);
        }
    }
    for n in &names {
        let _ = std::fs::remove_file(lab_dir.join("cluster").join(format!("pod-bench-{n}.yaml")));
    }
    let (w, b) = (side(&ws, &wr), side(&bs, &br));
    let version = Command::new("containerd").arg("--version").output().map_or_else(
        |_| "?".to_owned(),
        |o| String::from_utf8_lossy(&o.stdout).split_whitespace().nth(2).unwrap_or("?").to_owned(),
    );
    let r = Results {
        pods: cli.pods,
        containerd: version,
        start_p50_ratio: w.start_p50_ms / b.start_p50_ms,
        start_p99_ratio: w.start_p99_ms / b.start_p99_ms,
        remove_p50_ratio: w.remove_p50_ms / b.remove_p50_ms,
        remove_p99_ratio: w.remove_p99_ms / b.remove_p99_ms,
        weir: w,
        bridge: b,
        target_start_p50_ratio: TARGET_START_P50_RATIO,
    };
    let mut t = Table::new(&["", "weir ms", "bridge ms", "weir/bridge"]);
    let f = |x: f64| format!("{x:.1}");
    let q = |x: f64| format!("{x:.2}");
    t.row(&["RunPodSandbox -> address p50", &f(r.weir.start_p50_ms), &f(r.bridge.start_p50_ms), &q(r.start_p50_ratio)]);
    t.row(&["RunPodSandbox -> address p99", &f(r.weir.start_p99_ms), &f(r.bridge.start_p99_ms), &q(r.start_p99_ratio)]);
    t.row(&[
        "Stop + RemovePodSandbox p50",
        &f(r.weir.remove_p50_ms),
        &f(r.bridge.remove_p50_ms),
        &q(r.remove_p50_ratio),
    ]);
    t.row(&[
        "Stop + RemovePodSandbox p99",
        &f(r.weir.remove_p99_ms),
        &f(r.bridge.remove_p99_ms),
        &q(r.remove_p99_ratio),
    ]);
    println!("Pod sandboxes through containerd {} (CRI), {} per side:", r.containerd, cli.pods);
    print!("{}", t.render());
    println!(
        "target: weir start p50 <= bridge ({}): {}",
        TARGET_START_P50_RATIO,
        if r.start_p50_ratio <= TARGET_START_P50_RATIO { "met" } else { "NOT met" }
    );
    std::fs::write(&cli.out, serde_json::to_string_pretty(&r)?)
        .with_context(|| format!("writing {}", cli.out.display()))?;
    eprintln!("JSON written to {}", cli.out.display());
    drop(made);
    Ok(())
}
