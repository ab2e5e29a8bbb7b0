//! Exec audit records: which program a process in a pod started, attributed to its pod.
//!
//! The datapath's `sched_process_exec` program reports the process, its cgroup id, the path it
//! executed and the start of its arguments (`ExecEvent`). The pod comes from the cgroup: on
//! cgroup v2 a cgroup's id is its directory's inode number, so the agent walks the node's pod
//! cgroup tree (`--cgroup-root`; at most once a second, when an id is not known yet) and reads
//! the pod from the path the way the kubelet lays it out: a directory `pod<UID>` (cgroupfs
//! driver) or `…-pod<UID with _>.slice` (systemd driver), the UID one of the cluster's pods. A
//! process in no such cgroup — a host process, when the root is the whole hierarchy, or a
//! cgroup that left before the walk — is recorded as not in a pod, and says so.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Directories walked at most per scan (a node has pods × containers of them).
const SCAN_LIMIT: usize = 65536;
/// Depth walked below the root at most.
const SCAN_DEPTH: usize = 8;
/// A miss rescans at most this often.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// Cgroup ids (inode numbers) under the node's pod cgroup root, and their paths below it.
pub struct Cgroups {
    root: Option<PathBuf>,
    paths: HashMap<u64, PathBuf>,
    scanned: Option<Instant>,
}

impl Cgroups {
    pub fn new(root: Option<PathBuf>) -> Self {
        Self { root, paths: HashMap::new(), scanned: None }
    }

    /// The path below the root of cgroup `id`: opened by its id where the kernel allows it (a
    /// cgroup v2 id is its kernfs file handle), else by scanning again when it is not known and
    /// the last scan is older than a second (a cgroup made since the last scan would otherwise
    /// wait for the next).
    pub fn path_of(&mut self, id: u64) -> Option<&Path> {
        if !self.paths.contains_key(&id) {
            if let Some(p) = self.root.as_deref().and_then(|root| by_handle(root, id)) {
                if self.paths.len() >= SCAN_LIMIT {
                    self.paths.clear();
                }
                self.paths.insert(id, p);
            } else if self.scanned.is_none_or(|t| t.elapsed() >= RESCAN_EVERY) {
                self.scan();
            }
        }
        self.paths.get(&id).map(PathBuf::as_path)
    }

    fn scan(&mut self) {
        use std::os::unix::fs::MetadataExt as _;
        self.scanned = Some(Instant::now());
        let Some(root) = self.root.clone() else { return };
        self.paths.clear();
        let mut stack = vec![(root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            if self.paths.len() >= SCAN_LIMIT {
                tracing::warn!(
                    limit = SCAN_LIMIT,
                    "cgroup tree larger than the exec audit walks; some execs will not name their pod"
                );
                break;
            }
            let Ok(meta) = std::fs::metadata(&dir) else { continue };
            self.paths.insert(meta.ino(), dir.strip_prefix(&root).unwrap_or(&dir).to_path_buf());
            if depth >= SCAN_DEPTH {
                continue;
            }
            let Ok(rd) = std::fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }
}

/// The path below `root` of the cgroup whose id is `id`, opened by file handle
/// (`open_by_handle_at`: cgroup v2's handles are kernfs ids, 8 bytes, type `FILEID_KERNFS`; needs
/// CAP_DAC_READ_SEARCH) and named by its `/proc/self/fd` link. `None` when the kernel refuses,
/// the cgroup is gone, or it is not below `root`.
fn by_handle(root: &Path, id: u64) -> Option<PathBuf> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    /// `struct file_handle` with room for one kernfs id.
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        id: u64,
    }
    const FILEID_KERNFS: i32 = 0xfe;
    let mount = std::fs::File::open(root).ok()?;
    let mut h = Handle { bytes: 8, kind: FILEID_KERNFS, id };
    // SAFETY: `h` is a file_handle whose `bytes` (8) match the payload that follows it; the
    // returned descriptor, if any, is owned here.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&raw mut h).cast(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a descriptor just returned to us and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let root = std::fs::canonicalize(root).ok()?;
    path.strip_prefix(&root).ok().map(Path::to_path_buf)
}

