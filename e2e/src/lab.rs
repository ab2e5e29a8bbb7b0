//! The lab: an underlay namespace with a bridge, N node namespaces each running a real
//! `weir-agent`, an "external" namespace standing for the world outside the cluster, and pods
//! created through the real `weir-cni` binary exactly as containerd invokes it.
//!
//! Everything lives in namespaces named `wl-<lab>-…` and under `/run/weir-lab/<lab>/`; the root
//! namespace's routes, addresses and firewall are never touched, and no lab namespace has a route
//! to the machine's uplink. Processes are recorded by PID and ended by PID.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use std::os::unix::process::CommandExt as _;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use serde_json::json;
use weir_operator_agent::{
    config::Routing,
    source::{manifest, namespaced, ClusterObject},
};

use crate::{containerd, controllers, cri, image};

mod agent_pod;
pub use agent_pod::{build_image as build_agent_image, qualified as qualified_image};
use weir_tests::netns::{self, command_in, ip, ip_in, netns_path, random_hex, stop_pid};

pub const UNDERLAY_PREFIX: [u8; 3] = [172, 30, 0];
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 200);
pub const EXTERNAL_PORT: u16 = 8000;
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified";
/// Debian's containernetworking-plugins.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// Who makes the lab's pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// The fallback: weir-lab itself makes a namespace and cgroup per pod, invokes `weir-cni` as
    /// containerd does, and runs the containers as processes of the host (any command the pod
    /// spec names).
    Builtin,
    /// containerd's CRI plugin per node, driven as the kubelet drives it; containers run from
    /// the lab's offline image (the test server, or a program it carries).
    #[default]
    Containerd,
}

fn builtin_runtime() -> Runtime {
    Runtime::Builtin
}

/// How each node's agent runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AgentMode {
    /// A process weir-lab starts in the node's namespace with the lab's paths as flags.
    #[default]
    Process,
    /// The DaemonSet of deploy/kubernetes, through the node's containerd, from the weir image
    /// built offline (needs `--runtime containerd`; see lab/agent_pod.rs).
    Image,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    pub cgroup: PathBuf,
    pub container_id: String,
    /// The Pod object's `metadata.uid` (what containerd passes as `K8S_POD_UID`).
    #[serde(default)]
    pub uid: String,
    pub ip: Option<Ipv4Addr>,
    pub pids: Vec<u32>,
    /// The CRI sandbox id (pods made through containerd).
    #[serde(default)]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub routing: Routing,
    pub nodes: Vec<NodeState>,
    pub pods: BTreeMap<String, PodState>,
    /// Namespaces (network) this lab created, in creation order.
    pub netns: Vec<String>,
    pub bpffs_mounted: bool,
    pub pods_created: u64,
    /// The test server standing for the outside world (TCP and UDP EXTERNAL_PORT).
    #[serde(default)]
    pub external_pid: Option<u32>,
    /// The agents' masquerade port range (`--nat-ports`), when not their default.
    #[serde(default)]
    pub nat_ports: Option<String>,
    /// (A lab.json from before runtimes existed made its own pods.)
    #[serde(default = "builtin_runtime")]
    pub runtime: Runtime,
    #[serde(default)]
    pub agent: AgentMode,
    /// The lab's `weir-relay` (the cluster-wide observer over every node's).
    #[serde(default)]
    pub relay_pid: Option<u32>,
}

pub struct Lab {
    pub dir: PathBuf,
    pub state: LabState,
}

/// Removes a lab cgroup. Processes still in it (commands started in a pod with `weir-lab exec`,
/// which the lab does not track by PID) are killed first through `cgroup.kill`: they live in a
/// cgroup the lab made, and a populated cgroup cannot be removed. Missing is not an error.
fn remove_cgroup(path: &Path) -> Result<(), String> {
    if !path.exists() {
        return Ok(());
    }
    let populated = || std::fs::read_to_string(path.join("cgroup.events")).is_ok_and(|e| e.contains("populated 1"));
    if populated() {
        let _ = std::fs::write(path.join("cgroup.kill"), "1");
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while populated() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("removing cgroup {}: {e}", path.display())),
        _ => Ok(()),
    }
}

/// Removes a pod's cgroup (`remove_cgroup`) and, for a pod the runtime made, the `pod<UID>`
/// directory above it, which the runtime's container cgroups have left by then.
fn remove_pod_cgroup(path: &Path) -> Result<(), String> {
    remove_cgroup(path)?;
    match path.parent() {
        Some(parent) if parent.file_name().is_some_and(|n| n.to_string_lossy().starts_with("pod")) => {
            remove_cgroup(parent)
        }
        _ => Ok(()),
    }
}

/// Where each lab agent serves Prometheus metrics, in its node's network namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:9962";

pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("WEIR_BIN_DIR") {
        return Ok(PathBuf::from(dir).join(name));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let p = exe.parent().context("exe dir")?.join(name);
    if !p.exists() {
        bail!("{} not found next to weir-lab; build with `cargo build --bins` or set WEIR_BIN_DIR", p.display());
    }
    Ok(p)
}

/// The static weir-lab-pod the containerd lab's image is made of: `WEIR_LAB_POD_BIN`, or the
/// musl release build in the same target directory as weir-lab.
pub fn pod_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("WEIR_LAB_POD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let target = exe.parent().and_then(Path::parent).context("target dir")?;
    let p = target.join("x86_64-unknown-linux-musl/release/weir-lab-pod");
    if !p.exists() {
        bail!(
            "{} not found: build it with `cargo build --release --target x86_64-unknown-linux-musl -p weir-lab-pod` \
             or set WEIR_LAB_POD_BIN",
            p.display()
        );
    }
    Ok(p)
}

pub fn lab_dir(name: &str) -> PathBuf {
    PathBuf::from("/run/weir-lab").join(name)
}

pub fn validate_lab_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.len() > 12 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        bail!("lab name {name:?}: use 1-12 letters, digits or '-'");
    }
    Ok(())
}

