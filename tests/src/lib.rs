//! Helpers for privileged tests, the lab and the benches: the root gate, private bpffs mounts,
//! network namespaces (`netns`, the one helper every crate uses), and paths of the workspace
//! binaries.
//!
//! Privileged tests call [`require_root`]. Without root they print why they are skipped and
//! return; with `WEIR_REQUIRE_PRIVILEGED=1` (set by scripts/test.sh in CI, which runs as root)
//! a missing privilege fails the test instead, so CI can never skip them silently.
pub mod netns;
pub mod pkt;

pub use netns::NetNs;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// Returns false (after printing the reason) when the test must be skipped.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("WEIR_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
        panic!("{test}: needs root, and WEIR_REQUIRE_PRIVILEGED=1 forbids skipping");
    }
    eprintln!("SKIPPED {test}: needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF)");
    false
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `<prefix><pid36><seq>`.
pub fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", radix36(std::process::id()))
}

fn radix36(mut v: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    loop {
        s.push(digits[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

/// A bpffs mounted on a fresh directory under /run; unmounted and removed on drop.
pub struct Bpffs {
    pub path: PathBuf,
}

impl Bpffs {
    pub fn mount() -> Self {
        let path = PathBuf::from("/run").join(unique("weir-test-bpffs-"));
        std::fs::create_dir_all(&path).expect("create bpffs dir");
        nix::mount::mount(Some("bpf"), &path, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .expect("mount bpffs");
        Self { path }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Runs `f` on a new OS thread inside a fresh, anonymous network namespace, which disappears
/// when the thread ends (also on panic). The thread's mounts are the caller's.
pub fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Path of a workspace binary built next to the running test (scripts/test.sh builds them
/// by `cargo test`, which builds the binaries of every package with integration tests).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(p.exists(), "{} not built: `cargo test` builds it (its package has integration tests)", p.display());
    p
}

/// A child process ended (SIGTERM, then SIGKILL) by its PID on drop.
pub struct Proc(pub std::process::Child);

impl Proc {
    pub fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}
