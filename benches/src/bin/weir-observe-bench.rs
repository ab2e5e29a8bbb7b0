//! `weir-observe-bench`: what observability costs and how much it carries.
//!
//! Two copies of the real datapath in the bench's own namespace, one loaded with flow events on
//! and one with them off (drops are reported either way), fed the same frames through
//! BPF_PROG_TEST_RUN:
//! 1. per-packet cost of an established connection's packet (the aggregated path: counters
//!    updated, no event) and of a connection's first packet (a new flow: an event), on vs off;
//! 2. sustained events: new connections as fast as one CPU can make them through test runs,
//!    while the agent's own reader path (ring buffer → `Ingest` → `FlowStore`) drains on another
//!    thread; events received, and events lost (the kernel's counter), which must add up to the
//!    events made;
//! 3. overload: the same with nobody reading, so the ring buffer fills; every event is either
//!    in the ring or counted lost.
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::Parser;
use serde::Serialize;
use weir_bpf_common::programs;
use weir_dataplane::{counters::Counters, events::Events, Datapath};
use weir_operator_agent::{
    observe::flows::{FlowStore, Ingest},
    serve::metrics::Metrics,
};

use weir_benches::{env, stats::median};

#[derive(Parser)]
#[command(name = "weir-observe-bench", about = "Observability: per-packet cost on vs off, sustained events, overload")]
struct Cli {
    /// Test runs per per-packet measurement.
    #[arg(long, default_value_t = 200_000)]
    repeat: u32,
    /// New connections (distinct source ports) per measurement.
    #[arg(long, default_value_t = 30_000)]
    connections: u32,
    #[arg(long, default_value = "observe-bench-results.json")]
    out: PathBuf,
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 3);
const ACK: u8 = 0x10;
const SYN: u8 = 0x02;

#[derive(Debug, Default, Serialize)]
struct Results {
    established_on_ns: f64,
    established_off_ns: f64,
    established_ratio: f64,
    new_flow_on_ns: f64,
    new_flow_off_ns: f64,
    new_flow_ratio: f64,
    sustained_events_made: u64,
    sustained_events_per_sec: f64,
    sustained_received: u64,
    sustained_lost: u64,
    /// Mean first-packet ns while nobody reads (the ring fills, then every event is counted lost).
    overload_new_flow_on_ns: f64,
    overload_events_made: u64,
    overload_in_ring: u64,
    overload_lost: u64,
}

fn load(bpffs: PathBuf, observe: bool) -> anyhow::Result<Datapath> {
    env::load_with_pods(bpffs, (Ipv4Addr::new(10, 251, 0, 0), 16), observe, false, &[CLIENT, SERVER])
}

/// Mean kernel-timed ns of one established-connection packet.
fn established_ns(dp: &mut Datapath, repeat: u32) -> anyhow::Result<f64> {
    let f = env::tcp_frame(CLIENT, SERVER, 40000, 80, ACK);
    dp.test_run_repeat(programs::FROM_POD, &f, 1000)?;
    Ok(dp.test_run_repeat(programs::FROM_POD, &f, repeat)?.1.as_nanos() as f64)
}

/// Runs `n` first packets of distinct connections (source port and address varied); returns
/// the mean kernel-timed ns and the wall time.
fn new_flows(dp: &mut Datapath, n: u32, round: u32) -> anyhow::Result<(f64, Duration)> {
    let start = Instant::now();
    let mut total = Duration::ZERO;
    for i in 0..n {
        let sport = 1024 + (i % 60000) as u16;
        let dport = 1 + (i / 60000 + round * 7) as u16;
        let f = env::tcp_frame(CLIENT, SERVER, sport, dport, SYN);
        total += dp.test_run_repeat(programs::FROM_POD, &f, 1)?.1;
    }
    Ok((total.as_nanos() as f64 / f64::from(n.max(1)), start.elapsed()))
}

fn lost(c: &Counters) -> anyhow::Result<u64> {
    Ok(c.snapshot()?.events_lost)
}