impl Lab {
    pub fn open(name: &str) -> anyhow::Result<Self> {
        let dir = lab_dir(name);
        let text = std::fs::read(dir.join("lab.json"))
            .with_context(|| format!("lab {name:?} is not up (no {}/lab.json)", dir.display()))?;
        Ok(Self { dir, state: serde_json::from_slice(&text).context("lab.json")? })
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let tmp = self.dir.join("lab.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.state)?)?;
        std::fs::rename(&tmp, self.dir.join("lab.json"))?;
        Ok(())
    }

    fn ns(&self, suffix: &str) -> String {
        format!("wl-{}-{suffix}", self.state.name)
    }

    fn cluster_dir(&self) -> PathBuf {
        self.dir.join("cluster")
    }
    fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }
    pub fn socket(&self, node: &str) -> PathBuf {
        match self.state.agent {
            AgentMode::Process => self.node_dir(node).join("agent.sock"),
            AgentMode::Image => self.run_weir(node).join("agent.sock"),
        }
    }
    /// The node agent's Hubble-compatible observer API (gRPC on a unix socket).
    pub fn observer_socket(&self, node: &str) -> PathBuf {
        match self.state.agent {
            AgentMode::Process => self.node_dir(node).join("observer.sock"),
            AgentMode::Image => self.run_weir(node).join("observer.sock"),
        }
    }
    /// Where the node's agent serves Prometheus metrics, in the node's namespace: the lab's
    /// loopback address for a process agent, the DaemonSet's node address and port for an
    /// agent from its image.
    pub fn metrics_addr(&self, node: &str) -> anyhow::Result<String> {
        Ok(match self.state.agent {
            AgentMode::Process => METRICS_ADDR.to_owned(),
            AgentMode::Image => format!("{}:9962", self.state.nodes[self.node_index(node)?].ip),
        })
    }

    pub fn external_netns(&self) -> String {
        self.ns("ext")
    }
    fn cgroup_parent(&self) -> PathBuf {
        PathBuf::from(CGROUP_ROOT).join(format!("weir-lab-{}", self.state.name))
    }

