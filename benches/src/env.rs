//! What the kernel-side benchmarks share: a network namespace and a bpffs mount of their own,
//! removed at exit (also on failure), the datapath loaded there with a few pods, and the test
//! frames they feed BPF_PROG_TEST_RUN.
use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::Context as _;
use weir_bpf_common::EndpointInfo;
use weir_dataplane::{
    maps::{Endpoints, KeyValueMap},
    Datapath, LoadConfig,
};

use weir_tests::netns;

/// Runs `f(bpffs)` on a thread inside a fresh network namespace, with a private bpffs mount;
/// both are removed afterwards whatever `f` returned.
pub fn in_bench_netns<T: Send + 'static>(
    tag: &str,
    f: impl FnOnce(PathBuf) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!("{tag} needs root (a network namespace, bpffs, BPF)");
    }
    let netns = format!("{tag}-{}", std::process::id());
    let bpffs = PathBuf::from(format!("/run/{tag}-{}", std::process::id()));
    netns::ip(&["netns", "add", &netns])?;
    let result = (|| -> anyhow::Result<T> {
        std::fs::create_dir_all(&bpffs)?;
        nix::mount::mount(Some("bpf"), &bpffs, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .context("mounting bpffs")?;
        let path = netns::netns_path(&netns);
        let root = bpffs.clone();
        // The datapath is loaded and run from a thread inside the bench's own namespace.
        std::thread::spawn(move || -> anyhow::Result<T> {
            let ns = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            f(root)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))?
    })();
    let _ = nix::mount::umount2(&bpffs, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(&bpffs);
    let _ = netns::ip(&["netns", "del", &netns]);
    result
}

/// An Ethernet + IPv4 + TCP frame carrying `payload`, with the given flags.
pub fn tcp_frame_with(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = tcp_frame(src, dst, sport, dport, flags);
    f.extend_from_slice(payload);
    f[16..18].copy_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
    f
}

/// An Ethernet + IPv4 + TCP frame (no payload) with the given flags.
pub fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 20];
    f[0..6].copy_from_slice(&[0x0a, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[0x0a, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = flags;
    f
}

/// Loads the real datapath under `bpffs` (direct routing, node 172.31.0.1, cluster `cidr`) with
/// `pods` as local endpoints on ifindex 1, where BPF_PROG_TEST_RUN runs programs.
pub fn load_with_pods(
    bpffs: PathBuf,
    cidr: (Ipv4Addr, u8),
    observe: bool,
    observe_http: bool,
    pods: &[Ipv4Addr],
) -> anyhow::Result<Datapath> {
    std::fs::create_dir_all(&bpffs)?;
    let cfg = LoadConfig {
        bpffs_root: bpffs,
        node_ipv4: Ipv4Addr::new(172, 31, 0, 1),
        cluster_cidr_v4: cidr,
        vxlan_ifindex: 0,
        vxlan_vni: 0,
        vxlan_port: 4789,
        nat_ports: (61000, 65000),
        observe,
        observe_http,
        exec_audit: true,
    };
    let mut dp = Datapath::load(&cfg).context("loading the datapath")?;
    let mut eps = Endpoints::open(&mut dp)?;
    for ip in pods {
        let info = EndpointInfo {
            ifindex: 1,
            flags: 0,
            pod_mac: [0x0a, 0, 0, 0, 0, 1],
            host_mac: [0x0a, 0, 0, 0, 0, 2],
            _pad: [0; 4],
        };
        eps.upsert(*ip, info)?;
    }
    // Open policy entries, as the agent writes for pods no policy selects (without one the
    // datapath keeps an endpoint closed).
    let mut peps = weir_dataplane::maps::PolicyEndpoints::open_pinned(&dp)?;
    for ip in pods {
        peps.upsert(*ip, weir_bpf_common::PolicyEndpoint { identity: 1, flags: 0 })?;
    }
    Ok(dp)
}
