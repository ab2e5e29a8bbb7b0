//! `weir-relay`: one `observer.Observer` for the whole cluster, as Hubble Relay gives. It holds
//! no flows: every call is fanned out to the node agents' observers and their answers merged.
//!
//! * `GetFlows`: the request is checked once here (a filter weir cannot evaluate is refused by
//!   name, as a node would), then sent to every node. The answer starts with which nodes are
//!   connected and which could not be reached (`node_status`, Hubble's `NodeStatusEvent`); a
//!   node that fails later is announced the same way. Each node's answer comes through a small
//!   bounded queue of its own ([`NODE_QUEUE`]). Without `follow`, the histories (each in time
//!   order) are merged as they arrive, a node read only when its head has left, so the relay
//!   holds a few flows per node and never whole histories; `number` keeps the newest (a window
//!   of that size) or, with `first`, the oldest (the merge stops there); a node whose history
//!   stalls for the dial timeout is reported unavailable. With `follow`, flows pass through a
//!   sort buffer: at most [`SORT_BUFFER`] wait, the oldest leaving first, and all of them after
//!   [`SORT_DRAIN`] without a new one — so the output is in time order across nodes up to what
//!   arrives that late.
//! * `ServerStatus`: the nodes' totals summed, the longest uptime, how many nodes answered and
//!   which did not. `GetNodes`: each node with its state. `GetNamespaces`: the union.
//! * A node that is down never stops the others: it is reported unavailable, its flows missing.
//!
//! Which nodes there are comes from `discovery` (given, a peers file, Kubernetes Nodes); nodes
//! reached over TCP are read over mutual TLS ([`Dial`]).
use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt as _};
use tonic::{transport::Channel, Request, Response, Status};

use super::grpc::{
    answer, connected_node, namespace_list,
    proto::{
        observer::{
            get_flows_response::ResponseTypes, observer_client::ObserverClient, observer_server::Observer,
            GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse, GetNodesRequest,
            GetNodesResponse, Node, ServerStatusRequest, ServerStatusResponse, UInt32Value,
        },
        relay::{NodeState, NodeStatusEvent},
    },
    Selection, RELAY_VERSION_KEY,
};

/// Flows waiting in the follow sort buffer at most.
pub const SORT_BUFFER: usize = 100;
/// The sort buffer is emptied after this long without a new flow.
pub const SORT_DRAIN: Duration = Duration::from_secs(1);

/// A node agent's observer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub target: Target,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Unix(PathBuf),
    /// `host:port` (plain HTTP/2).
    Tcp(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix://{}", p.display()),
            Target::Tcp(a) => write!(f, "{a}"),
        }
    }
}

impl std::str::FromStr for Peer {
    type Err = String;

    /// `NAME=unix:///path/observer.sock` or `NAME=host:port`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, target) =
            s.split_once('=').ok_or_else(|| format!("peer {s:?}: expected NAME=unix:///PATH or NAME=HOST:PORT"))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
            return Err(format!("peer {s:?}: the node name {name:?} is not a node name"));
        }
        let target = match target.strip_prefix("unix://") {
            Some(path) if path.starts_with('/') => Target::Unix(path.into()),
            Some(_) => return Err(format!("peer {s:?}: a unix socket path must be absolute (unix:///...)")),
            None if target.parse::<std::net::SocketAddr>().is_ok() || target.rsplit_once(':').is_some() => {
                Target::Tcp(target.to_owned())
            }
            None => return Err(format!("peer {s:?}: expected unix:///PATH or HOST:PORT after the name")),
        };
        Ok(Peer { name: name.to_owned(), target })
    }
}

pub struct RelayService {
    /// The nodes as discovery last saw them (given, a peers file, or Kubernetes Nodes).
    peers: tokio::sync::watch::Receiver<Arc<Vec<Peer>>>,
    dial: Arc<Dial>,
    started: Instant,
}

