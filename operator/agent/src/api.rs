//! The agent's unix-socket API: one JSON request line in, one JSON response line out.
use std::sync::Arc;

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::Mutex,
};
use weir_operator_api::{code, ApiError, Drops, Request, Response};

use crate::{events::SharedDropLog, node::Node};

/// Longest request line accepted (a GC with thousands of attachments fits easily).
const MAX_REQUEST: usize = 4 << 20;

pub async fn serve(listener: UnixListener, node: Arc<Mutex<Node>>, drops: SharedDropLog) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (node, drops) = (node.clone(), drops.clone());
                tokio::spawn(async move {
                    if let Err(e) = handle_conn(stream, node, drops).await {
                        tracing::warn!(error = %e, "API connection");
                    }
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "accept on the API socket");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle_conn(stream: UnixStream, node: Arc<Mutex<Node>>, drops: SharedDropLog) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let n = BufReader::new(rd).take(MAX_REQUEST as u64).read_line(&mut line).await?;
    if n == 0 {
        return Ok(());
    }
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => dispatch(req, &node, &drops).await,
        Err(e) => Response::Error(ApiError::new(code::DECODE_FAILURE, format!("bad request: {e}"), "")),
    };
    let mut out = serde_json::to_vec(&resp)
        .unwrap_or_else(|e| format!("{{\"result\":\"error\",\"code\":5,\"msg\":\"{e}\"}}").into_bytes());
    out.push(b'\n');
    wr.write_all(&out).await
}

pub async fn dispatch(req: Request, node: &Mutex<Node>, drops: &SharedDropLog) -> Response {
    let mut n = node.lock().await;
    let result = match req {
        Request::Add(a) => n.add(&a).await.map(Response::Added),
        Request::Check(a) => n.check(&a).await.map(Response::Checked),
        Request::Del(id) => n.del(&id).await.map(|()| Response::Deleted),
        Request::Gc(g) => n.gc(&g.valid).await.map(|removed| Response::Collected { removed }),
        Request::Status => Ok(Response::Status(n.status())),
        Request::Endpoints => Ok(Response::Endpoints { rows: n.endpoints() }),
        Request::Datapath => n.datapath_info().map(Response::Datapath),
        Request::Services => n.service_rows().map(|rows| Response::Services { rows, rejected: n.rejected_services() }),
        Request::Drops { last } => {
            let (mut events, seen) = drops.lock().unwrap_or_else(|p| p.into_inner()).recent(last);
            let pods = n.pods_by_ifindex();
            for e in &mut events {
                e.pod = pods.get(&e.ifindex).cloned();
            }
            Ok(Response::Drops(Drops { events, seen, lost: n.events_lost() }))
        }
        Request::PolicyExplain { from, to, port, protocol } => {
            crate::policy::report::explanation(&n.policy().cluster, &from, &to, &protocol, port)
                .map(Response::PolicyExplain)
                .map_err(|e| ApiError::new(code::INVALID_CONFIG, e, ""))
        }
        Request::Policies { pod } => crate::policy::report::report(n.policy(), pod.as_deref())
            .map(Response::Policies)
            .map_err(|e| ApiError::new(code::INVALID_CONFIG, e, "")),
    };
    result.unwrap_or_else(Response::Error)
}
