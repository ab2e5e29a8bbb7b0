//! Where the relay finds the node agents' observers, kept current while it runs:
//!
//! * given (`--peer NAME=TARGET`, fixed);
//! * a peers file (`--peers-file`: one `NAME=TARGET` per line, `#` comments), read again when it
//!   changes — the lab writes one, and anything can generate one. A file that does not parse is
//!   refused by line and the previous set kept;
//! * Kubernetes Nodes (`--kubernetes-nodes`): every Node's first InternalIP (IPv4 preferred) at
//!   the agents' observer port, by the Node's name; listed, then watched.
use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;

use super::relay::Peer;

/// How often a peers file is looked at.
pub const PEERS_FILE_POLL: Duration = Duration::from_secs(2);

/// A peers file's text → its peers, or why not (naming the line).
pub fn parse_peers(text: &str) -> Result<Vec<Peer>, String> {
    let mut peers: Vec<Peer> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let p: Peer = line.parse().map_err(|e| format!("line {}: {e}", i + 1))?;
        if peers.iter().any(|q| q.name == p.name) {
            return Err(format!("line {}: node {:?} given twice", i + 1, p.name));
        }
        peers.push(p);
    }
    Ok(peers)
}

/// Follows a peers file: its peers now (an error if it cannot be read or parsed at start), then
/// every change. Later errors are logged and the previous set kept.
pub fn follow_peers_file(path: PathBuf) -> anyhow::Result<watch::Receiver<Arc<Vec<Peer>>>> {
    use anyhow::Context as _;
    let read = |p: &PathBuf| -> Result<(std::time::SystemTime, Vec<Peer>), String> {
        let modified = std::fs::metadata(p).and_then(|m| m.modified()).map_err(|e| e.to_string())?;
        let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
        Ok((modified, parse_peers(&text)?))
    };
    let (mut seen, first) =
        read(&path).map_err(anyhow::Error::msg).with_context(|| format!("--peers-file {}", path.display()))?;
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PEERS_FILE_POLL).await;
            if tx.is_closed() {
                return;
            }
            match read(&path) {
                Ok((modified, _)) if modified == seen => {}
                Ok((modified, peers)) => {
                    seen = modified;
                    tracing::info!(file = %path.display(), nodes = peers.len(), "peers file read");
                    tx.send_replace(Arc::new(peers));
                }
                Err(why) => {
                    tracing::warn!(file = %path.display(), %why, "peers file not used; the previous nodes stay");
                }
            }
        }
    });
    Ok(rx)
}

/// Nodes → their agents' observers at `port`: the first InternalIP of each (IPv4 first), by the
/// Node's name; Nodes without one are left out (logged by the caller's count).
#[cfg(feature = "kubernetes")]
pub fn node_peers<'a>(nodes: impl IntoIterator<Item = &'a k8s_openapi::api::core::v1::Node>, port: u16) -> Vec<Peer> {
    let mut peers: Vec<Peer> = nodes
        .into_iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let addresses = n.status.as_ref()?.addresses.as_ref()?;
            let internal: Vec<std::net::IpAddr> =
                addresses.iter().filter(|a| a.type_ == "InternalIP").filter_map(|a| a.address.parse().ok()).collect();
            let ip = internal.iter().find(|ip| ip.is_ipv4()).or(internal.first())?;
            Some(Peer { name, target: super::relay::Target::Tcp(std::net::SocketAddr::new(*ip, port).to_string()) })
        })
        .collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    peers
}