/// How the relay reaches a node's observer.
pub struct Dial {
    /// How long a node may take to connect and to answer a unary call.
    pub timeout: Duration,
    /// TLS (with the relay's client certificate) for `HOST:PORT` peers; unix sockets need none.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

impl RelayService {
    pub fn new(peers: tokio::sync::watch::Receiver<Arc<Vec<Peer>>>, dial: Dial) -> Self {
        Self { peers, dial: Arc::new(dial), started: Instant::now() }
    }

    fn peers(&self) -> Arc<Vec<Peer>> {
        self.peers.borrow().clone()
    }
}

/// The relay's TLS towards the nodes: the CA their certificates are signed by, the relay's own
/// certificate and key (the nodes require one), and the name their certificates carry.
pub fn client_tls(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    server_name: &str,
) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    use anyhow::Context as _;
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)?))
        .identity(Identity::from_pem(read(cert)?, read(key)?))
        .domain_name(server_name))
}

/// A gRPC channel to an observer (a node's or a relay's) on the unix socket `path`, connected
/// within `timeout`.
pub async fn unix_channel(path: PathBuf, timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_static("http://weir-observer.invalid")
        .connect_timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}

/// A client of one node's observer, connected within the dial's timeout.
async fn connect(peer: &Peer, dial: &Dial) -> Result<ObserverClient<Channel>, String> {
    let timeout = dial.timeout;
    let channel = match &peer.target {
        Target::Unix(path) => unix_channel(path.clone(), timeout).await,
        Target::Tcp(addr) => {
            let scheme = if dial.tls.is_some() { "https" } else { "http" };
            let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
                .map_err(|e| format!("{addr}: {e}"))?
                .connect_timeout(timeout);
            if let Some(tls) = &dial.tls {
                endpoint = endpoint.tls_config(tls.clone()).map_err(|e| format!("{addr}: {e}"))?;
            }
            endpoint.connect().await
        }
    };
    // The cause, not only tonic's "transport error".
    let channel = channel.map_err(|e| {
        let mut said = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            said = format!("{said}: {c}");
            cause = c.source();
        }
        said
    })?;
    Ok(ObserverClient::new(channel))
}

/// A unary call to every node at once, each bounded by `timeout`: the node and its answer or why
/// there is none, in the order the nodes were given.
async fn ask_all<T, F, Fut>(peers: &[Peer], dial: &Dial, call: F) -> Vec<(Peer, Result<T, String>)>
where
    F: Fn(ObserverClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<Response<T>, Status>>,
{
    let timeout = dial.timeout;
    let asks = peers.iter().map(|p| {
        let call = &call;
        async move {
            let answer = tokio::time::timeout(timeout, async {
                let client = connect(p, dial).await?;
                call(client).await.map(Response::into_inner).map_err(|s| format!("{}: {}", s.code(), s.message()))
            })
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
            (p.clone(), answer)
        }
    });
    futures::future::join_all(asks).await
}

fn time_ns(r: &GetFlowsResponse) -> u64 {
    r.time.as_ref().map_or(0, |t| (t.seconds.max(0) as u64) * 1_000_000_000 + t.nanos.max(0) as u64)
}

fn node_status(state: NodeState, names: Vec<String>, message: String) -> GetFlowsResponse {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    GetFlowsResponse {
        response_types: Some(ResponseTypes::NodeStatus(NodeStatusEvent {
            state_change: state as i32,
            node_names: names,
            message,
        })),
        node_name: String::new(),
        time: Some(super::grpc::proto::flow::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
        }),
    }
}

/// Flows from several nodes waiting to leave in time order (a follow's sort buffer); flows with
/// the same time leave in the order they came.
#[derive(Default)]
struct SortBuffer {
    heap: BinaryHeap<Reverse<Waiting>>,
    arrived: u64,
}

struct Waiting {
    time: u64,
    arrived: u64,
    response: GetFlowsResponse,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.arrived) == (other.time, other.arrived)
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.time, self.arrived).cmp(&(other.time, other.arrived))
    }
}

