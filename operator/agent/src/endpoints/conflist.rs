//! The CNI network configuration the agent installs once it is ready.
//!
//! Container runtimes pick the first conflist in their config directory and kubelet reports the
//! node's network ready as soon as one is there, so the agent writes it only after its first
//! successful sync (Node known, datapath loaded) — never before. The file is replaced atomically
//! (write a hidden temporary, then rename) and left alone when it already says the same.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{json, Value};

/// The file name: sorts before other plugins' usual `10-*` names, so weir is the runtime's pick.
pub const FILE_NAME: &str = "05-weir.conflist";

/// The conflist pointing `weir-cni` at this agent. Runtimes whose libcni knows `cniVersions`
/// (CNI 1.1) take the highest they support from it; older ones (containerd 1.6 and 1.7 carry
/// libcni 1.1, which refuses a 1.1.0 config outright) read `cniVersion`, so that one stays
/// 1.0.0.
pub fn render(agent_socket: &Path, delete_queue: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": "weir",
        "plugins": [{
            "type": "weir-cni",
            "agentSocket": agent_socket,
            "deleteQueueDir": delete_queue,
        }]
    })
}

/// Writes `conf` as `dir/FILE_NAME` unless it already holds exactly that. Returns the path and
/// whether the file changed.
pub fn install(dir: &Path, conf: &Value) -> anyhow::Result<(PathBuf, bool)> {
    let path = dir.join(FILE_NAME);
    let mut bytes = serde_json::to_vec_pretty(conf)?;
    bytes.push(b'\n');
    if std::fs::read(&path).is_ok_and(|old| old == bytes) {
        return Ok((path, false));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok((path, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_atomically_and_only_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("weir-conflist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let conf = render(Path::new("/run/weir/agent.sock"), Path::new("/run/weir/delete-queue"));

        let (path, changed) = install(&dir, &conf).expect("install");
        assert!(changed);
        let read: Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(read, conf);
        assert_eq!(read["plugins"][0]["type"], "weir-cni");
        assert_eq!(read["plugins"][0]["agentSocket"], "/run/weir/agent.sock");

        let (_, changed) = install(&dir, &conf).expect("install again");
        assert!(!changed, "the same conflist is not rewritten");

        let other = render(Path::new("/other.sock"), Path::new("/q"));
        let (_, changed) = install(&dir, &other).expect("install a changed one");
        assert!(changed);
        let names: Vec<_> = std::fs::read_dir(&dir).expect("dir").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, [FILE_NAME], "no temporary is left behind");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
