//! The agent as `deploy/kubernetes` runs it: the DaemonSet's pod template, the ConfigMap it
//! reads and the kustomization's image, turned into what the kubelet would send containerd
//! (the sandbox's namespaces and privilege, then per container its command, environment, mounts,
//! security context, resources and readiness probe), with the DaemonSet's host paths placed in a
//! lab node.
//!
//! Nothing is copied by hand: every field of the template is either carried over here or named
//! in an error, so a field added to the manifests that the lab does not know fails the lab (and
//! its test) instead of running an agent unlike the shipped one.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use k8s_cri::v1::{
    Capability, ContainerConfig, ContainerMetadata, ImageSpec, Int64Value, KeyValue, LinuxContainerConfig,
    LinuxContainerResources, LinuxContainerSecurityContext, Mount, MountPropagation,
};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container as K8sContainer, PodSpec},
};

/// The three files read, as they are in the repository.
pub struct Manifests {
    pub daemonset: DaemonSet,
    pub configmap: ConfigMap,
    /// The kustomization's image rewrite: `image: weir` in the DaemonSet becomes this.
    pub images: BTreeMap<String, String>,
}

/// `deploy/kubernetes` in this repository (what `weir-lab up --agent image` runs by default).
pub fn repository_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

impl Manifests {
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let read =
            |f: &str| std::fs::read_to_string(dir.join(f)).with_context(|| format!("reading {}/{f}", dir.display()));
        let daemonset: DaemonSet = serde_saphyr::from_str(&read("daemonset.yaml")?).context("daemonset.yaml")?;
        let configmap: ConfigMap = serde_saphyr::from_str(&read("configmap.yaml")?).context("configmap.yaml")?;
        let kustomization: serde_json::Value =
            serde_saphyr::from_str(&read("kustomization.yaml")?).context("kustomization.yaml")?;
        let mut images = BTreeMap::new();
        for i in kustomization["images"].as_array().into_iter().flatten() {
            let name = i["name"].as_str().context("kustomization.yaml: an image without a name")?;
            let new_name = i["newName"].as_str().unwrap_or(name);
            let tag = i["newTag"].as_str().unwrap_or("latest");
            images.insert(name.to_owned(), format!("{new_name}:{tag}"));
        }
        Ok(Self { daemonset, configmap, images })
    }

    fn pod_spec(&self) -> anyhow::Result<&PodSpec> {
        self.daemonset.spec.as_ref().and_then(|s| s.template.spec.as_ref()).context("the DaemonSet has no pod template")
    }

    /// The image reference the DaemonSet's containers run (after the kustomization's rewrite).
    pub fn image(&self) -> anyhow::Result<String> {
        let spec = self.pod_spec()?;
        let mut refs: Vec<String> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .map(|c| {
                let i = c.image.clone().unwrap_or_default();
                self.images.get(&i).cloned().unwrap_or(i)
            })
            .collect();
        refs.dedup();
        match refs.as_slice() {
            [one] => Ok(one.clone()),
            _ => bail!("the DaemonSet's containers run {refs:?}: the lab builds one image"),
        }
    }
}

/// Where a lab node stands for the node the DaemonSet runs on.
pub struct NodeEnv<'a> {
    pub node_name: &'a str,
    pub host_ip: &'a str,
    /// The ConfigMap keys the lab sets for its topology (a cluster's admin edits the same keys),
    /// `None` removing one.
    pub config: BTreeMap<String, Option<String>>,
    /// Environment and mounts the lab adds to the agent container: its stand-in for the API
    /// server (a manifest directory, documented in ARCHITECTURE.md), nothing else.
    pub agent_env: Vec<(String, String)>,
    pub agent_mounts: Vec<Mount>,
    /// A DaemonSet hostPath → the lab directory standing for it on this node.
    pub host_path: &'a dyn Fn(&str) -> anyhow::Result<PathBuf>,
}

/// What the kubelet would ask of containerd for the DaemonSet's pod on one node.
pub struct Spec {
    /// hostNetwork: the sandbox's network namespace is the node's.
    pub host_network: bool,
    /// Any container privileged: so is the sandbox (as the kubelet sets it).
    pub privileged: bool,
    pub grace_secs: i64,
    /// Run to completion, in order, before `agent` starts.
    pub init: Vec<ContainerConfig>,
    pub agent: ContainerConfig,
    /// The agent container's readiness probe command (`exec`).
    pub readiness: Option<Vec<String>>,
}

