//! Network namespaces, for the tests, the lab and the benches: named namespaces ([`NetNs`],
//! deleted on drop; [`netns_path`], [`ip_in`]), running processes inside them and their cgroups,
//! and small command helpers. The tests' helpers panic with the command's output; the lab's
//! and benches' (`run`, `ip`, `ip_in`) return errors.
//!
//! A child enters its network namespace and cgroup through a trampoline: `weir-lab` re-executes
//! itself as `weir-lab enter --netns N [--cgroup C] -- CMD…`, which joins the cgroup, enters the
//! namespace (setns on its only thread) and then `exec`s the command. So the command is in its
//! cgroup before it runs any code that could open a socket, and no `unsafe` pre-exec hook is
//! needed.
use std::{
    fs::File,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(prefix: &str) -> Self {
        let name = crate::unique(prefix);
        crate::run(Command::new("ip").args(["netns", "add", &name]));
        crate::run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Self { name }
    }

    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// `ip -n <ns> ARGS…`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        crate::run(Command::new("ip").args(full))
    }

    /// A command that will run inside this namespace (through nsenter, which keeps /sys).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        c
    }

    /// Deletes the namespace now (to test behaviour when it is gone).
    pub fn delete(&self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Path of a named network namespace (as `ip netns add` creates it).
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

/// A command that runs `program` inside `netns` (and `cgroup`, a cgroup v2 directory, when
/// given), through the running binary's `enter` verb ([`enter_and_exec`]; `weir-lab` has it).
pub fn command_in(
    program: impl AsRef<std::ffi::OsStr>,
    netns: &Path,
    cgroup: Option<&Path>,
) -> anyhow::Result<Command> {
    let mut cmd = Command::new(std::env::current_exe().context("current_exe")?);
    cmd.arg("enter").arg("--netns").arg(netns);
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    cmd.arg("--").arg(program);
    Ok(cmd)
}

/// The trampoline (`weir-lab enter`): join the cgroup, enter the namespace, exec the command.
/// Runs single-threaded, before anything else.
pub fn enter_and_exec(netns: &Path, cgroup: Option<&Path>, argv: &[String]) -> anyhow::Error {
    let go = || -> anyhow::Result<std::convert::Infallible> {
        if let Some(cg) = cgroup {
            let procs = cg.join("cgroup.procs");
            std::fs::write(&procs, std::process::id().to_string())
                .with_context(|| format!("joining {}", procs.display()))?;
        }
        let ns = File::open(netns).with_context(|| format!("opening netns {}", netns.display()))?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        let (program, args) = argv.split_first().context("no command")?;
        Err(Command::new(program).args(args).exec()).with_context(|| format!("exec {program}"))
    };
    match go() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// For binaries other than weir-lab that start processes through [`command_in`] (which runs
/// the current executable as `enter --netns N [--cgroup C] -- CMD…`): call first thing in
/// `main`; when this process is such a trampoline it execs the command (or exits 127).
pub fn trampoline_if_invoked() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("enter") {
        return;
    }
    let (mut netns, mut cgroup, mut rest) = (None, None, &args[1..]);
    while let [flag, value, tail @ ..] = rest {
        match flag.as_str() {
            "--netns" => netns = Some(std::path::PathBuf::from(value)),
            "--cgroup" => cgroup = Some(std::path::PathBuf::from(value)),
            "--" => break,
            _ => break,
        }
        rest = tail;
    }
    let cmd = match rest {
        [sep, cmd @ ..] if sep == "--" => cmd,
        _ => &[],
    };
    let e = match netns {
        Some(n) => enter_and_exec(&n, cgroup.as_deref(), cmd),
        None => anyhow::anyhow!("enter: --netns is required"),
    };
    eprintln!("enter: {e:#}");
    std::process::exit(127);
}

/// Runs a command to completion; fails with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS…` in the root namespace (used only to create and delete lab objects by name).
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

/// `ip ARGS…` inside the named lab namespace.
pub fn ip_in(netns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    ip(&full)
}

/// True when `pid` is alive (not a zombie) and its command line contains `needle` (guards
/// against PID reuse).
pub fn pid_is(pid: u32, needle: &str) -> bool {
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next()))
        .is_some_and(|state| !matches!(state, Some('Z' | 'X')));
    alive
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| !c.is_empty() && String::from_utf8_lossy(&c).contains(needle))
            .unwrap_or(false)
}

/// Ends a recorded process: SIGTERM, up to `grace`, then SIGKILL. Only if it is still ours.
pub fn stop_pid(pid: u32, needle: &str, grace: std::time::Duration) {
    if !pid_is(pid, needle) {
        return;
    }
    let p = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        // Reap it if it is our child; otherwise just watch /proc.
        let _ = nix::sys::wait::waitpid(p, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        if !pid_is(pid, needle) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(p, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
}

/// 16 random bytes as hex (container IDs).
pub fn random_hex() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}