fn run(cli: &Cli, bpffs: PathBuf) -> anyhow::Result<Results> {
    let mut r = Results::default();
    let mut on = load(bpffs.join("on"), true)?;
    let mut off = load(bpffs.join("off"), false)?;
    eprintln!("per-packet cost, on vs off ...");
    // Alternate to spread machine noise over both.
    let (mut e_on, mut e_off) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        e_on.push(established_ns(&mut on, cli.repeat)?);
        e_off.push(established_ns(&mut off, cli.repeat)?);
    }
    r.established_on_ns = median(&e_on);
    r.established_off_ns = median(&e_off);
    r.established_ratio = r.established_on_ns / r.established_off_ns.max(1.0);
    let n = cli.connections.clamp(1, 60000 * 8);
    // First packets: off, then on with the agent's reader draining the ring as the agent does
    // (a round nobody reads measures a full ring instead: that is the overload round below).
    let (t_off, _) = new_flows(&mut off, n, 0)?;
    let mut ring = Events::open(&mut on)?;
    let counters = Counters::open(&mut on)?;
    ring.drain(); // the established connection's own first-packet event
    eprintln!("first packets with the agent's reader draining ...");
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || -> Events {
            let mut ingest = Ingest::new("bench".into(), Default::default(), Arc::new(Metrics::default()));
            let mut store = FlowStore::new(65536);
            loop {
                let batch = ring.drain();
                if batch.is_empty() {
                    if stop.load(Ordering::Acquire) {
                        return ring;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                for ev in &batch {
                    if let Some(f) = ingest.flow(ev) {
                        store.push(f);
                    }
                }
                received.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        })
    };
    let lost1 = lost(&counters)?;
    let (t_on, wall) = new_flows(&mut on, n, 1)?;
    r.new_flow_on_ns = t_on;
    r.new_flow_off_ns = t_off;
    r.new_flow_ratio = t_on / t_off.max(1.0);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Release);
    let mut ring = reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))?;
    r.sustained_events_made = u64::from(n);
    r.sustained_events_per_sec = f64::from(n) / wall.as_secs_f64();
    r.sustained_received = received.load(Ordering::Relaxed);
    r.sustained_lost = lost(&counters)? - lost1;
    if r.sustained_received + r.sustained_lost != r.sustained_events_made {
        bail!("sustained: {} made, {} received + {} lost", n, r.sustained_received, r.sustained_lost);
    }

    eprintln!("overload: nobody reading ...");
    let lost2 = lost(&counters)?;
    let (t_full, _) = new_flows(&mut on, n, 2)?;
    r.overload_new_flow_on_ns = t_full;
    r.overload_events_made = u64::from(n);
    r.overload_in_ring = ring.drain().len() as u64;
    r.overload_lost = lost(&counters)? - lost2;
    if r.overload_in_ring + r.overload_lost != r.overload_events_made {
        bail!("overload: {n} made, {} in the ring + {} lost", r.overload_in_ring, r.overload_lost);
    }
    Ok(r)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = Cli { repeat: cli.repeat, connections: cli.connections, out: cli.out.clone() };
    let r = env::in_bench_netns("wob", move |bpffs| run(&args, bpffs))?;
    println!("\nPer packet (weir_from_pod, same-node pod to pod, BPF_PROG_TEST_RUN):");
    println!("{:<36} {:>10} {:>10} {:>8}", "", "on ns", "off ns", "on/off");
    println!(
        "{:<36} {:>10.0} {:>10.0} {:>8.3}",
        "established connection (aggregated)", r.established_on_ns, r.established_off_ns, r.established_ratio
    );
    println!(
        "{:<36} {:>10.0} {:>10.0} {:>8.3}",
        "first packet of a connection (event)", r.new_flow_on_ns, r.new_flow_off_ns, r.new_flow_ratio
    );
    println!(
        "{:<36} {:>10.0} {:>10.0} {:>8.3}",
        "first packet, nobody reading the ring",
        r.overload_new_flow_on_ns,
        r.new_flow_off_ns,
        r.overload_new_flow_on_ns / r.new_flow_off_ns.max(1.0)
    );
    println!("target: established <= 1.10");
    println!(
        "\nSustained: {} new connections at {:.0} events/s from one CPU; the agent's reader received {}, {} counted lost",
        r.sustained_events_made, r.sustained_events_per_sec, r.sustained_received, r.sustained_lost
    );
    println!(
        "Overload (no reader): {} events made, {} in the ring, {} counted lost (none silent)",
        r.overload_events_made, r.overload_in_ring, r.overload_lost
    );
    std::fs::write(&cli.out, serde_json::to_string_pretty(&r)?)
        .with_context(|| format!("writing {}", cli.out.display()))?;
    eprintln!("JSON written to {}", cli.out.display());
    Ok(())
}