/// Fields each object may have; any other is refused by name.
const POD_FIELDS: &[&str] = &[
    // Scheduling and API-side fields: no scheduler or API server here (the lab places one
    // agent on each of its nodes; the agent reads the lab's manifests, not the API).
    "serviceAccountName",
    "priorityClassName",
    "tolerations",
    // ClusterFirstWithHostNet: no cluster DNS in the lab; the sandbox gets the node's resolver.
    "dnsPolicy",
    "hostNetwork",
    "terminationGracePeriodSeconds",
    "initContainers",
    "containers",
    "volumes",
];
const CONTAINER_FIELDS: &[&str] = &[
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "envFrom",
    "securityContext",
    "volumeMounts",
    "readinessProbe",
    "resources",
];
const SECURITY_FIELDS: &[&str] = &["privileged", "runAsUser", "allowPrivilegeEscalation", "capabilities"];
const PROBE_FIELDS: &[&str] = &["exec", "periodSeconds", "failureThreshold", "timeoutSeconds", "initialDelaySeconds"];
const MOUNT_FIELDS: &[&str] = &["name", "mountPath", "readOnly", "mountPropagation"];

fn only_known(what: &str, v: &serde_json::Value, known: &[&str]) -> anyhow::Result<()> {
    for k in v.as_object().into_iter().flat_map(|o| o.keys()) {
        if !known.contains(&k.as_str()) {
            bail!("{what}: field {k} is not carried into the lab (e2e/src/daemonset.rs knows {known:?})");
        }
    }
    Ok(())
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, `$$` is a literal `$`, an
/// undefined reference stays as written.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(') {
            match r.find(')') {
                Some(end) if vars.contains_key(&r[..end]) => {
                    out.push_str(&vars[&r[..end]]);
                    rest = &r[end + 1..];
                }
                Some(end) => {
                    out.push_str(&rest[i..i + 2 + end + 1]);
                    rest = &r[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Bytes of a Kubernetes quantity (`512Mi`, `1G`, `1000`).
fn bytes(q: &str) -> anyhow::Result<i64> {
    const UNITS: &[(&str, i64)] =
        &[("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("k", 1_000), ("M", 1_000_000), ("G", 1_000_000_000)];
    for (u, m) in UNITS {
        if let Some(n) = q.strip_suffix(u) {
            return Ok(n.parse::<i64>().with_context(|| format!("quantity {q:?}"))? * m);
        }
    }
    q.parse().with_context(|| format!("quantity {q:?}: the lab reads plain numbers and Ki/Mi/Gi/k/M/G"))
}

/// CPU shares the kubelet gives a request (`50m` → 51, as it computes: millis × 1024 / 1000,
/// at least 2).
fn cpu_shares(q: &str) -> anyhow::Result<i64> {
    let millis = match q.strip_suffix('m') {
        Some(m) => m.parse::<i64>(),
        None => q.parse::<i64>().map(|c| c * 1000),
    }
    .with_context(|| format!("cpu quantity {q:?}"))?;
    Ok((millis * 1024 / 1000).max(2))
}

pub fn translate(m: &Manifests, node: &NodeEnv<'_>) -> anyhow::Result<Spec> {
    let spec = m.pod_spec()?;
    only_known("the DaemonSet's pod template", &serde_json::to_value(spec)?, POD_FIELDS)?;
    let image = m.image()?;
    let mut config: BTreeMap<String, String> = m.configmap.data.clone().unwrap_or_default().into_iter().collect();
    for (k, v) in &node.config {
        match v {
            Some(v) => config.insert(k.clone(), v.clone()),
            None => config.remove(k),
        };
    }
    let configmap_name = m.configmap.metadata.name.clone().unwrap_or_default();
    let volumes: BTreeMap<&str, &k8s_openapi::api::core::v1::Volume> =
        spec.volumes.iter().flatten().map(|v| (v.name.as_str(), v)).collect();

    let container = |c: &K8sContainer, is_agent: bool| -> anyhow::Result<ContainerConfig> {
        let what = format!("container {}", c.name);
        only_known(&what, &serde_json::to_value(c)?, CONTAINER_FIELDS)?;
        // Environment: envFrom first, then env (which wins), each value expanded against what
        // came before it.
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        let mut set = |vars: &mut BTreeMap<String, String>, k: String, v: String| {
            if !vars.contains_key(&k) {
                order.push(k.clone());
            }
            vars.insert(k, v);
        };
        for from in c.env_from.iter().flatten() {
            let Some(cm) = &from.config_map_ref else { bail!("{what}: envFrom other than a configMapRef") };
            if cm.name != configmap_name {
                bail!("{what}: envFrom names ConfigMap {}, the manifests hold {configmap_name}", cm.name);
            }
            for (k, v) in &config {
                set(&mut vars, format!("{}{k}", from.prefix.clone().unwrap_or_default()), v.clone());
            }
        }
        for e in c.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (v, None) => expand(v.as_deref().unwrap_or_default(), &vars),
                (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                    Some("spec.nodeName") => node.node_name.to_owned(),
                    Some("status.hostIP") => node.host_ip.to_owned(),
                    other => {
                        bail!("{what}: env {} from {other:?}: the lab knows spec.nodeName and status.hostIP", e.name)
                    }
                },
                (Some(_), Some(_)) => bail!("{what}: env {} has both value and valueFrom", e.name),
            };
            set(&mut vars, e.name.clone(), value);
        }
        if is_agent {
            for (k, v) in &node.agent_env {
                set(&mut vars, k.clone(), v.clone());
            }
        }
        let envs = order.iter().map(|k| KeyValue { key: k.clone(), value: vars[k].clone() }).collect();
        let command = c.command.iter().flatten().map(|s| expand(s, &vars)).collect();
        let args = c.args.iter().flatten().map(|s| expand(s, &vars)).collect();

        let mut mounts = Vec::new();
        for vm in c.volume_mounts.iter().flatten() {
            only_known(&format!("{what}: volumeMount {}", vm.name), &serde_json::to_value(vm)?, MOUNT_FIELDS)?;
            let v = volumes.get(vm.name.as_str()).with_context(|| format!("{what}: no volume {}", vm.name))?;
            let hp = v
                .host_path
                .as_ref()
                .with_context(|| format!("volume {}: only hostPath volumes run in the lab", v.name))?;
            let host =
                (node.host_path)(&hp.path).with_context(|| format!("volume {} (hostPath {})", v.name, hp.path))?;
            match hp.type_.as_deref().unwrap_or("") {
                // What the kubelet does for these types before starting the pod.
                "DirectoryOrCreate" => {
                    std::fs::create_dir_all(&host).with_context(|| format!("creating {}", host.display()))?
                }
                "Directory" if host.is_dir() => {}
                "Directory" => bail!("volume {}: {} is not a directory", v.name, host.display()),
                "" => {}
                other => bail!("volume {}: hostPath type {other} is not carried into the lab", v.name),
            }
            let propagation = match vm.mount_propagation.as_deref() {
                None | Some("None") => MountPropagation::PropagationPrivate,
                Some("HostToContainer") => MountPropagation::PropagationHostToContainer,
                Some("Bidirectional") => MountPropagation::PropagationBidirectional,
                Some(other) => bail!("{what}: mountPropagation {other}"),
            };
            mounts.push(Mount {
                container_path: vm.mount_path.clone(),
                host_path: host.display().to_string(),
                readonly: vm.read_only.unwrap_or(false),
                propagation: propagation as i32,
                ..Default::default()
            });
        }
        if is_agent {
            mounts.extend(node.agent_mounts.iter().cloned());
        }

        let mut security = LinuxContainerSecurityContext::default();
        if let Some(sc) = &c.security_context {
            only_known(&format!("{what}: securityContext"), &serde_json::to_value(sc)?, SECURITY_FIELDS)?;
            security.privileged = sc.privileged.unwrap_or(false);
            security.run_as_user = sc.run_as_user.map(|value| Int64Value { value });
            // The kubelet's mapping: no privilege escalation is the no_new_privs bit.
            security.no_new_privs = sc.allow_privilege_escalation == Some(false);
            if let Some(caps) = &sc.capabilities {
                security.capabilities = Some(Capability {
                    add_capabilities: caps.add.clone().unwrap_or_default(),
                    drop_capabilities: caps.drop.clone().unwrap_or_default(),
                    ..Default::default()
                });
            }
        }
        if let Some(p) = &c.readiness_probe {
            only_known(&format!("{what}: readinessProbe"), &serde_json::to_value(p)?, PROBE_FIELDS)?;
        }
        let mut resources = LinuxContainerResources::default();
        if let Some(r) = &c.resources {
            for (k, q) in r.limits.iter().flatten() {
                match k.as_str() {
                    "memory" => resources.memory_limit_in_bytes = bytes(&q.0)?,
                    other => bail!("{what}: a {other} limit is not carried into the lab"),
                }
            }
            for (k, q) in r.requests.iter().flatten() {
                match k.as_str() {
                    "cpu" => resources.cpu_shares = cpu_shares(&q.0)?,
                    // Scheduling only.
                    "memory" => {}
                    other => bail!("{what}: a {other} request is not carried into the lab"),
                }
            }
        }
        Ok(ContainerConfig {
            metadata: Some(ContainerMetadata { name: c.name.clone(), attempt: 0 }),
            image: Some(ImageSpec { image: image.clone(), ..Default::default() }),
            command,
            args,
            envs,
            mounts,
            log_path: format!("{}.log", c.name),
            linux: Some(LinuxContainerConfig { resources: Some(resources), security_context: Some(security) }),
            ..Default::default()
        })
    };

    let init =
        spec.init_containers.iter().flatten().map(|c| container(c, false)).collect::<anyhow::Result<Vec<_>>>()?;
    let [agent] = spec.containers.as_slice() else {
        bail!("the DaemonSet has {} containers; the lab runs one agent container", spec.containers.len())
    };
    let readiness = match agent.readiness_probe.as_ref() {
        None => None,
        Some(p) => Some(
            p.exec
                .as_ref()
                .and_then(|e| e.command.clone())
                .context("container agent: a readiness probe other than exec")?,
        ),
    };
    let agent_config = container(agent, true)?;
    let privileged = agent_config
        .linux
        .iter()
        .chain(init.iter().flat_map(|c| c.linux.iter()))
        .any(|l| l.security_context.as_ref().is_some_and(|s| s.privileged));
    Ok(Spec {
        host_network: spec.host_network.unwrap_or(false),
        privileged,
        grace_secs: spec.termination_grace_period_seconds.unwrap_or(30),
        init,
        agent: agent_config,
        readiness,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DaemonSet's host paths under a scratch directory of the test's own (the kubelet
    /// creates DirectoryOrCreate paths; so does `translate`).
    fn scratch(test: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("weir-ds-{test}-{}", std::process::id()));
        // The one `Directory` (must exist) path.
        std::fs::create_dir_all(root.join("sys/fs/cgroup")).expect("scratch dir");
        root
    }
    fn lab_paths(root: PathBuf) -> impl Fn(&str) -> anyhow::Result<PathBuf> {
        move |p: &str| match p {
            "/opt/cni/bin"
            | "/etc/cni/net.d"
            | "/var/lib/cni/results"
            | "/sys/fs/bpf"
            | "/sys/fs/cgroup"
            | "/var/run/netns"
            | "/run/weir"
            | "/var/lib/weir" => Ok(root.join(&p[1..])),
            other => bail!("unmapped {other}"),
        }
    }

    fn env<'a>(map: &'a dyn Fn(&str) -> anyhow::Result<PathBuf>) -> NodeEnv<'a> {
        NodeEnv {
            node_name: "n1",
            host_ip: "172.30.0.11",
            config: [
                ("WEIR_ROUTING".to_owned(), Some("direct".to_owned())),
                ("WEIR_K8S_SERVICE_HOST".to_owned(), None),
            ]
            .into(),
            agent_env: vec![("WEIR_MANIFESTS".into(), "/lab/cluster".into())],
            agent_mounts: vec![],
            host_path: map,
        }
    }

    /// The repository's manifests translate: the agent gets the ConfigMap (with the lab's
    /// keys), its fieldRefs and `$(VAR)` references resolved, every hostPath placed, privilege
    /// and propagation as written; the init container is unprivileged with no capabilities.
    #[test]
    fn the_repositorys_daemonset_becomes_cri_configs() {
        let m = Manifests::read(&repository_dir()).expect("manifests");
        assert_eq!(m.image().expect("image"), "weir:dev");
        let root = scratch("ok");
        let s = translate(&m, &env(&lab_paths(root.clone()))).expect("translate");
        let _ = std::fs::remove_dir_all(&root);
        assert!(s.host_network && s.privileged);
        let env: BTreeMap<_, _> = s.agent.envs.iter().map(|kv| (kv.key.as_str(), kv.value.as_str())).collect();
        assert_eq!(env["WEIR_NODE_NAME"], "n1");
        assert_eq!(env["WEIR_METRICS_ADDR"], "172.30.0.11:9962");
        assert_eq!(env["WEIR_ROUTING"], "direct", "the lab's key wins over the ConfigMap's");
        assert_eq!(env["WEIR_MANIFESTS"], "/lab/cluster");
        assert!(!env.contains_key("WEIR_K8S_SERVICE_HOST"));
        assert_eq!(env["WEIR_UPLINK"], "eth0", "the rest of the ConfigMap is carried");
        let sc = s.agent.linux.as_ref().and_then(|l| l.security_context.as_ref()).expect("sc");
        assert!(sc.privileged);
        let bpffs = s.agent.mounts.iter().find(|m| m.container_path == "/sys/fs/bpf").expect("bpffs mount");
        assert_eq!(bpffs.propagation, MountPropagation::PropagationBidirectional as i32);
        assert!(s.agent.mounts.iter().any(|m| m.container_path == "/host/var/lib/cni/results" && m.readonly));
        assert_eq!(s.readiness.as_deref(), Some(&["/usr/local/bin/weir".to_owned(), "status".to_owned()][..]));
        let [init] = s.init.as_slice() else { panic!("one init container") };
        let isc = init.linux.as_ref().and_then(|l| l.security_context.as_ref()).expect("init sc");
        assert!(!isc.privileged && isc.no_new_privs);
        assert_eq!(isc.run_as_user.as_ref().map(|u| u.value), Some(0));
        assert_eq!(isc.capabilities.as_ref().map(|c| c.drop_capabilities.clone()), Some(vec!["ALL".to_owned()]));
        let limits = s.agent.linux.as_ref().and_then(|l| l.resources.as_ref()).expect("resources");
        assert_eq!(limits.memory_limit_in_bytes, 512 << 20);
        assert_eq!(limits.cpu_shares, 51);
    }

    /// A field, volume or reference the lab does not carry is refused by name.
    #[test]
    fn what_the_lab_cannot_carry_is_named() {
        fn pod(m: &mut Manifests) -> &mut PodSpec {
            m.daemonset.spec.as_mut().and_then(|s| s.template.spec.as_mut()).expect("template")
        }
        let fails = |m: &Manifests, needle: &str| {
            let root = scratch("refused");
            let e = translate(m, &env(&lab_paths(root.clone()))).err().map(|e| format!("{e:#}")).unwrap_or_default();
            let _ = std::fs::remove_dir_all(&root);
            assert!(e.contains(needle), "expected an error naming {needle:?}, got {e:?}");
        };
        let mut m = Manifests::read(&repository_dir()).expect("manifests");
        pod(&mut m).host_pid = Some(true);
        fails(&m, "field hostPID");
        let mut m = Manifests::read(&repository_dir()).expect("manifests");
        pod(&mut m).containers[0].liveness_probe = Some(Default::default());
        fails(&m, "field livenessProbe");
        let mut m = Manifests::read(&repository_dir()).expect("manifests");
        pod(&mut m).volumes.as_mut().expect("volumes")[0].host_path.as_mut().expect("hp").path = "/etc/shadow".into();
        fails(&m, "unmapped /etc/shadow");
        let mut m = Manifests::read(&repository_dir()).expect("manifests");
        let e = pod(&mut m).containers[0].env.as_mut().expect("env");
        e[0].value_from.as_mut().expect("from").field_ref.as_mut().expect("ref").field_path = "metadata.uid".into();
        fails(&m, "metadata.uid");
    }

    #[test]
    fn variables_expand_as_kubernetes_does() {
        let vars: BTreeMap<String, String> = [("A".to_owned(), "1".to_owned())].into();
        assert_eq!(expand("$(A):9962", &vars), "1:9962");
        assert_eq!(expand("$$(A) $(B) $", &vars), "$(A) $(B) $");
        assert_eq!(expand("x$(A", &vars), "x$(A");
        assert_eq!(cpu_shares("50m").expect("cpu"), 51);
        assert_eq!(bytes("64Mi").expect("bytes"), 64 << 20);
    }
}
