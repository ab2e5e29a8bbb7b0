//! `weir-svc-bench`: Service load-balancing cost, weir against kube-proxy's two layouts, in one run.
//!
//! For N = 1k, 10k, 30k ClusterIP Services (2 endpoints each) it measures, from a client network
//! namespace to a server namespace over a veth pair:
//!
//! * first-packet cost: p50/p99 of `connect()` to the *last* Service (socket created, SYN out,
//!   SYN-ACK back), one fresh socket per sample, closed with RST so no TIME_WAIT piles up;
//! * time to program the N Services from empty, and one incremental update (one Service gains
//!   an endpoint). For weir the update is timed end to end as a watch event travels: the
//!   source puts the slice in its snapshot and logs it, the reconcile loop reads the log, and
//!   `ServiceSync::apply_changes` recompiles and writes that Service. What the manifest-directory
//!   source pays instead to find the change (putting the one changed file's objects into its
//!   last snapshot) is reported beside it.
//!
//! Variants: `baseline` (connect straight to the backend, no rules), `weir` (the agent's own
//! compile → plan → map-write code, `ServiceSync`, into the real `WEIR_SERVICES` map; socket
//! programs on the client's cgroup), `iptables` (kube-proxy iptables layout through
//! `iptables-nft-restore`: KUBE-SERVICES → KUBE-SVC-* → KUBE-SEP-* with `statistic`
//! probabilities; an update rewrites KUBE-SERVICES and the changed chains with `--noflush`, as
//! kube-proxy's minimal restore does) and `nftables` (kube-proxy nftables layout: a
//! `ip daddr . meta l4proto . th dport` verdict map → per-Service `numgen` vmap → endpoint
//! chains; an update is one small `nft -f` transaction).
//!
//! Everything lives in namespaces, a cgroup and a bpffs this run creates and removes.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use serde::Serialize;
use weir_bpf_common::Addr16;
use weir_dataplane::{
    maps::{Backends, KeyValueMap, Maglev, Services},
    Datapath, LoadConfig,
};
use weir_operator_agent::{
    services::map::{KernelServiceMaps, ObjectChanges, ServiceMaps, ServiceSync},
    services::LABEL_SERVICE_NAME,
    source::{self, manifest, Changed, ClusterObject, ClusterSnapshot, Named, SliceInfo},
};

use weir_benches::{stats, table::Table};
use weir_tests::netns;

#[derive(Parser)]
#[command(name = "weir-svc-bench", about = "Service LB benchmark: weir vs kube-proxy iptables-nft and nftables")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole benchmark and print the table (and JSON to --out).
    Run {
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,30000")]
        sizes: Vec<usize>,
        /// connect() samples per variant and size.
        #[arg(long, default_value_t = 2000)]
        connects: usize,
        #[arg(long, default_value = "svc-bench-results.json")]
        out: PathBuf,
        /// baseline and weir alternate this many rounds per size; the median round is reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Internal: accept and close TCP connections on 0.0.0.0:PORT until killed.
    Serve {
        #[arg(long)]
        port: u16,
    },
    /// Internal: join CGROUP (if given), enter NETNS, time COUNT connects to TO; prints JSON.
    Connect {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: usize,
    },
}

/// The client runs on one CPU so that the samples measure the path, not cross-CPU wake-ups.
const CLIENT_CPU: usize = 0;

const SERVER_PORT: u16 = 8080;
const SVC_PORT: u16 = 80;
/// The server namespace owns both backend addresses of the measured (last) Service.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const SERVER_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 200, 0, 2), Ipv4Addr::new(10, 200, 0, 3)];
const WARMUP: usize = 200;
/// Samples of weir's one-Service update (and of the manifest source finding it).
const UPDATE_SAMPLES: usize = 31;
/// Samples of the peers' update: each is a process start and a ruleset transaction.
const PEER_UPDATE_SAMPLES: usize = 5;

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Serve { port } => serve(port),
        Cmd::Connect { netns, cgroup, to, count } => connect_samples(&netns, cgroup.as_deref(), to, count),
        Cmd::Run { sizes, connects, out, rounds } => {
            if !nix::unistd::Uid::effective().is_root() {
                bail!("weir-svc-bench needs root (network namespaces, bpffs, cgroups, iptables)");
            }
            let mut bench = Bench::new();
            let r = bench.run(&sizes, connects, rounds.max(1));
            bench.teardown();
            let results = r?;
            print_table(&results);
            std::fs::write(&out, serde_json::to_string_pretty(&results)?)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("JSON written to {}", out.display());
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- the two helper processes

fn pin_to(cpu: usize) -> anyhow::Result<()> {
    let mut cpus = nix::sched::CpuSet::new();
    cpus.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus).with_context(|| format!("pinning to CPU {cpu}"))
}

