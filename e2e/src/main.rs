//! `weir-lab`: a virtual cluster on one machine (see lab.rs). The verbs are a contract that
//! tests and users depend on: up, down, apply, delete, get pods, exec, probe.
use std::{io::Read as _, os::unix::process::CommandExt as _, process::Command, time::Duration};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use weir_operator_agent::config::Routing;

use weir_e2e::{
    lab::{self, Lab},
    probe::{self, Protocol},
};
use weir_tests::netns::{self, command_in};

#[derive(Parser)]
#[command(name = "weir-lab", about = "A virtual multi-node cluster for weir, in network namespaces")]
struct Cli {
    /// Lab name; several labs can coexist. Namespaces are named wl-<lab>-….
    #[arg(long, global = true, env = "WEIR_LAB", default_value = "weir")]
    lab: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the underlay, N nodes running weir-agent, and the external namespace.
    Up {
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[arg(long, value_enum, default_value = "direct")]
        routing: Routing,
        /// The agents' masquerade source ports, FIRST-LAST (default: the agent's).
        #[arg(long)]
        nat_ports: Option<String>,
        /// Who makes pods: weir-lab itself, or a containerd per node driven through CRI.
        #[arg(long, value_enum, default_value = "containerd")]
        runtime: lab::Runtime,
        /// How each node's agent runs: a process with the lab's flags, or the DaemonSet of
        /// deploy/kubernetes from the weir image (with --runtime containerd).
        #[arg(long, value_enum, default_value = "process")]
        agent: lab::AgentMode,
    },
    /// Remove everything the lab made (safe to run twice).
    Down,
    /// Create or update Namespaces and Pods from multi-document YAML (FILE or - for stdin).
    Apply {
        #[arg(short = 'f')]
        file: String,
    },
    /// Delete the objects in FILE (or - for stdin).
    Delete {
        #[arg(short = 'f')]
        file: String,
    },
    /// List objects: `get pods`.
    Get {
        what: String,
        #[arg(short = 'o', value_enum, default_value = "table")]
        output: Output,
    },
    /// Run a command in a pod's network namespace and cgroup.
    Exec {
        pod: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Connect from a pod to HOST:PORT; prints connected, refused or timeout.
    Probe {
        pod: String,
        target: String,
        #[arg(long, value_enum, default_value = "tcp")]
        protocol: Protocol,
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        timeout: Duration,
        #[arg(short = 'o', value_enum, default_value = "table")]
        output: Output,
    },
    /// Stop, start or restart a node's agent (the datapath stays pinned while it is down).
    /// (`kill`: SIGKILL at once, as a crash or the OOM killer would; the fault tests use it.
    /// `pid`: prints the agent's process id in the host's PID namespace.)
    Agent {
        #[arg(value_parser = ["stop", "start", "restart", "kill", "pid"])]
        action: String,
        node: String,
        /// From this start on, the agents' masquerade port range (a changed setting, as an
        /// upgrade may bring).
        #[arg(long)]
        nat_ports: Option<String>,
    },
    /// Programs attached per interface and datapath counters of a node, from its agent (JSON).
    Datapath { node: String },
    /// Run the `weir` CLI against a node's agent: `weir-lab weir n1 -- drops`.
    Weir {
        node: String,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// NetworkPolicy through the first node's agent (which sees the whole cluster):
    /// `weir-lab policy explain --from x/a --to x/b --port 80`, `weir-lab policy show`.
    Policy {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// `weir observe ARGS` against every node's agent at once (flows carry their node's name):
    /// `weir-lab observe --namespace x --last 20`, `weir-lab observe --follow --type drop`.
    Observe {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Path of a node agent's Hubble-compatible observer API socket (gRPC).
    ObserverSocket { node: String },
    /// Path of the lab's relay socket: one Hubble-compatible observer over every node's
    /// (`weir-relay`, started by `up`, finding the nodes in the lab's relay-peers file).
    RelaySocket,
    /// Build the weir image offline as an OCI image layout tarball (`ctr images import`,
    /// `podman load`): weir-agent, weir-cni and weir from WEIR_IMAGE_BIN_DIR (or next to
    /// weir-lab) in /usr/local/bin, Debian's busybox-static for the install-cni init container.
    /// Named as deploy/kubernetes runs it (the kustomization's image).
    Image {
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// A node agent's Prometheus metrics (fetched inside the node's namespace).
    Metrics { node: String },
    /// Fetch http://ADDR/metrics and print the body (internal; run inside a node's namespace).
    #[command(hide = true)]
    FetchInner { addr: String },
    /// Run a command in a node's network namespace (its stack, iptables, interfaces).
    NodeExec {
        node: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Run a command in the external namespace (the world outside the cluster).
    External {
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// The lab's built-in container: answers with NAME on every port (internal).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        name: String,
        #[arg(long)]
        tcp: Vec<u16>,
        #[arg(long)]
        udp: Vec<u16>,
    },
    /// Benchmark: request/response echo server (internal).
    #[command(hide = true)]
    RrServe {
        #[arg(long)]
        port: u16,
    },
    /// Benchmark: one-byte request/response latency to HOST:PORT, JSON (internal).
    #[command(hide = true)]
    Rr {
        target: String,
        #[arg(long, default_value_t = 5000)]
        count: usize,
    },
    /// Benchmark: new connections per second to HOST:PORT (connect, 1-byte request/response,
    /// close), JSON (internal).
    #[command(hide = true)]
    Crr {
        target: String,
        #[arg(long, default_value_t = 2000)]
        count: usize,
    },
    /// Trampoline: join CGROUP, enter NETNS, exec CMD (internal; see weir_tests::netns).
    #[command(hide = true)]
    Enter {
        #[arg(long)]
        netns: std::path::PathBuf,
        #[arg(long)]
        cgroup: Option<std::path::PathBuf>,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// The probe client, run inside the pod (internal).
    #[command(hide = true)]
    ProbeInner {
        target: String,
        #[arg(long, value_enum)]
        protocol: Protocol,
        #[arg(long, value_parser = parse_duration)]
        timeout: Duration,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| format!("{s:?}: expected a duration like 500ms or 2s"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    if !(0.0..=600.0).contains(&secs) {
        return Err(format!("{s:?}: between 0 and 10m"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn read_input(file: &str) -> anyhow::Result<(String, String)> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok((s, "-".into()))
    } else {
        Ok((std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?, file.to_owned()))
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { name, tcp, udp } => probe::serve(&name, &tcp, &udp),
        Cmd::Enter { netns, cgroup, cmd } => Err(netns::enter_and_exec(&netns, cgroup.as_deref(), &cmd)),
        Cmd::RrServe { port } => probe::rr_serve(port),
        Cmd::Rr { target, count } => {
            if !(1..=1_000_000).contains(&count) {
                bail!("--count {count}: 1 to 1000000");
            }
            println!("{}", serde_json::to_string(&probe::rr(&target, count)?)?);
            Ok(())
        }
        Cmd::Crr { target, count } => {
            if !(1..=100_000).contains(&count) {
                bail!("--count {count}: 1 to 100000");
            }
            println!("{}", serde_json::to_string(&probe::crr(&target, count)?)?);
            Ok(())
        }
        Cmd::ProbeInner { target, protocol, timeout } => {
            let r = probe::probe(&target, protocol, timeout)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Cmd::Up { nodes, routing, nat_ports, runtime, agent } => {
            let lab = Lab::up(&cli.lab, nodes, routing, nat_ports, runtime, agent)?;
            for n in &lab.state.nodes {
                println!("node {} ready: {} pod CIDR {} (netns {})", n.name, n.ip, n.pod_cidr, n.netns);
            }
            println!(
                "external: {} serving tcp+udp/{} (netns {})",
                lab::EXTERNAL_IP,
                lab::EXTERNAL_PORT,
                lab.external_netns()
            );
            Ok(())
        }
        Cmd::Down => {
            lab::validate_lab_name(&cli.lab)?;
            match Lab::open(&cli.lab) {
                Ok(mut lab) => lab.down(),
                Err(_) => {
                    println!("lab {} is not up", cli.lab);
                    Ok(())
                }
            }
        }
        Cmd::Apply { file } => {
            let (text, origin) = read_input(&file)?;
            let mut lab = Lab::open(&cli.lab)?;
            for line in lab.apply(&text, &origin)? {
                println!("{line}");
            }
            Ok(())
        }
        Cmd::Delete { file } => {
            let (text, origin) = read_input(&file)?;
            let mut lab = Lab::open(&cli.lab)?;
            for line in lab.delete(&text, &origin)? {
                println!("{line}");
            }
            Ok(())
        }
        Cmd::Get { what, output } => {
            let lab = Lab::open(&cli.lab)?;
            if matches!(what.as_str(), "services" | "service" | "svc") {
                println!("{}", serde_json::to_string_pretty(&lab.services_json())?);
                return Ok(());
            }
            if what != "pods" && what != "pod" && what != "po" {
                bail!("get {what:?}: `get pods` or `get services`");
            }
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&lab.pods_json())?),
                Output::Table => {
                    println!("{:<16} {:<24} {:<6} IP", "NAMESPACE", "NAME", "NODE");
                    for p in lab.state.pods.values() {
                        let ip = p.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
                        println!("{:<16} {:<24} {:<6} {}", p.namespace, p.name, p.node, ip);
                    }
                }
            }
            Ok(())
        }
        Cmd::Exec { pod, cmd } => {
            let lab = Lab::open(&cli.lab)?;
            let p = lab.pod(&pod)?;
            let mut c = command_in(&cmd[0], &netns::netns_path(&p.netns), Some(&p.cgroup))?;
            c.args(&cmd[1..]);
            let status = c.status().with_context(|| format!("running {:?}", cmd[0]))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::NodeExec { node, cmd } => {
            let lab = Lab::open(&cli.lab)?;
            let n = lab.state.nodes.iter().find(|n| n.name == node).with_context(|| format!("no node {node}"))?;
            let mut c = command_in(&cmd[0], &netns::netns_path(&n.netns), None)?;
            c.args(&cmd[1..]);
            let status = c.status().with_context(|| format!("running {:?}", cmd[0]))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Datapath { node } => {
            let lab = Lab::open(&cli.lab)?;
            match lab.agent_call(&node, &weir_operator_api::Request::Datapath)? {
                weir_operator_api::Response::Datapath(info) => println!("{}", serde_json::to_string_pretty(&info)?),
                other => bail!("agent of {node}: {other:?}"),
            }
            Ok(())
        }
        Cmd::Weir { node, args } => {
            let lab = Lab::open(&cli.lab)?;
            let weir = lab::bin("weir")?;
            Err(Command::new(weir).arg("--socket").arg(lab.socket(&node)).args(args).exec()).context("running weir")
        }
        Cmd::Policy { args } => {
            let lab = Lab::open(&cli.lab)?;
            let node = &lab.state.nodes.first().context("the lab has no nodes")?.name;
            let weir = lab::bin("weir")?;
            Err(Command::new(weir).arg("--socket").arg(lab.socket(node)).arg("policy").args(args).exec())
                .context("running weir")
        }
        Cmd::Observe { args } => {
            // One `weir observe` reading every node's agent: it merges their flows itself, a
            // whole record at a time (one process per node sharing stdout interleaved lines).
            let lab = Lab::open(&cli.lab)?;
            let weir = lab::bin("weir")?;
            let mut c = Command::new(weir);
            for n in &lab.state.nodes {
                c.arg("--socket").arg(lab.socket(&n.name));
            }
            Err(c.arg("observe").args(&args).exec()).context("running weir observe")
        }
        Cmd::Image { out } => {
            let name = weir_e2e::daemonset::Manifests::read(&weir_e2e::daemonset::repository_dir())?.image()?;
            let name = lab::qualified_image(&name);
            lab::build_agent_image(&name, &out)?;
            println!("{name} -> {}", out.display());
            Ok(())
        }
        Cmd::RelaySocket => {
            let lab = Lab::open(&cli.lab)?;
            println!("{}", lab.relay_socket().display());
            Ok(())
        }
        Cmd::ObserverSocket { node } => {
            let lab = Lab::open(&cli.lab)?;
            lab.state.nodes.iter().find(|n| n.name == node).with_context(|| format!("no node {node}"))?;
            println!("{}", lab.observer_socket(&node).display());
            Ok(())
        }
        Cmd::Metrics { node } => {
            let lab = Lab::open(&cli.lab)?;
            let idx = lab.state.nodes.iter().position(|n| n.name == node).with_context(|| format!("no node {node}"))?;
            let mut c = command_in(std::env::current_exe()?, &netns::netns_path(&lab.state.nodes[idx].netns), None)?;
            c.arg("fetch-inner").arg(lab.metrics_addr(&node)?);
            print!("{}", netns::run(&mut c)?);
            Ok(())
        }
        Cmd::FetchInner { addr } => {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect(&addr).with_context(|| format!("connecting to {addr}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
            let mut resp = String::new();
            s.read_to_string(&mut resp)?;
            let (head, body) = resp.split_once("\r\n\r\n").context("no HTTP header in the answer")?;
            if !head.starts_with("HTTP/1.1 200") {
                bail!("metrics: {}", head.lines().next().unwrap_or_default());
            }
            print!("{body}");
            Ok(())
        }
        Cmd::External { cmd } => {
            let lab = Lab::open(&cli.lab)?;
            let mut c = command_in(&cmd[0], &netns::netns_path(&lab.external_netns()), None)?;
            c.args(&cmd[1..]);
            Err(c.exec()).with_context(|| format!("running {:?}", cmd[0]))
        }
        Cmd::Probe { pod, target, protocol, timeout, output } => {
            let lab = Lab::open(&cli.lab)?;
            let p = lab.pod(&pod)?;
            let mut c = command_in(std::env::current_exe()?, &netns::netns_path(&p.netns), Some(&p.cgroup))?;
            c.arg("probe-inner").arg(&target).args([
                "--protocol",
                match protocol {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                },
            ]);
            c.arg("--timeout").arg(format!("{}ms", timeout.as_millis()));
            let out = netns::run(&mut c)?;
            let v: serde_json::Value = serde_json::from_str(out.trim()).context("probe output")?;
            match output {
                Output::Json => println!("{}", out.trim()),
                Output::Table => println!("{}", v["result"].as_str().unwrap_or("timeout")),
            }
            Ok(())
        }
        Cmd::Agent { action, node, nat_ports } => {
            let mut lab = Lab::open(&cli.lab)?;
            if action == "pid" {
                println!(
                    "{}",
                    lab.agent_process(&node)?.with_context(|| format!("the agent of {node} is not running"))?
                );
                return Ok(());
            }
            if nat_ports.is_some() {
                lab.state.nat_ports = nat_ports;
            }
            if action == "stop" || action == "restart" {
                lab.stop_agent(&node)?;
            }
            if action == "kill" {
                lab.kill_agent(&node)?;
            }
            if action == "start" || action == "restart" {
                lab.start_agent(&node)?;
                lab.wait_ready(&node, Duration::from_secs(60))?;
            }
            println!("agent {node}: {action} done");
            Ok(())
        }
    }
}
