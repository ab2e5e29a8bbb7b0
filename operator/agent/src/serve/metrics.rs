//! Prometheus metrics (`--metrics-addr`, `GET /metrics`, text format 0.0.4).
//!
//! Two sources:
//! * counted as events are ingested (flows, DNS, HTTP, policy verdicts): labels are bounded —
//!   verdict, event kind, direction, drop reason, namespace, DNS type and rcode, HTTP method
//!   (standard ones, else OTHER) and status class, workload (a pod without a controller: its
//!   name); never an address, a port or a URL path;
//! * read at scrape time from the kernel and the node's writer (drops by reason and lost events
//!   from the datapath's own counters, which miss nothing even when the ring buffer is full;
//!   map pressure; rejected Services and policies; fail-closed endpoints).
use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{body::Bytes, Request, Response};
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use weir_operator_api::flow::{Flow, TrafficDirection, Verdict};

use crate::observe::dns;

pub struct Metrics {
    registry: Registry,
    flows: IntCounterVec,
    drops: IntCounterVec,
    dns_queries: IntCounterVec,
    dns_responses: IntCounterVec,
    dns_latency: Histogram,
    dns_malformed: IntCounter,
    policy_verdicts: IntCounterVec,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    http_without_request: IntCounter,
    http_unanswered: IntCounter,
    http_unparsed: IntCounter,
    http_records_skipped: IntCounter,
    grpc_requests: IntCounterVec,
    grpc_duration: HistogramVec,
    http2_lost: IntCounterVec,
    execs: IntCounterVec,
    binds_forgotten: IntCounter,
    /// Events the kernel could not put on the ring buffer (its counter, followed at scrape time).
    events_lost: IntCounter,
    events_undecodable: IntCounter,
    /// Set at scrape time.
    pub datapath: IntGaugeVec,
    pub datapath_drops: IntGaugeVec,
    pub maps: IntGaugeVec,
    pub state: IntGaugeVec,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

/// A histogram of request latencies in seconds (0.5 ms to 10 s).
fn latency_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let buckets = vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
    let h =
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric definition");
    r.register(Box::new(h.clone())).expect("metric registered once");
    h
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(g.clone())).expect("metric registered once");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new();
        let flows = counter_vec(
            &r,
            "weir_flows_total",
            "Flow reports from the datapath, by verdict, report kind (new, update, close, drop, dns) and direction.",
            &["verdict", "event", "direction"],
        );
        let drops = counter_vec(
            &r,
            "weir_flow_drops_total",
            "Dropped packets reported as flows, by reason and the namespace of the local pod involved.",
            &["reason", "namespace"],
        );
        let dns_queries = counter_vec(
            &r,
            "weir_dns_queries_total",
            "DNS queries seen in the datapath, by client namespace and query type.",
            &["namespace", "qtype"],
        );
        let dns_responses = counter_vec(
            &r,
            "weir_dns_responses_total",
            "DNS responses seen in the datapath, by client namespace, query type and rcode.",
            &["namespace", "qtype", "rcode"],
        );
        let dns_latency = Histogram::with_opts(
            HistogramOpts::new(
                "weir_dns_latency_seconds",
                "Time from a DNS query to its response, seen from the client's node.",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        )
        .expect("valid metric definition");
        r.register(Box::new(dns_latency.clone())).expect("metric registered once");
        let dns_malformed = IntCounter::new("weir_dns_malformed_total", "DNS messages the agent could not parse.")
            .expect("valid metric definition");
        r.register(Box::new(dns_malformed.clone())).expect("metric registered once");
        let events_lost = IntCounter::new(
            "weir_events_lost_total",
            "Datapath events (flows, drops, DNS) that did not fit the ring buffer: counted by the kernel, never silently lost.",
        )
        .expect("valid metric definition");
        r.register(Box::new(events_lost.clone())).expect("metric registered once");
        let events_undecodable = IntCounter::new(
            "weir_events_undecodable_total",
            "Ring-buffer records of a size this agent does not know, skipped unread: written by programs of another weir build (an upgrade's takeover window).",
        )
        .expect("valid metric definition");
        r.register(Box::new(events_undecodable.clone())).expect("metric registered once");
        let policy_verdicts = counter_vec(
            &r,
            "weir_policy_verdicts_total",
            "NetworkPolicy verdicts on new connections and drops of isolated pods, by direction and match (allowed, denied).",
            &["direction", "match"],
        );
        const HTTP_LABELS: [&str; 6] = [
            "source_namespace",
            "source_workload",
            "destination_namespace",
            "destination_workload",
            "method",
            "status",
        ];
        let http_requests = counter_vec(
            &r,
            "weir_http_requests_total",
            "HTTP/1.x and HTTP/2 requests answered (gRPC calls are counted in weir_grpc_requests_total), by client and server (namespace, workload), method and status class; counted on the client's node.",
            &HTTP_LABELS,
        );
        let http_duration = latency_vec(
            &r,
            "weir_http_request_duration_seconds",
            "Time from an HTTP/1.x or HTTP/2 request to its response, seen from the client's node (from the server's for clients outside the cluster).",
            &HTTP_LABELS,
        );
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric definition");
            r.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        let http_without_request = counter(
            "weir_http_responses_without_request_total",
            "HTTP responses whose request was not seen (its connection began before the agent, or the request was not copied): reported without latency, never paired with a guess.",
        );
        let http_unanswered = counter(
            "weir_http_requests_unanswered_total",
            "HTTP requests that got no response: expired after 120 s, evicted by the bounds on waiting requests, or their connection reset or its server's side closed first.",
        );
        let binds_forgotten = counter(
            "weir_binds_forgotten_total",
            "Binds of pod processes forgotten to keep the agent's table of which process bound which port bounded (connections later accepted on those ports name no process).",
        );
        let http_unparsed = counter(
            "weir_http_unparsed_total",
            "Copied segments that began like an HTTP/1.x message but did not parse (skipped).",
        );
        let http_records_skipped = counter(
            "weir_http_records_skipped_total",
            "HTTP messages parsed, paired and counted in these metrics but not kept as records for weir observe: over --http-records-per-sec.",
        );
        const GRPC_LABELS: [&str; 5] =
            ["source_namespace", "source_workload", "destination_namespace", "destination_workload", "grpc_status"];
        let grpc_requests = counter_vec(
            &r,
            "weir_grpc_requests_total",
            "gRPC calls over cleartext HTTP/2 answered, by client and server (namespace, workload) and grpc-status (its name: OK, NOT_FOUND, ...); counted on the client's node.",
            &GRPC_LABELS,
        );
        let grpc_duration = latency_vec(
            &r,
            "weir_grpc_request_duration_seconds",
            "Time from a gRPC call's request headers to its status (trailers), seen from the client's node (from the server's for clients outside the cluster).",
            &GRPC_LABELS,
        );
        let http2_lost = counter_vec(
            &r,
            "weir_http2_lost_total",
            "Directions of HTTP/2 connections no longer decoded, by reason: start_missed (begun before the agent), gap (a segment's event lost), beyond_capture (a frame header past the bytes copied of a segment), block_too_large, hpack, push_promise, malformed. Nothing after it is guessed.",
            &["reason"],
        );
        let execs = counter_vec(
            &r,
            "weir_exec_total",
            "Programs started under the node's pod cgroup (the exec audit), by the pod's namespace and attribution (pod, not-in-a-pod, cgroup-gone).",
            &["namespace", "attribution"],
        );
        let datapath = gauge_vec(
            &r,
            "weir_datapath_packets",
            "Packets by datapath outcome since the datapath was loaded (the kernel's own counters).",
            &["outcome"],
        );
        let datapath_drops = gauge_vec(
            &r,
            "weir_datapath_drops",
            "Packets dropped by the datapath since it was loaded, by reason (the kernel's own counters: complete even when events are lost).",
            &["reason"],
        );
        let maps = gauge_vec(
            &r,
            "weir_map_entries",
            "Entries the agent keeps in a datapath map, and the map's capacity.",
            &["map", "kind"],
        );
        let state = gauge_vec(
            &r,
            "weir_agent_state",
            "Agent state: flows stored and store capacity, events lost in the kernel, rejected Services and policies, fail-closed endpoints.",
            &["what"],
        );
        Self {
            registry: r,
            flows,
            drops,
            dns_queries,
            dns_responses,
            dns_latency,
            dns_malformed,
            policy_verdicts,
            http_requests,
            http_duration,
            http_without_request,
            http_unanswered,
            http_unparsed,
            http_records_skipped,
            grpc_requests,
            grpc_duration,
            http2_lost,
            execs,
            binds_forgotten,
            events_lost,
            events_undecodable,
            datapath,
            datapath_drops,
            maps,
            state,
        }
    }
}