impl SortBuffer {
    fn push(&mut self, response: GetFlowsResponse) {
        self.arrived += 1;
        self.heap.push(Reverse(Waiting { time: time_ns(&response), arrived: self.arrived, response }));
    }

    /// The oldest flows beyond the `keep` newest, oldest first, taken out.
    fn leave_beyond(&mut self, keep: usize) -> Vec<GetFlowsResponse> {
        let n = self.heap.len().saturating_sub(keep);
        (0..n).filter_map(|_| self.heap.pop()).map(|Reverse(w)| w.response).collect()
    }
}

/// Sends each response in order; false once the client has gone.
async fn send_all(tx: &mpsc::Sender<Result<GetFlowsResponse, Status>>, responses: Vec<GetFlowsResponse>) -> bool {
    for r in responses {
        if tx.send(Ok(r)).await.is_err() {
            return false;
        }
    }
    true
}

/// What a node's GetFlows task tells the merge, in this order: connected (or down), then its
/// responses, then done (or down).
enum FromNode {
    Connected,
    Response(Box<GetFlowsResponse>),
    /// The node could not be reached, or its stream failed or stalled.
    Down(String),
    /// Its answer ended (not following).
    Done,
}

/// Responses a node may have waiting for the merge.
const NODE_QUEUE: usize = 64;

/// Reads one node's GetFlows answer into its channel. A history that stalls for the dial's
/// timeout counts as the node failing (a follow may be quiet for as long as it likes).
async fn read_node(peer: Peer, req: GetFlowsRequest, dial: Arc<Dial>, tx: mpsc::Sender<FromNode>) {
    let timeout = dial.timeout;
    let follow = req.follow;
    let stream = async {
        let mut client = connect(&peer, &dial).await?;
        tokio::time::timeout(timeout, client.get_flows(req))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|s| format!("{}: {}", s.code(), s.message()))
    };
    let mut stream = match stream.await {
        Ok(s) => s.into_inner(),
        Err(why) => {
            let _ = tx.send(FromNode::Down(why)).await;
            return;
        }
    };
    if tx.send(FromNode::Connected).await.is_err() {
        return;
    }
    loop {
        let item = if follow {
            stream.next().await
        } else {
            match tokio::time::timeout(timeout, stream.next()).await {
                Ok(item) => item,
                Err(_) => {
                    let _ = tx.send(FromNode::Down(format!("its history stalled for {timeout:?}"))).await;
                    return;
                }
            }
        };
        let msg = match item {
            None => FromNode::Done,
            Some(Ok(r)) => FromNode::Response(Box::new(r)),
            Some(Err(s)) => FromNode::Down(format!("{}: {}", s.code(), s.message())),
        };
        let last = !matches!(msg, FromNode::Response(_));
        if tx.send(msg).await.is_err() || last {
            return;
        }
    }
}

