//! `weir-lab up --agent image`: each node's agent runs as the DaemonSet in `deploy/kubernetes`
//! runs it on a cluster — a pod of its own through the node's containerd, from the weir image
//! (built offline from the agent's binaries), with the install-cni init container first, then
//! the agent container with the template's environment, mounts, privilege and readiness probe
//! (translated by `daemonset.rs`, read from the manifests at every start so they cannot drift).
//!
//! What stands in for what a cluster node has:
//! - the DaemonSet's hostPaths are directories of the lab node (`host_path`); /run/weir is also
//!   bind-mounted there in containerd's mount namespace, so weir-cni, run by containerd, finds
//!   the agent's socket at the conflist's path as on a node;
//! - the API server: the ConfigMap's API address keys are removed and the agent reads the lab's
//!   manifest directory (mounted read-only), the lab's only substitute in this mode;
//! - the ConfigMap keys for the lab's topology (routing, cluster CIDR, masquerade ports) are set
//!   as a cluster admin would set them;
//! - the kubelet: `start_agent` (init containers once per sandbox, then the agent container,
//!   attempt by attempt), `wait_ready` (the readiness probe's command through ExecSync, polled
//!   faster than its period), `kill_agent` (SIGKILL to the container's process, a crash).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use k8s_cri::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount, MountPropagation, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata,
};

use super::{Lab, Routing, CLUSTER_CIDR};
use crate::{daemonset, image};

/// Where the agent container reads the lab's manifests (the API server's stand-in).
const MANIFESTS_IN_CONTAINER: &str = "/var/lib/weir-lab/cluster";

/// The directory holding the agent image's binaries: `WEIR_IMAGE_BIN_DIR` (e.g. the static musl
/// release build `scripts/image.sh` makes), or the binaries next to weir-lab.
fn image_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(d) = std::env::var("WEIR_IMAGE_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    Ok(super::bin("weir-agent")?.parent().context("bin dir")?.to_owned())
}

/// The weir image as deploy/Dockerfile lays it out: weir-agent, weir-cni and weir in
/// /usr/local/bin, busybox (Debian's static build) for the init container's sh, cp and mv.
/// Dynamically linked binaries (the test build) bring the libraries they need, so the image
/// runs exactly the binaries under test.
pub fn build_image(name: &str, out: &Path) -> anyhow::Result<()> {
    let dir = image_bin_dir()?;
    let bins: Vec<(String, PathBuf)> =
        ["weir-agent", "weir-cni", "weir"].iter().map(|b| (format!("usr/local/bin/{b}"), dir.join(b))).collect();
    let busybox = PathBuf::from("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox not found: install Debian's busybox-static (scripts/setup.sh does)");
    }
    for (_, b) in &bins {
        if !b.exists() {
            bail!("{} not found (build the binaries, or set WEIR_IMAGE_BIN_DIR)", b.display());
        }
    }
    if !image::shared_libraries(&busybox)?.is_empty() {
        bail!("/bin/busybox is dynamically linked: the image needs busybox-static");
    }
    let lib_paths = image::libraries_of(bins.iter().map(|(_, b)| b.as_path()))?;
    let mut files: Vec<image::File<'_>> =
        bins.iter().map(|(p, s)| image::File { path: p.as_str(), source: s.as_path(), mode: 0o755 }).collect();
    files.push(image::File { path: "bin/busybox", source: &busybox, mode: 0o755 });
    files.extend(lib_paths.iter().map(|(p, s)| image::File { path: p.as_str(), source: s.as_path(), mode: 0o755 }));
    let image = image::Image {
        name,
        files,
        links: ["sh", "cp", "mv", "cat", "ls"].iter().map(|a| (format!("bin/{a}"), "busybox".to_owned())).collect(),
        entrypoint: vec!["/usr/local/bin/weir-agent"],
        cmd: vec![],
    };
    std::fs::write(out, image::layout(&image)?).with_context(|| format!("writing {}", out.display()))
}

/// The fully qualified name containerd stores an image under (`weir:dev` →
/// `docker.io/library/weir:dev`), so the CRI finds the DaemonSet's short reference.
pub fn qualified(reference: &str) -> String {
    let first = reference.split('/').next().unwrap_or_default();
    if reference.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost") {
        reference.to_owned()
    } else if reference.contains('/') {
        format!("docker.io/{reference}")
    } else {
        format!("docker.io/library/{reference}")
    }
}

impl Lab {
    /// The manifests this lab's agents run from (`WEIR_DEPLOY_DIR`, or the repository's).
    pub(super) fn deploy_manifests(&self) -> anyhow::Result<daemonset::Manifests> {
        let dir = std::env::var_os("WEIR_DEPLOY_DIR").map_or_else(daemonset::repository_dir, PathBuf::from);
        daemonset::Manifests::read(&dir)
    }