impl Metrics {
    /// Counts one ingested flow.
    pub fn flow(&self, f: &Flow) {
        let dir = match f.traffic_direction {
            TrafficDirection::Egress => "egress",
            TrafficDirection::Ingress => "ingress",
            TrafficDirection::Unknown => "unknown",
        };
        let verdict = match f.verdict {
            Verdict::Dropped => "dropped",
            Verdict::Translated => "translated",
            Verdict::Forwarded => "forwarded",
            Verdict::Unknown => "unknown",
        };
        self.flows.with_label_values(&[verdict, f.weir.event.as_str(), dir]).inc();
        if f.verdict == Verdict::Dropped {
            // The local pod's namespace: the source leaving a pod, else the destination.
            let ns = if f.source.namespace.is_empty() { &f.destination.namespace } else { &f.source.namespace };
            self.drops.with_label_values(&[f.weir.drop_reason.as_str(), ns.as_str()]).inc();
        }
    }

    pub fn dns(&self, client_namespace: &str, m: &dns::Message, latency_ns: Option<u64>) {
        let qtype = dns::type_label(m.qtype);
        if m.response {
            self.dns_responses.with_label_values(&[client_namespace, qtype, dns::rcode_name(m.rcode)]).inc();
        } else {
            self.dns_queries.with_label_values(&[client_namespace, qtype]).inc();
        }
        if let Some(ns) = latency_ns {
            self.dns_latency.observe(ns as f64 / 1e9);
        }
    }

