//! A blocking CRI client (RuntimeService v1 over containerd's unix socket), making pods the way
//! the kubelet does: RunPodSandbox with the pod's metadata, labels, hostname, DNS config and
//! port mappings; CreateContainer/StartContainer per container; StopPodSandbox then
//! RemovePodSandbox.
use std::{collections::HashMap, path::Path, time::Duration};

use anyhow::Context as _;
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, ContainerConfig, ContainerMetadata, ContainerState,
    ContainerStatusRequest, CreateContainerRequest, DnsConfig, ExecSyncRequest, ImageSpec, LinuxPodSandboxConfig,
    ListPodSandboxRequest, PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata, PodSandboxStatusRequest,
    PortMapping, Protocol, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::Channel;

pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

/// What a pod's sandbox is once running: its id, address and network namespace path.
#[derive(Debug)]
pub struct Sandbox {
    pub id: String,
    pub ip: Option<std::net::Ipv4Addr>,
    pub netns: String,
    /// The sandbox process (its namespaces are the pod's).
    pub pid: Option<u32>,
}

/// A container's state as ContainerStatus reports it.
#[derive(Debug)]
pub struct Container {
    pub running: bool,
    pub exited: bool,
    pub exit_code: i32,
    pub pid: Option<u32>,
}

impl Cri {
    /// Connects to the runtime's socket (waits up to `timeout` for it to answer).
    pub fn connect(socket: &Path, timeout: Duration) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let path = socket.to_owned();
        let channel = rt.block_on(async {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let p = path.clone();
                let attempt = tonic::transport::Endpoint::try_from("http://[::]:0")?
                    .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                        let p = p.clone();
                        async move {
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                                tokio::net::UnixStream::connect(p).await?,
                            ))
                        }
                    }))
                    .await;
                match attempt {
                    Ok(c) => return anyhow::Ok(c),
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        return Err(anyhow::Error::new(e).context(format!("connecting {}", path.display())))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })?;
        Ok(Self { rt, client: RuntimeServiceClient::new(channel) })
    }

    /// RunPodSandbox: returns the sandbox id once the runtime made it (network included).
    pub fn run_pod_sandbox(&self, config: PodSandboxConfig) -> anyhow::Result<String> {
        let mut c = self.client.clone();
        let r = self
            .rt
            .block_on(c.run_pod_sandbox(RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() }))
            .map_err(status)?;
        Ok(r.into_inner().pod_sandbox_id)
    }

    /// CreateContainer then StartContainer; returns the container id.
    pub fn start_container(
        &self,
        sandbox: &str,
        sandbox_config: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> anyhow::Result<String> {
        let mut c = self.client.clone();
        let id = self
            .rt
            .block_on(c.create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.to_owned(),
                config: Some(config),
                sandbox_config: Some(sandbox_config.clone()),
            }))
            .map_err(status)?
            .into_inner()
            .container_id;
        self.rt.block_on(c.start_container(StartContainerRequest { container_id: id.clone() })).map_err(status)?;
        Ok(id)
    }

    /// ContainerStatus (verbose): its state, exit code (once exited) and process.
    pub fn container(&self, id: &str) -> anyhow::Result<Container> {
        let mut c = self.client.clone();
        let r = self
            .rt
            .block_on(c.container_status(ContainerStatusRequest { container_id: id.to_owned(), verbose: true }))
            .map_err(status)?
            .into_inner();
        let s = r.status.context("ContainerStatus without a status")?;
        let info = verbose_info(&r.info)?;
        Ok(Container {
            running: s.state == ContainerState::ContainerRunning as i32,
            exited: s.state == ContainerState::ContainerExited as i32,
            exit_code: s.exit_code,
            pid: info["pid"].as_u64().filter(|p| *p > 0).map(|p| p as u32),
        })
    }

    /// ExecSync: runs `cmd` in the container (what the kubelet's exec probes do).
    pub fn exec_sync(&self, id: &str, cmd: &[String], timeout: Duration) -> anyhow::Result<(i32, String)> {
        let mut c = self.client.clone();
        let r = self
            .rt
            .block_on(c.exec_sync(ExecSyncRequest {
                container_id: id.to_owned(),
                cmd: cmd.to_vec(),
                timeout: timeout.as_secs().max(1) as i64,
            }))
            .map_err(status)?
            .into_inner();
        let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
        out.push_str(&String::from_utf8_lossy(&r.stderr));
        Ok((r.exit_code, out))
    }

    /// StopContainer (SIGTERM, SIGKILL after `grace`) then RemoveContainer.
    pub fn remove_container(&self, id: &str, grace: Duration) -> anyhow::Result<()> {
        let mut c = self.client.clone();
        self.rt
            .block_on(
                c.stop_container(StopContainerRequest { container_id: id.to_owned(), timeout: grace.as_secs() as i64 }),
            )
            .map_err(status)
            .context("StopContainer")?;
        self.rt
            .block_on(c.remove_container(RemoveContainerRequest { container_id: id.to_owned() }))
            .map_err(status)
            .context("RemoveContainer")?;
        Ok(())
    }

    /// PodSandboxStatus (verbose): the address the runtime recorded and where its namespaces are.
    pub fn sandbox(&self, id: &str) -> anyhow::Result<Sandbox> {
        let mut c = self.client.clone();
        let r = self
            .rt
            .block_on(c.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: id.to_owned(), verbose: true }))
            .map_err(status)?
            .into_inner();
        let ip = r.status.as_ref().and_then(|s| s.network.as_ref()).and_then(|n| n.ip.parse().ok());
        let info = verbose_info(&r.info)?;
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
            .and_then(|n| n["path"].as_str())
            .unwrap_or_default()
            .to_owned();
        let pid = info["pid"].as_u64().map(|p| p as u32);
        Ok(Sandbox { id: id.to_owned(), ip, netns, pid })
    }

    /// The sandboxes labelled `key=value` (`io.kubernetes.pod.uid`: a pod's, made or half-made).
    pub fn sandboxes_labelled(&self, key: &str, value: &str) -> anyhow::Result<Vec<String>> {
        let mut c = self.client.clone();
        let filter =
            PodSandboxFilter { label_selector: [(key.to_owned(), value.to_owned())].into(), ..Default::default() };
        let r = self.rt.block_on(c.list_pod_sandbox(ListPodSandboxRequest { filter: Some(filter) })).map_err(status)?;
        Ok(r.into_inner().items.into_iter().map(|s| s.id).collect())
    }

    /// StopPodSandbox then RemovePodSandbox (what the kubelet does when a pod is deleted).
    pub fn remove_sandbox(&self, id: &str) -> anyhow::Result<()> {
        let mut c = self.client.clone();
        self.rt
            .block_on(c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.to_owned() }))
            .map_err(status)
            .context("StopPodSandbox")?;
        self.rt
            .block_on(c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.to_owned() }))
            .map_err(status)
            .context("RemovePodSandbox")?;
        Ok(())
    }
}

