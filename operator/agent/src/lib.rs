//! weir-agent, the node agent.
//!
//! Pipeline (one writer per stage), one folder per feature:
//! `source` (manifest directory or Kubernetes API → cluster snapshots and changes) → `state`
//! (pure desired state) → [`node::Node`] (the single writer: `endpoints` — store, IPAM, links,
//! routes — and the BPF maps, through the `services` and `policy` writers, behind one lock) →
//! [`serve::view::NodeView`] (what the writer publishes after every change) ← `serve` (the unix
//! socket weir-cni and the CLI talk to: writes through the lock, reads from the view; metrics).
//! `observe` reads the datapath's events on its own thread and serves flows (CLI, Hubble gRPC).
//!
//! Start is two-phase: [`Agent::build`] validates the config and opens the socket, store and
//! netlink; [`Agent::run`] serves. The datapath is loaded once this node's Node object (pod
//! CIDR, InternalIP) is known; until then STATUS says "not ready" and ADD says "try again later".
pub mod config;
pub mod endpoints;
pub mod node;
pub mod observe;
pub mod policy;
pub mod serve;
pub mod services;
pub mod source;
pub mod state;

use std::time::Duration;

use anyhow::Context as _;
use tokio::{net::UnixListener, sync::watch};

pub use crate::node::Node;
#[cfg(feature = "hubble")]
use crate::observe::grpc;
use crate::{
    config::Config,
    endpoints::{conflist, store},
    observe::{events, flows},
    serve::{api, local, metrics, view},
    source::ClusterSnapshot,
};

pub fn init_tracing() {
    use std::io::IsTerminal as _;
    // netlink-packet-route warns about every attribute newer than itself; that is noise here.
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| "info,netlink_packet_route=error".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

pub struct Agent {
    config: Config,
    listener: UnixListener,
    node: std::sync::Arc<tokio::sync::Mutex<Node>>,
    /// What the node's writer last published: every read is served from it.
    view: view::SharedView,
    drops: events::SharedDropLog,
    flows: flows::SharedFlowStore,
    metrics: std::sync::Arc<metrics::Metrics>,
    /// The state directory's lock, held until the agent exits.
    _lock: std::fs::File,
}

/// Writes a sysctl of the agent's own network namespace.
fn sysctl(path: &str, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value} to {path}"))
}