    pub fn dns_malformed(&self) {
        self.dns_malformed.inc();
    }

    /// The counter and histogram of answered HTTP exchanges with these labels (client
    /// namespace and workload, server namespace and workload, method label, status class).
    pub fn http_handles(&self, labels: [&str; 6]) -> (IntCounter, Histogram) {
        (self.http_requests.with_label_values(&labels), self.http_duration.with_label_values(&labels))
    }

    /// The counter and histogram of answered gRPC calls with these labels (client namespace and
    /// workload, server namespace and workload, grpc-status name).
    pub fn grpc_handles(&self, labels: [&str; 5]) -> (IntCounter, Histogram) {
        (self.grpc_requests.with_label_values(&labels), self.grpc_duration.with_label_values(&labels))
    }

    /// Ring-buffer records skipped because no event of this build has their size.
    pub fn events_undecodable(&self, n: u64) {
        self.events_undecodable.inc_by(n);
    }

    /// A direction of an HTTP/2 connection no longer decoded.
    pub fn http2_lost(&self, reason: &str) {
        self.http2_lost.with_label_values(&[reason]).inc();
    }

    /// A response whose request was not seen.
    pub fn http_without_request(&self) {
        self.http_without_request.inc();
    }

    /// An HTTP message counted but not kept as a record (over the record rate).
    pub fn http_record_skipped(&self) {
        self.http_records_skipped.inc();
    }

    pub fn http_unanswered(&self, n: u64) {
        if n > 0 {
            self.http_unanswered.inc_by(n);
        }
    }

    pub fn binds_forgotten(&self, n: u64) {
        if n > 0 {
            self.binds_forgotten.inc_by(n);
        }
    }

    pub fn http_unparsed(&self) {
        self.http_unparsed.inc();
    }

    pub fn exec(&self, namespace: &str, attribution: &str) {
        self.execs.with_label_values(&[namespace, attribution]).inc();
    }

    /// Follows the kernel's lost-events counter (it only grows while the datapath stays loaded).
    pub fn set_events_lost(&self, total: u64) {
        let seen = self.events_lost.get();
        if total > seen {
            self.events_lost.inc_by(total - seen);
        }
    }

    pub fn policy_verdict(&self, direction: &str, outcome: &str) {
        self.policy_verdicts.with_label_values(&[direction, outcome]).inc();
    }

    /// The exposition (text format 0.0.4).
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}

/// Serves `/metrics` on `addr`; `refresh` updates the scrape-time gauges first.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    refresh: impl Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding metrics on {addr}"))?;
    tracing::info!(%addr, "metrics served at /metrics");
    let refresh = Arc::new(refresh);
    let cap = crate::serve::local::ConnectionCap::new(crate::serve::local::METRICS_CONNECTIONS);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept on the metrics socket");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over the cap the connection is closed at once: a scraper retries at its next interval.
        let Some(permit) = cap.try_enter() else { continue };
        let (metrics, refresh) = (metrics.clone(), refresh.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (metrics, refresh) = (metrics.clone(), refresh.clone());
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        refresh().await;
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                            .body(Full::new(Bytes::from(metrics.render())))
                    } else {
                        Response::builder().status(404).body(Full::new(Bytes::from_static(b"only /metrics here\n")))
                    };
                    Ok::<_, Infallible>(resp.unwrap_or_default())
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(crate::serve::local::METRICS_HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(io, svc);
            match tokio::time::timeout(crate::serve::local::METRICS_CONNECTION_TIMEOUT, conn).await {
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection"),
                Err(_) => tracing::debug!("metrics connection closed after the time limit"),
                Ok(Ok(())) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_bounded_and_lost_events_follow_the_kernel() {
        let m = Metrics::default();
        for qtype in [1, 28, 4242, 9999] {
            m.dns("shop", &dns::Message { qtype, ..Default::default() }, Some(1_000_000));
        }
        m.set_events_lost(5);
        m.set_events_lost(3); // a smaller reading (datapath reloaded) never decrements
        m.set_events_lost(7);
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(text.contains("weir_dns_queries_total{namespace=\"shop\",qtype=\"OTHER\"} 2"), "{text}");
        assert!(!text.contains("TYPE4242"), "{text}");
        assert!(text.contains("weir_events_lost_total 7"), "{text}");
        assert!(text.contains("weir_dns_latency_seconds_count 4"), "{text}");
    }
}