/// The runtime's verbose `info` (JSON) of a status answer; null when it sent none.
fn verbose_info(info: &HashMap<String, String>) -> anyhow::Result<serde_json::Value> {
    Ok(info.get("info").map(|t| serde_json::from_str(t)).transpose()?.unwrap_or_default())
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

/// The sandbox config the kubelet would send for `pod` (scheduled to this node), its cgroups
/// under `cgroup_parent` (relative to the cgroup root) and logs under `log_directory`.
pub fn sandbox_config(
    pod: &k8s_openapi::api::core::v1::Pod,
    uid: &str,
    cgroup_parent: &str,
    log_directory: &Path,
    dns_servers: &[String],
) -> anyhow::Result<PodSandboxConfig> {
    let meta = &pod.metadata;
    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let name = meta.name.clone().context("pod without a name")?;
    let spec = pod.spec.clone().unwrap_or_default();
    let mut labels: HashMap<String, String> = meta.labels.clone().unwrap_or_default().into_iter().collect();
    labels.insert("io.kubernetes.pod.name".into(), name.clone());
    labels.insert("io.kubernetes.pod.namespace".into(), ns.clone());
    labels.insert("io.kubernetes.pod.uid".into(), uid.to_owned());
    let mut port_mappings = Vec::new();
    for c in &spec.containers {
        for p in c.ports.iter().flatten() {
            let Some(host_port) = p.host_port.filter(|h| *h > 0) else { continue };
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                other => anyhow::bail!("container {}: hostPort protocol {other} is not supported here", c.name),
            };
            port_mappings.push(PortMapping {
                protocol: protocol as i32,
                container_port: p.container_port,
                host_port,
                host_ip: p.host_ip.clone().unwrap_or_default(),
            });
        }
    }
    Ok(PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.clone(),
            uid: uid.to_owned(),
            namespace: ns.clone(),
            attempt: 0,
        }),
        hostname: spec.hostname.clone().unwrap_or(name),
        log_directory: log_directory.display().to_string(),
        // ClusterFirst, as the kubelet writes it (the lab has no cluster DNS unless a test
        // deploys one: then `dns_servers` names it).
        dns_config: Some(DnsConfig {
            servers: dns_servers.to_vec(),
            searches: vec![format!("{ns}.svc.cluster.local"), "svc.cluster.local".into(), "cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        port_mappings,
        labels,
        annotations: meta.annotations.clone().unwrap_or_default().into_iter().collect(),
        linux: Some(LinuxPodSandboxConfig { cgroup_parent: cgroup_parent.to_owned(), ..Default::default() }),
        ..Default::default()
    })
}