/// The pod UIDs a cgroup path may name, innermost first: `pod<UID>` directories (the kubelet's
/// cgroupfs layout) and `…-pod<UID>.slice` (its systemd layout, where the UID's dashes are
/// underscores).
pub fn pod_uids_in(path: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for c in path.components().rev() {
        let c = c.as_os_str().to_string_lossy();
        let c = c.strip_suffix(".slice").unwrap_or(&c);
        if let Some(at) = c.rfind("pod") {
            let uid = &c[at + 3..];
            if uid.len() >= 8 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_') {
                out.push(uid.replace('_', "-"));
            }
        }
    }
    out
}

/// The arguments as the process got them (NUL-separated in its memory), printable: each
/// argument's non-printable bytes escaped. `complete` is false when the copy was cut short.
pub fn arguments(raw: &[u8], total: u32) -> (Vec<String>, bool) {
    let complete = raw.len() as u64 >= u64::from(total);
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    let args = if raw.is_empty() { Vec::new() } else { raw.split(|&b| b == 0).map(printable).collect() };
    (args, complete)
}

/// Bytes from a process as text: valid UTF-8 kept, control characters and invalid bytes escaped.
pub fn printable(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uids_come_from_kubelet_layouts() {
        let cgroupfs = Path::new("kubepods/burstable/pod3f1c2a9e-7b4d-4c1e-9a0b-1234567890ab/0123abcd");
        assert_eq!(pod_uids_in(cgroupfs), ["3f1c2a9e-7b4d-4c1e-9a0b-1234567890ab"]);
        let systemd = Path::new(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod3f1c2a9e_7b4d_4c1e_9a0b_1234567890ab.slice/cri-containerd-0123.scope",
        );
        assert_eq!(pod_uids_in(systemd), ["3f1c2a9e-7b4d-4c1e-9a0b-1234567890ab"]);
        assert!(pod_uids_in(Path::new("system.slice/containerd.service")).is_empty());
        assert!(pod_uids_in(Path::new("user.slice/podman-pod.slice")).is_empty());
    }

    #[test]
    fn arguments_are_split_escaped_and_marked_when_cut() {
        assert_eq!(
            arguments(b"curl\0-s\0http://x/\0", 18),
            (vec!["curl".into(), "-s".into(), "http://x/".into()], true)
        );
        assert_eq!(
            arguments(b"sh\0-c\0echo \x1b[31m", 300),
            (vec!["sh".into(), "-c".into(), "echo \\u{1b}[31m".into()], false)
        );
        assert_eq!(arguments(b"", 0), (Vec::<String>::new(), true));
    }

    #[test]
    fn cgroup_ids_are_found_by_walking_the_tree() {
        use std::os::unix::fs::MetadataExt as _;
        let root = std::env::temp_dir().join(format!("weir-cgroups-test-{}", std::process::id()));
        let leaf = root.join("podabcdef01-2345").join("c1");
        std::fs::create_dir_all(&leaf).expect("dirs");
        let id = std::fs::metadata(&leaf).expect("meta").ino();
        let mut c = Cgroups::new(Some(root.clone()));
        assert_eq!(c.path_of(id), Some(Path::new("podabcdef01-2345/c1")));
        assert_eq!(c.path_of(u64::MAX), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// On the real cgroup v2 hierarchy a cgroup made after the last walk is found at once, by
    /// its id (file handle), without waiting for the next walk.
    #[test]
    fn a_new_cgroup_is_found_by_its_id_without_a_walk() {
        use std::os::unix::fs::MetadataExt as _;
        let unified = Path::new("/sys/fs/cgroup/unified");
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 || !unified.join("cgroup.procs").exists() {
            eprintln!(
                "SKIPPED a_new_cgroup_is_found_by_its_id_without_a_walk: needs root and cgroup v2 at {unified:?}"
            );
            return;
        }
        let root = unified.join(format!("weir-cgroups-test-{}", std::process::id()));
        std::fs::create_dir_all(&root).expect("test cgroup");
        let mut c = Cgroups::new(Some(root.clone()));
        assert_eq!(c.path_of(u64::MAX), None); // walks once
        let leaf = root.join("podabcdef01-2345");
        std::fs::create_dir(&leaf).expect("child cgroup");
        let id = std::fs::metadata(&leaf).expect("meta").ino();
        let found = c.path_of(id).map(Path::to_path_buf);
        let _ = std::fs::remove_dir(&leaf);
        let _ = std::fs::remove_dir(&root);
        assert_eq!(found.as_deref(), Some(Path::new("podabcdef01-2345")));
    }
}
