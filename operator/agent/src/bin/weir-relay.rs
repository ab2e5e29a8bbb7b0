//! weir-relay: one Hubble `observer.Observer` for the cluster, in front of the node agents'
//! (see `weir_operator_agent::observe::relay`; nodes found by `observe::discovery`).
use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use weir_operator_agent::observe::{discovery, grpc, relay};

/// The cluster-wide observer: every call fanned out to the node agents' observers, flows merged
/// in time order, nodes that cannot be reached reported, never waited for.
#[derive(Parser, Debug)]
#[command(name = "weir-relay", version)]
#[command(group = clap::ArgGroup::new("nodes").required(true).args(["peers", "peers_file", "kubernetes_nodes"]))]
struct Args {
    /// A node's observer: NAME=unix:///run/weir/observer.sock or NAME=HOST:PORT; once per node.
    #[arg(long = "peer")]
    peers: Vec<relay::Peer>,
    /// The nodes from a file of NAME=TARGET lines, read again when it changes.
    #[arg(long)]
    peers_file: Option<PathBuf>,
    /// The nodes from the cluster's Kubernetes Nodes (their InternalIP at --peer-port).
    #[arg(long)]
    kubernetes_nodes: bool,
    /// The agents' observer port on each Node (their --observer-addr).
    #[arg(long, default_value_t = 4244)]
    peer_port: u16,
    /// PEM CA the agents' observer certificates are signed by: HOST:PORT peers over TLS.
    #[arg(long, requires_all = ["peer_tls_cert", "peer_tls_key"])]
    peer_tls_ca: Option<PathBuf>,
    /// PEM certificate the relay presents to the agents.
    #[arg(long, requires = "peer_tls_ca")]
    peer_tls_cert: Option<PathBuf>,
    /// PEM private key of --peer-tls-cert.
    #[arg(long, requires = "peer_tls_ca")]
    peer_tls_key: Option<PathBuf>,
    /// The name the agents' certificates carry.
    #[arg(long, default_value = "weir-observer")]
    peer_tls_server_name: String,
    /// Unix socket the relay serves on.
    #[arg(long, default_value = "/run/weir/relay.sock")]
    socket: PathBuf,
    /// Also serve on this TCP address: loopback in the clear, any other only with --tls-cert.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// PEM certificate the relay serves TLS with on --listen.
    #[arg(long, requires_all = ["tls_key", "listen"])]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA that clients' certificates must be signed by (none: any client may connect).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Group allowed to connect to the socket besides root (as the agent's --socket-gid).
    #[arg(long)]
    socket_gid: Option<u32>,
    /// Seconds a node may take to connect or answer before it is reported unavailable.
    #[arg(long, default_value_t = 2)]
    node_timeout: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    weir_operator_agent::init_tracing();
    let tcp = match args.listen {
        None => None,
        Some(addr) => {
            let tls = args.tls_cert.clone().zip(args.tls_key.clone()).map(|(cert, key)| grpc::TlsFiles {
                cert,
                key,
                client_ca: args.tls_client_ca.clone(),
            });
            Some(grpc::TcpServing::new(addr, tls, false).map_err(|e| anyhow::anyhow!("--listen {e}"))?)
        }
    };
    let tls = match (&args.peer_tls_ca, &args.peer_tls_cert, &args.peer_tls_key) {
        (Some(ca), Some(cert), Some(key)) => Some(relay::client_tls(ca, cert, key, &args.peer_tls_server_name)?),
        _ => None,
    };
    let mut names: Vec<&str> = args.peers.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        anyhow::bail!("--peer {}: given twice", w[0]);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let peers = if let Some(file) = args.peers_file {
            discovery::follow_peers_file(file)?
        } else if args.kubernetes_nodes {
            follow_nodes(args.peer_port).await?
        } else {
            tokio::sync::watch::channel(Arc::new(args.peers)).1
        };
        let dial = relay::Dial { timeout: Duration::from_secs(args.node_timeout.max(1)), tls };
        let svc = relay::RelayService::new(peers, dial);
        let socket = args.socket.clone();
        let served = grpc::serve(svc, args.socket, args.socket_gid, tcp);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let r = tokio::select! {
            r = served => r.context("relay API"),
            _ = term.recv() => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        };
        let _ = std::fs::remove_file(&socket);
        r
    })
}

#[cfg(feature = "kubernetes")]
async fn follow_nodes(port: u16) -> anyhow::Result<tokio::sync::watch::Receiver<Arc<Vec<relay::Peer>>>> {
    discovery::follow_kubernetes_nodes(port).await.context("--kubernetes-nodes")
}

#[cfg(not(feature = "kubernetes"))]
async fn follow_nodes(_: u16) -> anyhow::Result<tokio::sync::watch::Receiver<Arc<Vec<relay::Peer>>>> {
    anyhow::bail!("--kubernetes-nodes: this build has no Kubernetes client (feature `kubernetes`)")
}
