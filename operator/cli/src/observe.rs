//! `weir observe`: flows from the agent, filtered there, printed here.
//!
//! The filter flags are parsed by hand because their order matters: `--not` negates the filter
//! that follows it, as in `hubble observe`.
use std::{
    path::PathBuf,
    sync::mpsc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _};
use weir_operator_api::{
    client,
    flow::{Criterion, Flow, FlowQuery, ObservationPoint, ReportType, Verdict},
    Request, Response,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Compact,
    Json,
    Table,
}

#[derive(Debug, PartialEq)]
pub struct Args {
    pub query: FlowQuery,
    pub format: Option<Format>,
}

/// `30s`, `5m`, `2h`, `1d`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("--since {s}: expected a duration such as 30s, 5m, 2h");
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(secs))
}

/// Parses `weir observe`'s arguments.
pub fn parse(args: &[String], now: SystemTime) -> Result<Args, String> {
    let mut q = FlowQuery::default();
    let mut format = None;
    let mut negate = false;
    let mut it = args.iter().peekable();
    while let Some(raw) = it.next() {
        let (flag, inline) = match raw.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (raw.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().cloned().ok_or_else(|| format!("{name} needs a value")),
            }
        };
        let criterion = match flag {
            "--not" => {
                if negate {
                    return Err("--not --not: a filter can be negated once".into());
                }
                negate = true;
                continue;
            }
            "-n" | "--namespace" => Criterion::Namespace(value(flag)?),
            "--pod" => Criterion::Pod(value(flag)?),
            "--from-pod" => Criterion::FromPod(value(flag)?),
            "--to-pod" => Criterion::ToPod(value(flag)?),
            "--service" => Criterion::Service(value(flag)?),
            "--from-service" => Criterion::FromService(value(flag)?),
            "--to-service" => Criterion::ToService(value(flag)?),
            "--workload" => Criterion::Workload(value(flag)?),
            "--from-workload" => Criterion::FromWorkload(value(flag)?),
            "--to-workload" => Criterion::ToWorkload(value(flag)?),
            "-l" | "--label" => Criterion::Label(value(flag)?),
            "--from-label" => Criterion::FromLabel(value(flag)?),
            "--to-label" => Criterion::ToLabel(value(flag)?),
            "--ip" => Criterion::Ip(value(flag)?),
            "--from-ip" => Criterion::FromIp(value(flag)?),
            "--to-ip" => Criterion::ToIp(value(flag)?),
            "--port" => {
                let v = value(flag)?;
                Criterion::Port(v.parse().map_err(|_| format!("--port {v}: expected a port number 0-65535"))?)
            }
            "--protocol" => Criterion::Protocol(value(flag)?.to_ascii_lowercase()),
            "--verdict" => Criterion::Verdict(Verdict::from_filter(&value(flag)?)?),
            "-t" | "--type" => Criterion::Type(ReportType::from_filter(&value(flag)?)?),
            "--node" => Criterion::Node(value(flag)?),
            "--dns-name" => Criterion::DnsName(value(flag)?),
            "--http-status" => Criterion::HttpStatus(value(flag)?),
            "--http-method" => Criterion::HttpMethod(value(flag)?),
            "--http-path" => Criterion::HttpPath(value(flag)?),
            other => {
                if negate {
                    return Err(format!("--not must be followed by a filter, not {other}"));
                }
                match other {
                    "--since" => {
                        let d = parse_duration(&value(other)?)?;
                        let t = now.checked_sub(d).unwrap_or(UNIX_EPOCH);
                        q.since_unix_ns = Some(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
                    }
                    "--last" => {
                        let v = value(other)?;
                        q.last = Some(v.parse().map_err(|_| format!("--last {v}: expected a number of flows"))?);
                    }
                    "-f" | "--follow" => q.follow = true,
                    "-o" | "--output" => {
                        let v = value(other)?;
                        format = Some(match v.as_str() {
                            "compact" => Format::Compact,
                            "json" | "jsonpb" => Format::Json,
                            "table" => Format::Table,
                            _ => return Err(format!("-o {v}: expected compact, json or table")),
                        });
                    }
                    _ => return Err(format!("unknown flag {other} (see weir observe --help)")),
                }
                continue;
            }
        };
        criterion.validate()?;
        if std::mem::take(&mut negate) {
            q.filter.exclude.push(criterion);
        } else {
            q.filter.include.push(criterion);
        }
    }
    if negate {
        return Err("--not at the end: it must be followed by a filter".into());
    }
    Ok(Args { query: q, format })
}