/// Follows the cluster's Nodes (list, then watch; relisted after a lost watch, with backoff).
/// The set is published once the first list is complete.
#[cfg(feature = "kubernetes")]
pub async fn follow_kubernetes_nodes(port: u16) -> anyhow::Result<watch::Receiver<Arc<Vec<Peer>>>> {
    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::Node;
    use kube::runtime::{reflector, watcher, WatchStreamExt as _};
    let client = kube::Client::try_default().await?;
    let (reader, writer) = reflector::store::<Node>();
    let stream = reflector(writer, watcher(kube::Api::<Node>::all(client), watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let (tx, rx) = watch::channel(Arc::new(Vec::new()));
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::warn!(error = %e, "watching Nodes; the previous nodes stay");
                continue;
            }
            let nodes = reader.state();
            let peers = node_peers(nodes.iter().map(|n| n.as_ref()), port);
            if peers != **tx.borrow() {
                tracing::info!(nodes = peers.len(), without_address = nodes.len() - peers.len(), "nodes discovered");
                tx.send_replace(Arc::new(peers));
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::relay::Target;

    #[test]
    fn a_peers_file_is_read_or_refused_by_line() {
        let text = "# the lab's nodes\nn1=unix:///run/a.sock\n\n  n2=10.0.0.2:4244  \n";
        let peers = parse_peers(text).expect("valid");
        assert_eq!(peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["n1", "n2"]);
        assert_eq!(peers[1].target, Target::Tcp("10.0.0.2:4244".into()));
        assert!(parse_peers("").expect("empty").is_empty());
        let e = parse_peers("n1=unix:///a\nn1=unix:///b\n").unwrap_err();
        assert!(e.starts_with("line 2:") && e.contains("twice"), "{e}");
        let e = parse_peers("n1=unix:///a\nbroken\n").unwrap_err();
        assert!(e.starts_with("line 2:") && e.contains("\"broken\""), "{e}");
    }

    #[tokio::test]
    async fn a_changed_peers_file_is_followed_and_a_broken_one_keeps_the_last() {
        tokio::time::pause();
        let dir = std::env::temp_dir().join(format!("weir-peers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("peers");
        std::fs::write(&file, "n1=unix:///a\n").unwrap();
        let mut rx = follow_peers_file(file.clone()).expect("read");
        assert_eq!(rx.borrow().len(), 1);
        // A later modification time (the file system's clock may be coarse).
        let later = |s: &str| {
            std::fs::write(&file, s).unwrap();
            let f = std::fs::File::options().write(true).open(&file).unwrap();
            let t = f.metadata().unwrap().modified().unwrap() + Duration::from_secs(rand_secs());
            f.set_modified(t).unwrap();
        };
        later("n1=unix:///a\nn2=unix:///b\n");
        tokio::time::advance(PEERS_FILE_POLL * 2).await;
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().len(), 2);
        later("n1=unix:///a\nnot a peer\n");
        tokio::time::advance(PEERS_FILE_POLL * 2).await;
        tokio::task::yield_now().await;
        assert!(!rx.has_changed().unwrap());
        assert_eq!(rx.borrow().len(), 2);
        assert!(follow_peers_file(dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn rand_secs() -> u64 {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(10);
        N.fetch_add(10, std::sync::atomic::Ordering::Relaxed)
    }

    #[cfg(feature = "kubernetes")]
    #[test]
    fn nodes_are_reached_at_their_internal_address() {
        use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus};
        let node = |name: &str, addrs: &[(&str, &str)]| Node {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
            status: Some(NodeStatus {
                addresses: Some(
                    addrs.iter().map(|(t, a)| NodeAddress { type_: (*t).into(), address: (*a).into() }).collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let nodes = [
            node("b", &[("Hostname", "b"), ("InternalIP", "fd00::2"), ("InternalIP", "10.0.0.2")]),
            node("a", &[("ExternalIP", "203.0.113.1"), ("InternalIP", "10.0.0.1")]),
            node("c", &[("Hostname", "c")]),
        ];
        let peers = node_peers(&nodes, 4244);
        let got: Vec<(String, String)> = peers.iter().map(|p| (p.name.clone(), p.target.to_string())).collect();
        assert_eq!(got, [("a".into(), "10.0.0.1:4244".into()), ("b".into(), "10.0.0.2:4244".into())]);
    }
}
