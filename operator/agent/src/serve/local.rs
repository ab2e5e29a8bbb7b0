//! The agent's local surfaces: the unix sockets weir-cni, the CLI and Hubble clients use, and
//! the limits every server the agent runs keeps.
//!
//! A socket is created with mode 0600 (never, even for an instant, wider: the umask is narrowed
//! around `bind`), or 0660 and the group `--socket-gid` names. A connecting peer must be root or
//! the agent's own user; with a group configured, the file mode already admitted the group's
//! members. Whoever can reach the agent socket can delete every pod's network, so nobody else
//! may.
use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    net::{UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

/// How long a client may take to send its request (the CNI plugin sends it at once).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections the agent API serves at once (a write waits for the node's writer at most once;
/// `weir observe --follow` holds one for as long as it runs). Room for a node's worth of ADDs
/// arriving together (a /24 holds 254 pods); beyond it a caller is told to try again later.
pub const API_CONNECTIONS: usize = 512;
/// Scrapes the metrics server serves at once, and how long one may take to send its headers.
pub const METRICS_CONNECTIONS: usize = 8;
pub const METRICS_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a metrics connection stays open.
pub const METRICS_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds a unix socket at `path` (replacing a stale file) that only root, the agent's user and,
/// when `gid` is given, that group can connect to.
pub fn bind_private(path: &Path, gid: Option<u32>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket file left by a previous agent would make bind fail; nobody serves it.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing stale {}", path.display()))
        }
        _ => {}
    }
    // SAFETY: umask only swaps the process's file creation mask; restored right after.
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to group {gid}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("chmod 0660 {}", path.display()))?;
    }
    listener.set_nonblocking(true)?;
    Ok(UnixListener::from_std(listener)?)
}

/// Whether a connected peer may use the socket: root or the agent's user; with a group
/// configured, anyone the file mode let in (group membership, supplementary groups included,
/// was checked by the kernel at connect()).
pub fn peer_allowed(stream: &UnixStream, gid: Option<u32>) -> Result<(), String> {
    let cred = stream.peer_cred().map_err(|e| format!("reading peer credentials: {e}"))?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if cred.uid() == 0 || cred.uid() == me || gid.is_some() {
        Ok(())
    } else {
        Err(format!("peer uid {} (pid {:?}) is neither root nor the agent's user", cred.uid(), cred.pid()))
    }
}

/// A cap on concurrent connections: `try_enter` gives a permit, or `None` when full.
#[derive(Clone)]
pub struct ConnectionCap(Arc<Semaphore>);

impl ConnectionCap {
    pub fn new(n: usize) -> Self {
        Self(Arc::new(Semaphore::new(n)))
    }

    pub fn try_enter(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_are_private_from_the_start() {
        let dir = std::env::temp_dir().join(format!("weir-local-{}", std::process::id()));
        let path = dir.join("agent.sock");
        let _l = bind_private(&path, None).expect("bind");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        // A second bind replaces the stale file.
        drop(_l);
        let _l = bind_private(&path, None).expect("rebind over a stale socket");
        let c = UnixStream::connect(&path).await.expect("connect as ourselves");
        assert!(peer_allowed(&c, None).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_cap_refuses_when_full() {
        let cap = ConnectionCap::new(2);
        let a = cap.try_enter().expect("first");
        let _b = cap.try_enter().expect("second");
        assert!(cap.try_enter().is_none(), "third refused");
        drop(a);
        assert!(cap.try_enter().is_some(), "a slot frees when a connection ends");
    }
}