fn side(addr: &str, port: u16, pod: &str) -> String {
    let who = if pod.is_empty() { addr.to_owned() } else { pod.to_owned() };
    if port == 0 {
        who
    } else {
        format!("{who}:{port}")
    }
}

fn policy_note(f: &Flow) -> String {
    let names = |v: &[weir_operator_api::flow::Policy]| {
        v.iter()
            .map(|p| {
                if p.rule.is_empty() {
                    format!("{}/{}", p.namespace, p.name)
                } else {
                    format!("{}/{} {}", p.namespace, p.name, p.rule)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    for (what, v) in [
        ("egress allowed by", &f.egress_allowed_by),
        ("ingress allowed by", &f.ingress_allowed_by),
        ("egress denied by", &f.egress_denied_by),
        ("ingress denied by", &f.ingress_denied_by),
    ] {
        if !v.is_empty() {
            parts.push(format!("{what} {}", names(v)));
        }
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" [{}]", parts.join("; "))
    }
}

/// ` (via Service ns/name 10.96.0.10:80)` on a connection translated from a Service frontend,
/// ` (reply of Service …)` on its backend's reply; the bare frontend when no Service owns it.
fn service_note(f: &Flow) -> String {
    let front = &f.weir.service_frontend;
    if front.is_empty() {
        return String::new();
    }
    let (what, svc) = match (&f.destination_service, &f.source_service) {
        (Some(s), _) => ("via", s.full_name()),
        (None, Some(s)) => ("reply of", s.full_name()),
        (None, None) => (if f.is_reply { "reply of" } else { "via" }, "frontend".into()),
    };
    format!(" ({what} Service {svc} {front})")
}

/// One line per flow: time, node, source -> destination, verdict, what happened, policy.
pub fn compact(f: &Flow) -> String {
    let (sp, dp) = f.ports();
    let time = f.time.get(11..23).unwrap_or(&f.time);
    let verdict = match f.verdict {
        Verdict::Dropped => format!("DROPPED ({})", f.weir.drop_reason),
        v => v.to_string(),
    };
    let reply = if f.is_reply { " reply" } else { "" };
    let point = match f.trace_observation_point {
        Some(ObservationPoint::FromEndpoint) => " from-pod",
        Some(ObservationPoint::ToEndpoint) => " to-pod",
        None => "",
    };
    format!(
        "{time} [{}] {} -> {}{} {}{reply}{point} {verdict} {}{}{}",
        f.node_name,
        side(&f.ip.source, sp, &f.source.pod()),
        side(&f.ip.destination, dp, &f.destination.pod()),
        service_note(f),
        f.protocol(),
        f.summary,
        process_note(f),
        policy_note(f)
    )
}

/// ` by curl (pid 4242)`: the process that opened the connection, where the datapath saw it;
/// ` by nginx (pid 4242, bound the port)` on a connection the pod accepted.
fn process_note(f: &Flow) -> String {
    let note = |p: &weir_operator_api::flow::Process| {
        let bound = if p.bound { ", bound the port" } else { "" };
        format!(" by {} (pid {}{bound})", p.command, p.pid)
    };
    f.weir.process.as_ref().map(note).unwrap_or_default()
}

fn table_row(f: &Flow) -> String {
    let (sp, dp) = f.ports();
    format!(
        "{:<31} {:<10} {:<36} {:<36} {:<15} {:<10} {}{}{}",
        f.time,
        f.node_name,
        side(&f.ip.source, sp, &f.source.pod()),
        side(&f.ip.destination, dp, &f.destination.pod()),
        f.types(),
        f.verdict,
        f.summary,
        service_note(f),
        policy_note(f)
    )
}

const HELP: &str = "weir observe [FILTERS] [--since DURATION] [--last N] [--follow] [-o compact|json|table]\n\
     filters (--not before one negates it; one kind ORs, kinds AND):\n  \
     -n/--namespace NS  --pod [NS/]POD  --from-pod  --to-pod  -l/--label KEY[=VALUE]  --from-label  --to-label\n  \
     --service [NS/]SVC  --from-service  --to-service  --workload [KIND/]NAME  --from-workload  --to-workload\n  \
     --ip ADDR[/LEN]  --from-ip  --to-ip  --port N\n  \
     --protocol tcp|udp|icmp|dns|http  --verdict forwarded|dropped|translated  --node NAME\n  \
     -t/--type trace|drop|dns|http|l7|exec|policy-verdict  --dns-name NAME  --http-status 200|4+  --http-method GET  --http-path /PREFIX\n\
     with several --socket: the agents' flows merged, newest N of all of them for --last, in time order";

/// One record in the chosen format: a single line, whatever the flow holds. Names come from
/// the network (a DNS query name may hold any byte), so control characters are escaped: a pod
/// cannot forge lines in an on-call engineer's terminal.
fn render(f: &Flow, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Compact => one_line(compact(f)),
        Format::Table => one_line(table_row(f)),
        // serde_json escapes control characters in strings.
        Format::Json => serde_json::to_string(&serde_json::json!({ "flow": f }))?,
    })
}

fn one_line(s: String) -> String {
    if !s.chars().any(char::is_control) {
        return s;
    }
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// The history of several agents as one: time order (node and per-node order break ties), and
/// with `--last N` the newest N of all of them (each agent sent its own newest N).
pub fn merge_history(mut flows: Vec<Flow>, last: Option<usize>) -> Vec<Flow> {
    flows.sort_by(|a, b| (a.weir.unix_ns, &a.node_name, a.weir.seq).cmp(&(b.weir.unix_ns, &b.node_name, b.weir.seq)));
    if let Some(n) = last {
        let drop = flows.len().saturating_sub(n);
        flows.drain(..drop);
    }
    flows
}

/// What a reader thread tells the printer.
enum Msg {
    Batch(weir_operator_api::flow::Flows),
    /// The agent at this socket finished (history read, or the follow stream ended).
    End(PathBuf, Result<NodeTotals, String>),
}

#[derive(Default)]
struct NodeTotals {
    node: String,
    seen: u64,
    lost: u64,
    capacity: usize,
}

/// Reads one agent's answer on its own thread and hands every batch to the printer whole.
fn read_agent(socket: PathBuf, req: Request, tx: mpsc::Sender<Msg>) {
    let mut totals = NodeTotals::default();
    let mut failure = None;
    let r = client::stream(&socket, &req, |resp| match resp {
        Response::Flows(batch) => {
            totals = NodeTotals {
                node: batch.node.clone(),
                seen: batch.seen,
                lost: batch.lost_in_kernel,
                capacity: batch.capacity,
            };
            tx.send(Msg::Batch(batch)).is_ok()
        }
        Response::Error(e) => {
            failure = Some(format!("weir-agent: {} {}", e.msg, e.details));
            false
        }
        other => {
            failure = Some(format!("unexpected answer {other:?}"));
            false
        }
    });
    let end = match (r, failure) {
        (Err(e), _) => Err(format!("agent socket {}: {e}", socket.display())),
        (Ok(()), Some(f)) => Err(format!("agent socket {}: {f}", socket.display())),
        (Ok(()), None) => Ok(totals),
    };
    let _ = tx.send(Msg::End(socket, end));
}

/// Writes whole lines to stdout; a reader that went away (`| head`) ends the command quietly.
struct Out {
    w: std::io::BufWriter<std::io::StdoutLock<'static>>,
}

impl Out {
    fn line(&mut self, s: &str) -> anyhow::Result<bool> {
        use std::io::Write as _;
        match writeln!(self.w, "{s}") {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e).context("writing to stdout"),
        }
    }

    fn flush(&mut self) -> anyhow::Result<bool> {
        use std::io::Write as _;
        match self.w.flush() {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e).context("writing to stdout"),
        }
    }
}

