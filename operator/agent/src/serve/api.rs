//! The agent's unix-socket API: one JSON request line in, one JSON response line out (a flow
//! follow request gets a line per batch until the client hangs up).
use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{watch, Mutex, Notify},
};
use weir_operator_api::{code, flow::FlowQuery, ApiError, Attachment, Drops, Request, Response};

use crate::{
    node::Node,
    observe::events::SharedDropLog,
    observe::flows::SharedFlowStore,
    serve::local,
    serve::view::{latest, SharedView},
    source::ClusterSnapshot,
};

/// What the API serves from: the node's writer (for ADD, CHECK, DEL and GC only), its published
/// view (every read), and the drop and flow stores.
#[derive(Clone)]
pub struct ApiState {
    pub node: Arc<Mutex<Node>>,
    pub view: SharedView,
    pub drops: SharedDropLog,
    pub flows: SharedFlowStore,
    pub gate: AddGate,
}

/// What an ADD waits for before it wires a pod: the pod's own object in the cluster state, so
/// its first packet is already judged by its real policy.
#[derive(Clone)]
pub struct AddGate {
    /// The source's latest cluster state.
    pub cluster: watch::Receiver<Option<ClusterSnapshot>>,
    /// Asks the source to look again now (the manifest source polls; the API source is pushed).
    pub kick: Arc<Notify>,
    /// How long an ADD waits for its pod before failing with "try again later".
    pub wait: Duration,
}

/// Longest request line accepted (a GC with thousands of attachments fits easily).
const MAX_REQUEST: usize = 4 << 20;

