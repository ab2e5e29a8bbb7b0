//! A containerd per lab node: started in the node's network namespace, in a private mount
//! namespace of its own (containerd writes /run/containerd and libcni /var/lib/cni whatever its
//! config says: both are bind-mounted from the node's directory there), with the CRI plugin
//! pointed at the node's CNI bin dir and at the conf dir the agent installs its conflist into.
//! Pod network namespaces go under /run/netns, a shared mount, so the agent (which opens
//! `CNI_NETNS` by path) and `weir-lab exec` see them.
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{bail, Context as _};
use weir_tests::netns::{command_in, stop_pid};

/// The sandbox ("pause") image and the test server's image: both the static weir-lab-pod.
pub const POD_IMAGE: &str = "weir.lab/pod:1";

/// The files of one node's containerd, under `<node dir>/containerd`.
pub struct Node {
    pub dir: PathBuf,
}

impl Node {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }
    /// What is bind-mounted on /var/lib/cni in containerd's mount namespace (libcni's result
    /// cache is its `results/`).
    pub fn var_lib_cni(&self) -> PathBuf {
        self.dir.join("var-lib-cni")
    }
    fn pid_file(&self) -> PathBuf {
        self.dir.join("containerd.pid")
    }
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file()).ok()?.trim().parse().ok()
    }

    /// containerd's config (version 2): private root, state and sockets; no systemd, so
    /// cgroupfs; the machine's root lacks CAP_SYS_RESOURCE (restrict_oom_score_adj) and has no
    /// AppArmor; CNI from the node's directories, one network (the agent's conflist).
    pub fn config(&self, cni_bin: &Path, cni_conf: &Path) -> String {
        let d = self.dir.display();
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{POD_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{}"
    conf_dir = "{}"
    max_conf_num = 1
"#,
            cni_bin.display(),
            cni_conf.display()
        )
    }

    /// Starts containerd in `netns` and `cgroup` (its shims stay there too), waits for its
    /// socket. The PID goes to `containerd.pid`.
    /// `run_weir`: bound on /run/weir too (an agent running from its image serves there).
    pub fn start(
        &self,
        netns: &Path,
        cgroup: &Path,
        cni_bin: &Path,
        cni_conf: &Path,
        run_weir: Option<&Path>,
    ) -> anyhow::Result<u32> {
        if let Some(pid) = self.pid().filter(|p| weir_tests::netns::pid_is(*p, "containerd")) {
            bail!("containerd of {} is already running (pid {pid})", self.dir.display());
        }
        for d in ["root", "state", "opt", "run", "var-lib-cni/results"] {
            std::fs::create_dir_all(self.dir.join(d))?;
        }
        // The mount points must exist on the shared filesystem (left empty, see `host_dirs`).
        for m in HOST_DIRS.iter().chain(run_weir.map(|_| &RUN_WEIR)) {
            std::fs::create_dir_all(m).with_context(|| format!("creating {m}"))?;
        }
        let config = self.dir.join("config.toml");
        std::fs::write(&config, self.config(cni_bin, cni_conf))?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("containerd.log"))?;
        // /run/netns must be a shared mount already (the lab's `ip netns add` made it so):
        // `--propagation unchanged` keeps it shared while the binds below stay private.
        let bind_run_weir =
            run_weir.map(|d| format!("mount --bind '{}' {RUN_WEIR}; ", d.display())).unwrap_or_default();
        let script = format!(
            "set -e; mount --bind '{}' /run/containerd; mount --bind '{}' /var/lib/cni; {bind_run_weir}exec containerd --config '{}'",
            self.dir.join("run").display(),
            self.var_lib_cni().display(),
            config.display()
        );
        let mut cmd = command_in("unshare", netns, Some(cgroup))?;
        cmd.args(["--mount", "--propagation", "unchanged", "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().context("starting containerd")?;
        let pid = child.id();
        std::fs::write(self.pid_file(), pid.to_string())?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !self.socket().exists() {
            // (Not /proc: its cmdline reads empty while the chain of execs is under way.)
            let exited = child.try_wait()?;
            if std::time::Instant::now() > deadline || exited.is_some() {
                let log = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let how = exited.map_or_else(|| "no socket after 20 s".to_owned(), |s| s.to_string());
                bail!("containerd did not start ({how}): {}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pid)
    }

    /// Imports an OCI layout tarball into the CRI's namespace.
    pub fn import(&self, tarball: &Path) -> anyhow::Result<()> {
        let out = std::process::Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(tarball)
            .output()
            .context("running ctr images import")?;
        if !out.status.success() {
            bail!("ctr images import {}: {}", tarball.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Ends containerd (SIGTERM by its recorded PID, then SIGKILL).
    pub fn stop(&self) {
        if let Some(pid) = self.pid() {
            stop_pid(pid, "containerd", Duration::from_secs(5));
        }
        let _ = std::fs::remove_file(self.pid_file());
    }
}

/// The host directories containerd's mount namespace binds over. They are created empty when
/// missing and left so (the containerd and CNI packages own these paths).
pub const HOST_DIRS: [&str; 2] = ["/run/containerd", "/var/lib/cni"];
/// Bound over too when the node's agent runs from its image (weir's own path on a node).
pub const RUN_WEIR: &str = "/run/weir";

/// The cgroup v1 hierarchies runc also makes the lab's container cgroups in (hybrid mode);
/// `down` removes the lab's directories there.
pub fn v1_hierarchies() -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else { return Vec::new() };
    rd.flatten().map(|e| e.path()).filter(|p| p.file_name().is_some_and(|n| n != "unified")).collect()
}

/// Removes a cgroup directory tree bottom-up (each must be empty of processes by now).
pub fn remove_tree(path: &Path) -> Result<(), String> {
    if !path.is_dir() {
        return Ok(());
    }
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path())?;
            }
        }
    }
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("removing cgroup {}: {e}", path.display())),
        _ => Ok(()),
    }
}