fn serve(port: u16) -> anyhow::Result<()> {
    // The server's accept loop stays off the client's CPU (when there is another).
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        pin_to(CLIENT_CPU + 1)?;
    }
    let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).with_context(|| format!("bind :{port}"))?;
    // A deep accept queue: handshakes complete in the kernel faster than this loop may be
    // scheduled on a busy machine, and an overflow would show up as a 1 s SYN retransmit.
    // SAFETY: listen() again on our own listening socket only changes its backlog.
    if unsafe { libc::listen(l.as_raw_fd(), 4096) } != 0 {
        bail!("listen: {}", std::io::Error::last_os_error());
    }
    for c in l.incoming() {
        drop(c);
    }
    Ok(())
}

/// Closes with RST (SO_LINGER 0): no TIME_WAIT, so thousands of samples never run out of ports.
fn close_hard(s: TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a socket this function owns, with a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn connect_samples(netns: &Path, cgroup: Option<&Path>, to: SocketAddr, count: usize) -> anyhow::Result<()> {
    // The cgroup first: sockets created before joining would bypass its socket programs.
    if let Some(cg) = cgroup {
        std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string()).context("joining the cgroup")?;
    }
    let ns = std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    pin_to(CLIENT_CPU)?;
    let mut ns_samples = Vec::with_capacity(count);
    for i in 0..WARMUP + count {
        let t = Instant::now();
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(1)).with_context(|| format!("connect {to}"))?;
        let dt = t.elapsed();
        close_hard(s);
        if i >= WARMUP {
            ns_samples.push(dt.as_nanos() as u64);
        }
    }
    println!("{}", serde_json::to_string(&ns_samples)?);
    Ok(())
}

// ---------------------------------------------------------------- the run

#[derive(Debug, Serialize)]
struct Row {
    services: usize,
    variant: &'static str,
    connect_p50_us: f64,
    connect_p99_us: f64,
    /// Time to program all N Services from empty (None for the baseline).
    program_ms: Option<f64>,
    /// One Service gaining (or losing) an endpoint: the median of the samples.
    update_ms: Option<f64>,
    /// The slowest of those samples.
    update_max_ms: Option<f64>,
    /// weir only: the kernel map write of that update alone.
    update_map_write_us: Option<f64>,
    /// weir only: the manifest-directory source finding that change (the changed file's
    /// objects put into its last snapshot; a watch source is told the change instead), median.
    update_source_diff_ms: Option<f64>,
}

struct Bench {
    id: String,
    client_ns: String,
    server_ns: String,
    cgroup: PathBuf,
    bpffs: PathBuf,
    server: Option<Child>,
}

fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

fn in_ns(ns: &str, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns_path(ns).display())).arg("--").arg(program);
    c
}

/// Runs `cmd` feeding `input` on stdin; returns the wall time it took.
fn timed_with_stdin(cmd: &mut Command, input: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    let dt = t.elapsed();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{cmd:?} failed: {}", err.chars().take(1500).collect::<String>());
    }
    Ok(dt)
}