/// Serves the API: at most [`local::API_CONNECTIONS`] connections at once, each from a peer
/// [`local::peer_allowed`] admits, each sending its request within [`local::REQUEST_TIMEOUT`].
pub async fn serve(listener: UnixListener, gid: Option<u32>, state: ApiState) {
    let cap = local::ConnectionCap::new(local::API_CONNECTIONS);
    loop {
        match listener.accept().await {
            Ok((mut stream, _)) => {
                if let Err(why) = local::peer_allowed(&stream, gid) {
                    tracing::warn!(reason = %why, "API connection refused");
                    let _ = write_line(&mut stream, &refusal(code::PERMISSION_DENIED, &why)).await;
                    continue;
                }
                let Some(permit) = cap.try_enter() else {
                    let why = format!("more than {} connections at once", local::API_CONNECTIONS);
                    tracing::warn!(reason = %why, "API connection refused");
                    let _ = write_line(&mut stream, &refusal(code::TRY_AGAIN_LATER, &why)).await;
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_conn(stream, state).await {
                        tracing::warn!(error = %e, "API connection");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "accept on the API socket");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

fn refusal(code: u32, why: &str) -> Response {
    Response::Error(ApiError::new(code, format!("weir-agent refused the connection: {why}"), ""))
}

async fn handle_conn(stream: UnixStream, state: ApiState) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(rd).take(MAX_REQUEST as u64);
    let read = reader.read_line(&mut line);
    let n = match tokio::time::timeout(local::REQUEST_TIMEOUT, read).await {
        Ok(n) => n?,
        Err(_) => {
            let why = format!("no request within {:?}", local::REQUEST_TIMEOUT);
            return write_line(&mut wr, &refusal(code::DECODE_FAILURE, &why)).await;
        }
    };
    if n == 0 {
        return Ok(());
    }
    let resp = match serde_json::from_str::<Request>(&line) {
        // Flows, like every read, never wait for the node's writer.
        Ok(Request::Flows(q)) => return serve_flows(q, &state.flows, &state.view, &mut wr).await,
        Ok(Request::Add(a)) => {
            add_when_known(&a, &state.node, state.gate.clone()).await.map_or_else(Response::Error, Response::Added)
        }
        Ok(req) => dispatch(req, &state).await,
        Err(e) => Response::Error(ApiError::new(code::DECODE_FAILURE, format!("bad request: {e}"), "")),
    };
    write_line(&mut wr, &resp).await
}

async fn write_line(wr: &mut (impl AsyncWriteExt + Unpin), resp: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(resp)
        .unwrap_or_else(|e| format!("{{\"result\":\"error\",\"code\":5,\"msg\":\"{e}\"}}").into_bytes());
    out.push(b'\n');
    wr.write_all(&out).await
}

/// Most flows one line carries (history is sent in lines of this many).
const FLOWS_PER_LINE: usize = 512;

/// A flow query: its history, then (follow) every new matching flow, batched per wakeup.
async fn serve_flows(
    q: FlowQuery,
    store: &SharedFlowStore,
    view: &SharedView,
    wr: &mut (impl AsyncWriteExt + Unpin),
) -> std::io::Result<()> {
    for c in q.filter.include.iter().chain(&q.filter.exclude) {
        if let Err(e) = c.validate() {
            return write_line(wr, &Response::Error(ApiError::new(code::INVALID_CONFIG, e, ""))).await;
        }
    }
    let (lost_in_kernel, node_name) = {
        let v = latest(view);
        (v.events_lost(), v.node.clone())
    };
    let (history, mut rx, seen, capacity) = {
        let s = store.lock().unwrap_or_else(|p| p.into_inner());
        let (h, rx) = s.query(&q);
        (h, rx, s.seen(), s.capacity())
    };
    let batch = |flows, seen, skipped| {
        Response::Flows(weir_operator_api::flow::Flows {
            node: node_name.clone(),
            flows,
            seen,
            lost_in_kernel,
            capacity,
            skipped,
        })
    };
    let mut chunks = history.chunks(FLOWS_PER_LINE).peekable();
    if chunks.peek().is_none() {
        write_line(wr, &batch(vec![], seen, 0)).await?;
    }
    for c in chunks {
        write_line(wr, &batch(c.to_vec(), seen, 0)).await?;
    }
    if !q.follow {
        return Ok(());
    }
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let mut out = Vec::new();
        let mut skipped = 0;
        // Wait for one, then take what else is ready.
        let first = rx.recv().await;
        let mut next = Some(first);
        while let Some(r) = next.take() {
            match r {
                Ok(f) if q.filter.matches(&f) => out.push(crate::observe::flows::for_reader(&f)),
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => skipped += n,
                Err(RecvError::Closed) => return Ok(()),
            }
            if out.len() < FLOWS_PER_LINE {
                next = match rx.try_recv() {
                    Ok(f) => Some(Ok(f)),
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                    Err(_) => None,
                };
            }
        }
        if !out.is_empty() || skipped > 0 {
            let seen = store.lock().unwrap_or_else(|p| p.into_inner()).seen();
            write_line(wr, &batch(out, seen, skipped)).await?;
        }
    }
}

/// ADD once the cluster state shows the attachment's pod (its UID, when both sides have one),
/// so the endpoint's policy is compiled from the pod's real labels before its first packet; an
/// attachment without Kubernetes pod arguments has no pod to wait for. The node's lock is not
/// held while waiting. On timeout nothing was created: the runtime retries.
async fn add_when_known(
    a: &Attachment,
    node: &Mutex<Node>,
    mut gate: AddGate,
) -> Result<weir_operator_api::Endpoint, ApiError> {
    let deadline = tokio::time::Instant::now() + gate.wait;
    loop {
        let snap = gate.cluster.borrow_and_update().clone();
        let known = snap.as_ref().is_some_and(|s| Node::pod_in(s, &a.pod_namespace, &a.pod_name, &a.pod_uid));
        if known || !Node::is_kubernetes_pod(a) {
            let mut n = node.lock().await;
            if let Some(s) = &snap {
                n.learn_policy_inputs(s);
            }
            return n.add(a).await;
        }
        gate.kick.notify_one();
        match tokio::time::timeout_at(deadline, gate.cluster.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => {
                return Err(ApiError::new(
                    code::TRY_AGAIN_LATER,
                    format!(
                        "pod {}/{} (uid {:?}) is not in the cluster state weir-agent has after {:?}: its labels decide \
                         its policy, so it is not wired before then",
                        a.pod_namespace, a.pod_name, a.pod_uid, gate.wait
                    ),
                    "",
                ))
            }
        }
    }
}

/// Serves one request: writes (ADD, CHECK, DEL, GC) through the node's writer, reads from the
/// view it last published.
pub async fn dispatch(req: Request, state: &ApiState) -> Response {
    let v = latest(&state.view);
    let result = match req {
        Request::Add(a) => state.node.lock().await.add(&a).await.map(Response::Added),
        Request::Check(a) => state.node.lock().await.check(&a).await.map(Response::Checked),
        Request::Del(id) => state.node.lock().await.del(&id).await.map(|()| Response::Deleted),
        Request::Gc(g) => state.node.lock().await.gc(&g.valid).await.map(|removed| Response::Collected { removed }),
        Request::Status => Ok(Response::Status(v.status())),
        Request::Endpoints => Ok(Response::Endpoints { rows: v.endpoints() }),
        Request::Datapath => v.datapath_info().map(Response::Datapath),
        Request::Services => v.service_rows().map(|rows| Response::Services { rows, rejected: v.rejected_services() }),
        Request::Drops { last } => {
            let (mut events, seen) = state.drops.lock().unwrap_or_else(|p| p.into_inner()).recent(last);
            let pods = v.pods_by_ifindex();
            for e in &mut events {
                e.pod = pods.get(&e.ifindex).cloned();
            }
            Ok(Response::Drops(Drops { events, seen, lost: v.events_lost() }))
        }
        Request::PolicyExplain { from, to, port, protocol } => {
            crate::policy::report::explanation(&v.policy, &from, &to, &protocol, port)
                .map(Response::PolicyExplain)
                .map_err(|e| ApiError::new(code::INVALID_CONFIG, e, ""))
        }
        Request::Policies { pod } => {
            crate::policy::report::report(&v.policy, &v.compiled, v.tallies.fail_closed_total, pod.as_deref())
                .map(Response::Policies)
                .map_err(|e| ApiError::new(code::INVALID_CONFIG, e, ""))
        }
        Request::Flows(_) => Err(ApiError::new(code::INVALID_CONFIG, "flows are served on their own connection", "")),
    };
    result.unwrap_or_else(Response::Error)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use weir_operator_api::{GcRequest, Request};

    use super::*;

    /// Every read is answered from the published view while the writer is busy; a write waits.
    #[tokio::test]
    async fn reads_are_answered_while_the_writer_is_busy() {
        let dir = std::env::temp_dir().join(format!("weir-api-view-{}", std::process::id()));
        let cfg = crate::config::Config::try_parse_from([
            "weir-agent".as_ref(),
            "--node-name".as_ref(),
            "n1".as_ref(),
            "--uplink".as_ref(),
            "lo".as_ref(),
            "--state-dir".as_ref(),
            dir.as_os_str(),
        ])
        .expect("config");
        let node = Node::open(cfg).expect("open node");
        let view = node.view();
        let (_tx, cluster) = watch::channel(None);
        let state = ApiState {
            node: Arc::new(Mutex::new(node)),
            view,
            drops: SharedDropLog::default(),
            flows: Arc::new(std::sync::Mutex::new(crate::observe::flows::FlowStore::new(16))),
            gate: AddGate { cluster, kick: Arc::default(), wait: Duration::from_secs(1) },
        };
        let busy = state.node.lock().await;
        let answer = |req| tokio::time::timeout(Duration::from_secs(2), dispatch(req, &state));
        match answer(Request::Status).await.expect("STATUS without the writer") {
            Response::Status(s) => {
                assert!(!s.ready);
                assert!(s.reason.contains("waiting for Node n1"), "{}", s.reason);
            }
            other => panic!("{other:?}"),
        }
        match answer(Request::Endpoints).await.expect("endpoints without the writer") {
            Response::Endpoints { rows } => assert!(rows.is_empty()),
            other => panic!("{other:?}"),
        }
        for req in [Request::Services, Request::Datapath] {
            match answer(req).await.expect("kernel reads without the writer") {
                Response::Error(e) => assert!(e.msg.contains("not ready"), "{e:?}"),
                other => panic!("{other:?}"),
            }
        }
        match answer(Request::Drops { last: Some(5) }).await.expect("drops without the writer") {
            Response::Drops(d) => assert_eq!((d.events.len(), d.lost), (0, 0)),
            other => panic!("{other:?}"),
        }
        match answer(Request::Policies { pod: None }).await.expect("policies without the writer") {
            Response::Policies(p) => assert!(p.endpoints.is_empty()),
            other => panic!("{other:?}"),
        }
        let gc = Request::Gc(GcRequest { valid: vec![] });
        assert!(
            tokio::time::timeout(Duration::from_millis(200), dispatch(gc.clone(), &state)).await.is_err(),
            "a write waits for the writer"
        );
        drop(busy);
        let done = tokio::time::timeout(Duration::from_secs(2), dispatch(gc, &state)).await.expect("GC once free");
        assert!(matches!(done, Response::Error(_) | Response::Collected { .. }), "{done:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
