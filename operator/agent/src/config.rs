//! Agent settings (flags or environment).
use std::{net::Ipv4Addr, path::PathBuf};

use clap::{Parser, ValueEnum};
use ipnetwork::Ipv4Network;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// Routes to each node's pod CIDR over the underlay (nodes share an L2 segment or routers know the CIDRs).
    Direct,
    /// VXLAN encapsulation to the owning node (collect_metadata device, VNI from --vxlan-vni).
    Vxlan,
}

#[derive(Clone, Debug, Parser)]
#[command(name = "weir-agent", about = "weir node agent: IPAM, endpoints and the eBPF datapath")]
pub struct Config {
    /// This node's name (the Node object to read spec.podCIDR and addresses from).
    #[arg(long, env = "WEIR_NODE_NAME")]
    pub node_name: String,
    /// Directory of Kubernetes manifests (Node, Namespace, Pod, ...) that is the cluster state
    /// (standalone hosts, the lab). Without it the agent reads the Kubernetes API.
    #[arg(long, env = "WEIR_MANIFESTS", conflicts_with = "kubeconfig")]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig for the Kubernetes API source; default: the in-cluster service account (or
    /// `$KUBECONFIG`).
    #[arg(long, env = "WEIR_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The API server's real address (host or IP), used instead of the in-cluster one: without
    /// kube-proxy the in-cluster address is a ClusterIP only weir serves, and weir serves it only
    /// after it has read the cluster (as Cilium's k8sServiceHost).
    /// Empty: the in-cluster address. Not used with --manifests.
    #[arg(long, env = "WEIR_K8S_SERVICE_HOST")]
    pub k8s_service_host: Option<String>,
    /// The API server's port, with --k8s-service-host.
    #[arg(long, env = "WEIR_K8S_SERVICE_PORT", default_value_t = 6443)]
    pub k8s_service_port: u16,
    /// Where the agent persists endpoints and IPAM.
    #[arg(long, env = "WEIR_STATE_DIR", default_value = "/var/lib/weir")]
    pub state_dir: PathBuf,
    /// A directory on a bpffs mount; pins go under <bpffs>/weir/v<ABI>/.
    #[arg(long, env = "WEIR_BPFFS", default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
    /// Unix socket for weir-cni and the CLI.
    #[arg(long, env = "WEIR_SOCKET", default_value = weir_operator_api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Group (numeric gid) that may use the agent and observer sockets besides root (mode 0660);
    /// without it they are 0600, root only.
    #[arg(long, env = "WEIR_SOCKET_GID")]
    pub socket_gid: Option<u32>,
    /// Directory where weir-cni queues DELs while the agent is down.
    #[arg(long, env = "WEIR_DELETE_QUEUE", default_value = "/run/weir/delete-queue")]
    pub delete_queue: PathBuf,
    /// The runtime's CNI result cache (libcni's), read only to rebuild a lost or corrupt endpoint
    /// store: it names each attachment's pod and network namespace.
    #[arg(long, env = "WEIR_CNI_CACHE_DIR", default_value = "/var/lib/cni/results")]
    pub cni_cache_dir: PathBuf,
    /// Where to install the CNI configuration (`05-weir.conflist`) once the agent is ready, e.g.
    /// /etc/cni/net.d. Without it the agent installs none (the lab and tests write their own).
    #[arg(long, env = "WEIR_CNI_CONF_DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// The node's uplink interface (carries traffic between nodes and to the outside).
    #[arg(long, env = "WEIR_UPLINK")]
    pub uplink: String,
    #[arg(long, env = "WEIR_ROUTING", value_enum, default_value = "direct")]
    pub routing: Routing,
    /// The cluster's pod CIDR (all nodes' pod CIDRs lie inside; traffic leaving it is masqueraded).
    #[arg(long, env = "WEIR_CLUSTER_CIDR", default_value = "10.244.0.0/16")]
    pub cluster_cidr: Ipv4Network,
    /// Pod MTU; defaults to the uplink MTU (minus 50 with VXLAN).
    #[arg(long, env = "WEIR_MTU")]
    pub mtu: Option<u32>,
    #[arg(long, env = "WEIR_VXLAN_VNI", default_value_t = 2)]
    pub vxlan_vni: u32,
    #[arg(long, env = "WEIR_VXLAN_PORT", default_value_t = 4789)]
    pub vxlan_port: u16,
    /// Masquerade source ports, FIRST-LAST.
    #[arg(long, env = "WEIR_NAT_PORTS", default_value = "61000-65000", value_parser = parse_ports)]
    pub nat_ports: (u16, u16),
    /// cgroup v2 directory holding this node's pods: Service translation at connect()/sendmsg()
    /// is attached here. Without it, Services are not served.
    #[arg(long, env = "WEIR_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,
    /// How often the agent re-reads the manifest directory, in milliseconds.
    #[arg(long, env = "WEIR_POLL_MS", default_value_t = 250)]
    pub poll_ms: u64,
    /// How long a released pod address rests before it is handed out again (seconds; 0 turns
    /// the quarantine off). Reused earlier only when the pod CIDR has nothing else left.
    #[arg(long = "ip-quarantine-secs", env = "WEIR_IP_QUARANTINE_SECS", default_value = "60", value_parser = parse_secs)]
    pub ip_quarantine: std::time::Duration,
    /// How long an ADD waits for its pod to appear in the cluster state (its labels decide its
    /// policy) before it fails with "try again later", in seconds.
    #[arg(long = "pod-wait-secs", env = "WEIR_POD_WAIT_SECS", default_value = "10", value_parser = parse_secs)]
    pub pod_wait: std::time::Duration,
    /// Full resync of kernel state against desired state, in seconds.
    #[arg(long, env = "WEIR_RESYNC_SECS", default_value_t = 30)]
    pub resync_secs: u64,
    /// Flow and DNS events from the datapath (`weir observe`, flow metrics). Drops are always
    /// reported.
    #[arg(long, env = "WEIR_OBSERVE", default_value_t = true, action = clap::ArgAction::Set)]
    pub observe: bool,
    /// With `--observe`: HTTP/1.x requests and responses on pod connections, parsed from the
    /// start of each message the datapath copies (`weir observe --type l7`, HTTP metrics). Off,
    /// no payload but DNS is ever copied.
    #[arg(long = "observe-http", env = "WEIR_OBSERVE_HTTP", default_value_t = true, action = clap::ArgAction::Set)]
    pub observe_http: bool,
    /// HTTP requests and responses kept as records for `weir observe` and the observer API, per
    /// second at most (0: every one). Every message is counted in the HTTP metrics regardless;
    /// those not kept are counted in `weir_http_records_skipped_total`.
    #[arg(long = "http-records-per-sec", env = "WEIR_HTTP_RECORDS_PER_SEC", default_value_t = crate::observe::flows::DEFAULT_HTTP_RECORDS_PER_SEC)]
    pub http_records_per_sec: u32,
    /// With `--observe`: an audit of every program started by a process under `--cgroup-root`
    /// (a BTF tracepoint on exec; `weir observe --type exec`), each record attributed to its pod
    /// by cgroup, or saying it is in none. Attached while the agent runs.
    #[arg(long = "observe-exec", env = "WEIR_OBSERVE_EXEC", default_value_t = true, action = clap::ArgAction::Set)]
    pub observe_exec: bool,
    /// How many recent flows the agent keeps for `weir observe` and the observer API (oldest are
    /// evicted first). About 1.8 KiB of memory each.
    #[arg(long, env = "WEIR_FLOW_CAPACITY", default_value_t = 16384, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub flow_capacity: u32,
    /// Unix socket of the Hubble-compatible observer API (gRPC `observer.Observer`).
    #[arg(long, env = "WEIR_OBSERVER_SOCKET", default_value = "/run/weir/observer.sock")]
    pub observer_socket: PathBuf,
    /// Also serve the observer API on this TCP address: a loopback address in the clear, any
    /// other (the node's, for the relay; Hubble's port is 4244) only with the three TLS files.
    #[arg(long, env = "WEIR_OBSERVER_ADDR")]
    pub observer_addr: Option<std::net::SocketAddr>,
    /// PEM certificate the observer serves TLS with (on --observer-addr).
    #[arg(long, env = "WEIR_OBSERVER_TLS_CERT", requires_all = ["observer_tls_key", "observer_addr"])]
    pub observer_tls_cert: Option<PathBuf>,
    /// PEM private key of --observer-tls-cert.
    #[arg(long, env = "WEIR_OBSERVER_TLS_KEY", requires = "observer_tls_cert")]
    pub observer_tls_key: Option<PathBuf>,
    /// PEM CA that clients' certificates must be signed by (the relay's); required off loopback.
    #[arg(long, env = "WEIR_OBSERVER_TLS_CLIENT_CA", requires = "observer_tls_cert")]
    pub observer_tls_client_ca: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (`/metrics`); the install uses the node's address
    /// and port 9962. Off without it. At most 8 scrapes at once, 5 s to send the request headers,
    /// 30 s per connection.
    #[arg(long, env = "WEIR_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Config {
    /// How the observer is served over TCP, if it is; refused by name where it would be open.
    #[cfg(feature = "hubble")]
    pub fn observer_tcp(&self) -> Result<Option<crate::observe::grpc::TcpServing>, String> {
        let Some(addr) = self.observer_addr else { return Ok(None) };
        let tls = match (&self.observer_tls_cert, &self.observer_tls_key) {
            (Some(cert), Some(key)) => Some(crate::observe::grpc::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.observer_tls_client_ca.clone(),
            }),
            _ => None,
        };
        crate::observe::grpc::TcpServing::new(addr, tls, true).map(Some).map_err(|e| format!("--observer-addr {e}"))
    }
}