/// Host programs the lab's pod image carries (name, path), which a container may run as its
/// command: the image has no distribution, only these and the test server.
pub const IMAGE_TOOLS: &[(&str, &str)] = &[("iperf3", "/usr/bin/iperf3")];

/// The container config for one of the pod's containers: its command when it names one of
/// [`IMAGE_TOOLS`], the lab image's test server serving the container's ports otherwise.
pub fn container_config(
    pod_name: &str,
    c: &k8s_openapi::api::core::v1::Container,
    image: &str,
) -> anyhow::Result<ContainerConfig> {
    let (command, args) = match c.command.as_deref() {
        None if c.args.is_some() => {
            anyhow::bail!("container {}: args without a command (the lab image's entrypoint is its own)", c.name)
        }
        None => (Vec::new(), serve_args(pod_name, c)?),
        Some([program, rest @ ..]) => {
            let Some((_, path)) = IMAGE_TOOLS.iter().find(|(name, path)| program == name || program == path) else {
                anyhow::bail!(
                    "container {}: command {program:?} is not in the lab's pod image, which carries {:?} and the test \
                     server (leave command out)",
                    c.name,
                    IMAGE_TOOLS.iter().map(|t| t.0).collect::<Vec<_>>()
                );
            };
            let mut args: Vec<String> = rest.to_vec();
            args.extend(c.args.iter().flatten().cloned());
            (vec![(*path).to_owned()], args)
        }
        Some([]) => anyhow::bail!("container {}: an empty command", c.name),
    };
    Ok(ContainerConfig {
        metadata: Some(ContainerMetadata { name: c.name.clone(), attempt: 0 }),
        image: Some(ImageSpec { image: image.to_owned(), ..Default::default() }),
        command,
        args,
        log_path: format!("{}.log", c.name),
        ..Default::default()
    })
}

/// The test server's arguments for one container of pod `pod_name`: `serve --name POD` and each
/// container port (both pod paths run it with these).
pub fn serve_args(pod_name: &str, c: &k8s_openapi::api::core::v1::Container) -> anyhow::Result<Vec<String>> {
    let mut args = vec!["serve".to_owned(), "--name".into(), pod_name.to_owned()];
    for p in c.ports.iter().flatten() {
        match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => args.extend(["--tcp".into(), p.container_port.to_string()]),
            "UDP" => args.extend(["--udp".into(), p.container_port.to_string()]),
            other => anyhow::bail!("container {}: port protocol {other} is not served by the lab", c.name),
        }
    }
    Ok(args)
}