    /// The node's /run/weir (agent socket, observer socket, delete queue).
    pub(super) fn run_weir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("run-weir")
    }

    /// A DaemonSet hostPath on this lab node.
    fn host_path(&self, node: &str, path: &str) -> anyhow::Result<PathBuf> {
        let nd = self.node_dir(node);
        Ok(match path {
            "/opt/cni/bin" => nd.join("cni-bin"),
            "/etc/cni/net.d" => self.cni_conf_dir(node),
            "/var/lib/cni/results" => self.cni_cache_dir(node),
            "/sys/fs/bpf" => self.dir.join("bpffs").join(node),
            "/sys/fs/cgroup" => self.cgroup_parent().join(node),
            "/var/run/netns" | "/run/netns" => PathBuf::from("/run/netns"),
            "/run/weir" => self.run_weir(node),
            "/var/lib/weir" => nd.join("state"),
            other => bail!("hostPath {other} has no place on a lab node (e2e/src/lab/agent_pod.rs maps each)"),
        })
    }

    fn node_env_spec(&self, node: &str) -> anyhow::Result<daemonset::Spec> {
        let n = &self.state.nodes[self.node_index(node)?];
        let mut config: BTreeMap<String, Option<String>> = BTreeMap::new();
        let routing = match self.state.routing {
            Routing::Direct => "direct",
            Routing::Vxlan => "vxlan",
        };
        config.insert("WEIR_ROUTING".into(), Some(routing.into()));
        config.insert("WEIR_CLUSTER_CIDR".into(), Some(CLUSTER_CIDR.into()));
        config.insert("WEIR_UPLINK".into(), Some("eth0".into()));
        if let Some(p) = &self.state.nat_ports {
            config.insert("WEIR_NAT_PORTS".into(), Some(p.clone()));
        }
        // No API server: its address keys go, the manifest directory stands in.
        config.insert("WEIR_K8S_SERVICE_HOST".into(), None);
        config.insert("WEIR_K8S_SERVICE_PORT".into(), None);
        let host_ip = n.ip.to_string();
        let host_path = |p: &str| self.host_path(node, p);
        let env = daemonset::NodeEnv {
            node_name: node,
            host_ip: &host_ip,
            config,
            agent_env: vec![("WEIR_MANIFESTS".into(), MANIFESTS_IN_CONTAINER.into())],
            agent_mounts: vec![Mount {
                container_path: MANIFESTS_IN_CONTAINER.into(),
                host_path: self.cluster_dir().display().to_string(),
                readonly: true,
                propagation: MountPropagation::PropagationPrivate as i32,
                ..Default::default()
            }],
            host_path: &host_path,
        };
        daemonset::translate(&self.deploy_manifests()?, &env)
    }

    fn agent_file(&self, node: &str, what: &str) -> PathBuf {
        self.node_dir(node).join(format!("agent.{what}"))
    }
    fn read_agent_file(&self, node: &str, what: &str) -> Option<String> {
        std::fs::read_to_string(self.agent_file(node, what)).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
    }

    /// The sandbox config the kubelet sends for the DaemonSet's pod on `node`.
    fn agent_sandbox_config(&self, node: &str, spec: &daemonset::Spec) -> PodSandboxConfig {
        let name = format!("weir-agent-{node}");
        let labels = [
            ("io.kubernetes.pod.name".to_owned(), name.clone()),
            ("io.kubernetes.pod.namespace".to_owned(), "kube-system".to_owned()),
            ("io.kubernetes.pod.uid".to_owned(), name.clone()),
            ("app.kubernetes.io/name".to_owned(), "weir".to_owned()),
            ("app.kubernetes.io/component".to_owned(), "agent".to_owned()),
        ];
        let network = if spec.host_network { NamespaceMode::Node } else { NamespaceMode::Pod };
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.clone(),
                uid: name,
                namespace: "kube-system".into(),
                attempt: 0,
            }),
            // The kubelet names the host only for pods with a network of their own (a hostNetwork
            // pod shares the node's UTS namespace).
            hostname: if spec.host_network { String::new() } else { node.to_owned() },
            log_directory: self.node_dir(node).display().to_string(),
            labels: labels.into_iter().collect(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cri_cgroup_parent(node),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption { network: network as i32, ..Default::default() }),
                    privileged: spec.privileged,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Starts the node's agent pod, or a new attempt of its agent container when the pod is
    /// there and the container is not running (the kubelet's restart).
    pub(super) fn start_agent_pod(&mut self, node: &str) -> anyhow::Result<()> {
        let spec = self.node_env_spec(node)?;
        let cri = self.cri(node)?;
        if let Some(id) = self.read_agent_file(node, "container") {
            match cri.container(&id) {
                Ok(c) if c.running => bail!("the agent of {node} is already running (container {id})"),
                // The exited attempt goes; a new one starts below.
                Ok(_) => cri.remove_container(&id, Duration::ZERO)?,
                Err(_) => {}
            }
            let _ = std::fs::remove_file(self.agent_file(node, "container"));
        }
        let sandbox_config = self.agent_sandbox_config(node, &spec);
        let sandbox = match self.read_agent_file(node, "sandbox") {
            Some(id) => id,
            None => {
                std::fs::create_dir_all(self.run_weir(node))?;
                let id = cri.run_pod_sandbox(sandbox_config.clone()).context("RunPodSandbox (agent)")?;
                std::fs::write(self.agent_file(node, "sandbox"), &id)?;
                // Init containers run once per sandbox, each to completion, in order.
                for init in &spec.init {
                    let name = init.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
                    let log = self.node_dir(node).join(&init.log_path);
                    let cid = cri.start_container(&id, &sandbox_config, init.clone())?;
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        let c = cri.container(&cid)?;
                        if c.exited && c.exit_code == 0 {
                            break;
                        }
                        if c.exited || Instant::now() > deadline {
                            let out = std::fs::read_to_string(&log).unwrap_or_default();
                            bail!("init container {name} of the agent on {node} failed (exit {}): {out}", c.exit_code);
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                id
            }
        };
        let attempt: u32 = self.read_agent_file(node, "attempt").and_then(|a| a.parse().ok()).map_or(0, |a: u32| a + 1);
        let mut agent = spec.agent.clone();
        if let Some(m) = agent.metadata.as_mut() {
            m.attempt = attempt;
        }
        let id = cri.start_container(&sandbox, &sandbox_config, agent).context("starting the agent container")?;
        std::fs::write(self.agent_file(node, "attempt"), attempt.to_string())?;
        std::fs::write(self.agent_file(node, "container"), &id)?;
        Ok(())
    }

    /// The agent container's process (its PID in the host's PID namespace).
    pub(super) fn agent_pod_pid(&self, node: &str) -> Option<u32> {
        let id = self.read_agent_file(node, "container")?;
        self.cri(node).ok()?.container(&id).ok().filter(|c| c.running)?.pid
    }

    /// StopContainer with the pod's grace period (a rolling update's end of the old agent).
    pub(super) fn stop_agent_pod(&mut self, node: &str) -> anyhow::Result<()> {
        if let Some(id) = self.read_agent_file(node, "container") {
            let grace = Duration::from_secs(self.node_env_spec(node).map_or(10, |s| s.grace_secs.max(0) as u64));
            self.cri(node)?.remove_container(&id, grace)?;
            let _ = std::fs::remove_file(self.agent_file(node, "container"));
        }
        Ok(())
    }

    /// SIGKILL to the agent container's process (a crash); waits until the runtime saw it exit.
    pub(super) fn kill_agent_pod(&mut self, node: &str) -> anyhow::Result<()> {
        let Some(id) = self.read_agent_file(node, "container") else { return Ok(()) };
        let cri = self.cri(node)?;
        if let Some(pid) = cri.container(&id)?.pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cri.container(&id)?.exited {
            if Instant::now() > deadline {
                bail!("the agent container of {node} did not exit after SIGKILL");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The DaemonSet's readiness probe, run in the agent container: Ok once it exits 0.
    pub(super) fn agent_pod_ready(&self, node: &str) -> anyhow::Result<Result<(), String>> {
        let Some(id) = self.read_agent_file(node, "container") else { return Ok(Err("no agent container".into())) };
        let spec = self.node_env_spec(node)?;
        let Some(cmd) = &spec.readiness else { bail!("the DaemonSet's agent has no readiness probe") };
        let (code, out) = self.cri(node)?.exec_sync(&id, cmd, Duration::from_secs(5))?;
        Ok(if code == 0 { Ok(()) } else { Err(format!("readiness probe exit {code}: {}", out.trim())) })
    }

    /// `down`: the agent pod goes (StopPodSandbox ends its containers with the grace period).
    pub(super) fn remove_agent_pod(&mut self, node: &str) -> anyhow::Result<()> {
        if let Some(id) = self.read_agent_file(node, "sandbox") {
            self.cri(node)?.remove_sandbox(&id)?;
        }
        for f in ["sandbox", "container", "attempt"] {
            let _ = std::fs::remove_file(self.agent_file(node, f));
        }
        Ok(())
    }
}