/// The pod's default gateway: a link-local address answered by a static neighbour entry.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

pub fn parse_secs(s: &str) -> Result<std::time::Duration, String> {
    s.trim()
        .parse::<u64>()
        .map(std::time::Duration::from_secs)
        .map_err(|e| format!("{s:?}: expected whole seconds ({e})"))
}

pub fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or_else(|| format!("{s:?}: expected FIRST-LAST"))?;
    let a: u16 = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u16 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a == 0 || a > b {
        return Err(format!("{s:?}: need 0 < FIRST <= LAST"));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_are_validated() {
        assert_eq!(parse_ports("61000-65000"), Ok((61000, 65000)));
        assert!(parse_ports("65000-61000").is_err());
        assert!(parse_ports("0-10").is_err());
        assert!(parse_ports("x").is_err());
    }

    #[cfg(feature = "hubble")]
    #[test]
    fn the_observer_leaves_loopback_only_over_mutual_tls() {
        use clap::Parser as _;
        let config = |extra: &[&str]| {
            let base = ["weir-agent", "--node-name", "n1", "--uplink", "eth0", "--cluster-cidr", "10.244.0.0/16"];
            Config::try_parse_from(base.iter().chain(extra)).map_err(|e| e.to_string())
        };
        let tcp = |extra: &[&str]| config(extra).expect("parses").observer_tcp();
        assert!(tcp(&[]).expect("no TCP").is_none());
        assert!(tcp(&["--observer-addr", "127.0.0.1:4245"]).expect("loopback in the clear").is_some());
        let e = tcp(&["--observer-addr", "10.0.0.1:4244"]).unwrap_err();
        assert!(e.contains("10.0.0.1:4244") && e.contains("only over TLS"), "{e}");
        let tls = ["--observer-addr", "10.0.0.1:4244", "--observer-tls-cert", "c.pem", "--observer-tls-key", "k.pem"];
        let e = tcp(&tls).unwrap_err();
        assert!(e.contains("client certificates"), "{e}");
        let mutual = [&tls[..], &["--observer-tls-client-ca", "ca.pem"]].concat();
        assert!(tcp(&mutual).expect("mutual TLS").is_some());
        // A key without its certificate, or TLS without an address: refused by clap, by name.
        let e = config(&["--observer-tls-key", "k.pem"]).unwrap_err();
        assert!(e.contains("--observer-tls-cert"), "{e}");
        let e = config(&["--observer-tls-cert", "c.pem", "--observer-tls-key", "k.pem"]).unwrap_err();
        assert!(e.contains("--observer-addr"), "{e}");
    }
}