/// Histories (each node's in time order) merged into one in time order, pulling from a node only
/// when its head has left: at most [`NODE_QUEUE`] responses per node wait. `number` (0: all):
/// the newest that many flows (kept in a window of that size), or with `first` the oldest
/// (the merge stops there). A node failing midway is announced where it happens.
async fn history_merged(
    nodes: Vec<(String, mpsc::Receiver<FromNode>)>,
    number: u64,
    first: bool,
    tx: &mpsc::Sender<Result<GetFlowsResponse, Status>>,
) {
    let n = usize::try_from(number).unwrap_or(usize::MAX);
    let mut nodes: Vec<(String, mpsc::Receiver<FromNode>, Option<GetFlowsResponse>)> =
        nodes.into_iter().map(|(name, rx)| (name, rx, None)).collect();
    // The newest `n` flows so far (without `first`).
    let mut window: std::collections::VecDeque<GetFlowsResponse> = std::collections::VecDeque::new();
    let mut sent_flows = 0usize;
    loop {
        // Every open node's head, pulled where missing; a node that ends or fails closes.
        let mut i = 0;
        while i < nodes.len() {
            if nodes[i].2.is_none() {
                match nodes[i].1.recv().await {
                    // Not a flow (a node's lost events, stamped when sent, not in its history's
                    // order): passed on at once.
                    Some(FromNode::Response(r)) if !matches!(r.response_types, Some(ResponseTypes::Flow(_))) => {
                        if tx.send(Ok(*r)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(FromNode::Response(r)) => nodes[i].2 = Some(*r),
                    Some(FromNode::Down(why)) => {
                        let name = nodes.remove(i).0;
                        if tx.send(Ok(node_status(NodeState::NodeUnavailable, vec![name], why))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    _ => {
                        nodes.remove(i);
                        continue;
                    }
                }
            }
            i += 1;
        }
        // The oldest head leaves (the node given first on equal times).
        let Some(at) = (0..nodes.len()).min_by_key(|&i| nodes[i].2.as_ref().map_or(u64::MAX, time_ns)) else {
            break;
        };
        let Some(r) = nodes[at].2.take() else { break };
        if first || n == 0 {
            if tx.send(Ok(r)).await.is_err() {
                return;
            }
            sent_flows += 1;
            if first && n > 0 && sent_flows >= n {
                return;
            }
        } else {
            window.push_back(r);
            if window.len() > n {
                window.pop_front();
            }
        }
    }
    send_all(tx, window.into()).await;
}

/// Follows every node at once through the sort buffer: at most [`SORT_BUFFER`] flows wait, the
/// oldest leaving first, all of them after [`SORT_DRAIN`] without a new one. A node failing is
/// announced where it happens.
async fn follow_merged(
    nodes: Vec<(String, mpsc::Receiver<FromNode>)>,
    tx: &mpsc::Sender<Result<GetFlowsResponse, Status>>,
) {
    let streams = nodes
        .into_iter()
        .map(|(name, rx)| tokio_stream::wrappers::ReceiverStream::new(rx).map(move |m| (name.clone(), m)));
    let mut merged = futures::stream::select_all(streams);
    let mut buffer = SortBuffer::default();
    loop {
        let next = match tokio::time::timeout(SORT_DRAIN, merged.next()).await {
            Ok(m) => m,
            Err(_) => {
                if !send_all(tx, buffer.leave_beyond(0)).await {
                    return;
                }
                continue;
            }
        };
        match next {
            None => break,
            Some((_, FromNode::Response(r))) => buffer.push(*r),
            Some((name, FromNode::Down(why))) => {
                if tx.send(Ok(node_status(NodeState::NodeUnavailable, vec![name], why))).await.is_err() {
                    return;
                }
            }
            Some(_) => {}
        }
        if !send_all(tx, buffer.leave_beyond(SORT_BUFFER)).await {
            return;
        }
    }
    send_all(tx, buffer.leave_beyond(0)).await;
}

#[tonic::async_trait]
impl Observer for RelayService {
    type GetFlowsStream = FlowStream;

    async fn get_flows(&self, request: Request<GetFlowsRequest>) -> Result<Response<Self::GetFlowsStream>, Status> {
        let req = request.into_inner();
        // Refused here, in the words a node would use, before any node is asked.
        Selection::compile(&req).map_err(Status::invalid_argument)?;
        super::grpc::field_mask(&req)?;
        if req.first && req.follow {
            return Err(Status::invalid_argument("first and follow cannot be combined"));
        }
        // One bounded channel per node: a node's history is pulled only as fast as the merge
        // takes it, so the relay holds a handful of flows per node, never whole histories.
        let all = self.peers();
        let mut from_nodes = Vec::with_capacity(all.len());
        for peer in all.iter().cloned() {
            let (tx, rx) = mpsc::channel::<FromNode>(NODE_QUEUE);
            from_nodes.push((peer.name.clone(), rx));
            let (req, dial) = (req.clone(), self.dial.clone());
            tokio::spawn(read_node(peer, req, dial, tx));
        }
        let (tx, out) = mpsc::channel(256);
        tokio::spawn(async move {
            // Who answered, in the order the nodes were given, before anything else: the first
            // answer says which nodes it covers.
            let mut connected = Vec::new();
            let mut first = Vec::new();
            let mut open = Vec::new();
            for (name, mut rx) in from_nodes {
                match rx.recv().await {
                    Some(FromNode::Connected) => {
                        connected.push(name.clone());
                        open.push((name, rx));
                    }
                    Some(FromNode::Down(why)) => first.push(node_status(NodeState::NodeUnavailable, vec![name], why)),
                    _ => first.push(node_status(NodeState::NodeUnavailable, vec![name], "ended".into())),
                }
            }
            if !connected.is_empty() {
                first.insert(0, node_status(NodeState::NodeConnected, connected, String::new()));
            }
            if !send_all(&tx, first).await {
                return;
            }
            if req.follow {
                follow_merged(open, &tx).await;
            } else {
                history_merged(open, req.number, req.first, &tx).await;
            }
        });
        Ok(answer(RELAY_VERSION_KEY, Box::pin(ReceiverStream::new(out))))
    }

    async fn server_status(&self, _: Request<ServerStatusRequest>) -> Result<Response<ServerStatusResponse>, Status> {
        let answers =
            ask_all(&self.peers(), &self.dial, |mut c| async move { c.server_status(ServerStatusRequest {}).await })
                .await;
        let mut total =
            ServerStatusResponse { version: format!("weir-relay {}", env!("CARGO_PKG_VERSION")), ..Default::default() };
        let (mut up, mut down) = (0u32, Vec::new());
        for (peer, answer) in answers {
            match answer {
                Ok(s) => {
                    up += 1;
                    total.num_flows += s.num_flows;
                    total.max_flows += s.max_flows;
                    total.seen_flows += s.seen_flows;
                    total.uptime_ns = total.uptime_ns.max(s.uptime_ns);
                }
                Err(_) => down.push(peer.name),
            }
        }
        total.uptime_ns = total.uptime_ns.max(self.started.elapsed().as_nanos() as u64);
        total.num_connected_nodes = Some(UInt32Value { value: up });
        total.num_unavailable_nodes = Some(UInt32Value { value: down.len() as u32 });
        total.unavailable_nodes = down;
        Ok(answer(RELAY_VERSION_KEY, total))
    }

    async fn get_nodes(&self, _: Request<GetNodesRequest>) -> Result<Response<GetNodesResponse>, Status> {
        let answers =
            ask_all(&self.peers(), &self.dial, |mut c| async move { c.server_status(ServerStatusRequest {}).await })
                .await;
        let nodes = answers
            .into_iter()
            .map(|(peer, answer)| {
                let address = peer.target.to_string();
                match answer {
                    Ok(s) => connected_node(peer.name, address, s),
                    Err(_) => Node {
                        name: peer.name,
                        address,
                        state: NodeState::NodeUnavailable as i32,
                        ..Default::default()
                    },
                }
            })
            .collect();
        Ok(answer(RELAY_VERSION_KEY, GetNodesResponse { nodes }))
    }

    async fn get_namespaces(
        &self,
        _: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        let answers =
            ask_all(&self.peers(), &self.dial, |mut c| async move { c.get_namespaces(GetNamespacesRequest {}).await })
                .await;
        let all: Vec<String> =
            answers.into_iter().filter_map(|(_, a)| a.ok()).flat_map(|a| a.namespaces).map(|n| n.namespace).collect();
        Ok(answer(
            RELAY_VERSION_KEY,
            GetNamespacesResponse { namespaces: namespace_list(all.iter().map(String::as_str)) },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::grpc::proto::flow::{Flow, LostEvent, Timestamp};

    fn flow(t: i64, node: &str) -> GetFlowsResponse {
        GetFlowsResponse {
            response_types: Some(ResponseTypes::Flow(Flow::default())),
            node_name: node.into(),
            time: Some(Timestamp { seconds: t, nanos: 0 }),
        }
    }

    #[test]
    fn peers_are_parsed_or_refused_by_name() {
        let p: Peer = "n1=unix:///run/weir/observer.sock".parse().expect("unix");
        assert_eq!(p.target, Target::Unix("/run/weir/observer.sock".into()));
        let p: Peer = "n2=10.0.0.2:4245".parse().expect("tcp");
        assert_eq!((p.name.as_str(), p.target.to_string()), ("n2", "10.0.0.2:4245".into()));
        for bad in ["n1", "=unix:///x", "n1=unix://relative", "n 1=unix:///x", "n1=nowhere"] {
            let e = bad.parse::<Peer>().expect_err(bad);
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn sort_buffer_lets_the_oldest_leave_first() {
        let mut b = SortBuffer::default();
        for (t, node) in [(5, "n1"), (2, "n2"), (5, "n2"), (1, "n1")] {
            b.push(flow(t, node));
        }
        let left = |v: Vec<GetFlowsResponse>| {
            v.iter().map(|r| (time_ns(r) / 1_000_000_000, r.node_name.clone())).collect::<Vec<_>>()
        };
        assert_eq!(left(b.leave_beyond(2)), [(1, "n1".into()), (2, "n2".into())]);
        // Equal times leave in the order they arrived.
        assert_eq!(left(b.leave_beyond(0)), [(5, "n1".into()), (5, "n2".into())]);
        assert!(b.leave_beyond(0).is_empty());
    }

    /// Runs the history merge over nodes that send `answers` (then end) and returns what it sent.
    async fn merged(answers: Vec<Vec<GetFlowsResponse>>, n: u64, first: bool) -> Vec<GetFlowsResponse> {
        let mut nodes = Vec::new();
        for (i, list) in answers.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(NODE_QUEUE);
            nodes.push((format!("n{}", i + 1), rx));
            tokio::spawn(async move {
                for r in list {
                    if tx.send(FromNode::Response(Box::new(r))).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(FromNode::Done).await;
            });
        }
        let (tx, mut rx) = mpsc::channel(4096);
        history_merged(nodes, n, first, &tx).await;
        drop(tx);
        let mut out = Vec::new();
        while let Some(Ok(r)) = rx.recv().await {
            out.push(r);
        }
        out
    }

    #[tokio::test]
    async fn histories_are_merged_in_time_order_and_cut_to_number() {
        let mut lost = flow(9, "n2");
        lost.response_types = Some(ResponseTypes::LostEvents(LostEvent::default()));
        let answers = || vec![vec![flow(3, "n1"), flow(5, "n1")], vec![lost.clone(), flow(1, "n2"), flow(2, "n2")]];
        let times = |v: &[GetFlowsResponse]| v.iter().map(time_ns).map(|t| t / 1_000_000_000).collect::<Vec<_>>();
        // The lost event (stamped when sent) passes at once; flows in time order.
        assert_eq!(times(&merged(answers(), 0, false).await), [9, 1, 2, 3, 5]);
        // The newest two flows; the oldest two.
        assert_eq!(times(&merged(answers(), 2, false).await), [9, 3, 5]);
        assert_eq!(times(&merged(answers(), 2, true).await), [9, 1, 2]);
        // Many flows from many nodes: in order, all there, while each node's queue is small.
        let many: Vec<Vec<GetFlowsResponse>> =
            (0..8).map(|k| (0..500).map(|t| flow(t * 8 + k, "n")).collect()).collect();
        let got = times(&merged(many, 0, false).await);
        assert_eq!(got.len(), 4000);
        assert!(got.windows(2).all(|w| w[0] <= w[1]));
    }
}