impl Agent {
    /// Validates the configuration and opens everything the agent needs; serves nothing yet.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        if let Some(dir) = config.manifests.as_ref().filter(|d| !d.is_dir()) {
            anyhow::bail!("--manifests {}: not a directory", dir.display());
        }
        // One agent per node: taken before anything shared is touched (a second agent would
        // otherwise replace the first one's socket).
        let lock = store::lock_instance(&config.state_dir)?;
        let listener = local::bind_private(&config.socket, config.socket_gid)?;
        // The node forwards between pods, the uplink and the tunnel.
        sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        let node = Node::open(config.clone()).context("opening node state")?;
        let view = node.view();
        let flow_capacity = config.flow_capacity as usize;
        #[cfg(feature = "hubble")]
        config.observer_tcp().map_err(anyhow::Error::msg)?;
        if let Some(addr) = config.metrics_addr {
            // Fail at start, not later, when the address cannot be served.
            std::net::TcpListener::bind(addr).with_context(|| format!("--metrics-addr {addr}: cannot listen"))?;
        }
        Ok(Self {
            config,
            listener,
            node: std::sync::Arc::new(tokio::sync::Mutex::new(node)),
            view,
            drops: Default::default(),
            flows: std::sync::Arc::new(std::sync::Mutex::new(flows::FlowStore::new(flow_capacity))),
            metrics: Default::default(),
            _lock: lock,
        })
    }

    /// Serves until SIGTERM/SIGINT. The pinned datapath keeps forwarding after exit.
    pub async fn run(self) -> anyhow::Result<()> {
        let (tx, rx) = watch::channel::<Option<ClusterSnapshot>>(None);
        let kick = std::sync::Arc::new(tokio::sync::Notify::new());
        match &self.config.manifests {
            Some(dir) => {
                let every = Duration::from_millis(self.config.poll_ms);
                tokio::spawn(source::manifest::watch_dir(dir.clone(), every, tx, kick.clone()));
            }
            #[cfg(not(feature = "kubernetes"))]
            None => anyhow::bail!("this weir-agent was built without the Kubernetes source: give --manifests"),
            #[cfg(feature = "kubernetes")]
            None => {
                let host = self.config.k8s_service_host.as_deref().map(str::trim).filter(|h| !h.is_empty());
                if host.is_none() {
                    tracing::warn!(
                        "no --k8s-service-host: using the in-cluster API address, which needs kube-proxy \
                         (without it that ClusterIP is served only by weir, once it has read the cluster)"
                    );
                }
                let api_server = host.map(|h| (h, self.config.k8s_service_port));
                let client = source::k8s::client(self.config.kubeconfig.as_deref(), api_server).await?;
                tracing::info!("cluster state from the Kubernetes API");
                tokio::spawn(source::k8s::watch_api(client, tx));
            }
        }
        let gate = api::AddGate { cluster: rx.clone(), kick, wait: self.config.pod_wait };
        let cni_conf = self
            .config
            .cni_conf_dir
            .clone()
            .map(|dir| (dir, conflist::render(&self.config.socket, &self.config.delete_queue)));
        let ingest = {
            let n = self.node.lock().await;
            flows::Ingest::new(self.config.node_name.clone(), n.enrichment(), self.metrics.clone())
                .with_cgroup_root(self.config.cgroup_root.clone())
                .with_http_records_per_sec(self.config.http_records_per_sec)
        };
        tokio::spawn(reconcile_loop(
            self.node.clone(),
            rx,
            Duration::from_secs(self.config.resync_secs),
            (self.drops.clone(), self.flows.clone(), Some(ingest)),
            cni_conf,
        ));
        if let Some(addr) = self.config.metrics_addr {
            let (view, store, m) = (self.view.clone(), self.flows.clone(), self.metrics.clone());
            let refresh = move || -> futures::future::BoxFuture<'static, ()> {
                let (view, store, m) = (view.clone(), store.clone(), m.clone());
                Box::pin(async move {
                    // From the node's published view: a scrape never waits for the writer.
                    view::latest(&view).refresh_metrics(&m);
                    let s = store.lock().unwrap_or_else(|p| p.into_inner());
                    m.state.with_label_values(&["flows_stored"]).set(s.len() as i64);
                    m.state.with_label_values(&["flow_store_capacity"]).set(s.capacity() as i64);
                })
            };
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = metrics::serve(addr, metrics, refresh).await {
                    tracing::error!(error = %format!("{e:#}"), "metrics server stopped");
                }
            });
        }
        #[cfg(feature = "hubble")]
        let observer = grpc::ObserverService {
            store: self.flows.clone(),
            view: self.view.clone(),
            node_name: self.config.node_name.clone(),
            started: std::time::Instant::now(),
        };
        #[cfg(feature = "hubble")]
        {
            let obs_socket = self.config.observer_socket.clone();
            // Checked when the agent was opened.
            let obs_addr = self.config.observer_tcp().unwrap_or_default();
            let socket_gid = self.config.socket_gid;
            tokio::spawn(async move {
                if let Err(e) = grpc::serve(observer, obs_socket, socket_gid, obs_addr).await {
                    tracing::error!(error = %format!("{e:#}"), "observer API stopped");
                }
            });
        }
        let state = api::ApiState {
            node: self.node.clone(),
            view: self.view.clone(),
            drops: self.drops.clone(),
            flows: self.flows.clone(),
            gate,
        };
        let server = tokio::spawn(api::serve(self.listener, self.config.socket_gid, state));
        tracing::info!(node = %self.config.node_name, socket = %self.config.socket.display(), "weir-agent serving");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping; the pinned datapath keeps forwarding"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
            r = server => r.context("API server task")?,
        }
        let _ = std::fs::remove_file(&self.config.socket);
        let _ = std::fs::remove_file(&self.config.observer_socket);
        Ok(())
    }
}