/// A quantile of connect times in ns, in µs.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    stats::quantile(sorted, p) / 1000.0
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Bench {
    fn new() -> Self {
        let id = format!("wsb{}", std::process::id());
        Self {
            client_ns: format!("{id}c"),
            server_ns: format!("{id}s"),
            cgroup: PathBuf::from("/sys/fs/cgroup/unified").join(format!("weir-svc-bench-{id}")),
            bpffs: PathBuf::from("/run").join(format!("weir-svc-bench-{id}")),
            id,
            server: None,
        }
    }

    fn setup(&mut self) -> anyhow::Result<()> {
        let (c, s) = (&self.client_ns, &self.server_ns);
        netns::ip(&["netns", "add", c])?;
        netns::ip(&["netns", "add", s])?;
        let (a, b) = (format!("{}a", self.id), format!("{}b", self.id));
        netns::ip(&["-n", c, "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", s])?;
        netns::ip(&["-n", c, "addr", "add", &format!("{CLIENT_IP}/24"), "dev", &a])?;
        for ip in SERVER_IPS {
            netns::ip(&["-n", s, "addr", "add", &format!("{ip}/24"), "dev", &b])?;
        }
        for (ns, dev) in [(c, &a), (s, &b)] {
            netns::ip(&["-n", ns, "link", "set", "lo", "up"])?;
            netns::ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        // VIPs need a route for connect() to get as far as the nat hooks (a node has a default
        // route); the socket-level path rewrites before routing and does not need it.
        netns::ip(&["-n", c, "route", "add", "10.96.0.0/12", "via", &SERVER_IPS[0].to_string()])?;
        let exe = std::env::current_exe()?;
        let server = in_ns(s, exe.to_str().context("exe path")?)
            .args(["serve", "--port", &SERVER_PORT.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .context("starting the server")?;
        self.server = Some(server);
        std::fs::create_dir_all(&self.cgroup).context("creating the client cgroup")?;
        std::fs::create_dir_all(&self.bpffs)?;
        nix::mount::mount(Some("bpf"), &self.bpffs, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .context("mounting bpffs")?;
        // Wait for the server to listen.
        for _ in 0..100 {
            if self.connect(SocketAddr::from((SERVER_IPS[0], SERVER_PORT)), None, 1).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the benchmark server never started listening")
    }

    fn teardown(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = nix::mount::umount2(&self.bpffs, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.bpffs);
        let _ = std::fs::remove_dir(&self.cgroup);
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = netns::ip(&["netns", "del", ns]);
        }
    }

    /// `count` connect() samples (ns), sorted, from a fresh client process.
    fn connect(&self, to: SocketAddr, cgroup: Option<&Path>, count: usize) -> anyhow::Result<Vec<u64>> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["connect", "--to", &to.to_string(), "--count", &count.to_string(), "--netns"])
            .arg(netns_path(&self.client_ns));
        if let Some(cg) = cgroup {
            cmd.arg("--cgroup").arg(cg);
        }
        let out = netns::run(&mut cmd)?;
        let mut v: Vec<u64> = serde_json::from_str(out.trim()).context("connect samples")?;
        v.sort_unstable();
        Ok(v)
    }

    fn run(&mut self, sizes: &[usize], connects: usize, rounds: usize) -> anyhow::Result<Vec<Row>> {
        self.setup()?;
        let mut dp = Datapath::load(&LoadConfig {
            bpffs_root: self.bpffs.clone(),
            node_ipv4: CLIENT_IP,
            cluster_cidr_v4: (Ipv4Addr::new(10, 244, 0, 0), 16),
            vxlan_ifindex: 0,
            vxlan_vni: 1,
            vxlan_port: 4789,
            nat_ports: (61000, 65000),
            observe: true,
            observe_http: false,
            exec_audit: false,
        })
        .context("loading the datapath")?;
        dp.attach_cgroup(&self.cgroup)?;
        let mut maps = ServiceMaps {
            services: Services::open(&mut dp)?,
            backends: Backends::open(&mut dp)?,
            maglev: Maglev::open(&mut dp)?,
        };
        let mut rows = Vec::new();
        for &n in sizes {
            let cluster = Cluster::generate(n);
            let last = SocketAddr::from((cluster.vip(n - 1), SVC_PORT));
            let times = weir_program(&cluster, &mut maps)?;
            let (mut base, mut weir) = (Vec::new(), Vec::new());
            for r in 0..rounds {
                eprintln!("N={n}: baseline and weir, round {}/{rounds}", r + 1);
                base.push(self.connect(SocketAddr::from((SERVER_IPS[0], SERVER_PORT)), None, connects)?);
                weir.push(self.connect(last, Some(&self.cgroup), connects)?);
            }
            rows.push(row(n, "baseline", &stats::median_round(base), None, None));
            let mut r = row(n, "weir", &stats::median_round(weir), Some(times.program), Some(times.update));
            r.update_map_write_us = Some((times.write.as_secs_f64() * 1e7).round() / 10.0);
            r.update_source_diff_ms = Some(ms(times.diff.median));
            rows.push(r);
            // Emptied twice: the second pass deletes the backend sets the first one retired.
            let mut empty = ServiceSync::default();
            for _ in 0..2 {
                empty.apply(&Named::new(), &Named::new(), &[], "bench", &mut maps)?;
            }

            eprintln!("N={n}: iptables-nft");
            let prog = timed_with_stdin(&mut in_ns(&self.client_ns, "iptables-nft-restore"), &cluster.iptables())?;
            let update = repeated(|| {
                timed_with_stdin(
                    in_ns(&self.client_ns, "iptables-nft-restore").arg("--noflush"),
                    &cluster.iptables_update(),
                )
            })?;
            let s = self.connect(last, None, connects)?;
            rows.push(row(n, "iptables-nft", &s, Some(prog), Some(update)));
            timed_with_stdin(&mut in_ns(&self.client_ns, "iptables-nft-restore"), "*nat\nCOMMIT\n")?;

            eprintln!("N={n}: nftables");
            let prog = timed_with_stdin(in_ns(&self.client_ns, "nft").args(["-f", "-"]), &cluster.nftables())?;
            let update = repeated(|| {
                timed_with_stdin(in_ns(&self.client_ns, "nft").args(["-f", "-"]), &cluster.nftables_update())
            })?;
            let s = self.connect(last, None, connects)?;
            rows.push(row(n, "nftables", &s, Some(prog), Some(update)));
            timed_with_stdin(in_ns(&self.client_ns, "nft").args(["-f", "-"]), "delete table ip kube-proxy\n")?;
        }
        Ok(rows)
    }
}

/// The peers' update applied PEER_UPDATE_SAMPLES times (the same change again is what their
/// next sync writes too).
fn repeated(mut once: impl FnMut() -> anyhow::Result<Duration>) -> anyhow::Result<Spread> {
    Ok(Spread::of((0..PEER_UPDATE_SAMPLES).map(|_| once()).collect::<anyhow::Result<_>>()?))
}

fn row(n: usize, variant: &'static str, sorted: &[u64], program: Option<Duration>, update: Option<Spread>) -> Row {
    Row {
        services: n,
        variant,
        connect_p50_us: percentile(sorted, 0.50),
        connect_p99_us: percentile(sorted, 0.99),
        program_ms: program.map(ms),
        update_ms: update.map(|u| ms(u.median)),
        update_max_ms: update.map(|u| ms(u.max)),
        update_map_write_us: None,
        update_source_diff_ms: None,
    }
}

/// Repeated timings of one operation: the median and the slowest.
#[derive(Clone, Copy, Debug)]
struct Spread {
    median: Duration,
    max: Duration,
}

impl Spread {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self {
            median: samples.get(samples.len() / 2).copied().unwrap_or_default(),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
}

/// weir's control-plane times at one N.
struct WeirTimes {
    /// All N Services from empty (full compile).
    program: Duration,
    /// One Service gaining or losing an endpoint, from the watch event to the map write.
    update: Spread,
    /// Finding that change in the manifest directory: the changed file's objects put into the
    /// last snapshot.
    diff: Spread,
    /// The kernel map write of the update alone.
    write: Duration,
}

/// Programs the cluster through the agent's own code path from an empty map, then one update.
fn weir_program(c: &Cluster, maps: &mut KernelServiceMaps) -> anyhow::Result<WeirTimes> {
    let mut sync = ServiceSync::default();
    let t = Instant::now();
    let a = sync.apply(&c.services, &c.slices, &[], "bench", maps)?;
    let program = t.elapsed();
    if a.changes.upserted != c.services.len() || !sync.rejected.is_empty() {
        bail!("weir programmed {} of {} Services ({:?})", a.changes.upserted, c.services.len(), sync.rejected);
    }
    // The update end to end as the agent does it from a watch event: the source puts the object
    // in its snapshot and logs it; the reconcile loop asks the log what changed since its last
    // pass and hands the Service writer those objects. The source's conversion of the watched
    // object to what it stores is timed too. One sample of something this short is mostly
    // the machine's noise, so it is taken UPDATE_SAMPLES times: the Service alternately gains the endpoint
    // (a second slice appears) and loses it (the slice is deleted), each one Service's change.
    let mut snap =
        ClusterSnapshot { services: c.services.clone(), endpoint_slices: c.slices.clone(), ..Default::default() };
    let (key, extra) = c.updated_slice();
    let mut update = Vec::with_capacity(UPDATE_SAMPLES);
    for i in 0..UPDATE_SAMPLES {
        let gains = i % 2 == 0;
        let seen = snap.log.head();
        let owned = extra.clone();
        let t = Instant::now();
        let stored = gains.then(|| SliceInfo::from(owned).into());
        source::put(&mut snap.endpoint_slices, &mut snap.log, key.clone(), stored, Changed::EndpointSlice);
        let changed = ObjectChanges::from(&snap.log.since(seen));
        let a = sync.apply_changes(&snap.services, &snap.endpoint_slices, &changed, &[], "bench", maps)?;
        update.push(t.elapsed());
        if a.changes.upserted != 1 || a.changes.removed != 0 || a.recompiled != 1 {
            bail!("update {i} wrote {:?} recompiling {} Services, expected one entry of one", a.changes, a.recompiled);
        }
        if changed != (ObjectChanges { slices: [key.clone()].into(), ..Default::default() }) {
            bail!("the log gave {changed:?}, expected the one slice");
        }
    }
    // The manifest-directory source is not told either, it reads files: one file per object,
    // as the lab writes them. Its change is a file holding the slice, written and then
    // removed; what is timed is putting that file's objects into the last snapshot (parsing
    // the one small file aside).
    let mut dir = manifest::DirState::default();
    let stamp = (std::time::SystemTime::UNIX_EPOCH, 0);
    for (i, ((ns, name), svc)) in c.services.iter().enumerate() {
        dir.set_file(
            format!("svc-{ns}-{name}.yaml").into(),
            stamp,
            vec![ClusterObject::Service(Box::new((**svc).clone()))],
        );
        let slice = c.slice(i, &c.endpoints(i), "a");
        dir.set_file(
            format!("slice-{ns}-svc-{i}-a.yaml").into(),
            stamp,
            vec![ClusterObject::EndpointSlice(Box::new(slice))],
        );
    }
    let mut last = ClusterSnapshot::default();
    dir.apply_to(&mut last);
    let path = PathBuf::from(format!("slice-{}-{}.yaml", key.0, key.1));
    let mut diff = Vec::with_capacity(UPDATE_SAMPLES);
    for i in 0..UPDATE_SAMPLES {
        let seen = last.log.head();
        let object = ClusterObject::EndpointSlice(Box::new(extra.clone()));
        let t = Instant::now();
        if i % 2 == 0 {
            dir.set_file(path.clone(), stamp, vec![object]);
        } else {
            dir.remove_file(&path);
        }
        dir.apply_to(&mut last);
        diff.push(t.elapsed());
        let found = ObjectChanges::from(&last.log.since(seen));
        if found != (ObjectChanges { slices: [key.clone()].into(), ..Default::default() }) {
            bail!("the manifest source found {found:?}, expected the one slice");
        }
    }
    // The map write alone: the updated entry, as the agent wrote it, written again.
    let vip = Addr16::from_v4_octets(c.vip(c.updated()).octets());
    let map = &mut maps.services;
    let (k, v) = map.list()?.into_iter().find(|(k, _)| k.addr == vip).context("the updated frontend")?;
    let t = Instant::now();
    map.upsert(k, v)?;
    let write = t.elapsed();
    Ok(WeirTimes { program, update: Spread::of(update), diff: Spread::of(diff), write })
}

// ---------------------------------------------------------------- the synthetic cluster

struct Cluster {
    n: usize,
    services: Named<Service>,
    slices: Named<SliceInfo>,
}

const NS: &str = "bench";
/// The update: Service [`Cluster::updated`] gains this endpoint.
const EXTRA_ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 1);

impl Cluster {
    fn vip(&self, i: usize) -> Ipv4Addr {
        let v = i + 1;
        Ipv4Addr::new(10, 96, (v >> 8) as u8, (v & 0xff) as u8)
    }

    /// Two endpoints per Service; the last Service's are the server namespace's addresses.
    fn endpoints(&self, i: usize) -> Vec<Ipv4Addr> {
        if i == self.n - 1 {
            return SERVER_IPS.to_vec();
        }
        let (hi, lo) = ((i >> 8) as u8, (i & 0xff) as u8);
        vec![Ipv4Addr::new(10, 201, hi, lo), Ipv4Addr::new(10, 202, hi, lo)]
    }

    fn slice(&self, i: usize, ips: &[Ipv4Addr], suffix: &str) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("svc-{i}-{suffix}")),
                namespace: Some(NS.into()),
                labels: Some([(LABEL_SERVICE_NAME.to_owned(), format!("svc-{i}"))].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: ips
                .iter()
                .map(|ip| Endpoint { addresses: vec![ip.to_string()], ..Default::default() })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(i32::from(SERVER_PORT)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        }
    }

    fn generate(n: usize) -> Self {
        let mut c = Self { n, services: Named::new(), slices: Named::new() };
        for i in 0..n {
            let name = format!("svc-{i}");
            let svc = Service {
                metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(NS.into()), ..Default::default() },
                spec: Some(ServiceSpec {
                    cluster_ip: Some(c.vip(i).to_string()),
                    ports: Some(vec![ServicePort {
                        name: Some("http".into()),
                        port: i32::from(SVC_PORT),
                        protocol: Some("TCP".into()),
                        target_port: Some(IntOrString::Int(i32::from(SERVER_PORT))),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                status: None,
            };
            let slice = c.slice(i, &c.endpoints(i), "a");
            c.services.insert((NS.into(), name.clone()), svc.into());
            c.slices.insert((NS.into(), format!("{name}-a")), SliceInfo::from(slice).into());
        }
        c
    }

    /// The Service the update changes (not the measured last one).
    fn updated(&self) -> usize {
        self.n - 2
    }

    /// Its endpoints after the update.
    fn updated_endpoints(&self) -> Vec<Ipv4Addr> {
        let mut eps = self.endpoints(self.updated());
        eps.push(EXTRA_ENDPOINT);
        eps
    }

    /// The update as the endpoint controller makes it: a second slice with the new endpoint.
    fn updated_slice(&self) -> ((String, String), EndpointSlice) {
        let i = self.updated();
        ((NS.into(), format!("svc-{i}-b")), self.slice(i, &[EXTRA_ENDPOINT], "b"))
    }

    fn chain_id(i: usize, what: &str) -> String {
        // kube-proxy names chains by a hash; any stable unique 16-character tag does here.
        format!("{:016X}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ what.len() as u64)
    }

    fn sep_rules(out: &mut String, i: usize, eps: &[Ipv4Addr]) {
        let svc = format!("KUBE-SVC-{}", Self::chain_id(i, "svc"));
        for (k, ep) in eps.iter().enumerate() {
            let sep = format!("KUBE-SEP-{}", Self::chain_id(i * 4 + k, "sep"));
            let left = eps.len() - k;
            let stat = if left > 1 {
                format!("-m statistic --mode random --probability {:.11} ", 1.0 / left as f64)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"{NS}/svc-{i}:http -> {ep}:{SERVER_PORT}\" {stat}-j {sep}"
            );
            let _ = writeln!(out, "-A {sep} -s {ep}/32 -m comment --comment \"{NS}/svc-{i}:http\" -j KUBE-MARK-MASQ");
            let _ = writeln!(
                out,
                "-A {sep} -p tcp -m comment --comment \"{NS}/svc-{i}:http\" -m tcp -j DNAT --to-destination {ep}:{SERVER_PORT}"
            );
        }
    }

    fn chain_decls(out: &mut String, i: usize, eps: usize) {
        let _ = writeln!(out, ":KUBE-SVC-{} - [0:0]", Self::chain_id(i, "svc"));
        for k in 0..eps {
            let _ = writeln!(out, ":KUBE-SEP-{} - [0:0]", Self::chain_id(i * 4 + k, "sep"));
        }
    }

    fn kube_services_rules(&self, out: &mut String) {
        for i in 0..self.n {
            let _ = writeln!(
                out,
                "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{NS}/svc-{i}:http cluster IP\" -m tcp --dport {SVC_PORT} -j KUBE-SVC-{}",
                self.vip(i),
                Self::chain_id(i, "svc")
            );
        }
    }

    /// The whole nat table as kube-proxy (iptables mode) lays it out.
    fn iptables(&self) -> String {
        let mut out = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n");
        for i in 0..self.n {
            Self::chain_decls(&mut out, i, 2);
        }
        out.push_str("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
        out.push_str("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
        out.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
        out.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
        out.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
        out.push_str("-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n");
        out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
        self.kube_services_rules(&mut out);
        for i in 0..self.n {
            Self::sep_rules(&mut out, i, &self.endpoints(i));
        }
        out.push_str("COMMIT\n");
        out
    }

    /// kube-proxy's minimal restore for one changed Service: KUBE-SERVICES in full, the
    /// changed Service's chains flushed and rewritten, `--noflush` for everything else.
    fn iptables_update(&self) -> String {
        let (i, eps) = (self.updated(), self.updated_endpoints());
        let mut out = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
        Self::chain_decls(&mut out, i, eps.len());
        self.kube_services_rules(&mut out);
        Self::sep_rules(&mut out, i, &eps);
        out.push_str("COMMIT\n");
        out
    }

    fn nft_service_chain(out: &mut String, i: usize, eps: &[Ipv4Addr]) {
        let svc = format!("service-{}", Self::chain_id(i, "svc"));
        let targets: Vec<String> =
            (0..eps.len()).map(|k| format!("{k} : goto endpoint-{}", Self::chain_id(i * 4 + k, "sep"))).collect();
        // Endpoint chains first: the vmap may only name chains that exist.
        for (k, ep) in eps.iter().enumerate() {
            let c = format!("endpoint-{}", Self::chain_id(i * 4 + k, "sep"));
            let _ = writeln!(out, "add chain ip kube-proxy {c}");
            let _ = writeln!(out, "add rule ip kube-proxy {c} ip saddr {ep} jump mark-for-masquerade");
            let _ = writeln!(out, "add rule ip kube-proxy {c} meta l4proto tcp dnat to {ep}:{SERVER_PORT}");
        }
        let _ = writeln!(out, "add chain ip kube-proxy {svc}");
        let _ = writeln!(
            out,
            "add rule ip kube-proxy {svc} numgen random mod {} vmap {{ {} }}",
            eps.len(),
            targets.join(", ")
        );
    }

    /// kube-proxy's nftables layout: one verdict map keyed by VIP . protocol . port.
    fn nftables(&self) -> String {
        let mut out = String::from(
            "add table ip kube-proxy\n\
             add chain ip kube-proxy mark-for-masquerade\n\
             add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000\n\
             add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n\
             add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }\n\
             add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }\n\
             add chain ip kube-proxy services\n\
             add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n\
             add rule ip kube-proxy nat-output jump services\n\
             add rule ip kube-proxy nat-prerouting jump services\n",
        );
        for i in 0..self.n {
            Self::nft_service_chain(&mut out, i, &self.endpoints(i));
        }
        for i in 0..self.n {
            let _ = writeln!(
                out,
                "add element ip kube-proxy service-ips {{ {} . tcp . {SVC_PORT} : goto service-{} }}",
                self.vip(i),
                Self::chain_id(i, "svc")
            );
        }
        out
    }

    /// The update as kube-proxy's nftables mode sends it: the changed chains only.
    fn nftables_update(&self) -> String {
        let (i, eps) = (self.updated(), self.updated_endpoints());
        let mut out = format!("flush chain ip kube-proxy service-{}\n", Self::chain_id(i, "svc"));
        Self::nft_service_chain(&mut out, i, &eps);
        out
    }
}

fn print_table(rows: &[Row]) {
    let base: BTreeMap<usize, f64> =
        rows.iter().filter(|r| r.variant == "baseline").map(|r| (r.services, r.connect_p50_us)).collect();
    let weir: BTreeMap<usize, f64> =
        rows.iter().filter(|r| r.variant == "weir").map(|r| (r.services, r.connect_p50_us)).collect();
    let mut t = Table::new(&[
        "services",
        "variant",
        "p50 µs",
        "p99 µs",
        "×base",
        "÷weir",
        "program ms",
        "update ms",
        "update max",
    ]);
    for r in rows {
        let b = base.get(&r.services).copied().unwrap_or(f64::NAN);
        let w = weir.get(&r.services).copied().unwrap_or(f64::NAN);
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        t.row(&[
            r.services.to_string(),
            r.variant.to_owned(),
            format!("{:.1}", r.connect_p50_us),
            format!("{:.1}", r.connect_p99_us),
            format!("{:.2}", r.connect_p50_us / b),
            format!("{:.2}", r.connect_p50_us / w),
            opt(r.program_ms),
            opt(r.update_ms),
            opt(r.update_max_ms),
        ]);
    }
    t.print();
    println!(
        "update ms: median of {UPDATE_SAMPLES} samples for weir (the Service alternately gains and loses an \
         endpoint), of {PEER_UPDATE_SAMPLES} for the peers; update max: the slowest"
    );
    for r in rows.iter().filter(|r| r.variant == "weir") {
        if let Some(w) = r.update_map_write_us {
            println!("weir N={}: the update's kernel map write alone took {w:.1} µs", r.services);
        }
        if let Some(d) = r.update_source_diff_ms {
            println!(
                "weir N={}: the manifest source finding the change (one changed file) took {d:.3} ms (median)",
                r.services
            );
        }
    }
}