/// `weir observe` against one agent or several (`--socket` repeated). Each agent is read on a
/// thread of its own; only this thread prints, a whole record at a time, so the output of
/// several agents never interleaves inside a line: without `--follow` the histories are merged
/// in time order, with it batches are printed as they arrive.
pub fn run(sockets: &[PathBuf], args: &[String], global_format: Option<Format>) -> anyhow::Result<()> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{HELP}");
        return Ok(());
    }
    let parsed = parse(args, SystemTime::now()).map_err(|e| anyhow::anyhow!("weir observe: {e}"))?;
    let format = parsed.format.or(global_format).unwrap_or(Format::Compact);
    let follow = parsed.query.follow;
    let last = parsed.query.last;
    let (tx, rx) = mpsc::channel();
    for socket in sockets {
        let (socket, req, tx) = (socket.clone(), Request::Flows(parsed.query.clone()), tx.clone());
        std::thread::spawn(move || read_agent(socket, req, tx));
    }
    drop(tx);
    let mut out = Out { w: std::io::BufWriter::new(std::io::stdout().lock()) };
    if format == Format::Table {
        let header = format!(
            "{:<31} {:<10} {:<36} {:<36} {:<15} {:<10} SUMMARY",
            "TIMESTAMP", "NODE", "SOURCE", "DESTINATION", "TYPE", "VERDICT"
        );
        if !out.line(&header)? {
            return Ok(());
        }
    }
    let mut history = Vec::new();
    let mut failures = Vec::new();
    let mut totals = Vec::new();
    // Every sender is dropped when its thread ends: the loop ends when every agent has.
    for msg in rx {
        match msg {
            Msg::Batch(batch) => {
                if batch.skipped > 0 {
                    eprintln!(
                        "weir observe: this client fell behind node {} and skipped {} flows",
                        batch.node, batch.skipped
                    );
                }
                if !follow {
                    history.extend(batch.flows);
                    continue;
                }
                for f in &batch.flows {
                    if !out.line(&render(f, format)?)? {
                        return Ok(());
                    }
                }
                if !out.flush()? {
                    return Ok(());
                }
            }
            Msg::End(socket, Ok(t)) => totals.push((socket, t)),
            Msg::End(_, Err(e)) => {
                eprintln!("weir observe: {e}");
                failures.push(e);
            }
        }
    }
    for f in merge_history(history, last) {
        if !out.line(&render(&f, format)?)? {
            return Ok(());
        }
    }
    if !out.flush()? {
        return Ok(());
    }
    if !follow && format != Format::Json {
        for (socket, t) in &totals {
            let who = if t.node.is_empty() { socket.display().to_string() } else { format!("node {}", t.node) };
            eprintln!(
                "{who}: {} flows recorded by its agent (it keeps the newest {}); {} events lost in the kernel",
                t.seen, t.capacity, t.lost
            );
        }
    }
    match failures.len() {
        0 => Ok(()),
        1 => bail!("{}", failures[0]),
        n => bail!("{n} agents failed: {}", failures.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn filters_negation_and_options() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let a = parse(&args("-n shop --not --protocol dns --port=80 --last 5 -f -o json --since 100s"), now)
            .expect("parse");
        assert_eq!(a.query.filter.include, [Criterion::Namespace("shop".into()), Criterion::Port(80)]);
        assert_eq!(a.query.filter.exclude, [Criterion::Protocol("dns".into())]);
        assert_eq!((a.query.last, a.query.follow, a.format), (Some(5), true, Some(Format::Json)));
        assert_eq!(a.query.since_unix_ns, Some(900_000_000_000));
    }

    #[test]
    fn compact_names_the_service_of_a_translated_connection() {
        use weir_operator_api::flow::{Service, WeirInfo};
        let web = Service { name: "web".into(), namespace: "shop".into() };
        let weir = WeirInfo { service_frontend: "10.96.0.10:80".into(), ..Default::default() };
        let f =
            Flow { verdict: Verdict::Translated, destination_service: Some(web.clone()), weir, ..Default::default() };
        assert!(compact(&f).contains(" (via Service shop/web 10.96.0.10:80) "), "{}", compact(&f));
        assert!(compact(&f).contains(" TRANSLATED "), "{}", compact(&f));
        let reply = Flow { destination_service: None, source_service: Some(web), is_reply: true, ..f.clone() };
        assert!(compact(&reply).contains(" (reply of Service shop/web 10.96.0.10:80) "), "{}", compact(&reply));
        assert!(!compact(&Flow::default()).contains("Service"));
    }

    #[test]
    fn histories_merge_in_time_order_and_last_counts_all_nodes() {
        let flow = |node: &str, unix_ns: u64, seq: u64| Flow {
            node_name: node.into(),
            weir: weir_operator_api::flow::WeirInfo { unix_ns, seq, ..Default::default() },
            ..Default::default()
        };
        // Each node's history arrives in its own order, one node after the other.
        let got = [flow("n1", 10, 1), flow("n1", 30, 2), flow("n1", 50, 3), flow("n2", 20, 7), flow("n2", 30, 8)];
        let key = |v: Vec<Flow>| v.iter().map(|f| (f.node_name.clone(), f.weir.unix_ns)).collect::<Vec<_>>();
        let all = key(merge_history(got.to_vec(), None));
        let want: Vec<(String, u64)> = [("n1", 10), ("n2", 20), ("n1", 30), ("n2", 30), ("n1", 50)]
            .iter()
            .map(|(n, t)| (n.to_string(), *t))
            .collect();
        assert_eq!(all, want);
        assert_eq!(key(merge_history(got.to_vec(), Some(2))), want[3..]);
        assert_eq!(key(merge_history(got.to_vec(), Some(99))), want);
        assert!(merge_history(got.to_vec(), Some(0)).is_empty());
    }

    #[test]
    fn every_format_renders_one_line() {
        let mut f = Flow { summary: "line one\nline two".into(), ..Default::default() };
        f.node_name = "n1".into();
        std::sync::Arc::make_mut(&mut f.destination).pod_name = "evil\r\u{1b}[2Kpod".into();
        for format in [Format::Compact, Format::Table, Format::Json] {
            let r = render(&f, format).expect("render");
            assert!(!r.chars().any(char::is_control), "{format:?}: {r:?}");
        }
        assert!(render(&f, Format::Compact).expect("render").contains("line one\\nline two"));
    }

    #[test]
    fn bad_input_is_named() {
        let now = SystemTime::now();
        let err = |s: &str| parse(&args(s), now).unwrap_err();
        assert!(err("--colour red").contains("unknown flag --colour"));
        assert!(err("--port http").contains("--port http"));
        assert!(err("--protocol sctp").contains("sctp"));
        assert!(err("--not").contains("--not"));
        assert!(err("--not --last 3").contains("--not must be followed by a filter"));
        assert!(err("--ip 10.0.0.0/33").contains("10.0.0.0/33"));
        assert!(err("--since soon").contains("--since soon"));
        assert!(err("-o yaml").contains("yaml"));
        assert!(err("--pod").contains("--pod needs a value"));
    }
}
