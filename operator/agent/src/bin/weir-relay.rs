//! weir-relay: one Hubble `observer.Observer` for the cluster, in front of the node agents'
//! (see `weir_operator_agent::observe::relay`).
use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use weir_operator_agent::observe::{grpc, relay};

/// The cluster-wide observer: every call fanned out to the node agents' observers, flows merged
/// in time order, nodes that cannot be reached reported, never waited for.
#[derive(Parser, Debug)]
#[command(name = "weir-relay", version)]
struct Args {
    /// A node's observer: NAME=unix:///run/weir/observer.sock or NAME=HOST:PORT; once per node.
    #[arg(long = "peer", required = true)]
    peers: Vec<relay::Peer>,
    /// Unix socket the relay serves on.
    #[arg(long, default_value = "/run/weir/relay.sock")]
    socket: PathBuf,
    /// Also serve on this TCP address; loopback addresses only (flows name every pod's peers and
    /// the relay has no TLS).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
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
    if let Some(addr) = args.listen.filter(|a| !a.ip().is_loopback()) {
        anyhow::bail!("--listen {addr}: the relay serves TCP on loopback addresses only (no TLS)");
    }
    let mut names: Vec<&str> = args.peers.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        anyhow::bail!("--peer {}: given twice", w[0]);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let svc = relay::RelayService::new(args.peers, Duration::from_secs(args.node_timeout.max(1)));
        let socket = args.socket.clone();
        let served = grpc::serve(svc, args.socket, args.socket_gid, args.listen);
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
