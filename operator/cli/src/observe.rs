//! `weir observe`: flows from the agent, filtered there, printed here.
//!
//! The filter flags are parsed by hand because their order matters: `--not` negates the filter
//! that follows it, as in `hubble observe`.
use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _};
use weir_operator_api::{
    client,
    flow::{Criterion, Flow, FlowQuery},
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
            "--verdict" => Criterion::Verdict(value(flag)?.to_ascii_lowercase()),
            "-t" | "--type" => Criterion::Type(value(flag)?.to_ascii_lowercase()),
            "--node" => Criterion::Node(value(flag)?),
            "--dns-name" => Criterion::DnsName(value(flag)?),
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
    let verdict = if f.verdict == "DROPPED" { format!("DROPPED ({})", f.weir.drop_reason) } else { f.verdict.clone() };
    let reply = if f.is_reply { " reply" } else { "" };
    let point = match f.trace_observation_point.as_str() {
        "FROM_ENDPOINT" => " from-pod",
        "TO_ENDPOINT" => " to-pod",
        _ => "",
    };
    format!(
        "{time} [{}] {} -> {}{} {}{reply}{point} {verdict} {}{}",
        f.node_name,
        side(&f.ip.source, sp, &f.source.pod()),
        side(&f.ip.destination, dp, &f.destination.pod()),
        service_note(f),
        f.protocol(),
        f.summary,
        policy_note(f)
    )
}

fn table_row(f: &Flow) -> String {
    let (sp, dp) = f.ports();
    format!(
        "{:<31} {:<10} {:<36} {:<36} {:<15} {:<10} {}{}{}",
        f.time,
        f.node_name,
        side(&f.ip.source, sp, &f.source.pod()),
        side(&f.ip.destination, dp, &f.destination.pod()),
        f.types().join(","),
        f.verdict,
        f.summary,
        service_note(f),
        policy_note(f)
    )
}

pub fn run(socket: &Path, args: &[String], global_format: Option<Format>) -> anyhow::Result<()> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "weir observe [FILTERS] [--since DURATION] [--last N] [--follow] [-o compact|json|table]\n\
             filters (--not before one negates it; one kind ORs, kinds AND):\n  \
             -n/--namespace NS  --pod [NS/]POD  --from-pod  --to-pod  -l/--label KEY[=VALUE]  --from-label  --to-label\n  \
             --service [NS/]SVC  --from-service  --to-service  --workload [KIND/]NAME  --from-workload  --to-workload\n  \
             --ip ADDR[/LEN]  --from-ip  --to-ip  --port N\n  \
             --protocol tcp|udp|icmp|dns  --verdict forwarded|dropped|translated  -t/--type trace|drop|dns|policy-verdict  --node NAME  --dns-name NAME"
        );
        return Ok(());
    }
    let parsed = parse(args, SystemTime::now()).map_err(|e| anyhow::anyhow!("weir observe: {e}"))?;
    let format = parsed.format.or(global_format).unwrap_or(Format::Compact);
    if format == Format::Table {
        println!(
            "{:<31} {:<10} {:<36} {:<36} {:<15} {:<10} SUMMARY",
            "TIMESTAMP", "NODE", "SOURCE", "DESTINATION", "TYPE", "VERDICT"
        );
    }
    let follow = parsed.query.follow;
    let mut failure = None;
    let mut last_totals = (0, 0, 0);
    client::stream(socket, &Request::Flows(parsed.query), |resp| match resp {
        Response::Flows(batch) => {
            for f in &batch.flows {
                match format {
                    Format::Compact => println!("{}", compact(f)),
                    Format::Table => println!("{}", table_row(f)),
                    Format::Json => match serde_json::to_string(&serde_json::json!({ "flow": f })) {
                        Ok(line) => println!("{line}"),
                        Err(e) => eprintln!("weir observe: {e}"),
                    },
                }
            }
            if batch.skipped > 0 {
                eprintln!("weir observe: this client fell behind and skipped {} flows", batch.skipped);
            }
            last_totals = (batch.seen, batch.lost_in_kernel, batch.capacity);
            true
        }
        Response::Error(e) => {
            failure = Some(format!("{} {}", e.msg, e.details));
            false
        }
        other => {
            failure = Some(format!("unexpected answer {other:?}"));
            false
        }
    })
    .with_context(|| format!("agent socket {}", socket.display()))?;
    if let Some(f) = failure {
        bail!("weir-agent: {f}");
    }
    if !follow && format != Format::Json {
        let (seen, lost, cap) = last_totals;
        eprintln!(
            "{seen} flows recorded by this node's agent (it keeps the newest {cap}); {lost} events lost in the kernel"
        );
    }
    Ok(())
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
            Flow { verdict: "TRANSLATED".into(), destination_service: Some(web.clone()), weir, ..Default::default() };
        assert!(compact(&f).contains(" (via Service shop/web 10.96.0.10:80) "), "{}", compact(&f));
        assert!(compact(&f).contains(" TRANSLATED "), "{}", compact(&f));
        let reply = Flow { destination_service: None, source_service: Some(web), is_reply: true, ..f.clone() };
        assert!(compact(&reply).contains(" (reply of Service shop/web 10.96.0.10:80) "), "{}", compact(&reply));
        assert!(!compact(&Flow::default()).contains("Service"));
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