    fn add_netns(&mut self, name: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", name])?;
        self.state.netns.push(name.to_owned());
        self.save()?;
        ip_in(name, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// `weir-lab up`: builds the lab and waits for every agent to be ready.
    pub fn up(
        name: &str,
        nodes: usize,
        routing: Routing,
        nat_ports: Option<String>,
        runtime: Runtime,
        agent: AgentMode,
    ) -> anyhow::Result<Self> {
        validate_lab_name(name)?;
        if agent == AgentMode::Image && runtime != Runtime::Containerd {
            bail!("--agent image runs the agent's DaemonSet through containerd: add --runtime containerd");
        }
        if !(1..=50).contains(&nodes) {
            bail!("--nodes {nodes}: choose 1 to 50");
        }
        let dir = lab_dir(name);
        if dir.join("lab.json").exists() {
            bail!("lab {name:?} is already up; run `weir-lab down` first");
        }
        std::fs::create_dir_all(dir.join("cluster"))?;
        let mut lab = Lab {
            dir,
            state: LabState {
                name: name.to_owned(),
                routing,
                nodes: Vec::new(),
                pods: BTreeMap::new(),
                netns: Vec::new(),
                bpffs_mounted: false,
                pods_created: 0,
                external_pid: None,
                relay_pid: None,
                nat_ports,
                runtime,
                agent,
            },
        };
        lab.save()?;
        if let Err(e) = lab.build(nodes) {
            let _ = lab.down();
            return Err(e.context(format!("bringing up lab {name:?} (rolled back)")));
        }
        Ok(lab)
    }

    fn build(&mut self, nodes: usize) -> anyhow::Result<()> {
        let bpffs = self.dir.join("bpffs");
        std::fs::create_dir_all(&bpffs)?;
        nix::mount::mount(Some("bpf"), &bpffs, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .context("mounting the lab's bpffs")?;
        self.state.bpffs_mounted = true;
        if self.state.agent == AgentMode::Image {
            // The DaemonSet mounts bpffs with Bidirectional propagation, which the runtime
            // allows only from a shared mount (a node's /sys/fs/bpf is one).
            nix::mount::mount(None::<&str>, &bpffs, None::<&str>, nix::mount::MsFlags::MS_SHARED, None::<&str>)
                .context("making the lab's bpffs a shared mount")?;
        }
        std::fs::create_dir_all(self.cgroup_parent()).context("creating the lab's cgroup")?;

        let underlay = self.ns("u");
        self.add_netns(&underlay)?;
        ip_in(&underlay, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(&underlay, &["link", "set", "br0", "up"])?;
        let [a, b, c] = UNDERLAY_PREFIX;
        let mut manifests = String::new();
        for i in 1..=nodes {
            let node = format!("n{i}");
            let netns = self.ns(&node);
            self.add_netns(&netns)?;
            let node_ip = Ipv4Addr::new(a, b, c, 10 + i as u8);
            self.wire(&underlay, &format!("u-{node}"), &netns, &format!("{node_ip}/24"))?;
            let pod_cidr = format!("10.244.{i}.0/24");
            manifests.push_str(&format!(
                "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n  labels: {{kubernetes.io/hostname: {node}}}\n\
                 spec:\n  podCIDR: {pod_cidr}\n  podCIDRs: [{pod_cidr}]\nstatus:\n  addresses:\n  - {{type: InternalIP, address: {node_ip}}}\n  - {{type: Hostname, address: {node}}}\n"
            ));
            std::fs::create_dir_all(self.cgroup_parent().join(&node)).context("creating the node's cgroup")?;
            self.state.nodes.push(NodeState { name: node, netns, ip: node_ip, pod_cidr });
        }
        let ext = self.external_netns();
        self.add_netns(&ext)?;
        self.wire(&underlay, "u-ext", &ext, &format!("{EXTERNAL_IP}/24"))?;
        self.start_external_server()?;
        std::fs::write(self.cluster_dir().join("nodes.yaml"), manifests)?;
        std::fs::write(
            self.cluster_dir().join("namespaces.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {kubernetes.io/metadata.name: default}}\n",
        )?;
        self.save()?;
        let names: Vec<String> = self.state.nodes.iter().map(|n| n.name.clone()).collect();
        let mut images = match self.state.runtime {
            Runtime::Containerd => vec![self.build_pod_image()?],
            Runtime::Builtin => Vec::new(),
        };
        if self.state.agent == AgentMode::Image {
            let path = self.dir.join("weir-image.tar");
            agent_pod::build_image(&agent_pod::qualified(&self.deploy_manifests()?.image()?), &path)?;
            images.push(path);
        }
        for n in &names {
            self.install_cni_bin(n)?;
            if self.state.runtime == Runtime::Containerd {
                self.start_containerd(n, &images)?;
            }
            self.start_agent(n)?;
        }
        for n in &names {
            self.wait_ready(n, Duration::from_secs(60))?;
        }
        self.start_relay()
    }

    /// The lab's relay's unix socket (Hubble's observer for the whole lab).
    pub fn relay_socket(&self) -> PathBuf {
        self.dir.join("relay.sock")
    }

    /// The file the lab's relay finds the nodes in (NAME=unix:///observer.sock per line); read
    /// again by the relay when it changes.
    pub fn relay_peers_file(&self) -> PathBuf {
        self.dir.join("relay-peers")
    }

    /// Starts `weir-relay` over every node's observer socket, in the host's namespace (the
    /// sockets are files), and waits for its socket.
    fn start_relay(&mut self) -> anyhow::Result<()> {
        let peers: String = self
            .state
            .nodes
            .iter()
            .map(|n| format!("{}=unix://{}\n", n.name, self.observer_socket(&n.name).display()))
            .collect();
        std::fs::write(self.relay_peers_file(), peers)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("relay.log"))?;
        let child = Command::new(bin("weir-relay")?)
            .arg("--peers-file")
            .arg(self.relay_peers_file())
            .arg("--socket")
            .arg(self.relay_socket())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting weir-relay")?;
        self.state.relay_pid = Some(child.id());
        self.save()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.relay_socket().exists() {
            if std::time::Instant::now() > deadline {
                bail!("weir-relay did not serve {} within 10 s (see relay.log)", self.relay_socket().display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn start_external_server(&mut self) -> anyhow::Result<()> {
        let port = EXTERNAL_PORT.to_string();
        let mut cmd = command_in(std::env::current_exe()?, &netns_path(&self.external_netns()), None)?;
        cmd.args(["serve", "--name", "external", "--tcp", &port, "--udp", &port])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = cmd.spawn().context("starting the external server")?;
        self.state.external_pid = Some(child.id());
        self.save()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("the external test server did not start");
        }
        Ok(())
    }

    /// A veth from the underlay bridge into `netns` (as eth0) with `addr`.
    fn wire(&self, underlay: &str, port: &str, netns: &str, addr: &str) -> anyhow::Result<()> {
        ip(&["link", "add", port, "netns", underlay, "type", "veth", "peer", "name", "eth0", "netns", netns])?;
        ip_in(underlay, &["link", "set", port, "master", "br0", "up"])?;
        ip_in(netns, &["addr", "add", addr, "dev", "eth0"])?;
        ip_in(netns, &["link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// The node's CNI bin dir with weir-cni in it. The conflist is not the lab's to write: the
    /// agent installs it into [`Self::cni_conf_dir`] once it is ready, as on a real node.
    fn install_cni_bin(&self, node: &str) -> anyhow::Result<()> {
        let nd = self.node_dir(node);
        std::fs::create_dir_all(nd.join("cni-bin"))?;
        // An agent from its image has its init container install weir-cni, as on a cluster.
        if self.state.agent == AgentMode::Process {
            let link = nd.join("cni-bin").join("weir-cni");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(bin("weir-cni")?, &link)?;
        }
        // containerd's CRI sets up every sandbox's loopback with the reference plugin first.
        if self.state.runtime == Runtime::Containerd {
            let link = nd.join("cni-bin").join("loopback");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(Path::new(REFERENCE_PLUGINS).join("loopback"), &link)?;
        }
        Ok(())
    }

    /// The node's CNI config dir (its /etc/cni/net.d).
    pub fn cni_conf_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("net.d")
    }

    pub fn start_agent(&mut self, node: &str) -> anyhow::Result<()> {
        if self.state.agent == AgentMode::Image {
            return self.start_agent_pod(node);
        }
        let nd = self.node_dir(node);
        let idx = self.node_index(node)?;
        if let Some(pid) = self.agent_pid(node) {
            if netns::pid_is(pid, "weir-agent") {
                bail!("the agent of {node} is already running (pid {pid})");
            }
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(nd.join("agent.log"))?;
        let mut cmd = command_in(bin("weir-agent")?, &netns_path(&self.state.nodes[idx].netns), None)?;
        cmd.args(["--node-name", node, "--uplink", "eth0"])
            .arg("--manifests")
            .arg(self.cluster_dir())
            .arg("--state-dir")
            .arg(nd.join("state"))
            .arg("--bpffs")
            .arg(self.dir.join("bpffs").join(node))
            .arg("--socket")
            .arg(self.socket(node))
            .arg("--delete-queue")
            .arg(nd.join("delete-queue"))
            .arg("--cni-conf-dir")
            .arg(self.cni_conf_dir(node))
            .arg("--cni-cache-dir")
            .arg(self.cni_cache_dir(node))
            .arg("--cluster-cidr")
            .arg(CLUSTER_CIDR)
            .arg("--cgroup-root")
            .arg(self.cgroup_parent().join(node))
            // Inside the node's namespace: reachable only from there (`weir-lab metrics NODE`).
            .args(["--metrics-addr", METRICS_ADDR])
            .args(self.state.nat_ports.iter().flat_map(|p| ["--nat-ports", p.as_str()]))
            .arg("--observer-socket")
            .arg(self.observer_socket(node))
            .args([
                "--routing",
                match self.state.routing {
                    Routing::Direct => "direct",
                    Routing::Vxlan => "vxlan",
                },
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        std::fs::create_dir_all(self.dir.join("bpffs").join(node))?;
        let child = cmd.spawn().context("starting weir-agent")?;
        self.set_agent_pid(node, Some(child.id()))
    }

    /// The PID of a node's agent lives in a file of its own (`nodes/<node>/agent.pid`), written
    /// only by `start_agent`, `stop_agent` and `kill_agent`: `lab.json` is read, changed and
    /// written back by every `weir-lab` command, and one running while an agent restarts (pod
    /// churn during a kill test) would otherwise write the old PID back over the new one, and
    /// `down` would leave the new agent running.
    fn agent_pid(&self, node: &str) -> Option<u32> {
        std::fs::read_to_string(self.node_dir(node).join("agent.pid")).ok()?.trim().parse().ok()
    }

    fn set_agent_pid(&self, node: &str, pid: Option<u32>) -> anyhow::Result<()> {
        let path = self.node_dir(node).join("agent.pid");
        match pid {
            Some(pid) => {
                let tmp = path.with_extension("pid.tmp");
                std::fs::write(&tmp, pid.to_string())?;
                std::fs::rename(&tmp, &path)?;
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            },
        }
        Ok(())
    }

    /// The running agent's process id (in the host's PID namespace), whichever way it runs.
    pub fn agent_process(&self, node: &str) -> anyhow::Result<Option<u32>> {
        self.node_index(node)?;
        Ok(match self.state.agent {
            AgentMode::Process => self.agent_pid(node).filter(|p| netns::pid_is(*p, "weir-agent")),
            AgentMode::Image => self.agent_pod_pid(node),
        })
    }

    pub fn stop_agent(&mut self, node: &str) -> anyhow::Result<()> {
        self.node_index(node)?;
        if self.state.agent == AgentMode::Image {
            return self.stop_agent_pod(node);
        }
        if let Some(pid) = self.agent_pid(node) {
            stop_pid(pid, "weir-agent", Duration::from_secs(5));
        }
        self.set_agent_pid(node, None)
    }

    /// SIGKILL to a node's agent, no grace (a crash); waits until it is gone.
    pub fn kill_agent(&mut self, node: &str) -> anyhow::Result<()> {
        self.node_index(node)?;
        if self.state.agent == AgentMode::Image {
            return self.kill_agent_pod(node);
        }
        if let Some(pid) = self.agent_pid(node) {
            if netns::pid_is(pid, "weir-agent") {
                let p = nix::unistd::Pid::from_raw(pid as i32);
                nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL).context("SIGKILL")?;
                stop_pid(pid, "weir-agent", Duration::from_secs(5));
            }
        }
        self.set_agent_pid(node, None)
    }

    fn node_index(&self, node: &str) -> anyhow::Result<usize> {
        self.state
            .nodes
            .iter()
            .position(|n| n.name == node)
            .with_context(|| format!("no node {node:?} in lab {}", self.state.name))
    }

    pub fn agent_call(
        &self,
        node: &str,
        req: &weir_operator_api::Request,
    ) -> anyhow::Result<weir_operator_api::Response> {
        Ok(weir_operator_api::client::call(&self.socket(node), req, Duration::from_secs(30))?)
    }

    pub fn wait_ready(&self, node: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            let ready = match self.state.agent {
                AgentMode::Process => match self.agent_call(node, &weir_operator_api::Request::Status) {
                    Ok(weir_operator_api::Response::Status(s)) if s.ready => Ok(()),
                    Ok(other) => Err(format!("{other:?}")),
                    Err(e) => Err(e.to_string()),
                },
                // The DaemonSet's readiness probe, in the container.
                AgentMode::Image => self.agent_pod_ready(node).unwrap_or_else(|e| Err(format!("{e:#}"))),
            };
            match ready {
                Ok(()) => {
                    // The agent installs its conflist in the same pass that makes it ready.
                    let conf = self.cni_conf_dir(node).join(weir_operator_agent::endpoints::conflist::FILE_NAME);
                    if conf.exists() {
                        return Ok(());
                    }
                    last = format!("ready, but no {}", conf.display());
                }
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.node_dir(node).join("agent.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
        bail!("agent of {node} not ready after {timeout:?}: {last}\nagent.log (tail):\n{}", tail.join("\n"))
    }

    /// `weir-lab down`: removes everything the lab made. Safe to run twice.
    pub fn down(&mut self) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        if self.state.runtime == Runtime::Containerd {
            // Pods first, through the runtime (it calls DEL while the agents still run), then
            // each containerd; its shims die with its cgroup below.
            let keys: Vec<String> = self.state.pods.keys().cloned().collect();
            for k in keys {
                if let Err(e) = self.delete_pod(&k) {
                    errors.push(format!("{e:#}"));
                }
            }
            let nodes: Vec<String> = self.state.nodes.iter().map(|n| n.name.clone()).collect();
            for n in &nodes {
                if self.state.agent == AgentMode::Image {
                    if let Err(e) = self.remove_agent_pod(n) {
                        errors.push(format!("removing the agent pod of {n}: {e:#}"));
                    }
                }
                self.containerd(n).stop();
            }
        }
        for p in self.state.pods.values() {
            for pid in &p.pids {
                stop_pid(*pid, "", Duration::from_secs(2));
            }
        }
        if let Some(pid) = self.state.external_pid.take() {
            stop_pid(pid, "serve", Duration::from_secs(2));
        }
        if let Some(pid) = self.state.relay_pid.take() {
            stop_pid(pid, "weir-relay", Duration::from_secs(2));
        }
        let nodes: Vec<String> = self.state.nodes.iter().map(|n| n.name.clone()).collect();
        for n in &nodes {
            if let Some(pid) = self.agent_pid(n) {
                stop_pid(pid, "weir-agent", Duration::from_secs(5));
            }
        }
        for p in self.state.pods.values() {
            errors.extend(remove_pod_cgroup(&p.cgroup).err());
        }
        for n in &self.state.nodes {
            errors.extend(remove_cgroup(&self.cgroup_parent().join(format!("{}-containerd", n.name))).err());
            errors.extend(remove_cgroup(&self.cgroup_parent().join(&n.name)).err());
        }
        errors.extend(remove_cgroup(&self.cgroup_parent()).err());
        if self.state.runtime == Runtime::Containerd {
            // runc makes the containers' cgroups in the v1 hierarchies too (hybrid mode).
            let name = format!("weir-lab-{}", self.state.name);
            for h in containerd::v1_hierarchies() {
                errors.extend(containerd::remove_tree(&h.join(&name)).err());
            }
        }
        for ns in self.state.netns.iter().rev() {
            if netns_path(ns).exists() {
                if let Err(e) = ip(&["netns", "del", ns]) {
                    errors.push(e.to_string());
                }
            }
        }
        for p in self.state.pods.values() {
            if netns_path(&p.netns).exists() {
                if let Err(e) = ip(&["netns", "del", &p.netns]) {
                    errors.push(e.to_string());
                }
            }
        }
        if self.state.bpffs_mounted {
            if let Err(e) = nix::mount::umount2(&self.dir.join("bpffs"), nix::mount::MntFlags::MNT_DETACH) {
                errors.push(format!("unmounting bpffs: {e}"));
            }
        }
        if errors.is_empty() {
            std::fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))?;
            // The parent goes too when this was the last lab.
            let _ = std::fs::remove_dir(lab_dir(""));
            Ok(())
        } else {
            self.save()?;
            bail!("lab {} partly removed: {}", self.state.name, errors.join("; "))
        }
    }

    fn pod_manifest_path(&self, ns: &str, name: &str) -> PathBuf {
        self.cluster_dir().join(format!("pod-{ns}-{name}.yaml"))
    }

    /// `weir-lab apply`: validates every document first (nothing is written when one is bad),
    /// then creates or updates namespaces and pods.
    pub fn apply(&mut self, text: &str, origin: &str) -> anyhow::Result<Vec<String>> {
        let objs = manifest::parse(text, origin)?;
        let mut done = Vec::new();
        for obj in objs {
            match obj {
                ClusterObject::Namespace(mut n) => {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    n.metadata
                        .labels
                        .get_or_insert_with(Default::default)
                        .insert("kubernetes.io/metadata.name".into(), name.clone());
                    // k8s-openapi writes apiVersion and kind itself.
                    let text = serde_saphyr::to_string(&n)?;
                    write_atomic(&self.cluster_dir().join(format!("ns-{name}.yaml")), &text)?;
                    done.push(format!("namespace/{name} configured"));
                }
                ClusterObject::Pod(p) => done.push(self.apply_pod(*p)?),
                ClusterObject::Service(svc) => done.push(self.apply_service(*svc)?),
                ClusterObject::EndpointSlice(es) => {
                    done.push(self.write_as_is("eps", "endpointslice", &es.metadata, &es)?);
                }
                // Handed to the agents as is: they validate, compile and enforce them.
                ClusterObject::NetworkPolicy(np) => {
                    done.push(self.write_as_is("netpol", "networkpolicy", &np.metadata, &np)?);
                }
                // The lab's own Nodes are its nodes (weir-lab up --nodes N); any other Node is
                // written as is: a stand-in for a broken or hostile Node object that no node
                // runs behind.
                ClusterObject::Node(n) => {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    if self.state.nodes.iter().any(|own| own.name == name) {
                        bail!("{origin}: Node {name} belongs to the lab (weir-lab up --nodes N)");
                    }
                    write_atomic(
                        &self.cluster_dir().join(format!("node-extra-{name}.yaml")),
                        &serde_saphyr::to_string(&n)?,
                    )?;
                    done.push(format!("node/{name} configured"));
                }
                ClusterObject::Other { kind, name } => {
                    done.push(format!("{}/{name} skipped: the lab does not handle {kind} yet", kind.to_lowercase()));
                }
            }
        }
        self.sync_endpoint_slices()?;
        Ok(done)
    }

    /// The cluster state as the agents read it.
    /// Writes a namespaced object to the cluster directory unchanged (`PREFIX-NS-NAME.yaml`).
    fn write_as_is(
        &self,
        prefix: &str,
        kind: &str,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        obj: &impl Serialize,
    ) -> anyhow::Result<String> {
        let (ns, name) = namespaced(meta);
        write_atomic(&self.cluster_dir().join(format!("{prefix}-{ns}-{name}.yaml")), &serde_saphyr::to_string(obj)?)?;
        Ok(format!("{kind}/{ns}/{name} configured"))
    }

    /// The cluster directory as the agents read it.
    fn cluster_state(&self) -> manifest::DirState {
        let mut dir = manifest::DirState::default();
        for e in dir.refresh(&self.cluster_dir()) {
            eprintln!("warning: {e}");
        }
        dir
    }

    fn cluster(&self) -> weir_operator_agent::source::ClusterSnapshot {
        self.cluster_state().snapshot()
    }

    /// Creates or updates a Service, allocating its ClusterIP and NodePorts like the API server
    /// (an existing Service keeps what it was given).
    fn apply_service(&mut self, mut svc: k8s_openapi::api::core::v1::Service) -> anyhow::Result<String> {
        let key = namespaced(&svc.metadata);
        svc.metadata.namespace = Some(key.0.clone());
        let cluster = self.cluster();
        if let Some(old) = cluster.services.get(&key).and_then(|s| s.spec.clone()) {
            let spec = svc.spec.get_or_insert_with(Default::default);
            if spec.cluster_ip.is_none() {
                spec.cluster_ip = old.cluster_ip.clone();
                spec.cluster_ips = old.cluster_ips.clone();
            }
            for p in spec.ports.iter_mut().flatten() {
                if p.node_port.is_none() {
                    p.node_port = old
                        .ports
                        .iter()
                        .flatten()
                        .find(|o| o.name == p.name && o.node_port.is_some())
                        .and_then(|o| o.node_port);
                }
            }
        }
        let others = cluster.services.iter().filter(|(k, _)| **k != key).filter_map(|(_, s)| s.spec.clone());
        let (mut ips, mut ports) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
        for spec in others {
            if let Some(ip) = spec.cluster_ip.as_deref().and_then(|i| i.parse().ok()) {
                ips.insert(ip);
            }
            ports.extend(spec.ports.iter().flatten().filter_map(|p| p.node_port));
        }
        controllers::allocate(&mut svc, &ips, &ports).with_context(|| format!("service {}/{}", key.0, key.1))?;
        let ip = svc.spec.as_ref().and_then(|s| s.cluster_ip.clone()).unwrap_or_else(|| "None".into());
        write_atomic(
            &self.cluster_dir().join(format!("svc-{}-{}.yaml", key.0, key.1)),
            &serde_saphyr::to_string(&svc)?,
        )?;
        Ok(format!("service/{}/{} configured (clusterIP {ip})", key.0, key.1))
    }

    /// Rewrites the EndpointSlices of every Service with a selector from the pods' state.
    pub fn sync_endpoint_slices(&self) -> anyhow::Result<()> {
        let dir = self.cluster_state();
        // The lab's endpoint controller reads Pods whole (annotations, container ports), not
        // as the agent's snapshot keeps them.
        let pods = dir
            .objects()
            .filter_map(|o| match o {
                ClusterObject::Pod(p) => Some((namespaced(&p.metadata), std::sync::Arc::new((**p).clone()))),
                _ => None,
            })
            .collect();
        let slices = controllers::endpoint_slices(&dir.snapshot().services, &pods);
        let path = self.cluster_dir().join("endpointslices-lab.yaml");
        if slices.is_empty() {
            let _ = std::fs::remove_file(&path);
            return Ok(());
        }
        let mut text = String::new();
        for s in &slices {
            text.push_str("---\n");
            text.push_str(&serde_saphyr::to_string(s)?);
        }
        write_atomic(&path, &text)
    }

    pub fn services_json(&self) -> serde_json::Value {
        let cluster = self.cluster();
        serde_json::Value::Array(
            cluster
                .services
                .iter()
                .map(|((ns, name), s)| {
                    let spec = s.spec.clone().unwrap_or_default();
                    json!({"namespace": ns, "name": name, "type": spec.type_.unwrap_or_else(|| "ClusterIP".into()),
                           "clusterIP": spec.cluster_ip, "ports": spec.ports})
                })
                .collect(),
        )
    }

    fn apply_pod(&mut self, mut pod: k8s_openapi::api::core::v1::Pod) -> anyhow::Result<String> {
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        pod.metadata.namespace = Some(ns.clone());
        let key = format!("{ns}/{name}");
        if let Some(existing) = self.state.pods.get(&key).cloned() {
            // Re-apply: labels and spec change in the cluster state; the sandbox stays.
            let spec = pod.spec.get_or_insert_with(Default::default);
            spec.node_name = Some(existing.node.clone());
            self.write_pod(&pod, &existing)?;
            return Ok(format!("pod/{key} configured"));
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let node = match &spec.node_name {
            Some(n) => {
                self.node_index(n)?;
                n.clone()
            }
            None => self.state.nodes[(self.state.pods_created as usize) % self.state.nodes.len()].name.clone(),
        };
        self.state.pods_created += 1;
        let cid = random_hex();
        let u = random_hex();
        let uid = format!("{}-{}-{}-{}-{}", &u[..8], &u[8..12], &u[12..16], &u[16..20], &u[20..32]);
        let netns = format!("wl-{}-p{}", self.state.name, &cid[..10]);
        let cgroup = self.cgroup_parent().join(&node).join(format!("{ns}_{name}_{}", &cid[..8]));
        let mut st = PodState {
            namespace: ns.clone(),
            name: name.clone(),
            node: node.clone(),
            netns: netns.clone(),
            cgroup: cgroup.clone(),
            container_id: cid,
            uid,
            ip: None,
            pids: Vec::new(),
            sandbox: None,
        };
        let builtin = self.state.runtime == Runtime::Builtin;
        if builtin {
            ip(&["netns", "add", &netns])?;
        }
        self.state.pods.insert(key.clone(), st.clone());
        self.save()?;
        // As on a cluster: the Pod object (scheduled, Pending) exists before the runtime asks
        // for its network, and the agent waits for it (its labels decide its policy).
        let spec = pod.spec.get_or_insert_with(Default::default);
        spec.node_name = Some(node.clone());
        self.write_pod(&pod, &st)?;
        let created = (|| -> anyhow::Result<()> {
            if !builtin {
                return self.create_with_cri(&pod, &mut st);
            }
            ip_in(&netns, &["link", "set", "lo", "up"])?;
            std::fs::create_dir_all(&cgroup).with_context(|| format!("creating cgroup {}", cgroup.display()))?;
            let result = self.cni(&st, "ADD")?;
            let addr = result["ips"][0]["address"].as_str().context("CNI result without ips[0].address")?;
            let ip4: Ipv4Addr = addr.split('/').next().unwrap_or_default().parse().context("CNI result address")?;
            st.ip = Some(ip4);
            st.pids = self.start_containers(&pod, &st)?;
            Ok(())
        })();
        self.state.pods.insert(key.clone(), st.clone());
        self.save()?;
        if let Err(e) = created {
            let _ = self.delete_pod(&key);
            return Err(e.context(format!("creating pod {key}")));
        }
        self.write_pod(&pod, &st)?;
        Ok(format!("pod/{key} created on {node} with {}", st.ip.map(|i| i.to_string()).unwrap_or_default()))
    }

    /// Writes the pod into the cluster state with its status, as kubelet reports it: Pending
    /// until its sandbox has an address, then Running with it.
    fn write_pod(&self, pod: &k8s_openapi::api::core::v1::Pod, st: &PodState) -> anyhow::Result<()> {
        let mut pod = pod.clone();
        if !st.uid.is_empty() {
            pod.metadata.uid = Some(st.uid.clone());
        }
        let node_ip = self.state.nodes.iter().find(|n| n.name == st.node).map(|n| n.ip.to_string());
        let ip = st.ip.map(|i| i.to_string());
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some(if ip.is_some() { "Running" } else { "Pending" }.into()),
            pod_ip: ip.clone(),
            pod_ips: ip.map(|i| vec![k8s_openapi::api::core::v1::PodIP { ip: i }]),
            host_ip: node_ip,
            ..Default::default()
        });
        let text = serde_saphyr::to_string(&pod)?;
        write_atomic(&self.pod_manifest_path(&st.namespace, &st.name), &text)
    }

    /// Invokes the real weir-cni in the node's namespace, as containerd does.
    pub fn cni(&self, st: &PodState, command: &str) -> anyhow::Result<serde_json::Value> {
        let node = &self.state.nodes[self.node_index(&st.node)?];
        let nd = self.node_dir(&st.node);
        let conflist: serde_json::Value = serde_json::from_slice(&std::fs::read(
            self.cni_conf_dir(&st.node).join(weir_operator_agent::endpoints::conflist::FILE_NAME),
        )?)?;
        // libcni hands each plugin its own config with the list's name and version injected.
        let mut conf = conflist["plugins"][0].clone();
        conf["name"] = conflist["name"].clone();
        // As libcni 1.2+ does: the highest version of `cniVersions` (all known here).
        conf["cniVersion"] =
            conflist["cniVersions"].as_array().and_then(|v| v.last()).unwrap_or(&conflist["cniVersion"]).clone();
        let mut cmd = command_in(nd.join("cni-bin").join("weir-cni"), &netns_path(&node.netns), None)?;
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &st.container_id)
            .env("CNI_NETNS", netns_path(&st.netns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", nd.join("cni-bin"))
            .env(
                "CNI_ARGS",
                format!(
                    "K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={};IgnoreUnknown=1",
                    st.namespace,
                    st.name,
                    st.container_id,
                    if st.uid.is_empty() { &st.container_id } else { &st.uid }
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running weir-cni")?;
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().context("cni stdin")?;
            stdin.write_all(&serde_json::to_vec(&conf)?)?;
        }
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("weir-cni {command} failed: {}{}", text.trim(), String::from_utf8_lossy(&out.stderr).trim());
        }
        // libcni's result cache, as containerd keeps it: written after ADD, removed after DEL.
        let args: Vec<[String; 2]> = [
            ("K8S_POD_NAMESPACE", st.namespace.as_str()),
            ("K8S_POD_NAME", st.name.as_str()),
            ("K8S_POD_UID", if st.uid.is_empty() { st.container_id.as_str() } else { st.uid.as_str() }),
        ]
        .iter()
        .map(|(k, v)| [(*k).to_owned(), (*v).to_owned()])
        .collect();
        let net = conflist["name"].as_str().unwrap_or("weir");
        let cache = self.cni_cache_dir(&st.node).join(format!("{net}-{}-eth0", st.container_id));
        let result: serde_json::Value =
            if text.trim().is_empty() { serde_json::Value::Null } else { serde_json::from_str(&text)? };
        match command {
            "ADD" => {
                std::fs::create_dir_all(self.cni_cache_dir(&st.node))?;
                let entry = serde_json::json!({
                    "kind": "cniCacheV1", "containerId": st.container_id, "ifName": "eth0",
                    "networkName": net, "cniArgs": args, "result": result,
                });
                write_atomic(&cache, &serde_json::to_string(&entry)?)?;
            }
            "DEL" => {
                let _ = std::fs::remove_file(&cache);
            }
            _ => {}
        }
        Ok(result)
    }

    /// The node's libcni result cache (the agent reads it to rebuild a lost endpoint store).
    pub fn cni_cache_dir(&self, node: &str) -> PathBuf {
        self.containerd(node).var_lib_cni().join("results")
    }

    /// The node's containerd (its files; running only in a containerd lab).
    pub fn containerd(&self, node: &str) -> containerd::Node {
        containerd::Node { dir: self.node_dir(node).join("containerd") }
    }

    /// The image every containerd pod runs: the static weir-lab-pod (sandbox and test server),
    /// and the host programs a lab container may name as its command ([`cri::IMAGE_TOOLS`], with
    /// the shared libraries they need), as an OCI layout tarball in the lab's directory.
    fn build_pod_image(&self) -> anyhow::Result<PathBuf> {
        let binary = pod_binary()?;
        let mut tools: Vec<(String, PathBuf)> = Vec::new();
        for (tool, path) in cri::IMAGE_TOOLS {
            let path = Path::new(path);
            if !path.exists() {
                bail!(
                    "{} not found: the lab's pod image carries {tool} (scripts/setup.sh installs it)",
                    path.display()
                );
            }
            tools.push((path.display().to_string().trim_start_matches('/').to_owned(), path.to_owned()));
        }
        let extra: Vec<(String, PathBuf)> =
            tools.iter().cloned().chain(image::libraries_of(tools.iter().map(|(_, p)| p.as_path()))?).collect();
        let mut files = vec![image::File { path: "weir-lab-pod", source: &binary, mode: 0o755 }];
        files.extend(extra.iter().map(|(p, s)| image::File { path: p.as_str(), source: s.as_path(), mode: 0o755 }));
        let image = image::Image {
            name: containerd::POD_IMAGE,
            files,
            links: Vec::new(),
            entrypoint: vec!["/weir-lab-pod"],
            cmd: vec!["pause"],
        };
        let path = self.dir.join("pod-image.tar");
        std::fs::write(&path, image::layout(&image)?)?;
        Ok(path)
    }

    fn start_containerd(&mut self, node: &str, images: &[PathBuf]) -> anyhow::Result<()> {
        let n = &self.state.nodes[self.node_index(node)?];
        let cgroup = self.cgroup_parent().join(format!("{node}-containerd"));
        std::fs::create_dir_all(&cgroup)?;
        let rt = self.containerd(node);
        // weir-cni, run by containerd, finds an agent from its image at the conflist's
        // /run/weir paths, as on a node: the node's /run/weir is bound there.
        let run_weir = (self.state.agent == AgentMode::Image).then(|| self.run_weir(node));
        if let Some(d) = &run_weir {
            std::fs::create_dir_all(d)?;
        }
        rt.start(
            &netns_path(&n.netns),
            &cgroup,
            &self.node_dir(node).join("cni-bin"),
            &self.cni_conf_dir(node),
            run_weir.as_deref(),
        )?;
        images.iter().try_for_each(|i| rt.import(i))
    }

    fn cri(&self, node: &str) -> anyhow::Result<cri::Cri> {
        cri::Cri::connect(&self.containerd(node).socket(), Duration::from_secs(10))
    }

    /// The pod's cgroup parent, relative to the cgroup root (the node's cgroup: the agent's
    /// socket-level Service translation is attached there).
    fn cri_cgroup_parent(&self, node: &str) -> String {
        format!("/weir-lab-{}/{node}", self.state.name)
    }

    /// A workload pod's cgroup parent: `pod<UID>` below the node's, as the kubelet's cgroupfs
    /// driver lays pods out (the exec audit finds a process's pod by it).
    fn cri_pod_cgroup_parent(&self, node: &str, uid: &str) -> String {
        format!("{}/pod{uid}", self.cri_cgroup_parent(node))
    }

    /// Makes the pod as the kubelet does: RunPodSandbox, then each container; the address from
    /// PodSandboxStatus. Fills `st` (sandbox, netns, cgroup, ip).
    fn create_with_cri(&self, pod: &k8s_openapi::api::core::v1::Pod, st: &mut PodState) -> anyhow::Result<()> {
        let cri = self.cri(&st.node)?;
        let logs = self.dir.join("pods").join(format!("{}_{}_{}", st.namespace, st.name, st.uid));
        std::fs::create_dir_all(&logs)?;
        let config = cri::sandbox_config(pod, &st.uid, &self.cri_pod_cgroup_parent(&st.node, &st.uid), &logs, &[])?;
        let id = match cri.run_pod_sandbox(config.clone()) {
            Ok(id) => id,
            Err(e) => {
                // Whatever the runtime kept of a failed sandbox goes, as the kubelet removes it.
                for id in cri.sandboxes_labelled("io.kubernetes.pod.uid", &st.uid).unwrap_or_default() {
                    let _ = cri.remove_sandbox(&id);
                }
                return Err(e.context("RunPodSandbox"));
            }
        };
        st.sandbox = Some(id.clone());
        let sandbox = cri.sandbox(&id)?;
        st.ip = sandbox.ip;
        st.netns = sandbox
            .netns
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .with_context(|| format!("sandbox {id}: no network namespace path"))?
            .to_owned();
        st.cgroup = PathBuf::from(CGROUP_ROOT)
            .join(self.cri_pod_cgroup_parent(&st.node, &st.uid).trim_start_matches('/'))
            .join(&id);
        st.pids = sandbox.pid.into_iter().collect();
        for c in pod.spec.as_ref().map(|s| s.containers.clone()).unwrap_or_default() {
            let cc = cri::container_config(&st.name, &c, containerd::POD_IMAGE)?;
            let log = logs.join(&cc.log_path);
            let tool = !cc.command.is_empty();
            cri.start_container(&id, &config, cc)?;
            if tool {
                continue;
            }
            // The test server says `ready` once its ports are bound (CRI log line: TIME stdout F ready).
            let deadline = Instant::now() + Duration::from_secs(10);
            while !std::fs::read_to_string(&log).is_ok_and(|t| t.lines().any(|l| l.ends_with(" ready"))) {
                if Instant::now() > deadline {
                    bail!("container {}: the test server did not start (see {})", c.name, log.display());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    fn start_containers(&self, pod: &k8s_openapi::api::core::v1::Pod, st: &PodState) -> anyhow::Result<Vec<u32>> {
        let mut pids = Vec::new();
        let log_dir = self.dir.join("pods");
        std::fs::create_dir_all(&log_dir)?;
        for c in pod.spec.as_ref().map(|s| s.containers.clone()).unwrap_or_default() {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_dir.join(format!("{}_{}_{}.log", st.namespace, st.name, c.name)))?;
            let command: Vec<String> =
                c.command.clone().unwrap_or_default().into_iter().chain(c.args.clone().unwrap_or_default()).collect();
            let (netns, cgroup) = (netns_path(&st.netns), Some(st.cgroup.as_path()));
            let mut cmd;
            if command.is_empty() {
                cmd = command_in(std::env::current_exe()?, &netns, cgroup)?;
                cmd.args(cri::serve_args(&st.name, &c)?);
                cmd.stdout(Stdio::piped());
            } else {
                cmd = command_in(&command[0], &netns, cgroup)?;
                cmd.args(&command[1..]).stdout(log.try_clone()?);
            }
            cmd.stdin(Stdio::null()).stderr(log).process_group(0);
            let mut child = cmd.spawn().with_context(|| format!("starting container {}", c.name))?;
            pids.push(child.id());
            if let Some(out) = child.stdout.take() {
                let mut line = String::new();
                BufReader::new(out).read_line(&mut line)?;
                if line.trim() != "ready" {
                    bail!("container {}: the test server did not start (see {}/pods)", c.name, self.dir.display());
                }
            }
        }
        Ok(pids)
    }

    /// Deletes a pod: stops its processes, CNI DEL, removes its namespace, cgroup and manifest.
    pub fn delete_pod(&mut self, key: &str) -> anyhow::Result<()> {
        let st = self.state.pods.get(key).cloned().with_context(|| format!("no pod {key}"))?;
        if self.state.runtime == Runtime::Containerd {
            // The runtime ends the containers, calls DEL and removes the namespace and cgroups.
            // A pod whose sandbox was never made has nothing there.
            if let Some(id) = &st.sandbox {
                self.cri(&st.node)?.remove_sandbox(id).with_context(|| format!("deleting pod {key}"))?;
            }
            // Commands `weir-lab exec` started in the pod end with it (as a `kubectl exec`
            // process ends with its container): they are in the pod's cgroup, not the runtime's.
            remove_pod_cgroup(&st.cgroup).map_err(|e| anyhow::anyhow!("deleting pod {key}: {e}"))?;
            let _ = std::fs::remove_file(self.pod_manifest_path(&st.namespace, &st.name));
            self.state.pods.remove(key);
            return self.save();
        }
        for pid in &st.pids {
            stop_pid(*pid, "", Duration::from_secs(2));
        }
        let mut errors = Vec::new();
        // As the runtime does, DEL is retried until it succeeds (a few times here).
        let mut del = self.cni(&st, "DEL");
        for _ in 0..3 {
            if del.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
            del = self.cni(&st, "DEL");
        }
        if let Err(e) = del {
            errors.push(e.to_string());
        }
        if netns_path(&st.netns).exists() {
            if let Err(e) = ip(&["netns", "del", &st.netns]) {
                errors.push(e.to_string());
            }
        }
        errors.extend(remove_cgroup(&st.cgroup).err());
        let _ = std::fs::remove_file(self.pod_manifest_path(&st.namespace, &st.name));
        self.state.pods.remove(key);
        self.save()?;
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("deleting pod {key}: {}", errors.join("; "))
        }
    }

    pub fn delete(&mut self, text: &str, origin: &str) -> anyhow::Result<Vec<String>> {
        let objs = manifest::parse(text, origin)?;
        let mut done = Vec::new();
        for obj in objs {
            match obj {
                ClusterObject::Pod(p) => {
                    let key = format!(
                        "{}/{}",
                        p.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
                        p.metadata.name.clone().unwrap_or_default()
                    );
                    if self.state.pods.contains_key(&key) {
                        self.delete_pod(&key)?;
                        done.push(format!("pod/{key} deleted"));
                    }
                }
                ClusterObject::Namespace(n) => {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    let pods: Vec<String> =
                        self.state.pods.keys().filter(|k| k.starts_with(&format!("{name}/"))).cloned().collect();
                    for k in pods {
                        self.delete_pod(&k)?;
                        done.push(format!("pod/{k} deleted"));
                    }
                    let _ = std::fs::remove_file(self.cluster_dir().join(format!("ns-{name}.yaml")));
                    done.push(format!("namespace/{name} deleted"));
                }
                ClusterObject::Node(n) => {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    if self.state.nodes.iter().any(|own| own.name == name) {
                        bail!("{origin}: Node {name} belongs to the lab");
                    }
                    let _ = std::fs::remove_file(self.cluster_dir().join(format!("node-extra-{name}.yaml")));
                    done.push(format!("node/{name} deleted"));
                }
                ClusterObject::Service(svc) => {
                    let (ns, name) = namespaced(&svc.metadata);
                    let _ = std::fs::remove_file(self.cluster_dir().join(format!("svc-{ns}-{name}.yaml")));
                    done.push(format!("service/{ns}/{name} deleted"));
                }
                ClusterObject::EndpointSlice(es) => {
                    let (ns, name) = namespaced(&es.metadata);
                    let _ = std::fs::remove_file(self.cluster_dir().join(format!("eps-{ns}-{name}.yaml")));
                    done.push(format!("endpointslice/{ns}/{name} deleted"));
                }
                ClusterObject::NetworkPolicy(np) => {
                    let (ns, name) = namespaced(&np.metadata);
                    let _ = std::fs::remove_file(self.cluster_dir().join(format!("netpol-{ns}-{name}.yaml")));
                    done.push(format!("networkpolicy/{ns}/{name} deleted"));
                }
                ClusterObject::Other { kind, name } => {
                    done.push(format!("{}/{name} skipped: the lab does not handle {kind} yet", kind.to_lowercase()));
                }
            }
        }
        self.sync_endpoint_slices()?;
        Ok(done)
    }

    pub fn pod(&self, target: &str) -> anyhow::Result<&PodState> {
        let key = if target.contains('/') { target.to_owned() } else { format!("default/{target}") };
        self.state.pods.get(&key).with_context(|| format!("no pod {key} in lab {}", self.state.name))
    }

    pub fn pods_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.state
                .pods
                .values()
                .map(|p| json!({"namespace": p.namespace, "name": p.name, "node": p.node, "ip": p.ip}))
                .collect(),
        )
    }
}

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    // Hidden while written: the agents ignore dot-files.
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("x")));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
