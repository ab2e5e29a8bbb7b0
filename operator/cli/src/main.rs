//! `weir`: what the node agent and its datapath say, for on-call engineers. Everything is read
//! from the agent's socket; the datapath figures come from the kernel (maps, tcx queries).
use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use weir_operator_api::{client, Request, Response, SideVerdict};

mod observe;

#[derive(Parser)]
#[command(name = "weir", about = "Inspect a weir node: endpoints, datapath, drops, Services, policy")]
struct Cli {
    /// The agent's socket. `observe` takes it several times and merges those agents' flows
    /// (whole records, in time order; arrival order with --follow).
    #[arg(long, global = true, env = "WEIR_SOCKET", default_value = weir_operator_api::DEFAULT_SOCKET)]
    socket: Vec<PathBuf>,
    /// Output format: table (default) or json; `observe` also has compact (its default).
    #[arg(short = 'o', long, global = true, value_enum)]
    output: Option<Output>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
    Compact,
}

#[derive(Subcommand)]
enum Cmd {
    /// Is the agent ready to serve CNI ADD?
    Status,
    /// Pods on this node, and whether the kernel's endpoint map agrees.
    Endpoints,
    /// Programs attached per interface, and the datapath counters (drops by reason).
    Datapath,
    /// Service frontends and their backends, as the kernel's map holds them.
    Services,
    /// The most recent packet drops, with reason and pod.
    Drops {
        /// Show only the newest N.
        #[arg(long)]
        last: Option<usize>,
    },
    /// NetworkPolicy: explain a verdict, or show endpoints' effective policy.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Flows, drops and DNS seen by this node's datapath (or several agents', merged); filtered
    /// like `hubble observe`. `weir observe --help` lists the filters.
    #[command(disable_help_flag = true)]
    Observe {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Would a new connection be allowed, and by which policies and rules (or which policies
    /// isolate the pod that denies it)? Computed by the compiler that writes the datapath.
    Explain {
        /// Source: NAMESPACE/POD or an IPv4 address.
        #[arg(long)]
        from: String,
        /// Destination: NAMESPACE/POD or an IPv4 address.
        #[arg(long)]
        to: String,
        #[arg(long)]
        port: u16,
        #[arg(long, value_enum, default_value = "tcp")]
        protocol: Proto,
    },
    /// The effective policy of this node's endpoints (or of NAMESPACE/POD).
    Show { pod: Option<String> },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Observe { args } = &cli.cmd {
        return observe::run(
            &cli.socket,
            args,
            cli.output.map(|o| match o {
                Output::Table => observe::Format::Table,
                Output::Json => observe::Format::Json,
                Output::Compact => observe::Format::Compact,
            }),
        );
    }
    let socket = match cli.socket.as_slice() {
        [one] => one,
        many => bail!("--socket given {} times: only `weir observe` reads several agents at once", many.len()),
    };
    let output = cli.output.unwrap_or(Output::Table);
    let req = match &cli.cmd {
        Cmd::Observe { .. } => unreachable!("handled above"),
        Cmd::Status => Request::Status,
        Cmd::Endpoints => Request::Endpoints,
        Cmd::Datapath => Request::Datapath,
        Cmd::Drops { last } => Request::Drops { last: *last },
        Cmd::Services => Request::Services,
        Cmd::Policy(PolicyCmd::Explain { from, to, port, protocol }) => Request::PolicyExplain {
            from: from.clone(),
            to: to.clone(),
            port: *port,
            protocol: if *protocol == Proto::Tcp { "tcp" } else { "udp" }.into(),
        },
        Cmd::Policy(PolicyCmd::Show { pod }) => Request::Policies { pod: pod.clone() },
    };
    let resp = client::call(socket, &req, Duration::from_secs(10))
        .with_context(|| format!("agent socket {}", socket.display()))?;
    if let Response::Error(e) = &resp {
        bail!("weir-agent: {} {}", e.msg, e.details);
    }
    if output == Output::Json {
        let v = match resp {
            Response::Status(s) => serde_json::to_value(s)?,
            Response::Endpoints { rows } => serde_json::to_value(rows)?,
            Response::Datapath(d) => serde_json::to_value(d)?,
            Response::Drops(d) => serde_json::to_value(d)?,
            Response::Services { rows, rejected } => {
                serde_json::json!({ "frontends": rows, "rejected": rejected })
            }
            Response::PolicyExplain(e) => serde_json::to_value(e)?,
            Response::Policies(p) => serde_json::to_value(p)?,
            other => serde_json::to_value(other)?,
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match resp {
        Response::Status(s) => {
            println!("node {}: {} ({})", s.node, if s.ready { "ready" } else { "NOT READY" }, s.reason);
            if let Some(c) = s.pod_cidr {
                println!("pod CIDR {c}");
            }
            if !s.rejected.is_empty() {
                println!("refused objects ({}):", s.rejected.len());
                s.rejected.iter().for_each(|r| println!("  {r}"));
            }
            if !s.ready {
                std::process::exit(1);
            }
        }
        Response::Endpoints { rows } => {
            println!("{:<32} {:<16} {:<16} {:<7} IN-DATAPATH", "POD", "IP", "INTERFACE", "MTU");
            for r in rows {
                let e = r.endpoint;
                let pod = format!("{}/{}", e.pod_namespace, e.pod_name);
                println!(
                    "{pod:<32} {:<16} {:<16} {:<7} {}",
                    e.ip.to_string(),
                    e.host_ifname,
                    e.mtu,
                    if r.in_datapath { "yes" } else { "NO" }
                );
            }
        }
        Response::Datapath(d) => {
            println!("{:<18} {:<24} TCX EGRESS", "INTERFACE", "TCX INGRESS");
            for a in d.attachments {
                if a.missing {
                    println!("{:<18} (interface gone: its pod's DEL is pending)", a.iface);
                    continue;
                }
                println!("{:<18} {:<24} {}", a.iface, a.programs.join(", "), a.egress.join(", "));
            }
            println!("\n{:<34} COUNT", "COUNTER");
            for (k, v) in d.counters {
                if v > 0 || !k.starts_with("drop_") {
                    println!("{k:<34} {v}");
                }
            }
        }
        Response::Drops(d) => {
            println!("{:<14} {:<28} {:<16} {:<16} POD", "TIME(ms)", "REASON", "SOURCE", "DESTINATION");
            for e in d.events {
                println!(
                    "{:<14} {:<28} {:<16} {:<16} {}",
                    e.unix_ms,
                    e.reason,
                    e.src.to_string(),
                    e.dst.to_string(),
                    e.pod.unwrap_or_else(|| format!("ifindex {}", e.ifindex))
                );
            }
            println!("\n{} drops read since the agent started; {} events lost in the kernel", d.seen, d.lost);
        }
        Response::Services { rows, rejected } => {
            println!("{:<24} {:<5} {:<28} BACKENDS", "FRONTEND", "PROTO", "SERVICE");
            for r in rows {
                let backends = if r.backends.is_empty() { "(none: refused)".to_owned() } else { r.backends.join(", ") };
                println!(
                    "{:<24} {:<5} {:<28} {backends}",
                    r.frontend,
                    r.protocol,
                    r.service.unwrap_or_else(|| "?".into())
                );
            }
            if !rejected.is_empty() {
                println!("\nRejected (their previous datapath state is kept):");
                for r in rejected {
                    println!("  {:<28} {}", r.service, r.reason);
                }
            }
        }
        Response::PolicyExplain(e) => {
            println!(
                "{} {} -> {} {}/{}",
                if e.allowed { "ALLOWED" } else { "DENIED" },
                e.from,
                e.to,
                e.protocol,
                e.port
            );
            println!("  source identity {}\n  destination identity {}", e.src_identity, e.dst_identity);
            for (dir, s) in [("egress", &e.egress), ("ingress", &e.ingress)] {
                let who = s.endpoint.as_deref().unwrap_or("not a pod");
                println!("  {dir} ({who}): {}", s.verdict);
                match s.verdict {
                    SideVerdict::Allowed => s.rules.iter().for_each(|r| println!("    by {r}")),
                    SideVerdict::Denied => {
                        println!("    default deny: isolated by {} and no rule allows it", s.selected_by.join(", "))
                    }
                    SideVerdict::FailClosed => println!("    {}", s.reason.as_deref().unwrap_or("")),
                    SideVerdict::NotIsolated => println!("    no policy selects it for {dir}"),
                }
            }
            if !e.allowed {
                std::process::exit(1);
            }
        }
        Response::Policies(p) => {
            for ep in &p.endpoints {
                println!("{} ({}) identity {}, {} datapath entries", ep.pod, ep.ip, ep.identity, ep.entries);
                if let Some(why) = &ep.fail_closed {
                    println!("  FAIL-CLOSED: {why}");
                }
                for (dir, d) in [("ingress", &ep.ingress), ("egress", &ep.egress)] {
                    match d {
                        None => println!("  {dir}: not isolated (all allowed)"),
                        Some(d) => {
                            println!("  {dir}: isolated by {}", d.selected_by.join(", "));
                            if d.allows.is_empty() {
                                println!("    nothing allowed");
                            }
                            d.allows.iter().for_each(|a| println!("    allow {a}"));
                        }
                    }
                }
            }
            println!(
                "\n{} identities, {} prefixes, {} entries; {} endpoints went fail-closed since start",
                p.identities, p.prefixes, p.entries, p.fail_closed_total
            );
            if !p.rejected.is_empty() {
                println!("Rejected policies (the last valid version, if any, stays enforced):");
                p.rejected.iter().for_each(|r| println!("  {r}"));
            }
        }
        other => println!("{other:?}"),
    }
    Ok(())
}