/// Sets glibc's allocator up for a long-lived agent whose memory is mostly small, long-lived
/// objects (pods, identities) with large, short-lived buffers in between (pages of listed JSON,
/// the kernel's BTF while the datapath loads). Called first thing in `main`, before any thread.
///
/// * A fixed mmap threshold: blocks from 64 KiB up get their own mapping and go back to the
///   kernel when freed. glibc's default threshold rises to the largest block freed so far, so
///   after the first listed page every later page was carved from the heap between pods'
///   objects and its space stayed in the process.
/// * One arena: the agent's few threads do not contend, and every extra arena is more free space
///   the process keeps.
///
/// Measured with `scripts/bench-footprint.sh` (10k pods / 1k Services): RSS 68 → 54 MiB.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets the allocator's parameters; it is called before other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands the allocator's free pages back to the kernel. A full pass (start, relist, periodic
/// resync) follows the transient peaks of the agent's life: the kernel's BTF parsed while the
/// datapath loads, pages of listed JSON. glibc keeps what they freed in its arenas, which at 10k
/// pods was a third of the agent's RSS; trimming after the pass returns it. Cost: one walk of the
/// arenas' free lists, a few milliseconds, once per full pass.
fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only touches the allocator's own free lists and takes its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Changes closer together than this make one reconcile pass.
pub const COALESCE: Duration = Duration::from_millis(50);

async fn reconcile_loop(
    node: std::sync::Arc<tokio::sync::Mutex<Node>>,
    mut rx: watch::Receiver<Option<ClusterSnapshot>>,
    resync: Duration,
    (drops, flows, mut ingest): (events::SharedDropLog, flows::SharedFlowStore, Option<flows::Ingest>),
    cni_conf: Option<(std::path::PathBuf, serde_json::Value)>,
) {
    let mut failed = false;
    // Where in the source's change log the last successful pass was.
    let mut seen: Option<u64> = None;
    loop {
        // A failed pass is retried quickly; otherwise wait for a change or the periodic resync.
        let wait = if failed { Duration::from_secs(1) } else { resync };
        let resync_due = tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                // Let a burst of changes settle into one pass.
                tokio::time::sleep(COALESCE).await;
                false
            }
            _ = tokio::time::sleep(wait) => true,
        };
        // The snapshot is persistent: this copy costs nothing, and the source goes on. What
        // changed since the last pass comes from its log; a retry or the periodic resync looks
        // at everything.
        let snap = rx.borrow_and_update().clone();
        let Some(snap) = snap else { continue };
        let changes = match seen {
            Some(s) if !failed && !resync_due => snap.log.since(s),
            _ => source::Changes::everything(),
        };
        if changes.is_empty() {
            continue;
        }
        let head = snap.log.head();
        failed = false;
        {
            let mut n = node.lock().await;
            match n.reconcile(snap, &changes).await {
                Ok(()) => {
                    seen = Some(head);
                    if changes.all {
                        release_free_heap();
                    }
                }
                Err(e) => {
                    failed = true;
                    tracing::error!(error = %format!("{e:#}"), "reconcile failed; retrying");
                }
            }
            // The conflist goes in (and is put back if removed) only while the node is ready.
            if let Some((dir, conf)) = cni_conf.as_ref().filter(|_| n.ready()) {
                match conflist::install(dir, conf) {
                    Ok((path, true)) => tracing::info!(path = %path.display(), "CNI configuration installed"),
                    Ok((_, false)) => {}
                    Err(e) => {
                        failed = true;
                        tracing::error!(error = %format!("{e:#}"), "cannot install the CNI configuration; retrying");
                    }
                }
            }
            if let Some((ring, mut ingest)) = n.take_events().and_then(|ring| Some((ring, ingest.take()?))) {
                // Binds made before this start (an upgrade, a crash): the ring holds only newer.
                ingest.seed_binds(n.binds());
                if let Err(e) = events::spawn_reader(ring, drops.clone(), flows.clone(), ingest) {
                    tracing::error!(error = %e, "cannot start the event reader; drops are counted but not listed");
                }
            }
        }
    }
}
