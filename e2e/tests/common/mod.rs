//! The lab as the e2e tests drive it: a uniquely named lab brought down on drop, and helpers
//! over the `weir-lab` binary.
#![allow(dead_code)] // each test binary uses a different part

use std::{
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use serde_json::Value;

pub const LAB: &str = env!("CARGO_BIN_EXE_weir-lab");

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A lab with a unique name, brought down on drop (also when the test panics).
pub struct TestLab {
    pub name: String,
}

impl TestLab {
    /// A two-node lab whose pods containerd makes through CRI, as the kubelet would.
    pub fn up(routing: &str) -> Self {
        Self::up_with(routing, &["--nodes", "2"])
    }

    /// A handle on a lab another handle brought up (it is brought down only by that one).
    pub fn attach(name: &str) -> std::mem::ManuallyDrop<Self> {
        std::mem::ManuallyDrop::new(TestLab { name: name.to_owned() })
    }

    /// A lab with more `weir-lab up` options (`--nodes N` among them).
    pub fn up_with(routing: &str, options: &[&str]) -> Self {
        let name = format!("e{}{}{}", std::process::id() % 100_000, &routing[..1], SEQ.fetch_add(1, Ordering::Relaxed));
        let lab = TestLab { name };
        let mut args = vec!["up", "--routing", routing];
        args.extend_from_slice(options);
        // containerd makes the pods unless a test asks for the lab's own pods (`--runtime
        // builtin`: containers running a host command, such as iperf3).
        if !options.contains(&"--runtime") {
            args.extend_from_slice(&["--runtime", "containerd"]);
        }
        lab.ok(&args);
        lab
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(LAB).env("WEIR_LAB", &self.name).args(args).output().expect("run weir-lab")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "weir-lab {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn apply(&self, yaml: &str) -> Output {
        self.run_with_stdin(&["apply", "-f", "-"], yaml)
    }

    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = Command::new(LAB)
            .env("WEIR_LAB", &self.name)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn weir-lab");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), input.as_bytes()).expect("write");
        child.wait_with_output().expect("weir-lab")
    }

    pub fn pods(&self) -> Vec<Value> {
        let v: Value = serde_json::from_str(&self.ok(&["get", "pods", "-o", "json"])).expect("pods json");
        v.as_array().cloned().unwrap_or_default()
    }

    /// (result, reply) of a probe.
    pub fn probe(&self, from: &str, target: &str, proto: &str) -> (String, String) {
        let out = self.ok(&["probe", from, target, "--protocol", proto, "--timeout", "3s", "-o", "json"]);
        let v: Value = serde_json::from_str(out.trim()).expect("probe json");
        (v["result"].as_str().unwrap_or_default().to_owned(), v["reply"].as_str().unwrap_or_default().to_owned())
    }

    /// The ClusterIP the lab gave Service `name`.
    pub fn cluster_ip(&self, name: &str) -> String {
        let v: Value = serde_json::from_str(&self.ok(&["get", "services"])).expect("services json");
        let svc = v.as_array().and_then(|a| a.iter().find(|s| s["name"] == name).cloned()).expect("service");
        svc["clusterIP"].as_str().expect("clusterIP").to_owned()
    }

    /// A probe from the external namespace (outside the cluster), as JSON.
    pub fn probe_external(&self, target: &str, proto: &str) -> Value {
        let out = self.ok(&["external", "--", LAB, "probe-inner", target, "--protocol", proto, "--timeout", "3s"]);
        serde_json::from_str(out.trim()).expect("probe json")
    }

    /// The nodePort of a Service's port `port_name`.
    pub fn node_port(&self, svc: &str, port_name: &str) -> u16 {
        let v: Value = serde_json::from_str(&self.ok(&["get", "services"])).expect("services json");
        let s = v.as_array().and_then(|a| a.iter().find(|s| s["name"] == svc).cloned()).expect("service");
        let p = s["ports"].as_array().and_then(|a| a.iter().find(|p| p["name"] == port_name).cloned());
        p.and_then(|p| p["nodePort"].as_u64()).and_then(|n| u16::try_from(n).ok()).expect("nodePort")
    }

    pub fn datapath(&self, node: &str) -> Value {
        serde_json::from_str(&self.ok(&["datapath", node])).expect("datapath json")
    }

    /// Probes every ordered pair of pods over TCP and UDP; returns the failures as a matrix.
    pub fn matrix(&self) -> Vec<String> {
        let pods = self.pods();
        let mut failures = Vec::new();
        for a in &pods {
            for b in &pods {
                let from = format!(
                    "{}/{}",
                    a["namespace"].as_str().unwrap_or_default(),
                    a["name"].as_str().unwrap_or_default()
                );
                let ip = b["ip"].as_str().unwrap_or_default();
                let want = b["name"].as_str().unwrap_or_default();
                for (proto, port) in [("tcp", 8080), ("udp", 5353)] {
                    let (res, reply) = self.probe(&from, &format!("{ip}:{port}"), proto);
                    if res != "connected" || reply != want {
                        failures.push(format!(
                            "{from} ({}) -> {want} {ip}:{port}/{proto} ({}): {res} {reply}",
                            a["node"], b["node"]
                        ));
                    }
                }
            }
        }
        failures
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the agents said is gone with the lab: the tail of each goes with the failure.
            let nodes = std::path::PathBuf::from("/run/weir-lab").join(&self.name).join("nodes");
            for node in std::fs::read_dir(&nodes).into_iter().flatten().flatten() {
                let log = std::fs::read_to_string(node.path().join("agent.log")).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(60)..];
                eprintln!(
                    "--- {} agent.log (last {} lines)\n{}",
                    node.file_name().to_string_lossy(),
                    tail.len(),
                    tail.join("\n")
                );
            }
        }
        let out = self.run(&["down"]);
        if !out.status.success() {
            eprintln!("weir-lab down {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        }
    }
}
