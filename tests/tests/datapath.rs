//! Datapath tier: the real eBPF programs, loaded into the kernel, run on crafted frames with
//! BPF_PROG_TEST_RUN. Root, no lab. Each test runs in a fresh network namespace so that FIB
//! lookups see only the routes the test made.
use std::{collections::BTreeSet, net::Ipv4Addr, process::Command};

use weir_bpf_common::{
    programs, Addr16, BackendAddr, BackendKey, DropReason, EndpointInfo, ServiceKey, ServiceValue, EVENT_DNS,
    EVENT_DROP, EVENT_FLOW_CLOSE, EVENT_FLOW_NEW, EVENT_H2, EVENT_HTTP, FLOW_F_REPLY, OBS_FROM_POD, OBS_TO_POD,
    PAYLOAD_CAPTURE,
};
use weir_dataplane::{
    counters::Counters,
    events::{Event, Events},
    maps::{Backends, Endpoints, KeyValueMap, Services, Tunnel},
    Datapath, LoadConfig,
};
use weir_tests::{in_fresh_netns, pkt, require_root, run, Bpffs};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const NODE: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 250, 1, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 250, 1, 3);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 250, 2, 9);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 200);
const POD_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x0b];
const HOST_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x0c];

fn config(bpffs: &Bpffs, vxlan_ifindex: u32) -> LoadConfig {
    LoadConfig {
        bpffs_root: bpffs.path.clone(),
        node_ipv4: NODE,
        cluster_cidr_v4: (Ipv4Addr::new(10, 250, 0, 0), 16),
        vxlan_ifindex,
        vxlan_vni: 7,
        vxlan_port: 4789,
        nat_ports: (61000, 61010),
        observe: true,
        observe_http: true,
        exec_audit: true,
    }
}

/// Sets up, inside the current (fresh) netns, a dummy "uplink" with the node address so that
/// FIB lookups for the outside world resolve, and enables forwarding.
fn node_netns_setup() {
    // No dummy module on every kernel: a veth pair stands in for the uplink.
    run(Command::new("ip").args(["link", "add", "up0", "type", "veth", "peer", "name", "up0p"]));
    run(Command::new("ip").args(["link", "set", "up0p", "up"]));
    run(Command::new("ip").args(["addr", "add", "172.31.0.1/24", "dev", "up0"]));
    run(Command::new("ip").args(["link", "set", "up0", "up"]));
    run(Command::new("ip").args(["link", "set", "lo", "up"]));
    std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "1").expect("enable forwarding");
    std::fs::write("/proc/sys/net/ipv4/conf/lo/forwarding", "1").expect("enable forwarding on lo");
}

/// Endpoints whose host veth is "lo": BPF_PROG_TEST_RUN runs programs as if on ifindex 1. Each
/// gets an open policy entry, as the agent writes once its pod is known (without one the
/// datapath keeps the endpoint closed).
fn add_endpoint(dp: &Datapath, eps: &mut Endpoints, ip: Ipv4Addr) {
    eps.upsert(ip, EndpointInfo { ifindex: 1, flags: 0, pod_mac: POD_MAC, host_mac: HOST_MAC, _pad: [0; 4] })
        .expect("upsert endpoint");
    let mut peps = weir_dataplane::maps::PolicyEndpoints::open_pinned(dp).expect("policy endpoints");
    peps.upsert(ip, weir_bpf_common::PolicyEndpoint { identity: 1, flags: 0 }).expect("open policy entry");
}

/// Runs `f` (as root) in a fresh node namespace with the datapath loaded and POD_A registered.
fn on_node(test: &str, f: impl FnOnce(&mut Datapath, &mut Endpoints) + Send + 'static) {
    if !require_root(test) {
        return;
    }
    let bpffs = Bpffs::mount();
    let cfg = config(&bpffs, 0);
    in_fresh_netns(move || {
        node_netns_setup();
        let mut dp = Datapath::load(&cfg).expect("load datapath");
        let mut eps = Endpoints::open(&mut dp).expect("endpoints");
        add_endpoint(&dp, &mut eps, POD_A);
        f(&mut dp, &mut eps);
    });
}

fn drops(c: &Counters, reason: DropReason) -> u64 {
    c.snapshot().expect("counters").drops.iter().find(|(r, _)| *r == reason).map(|(_, n)| *n).unwrap_or(0)
}

#[test]
fn pod_to_pod_same_node_is_redirected_to_peer_with_macs_rewritten() {
    on_node("pod_to_pod_same_node_is_redirected_to_peer_with_macs_rewritten", |dp, eps| {
        add_endpoint(dp, eps, POD_B);
        let frame = pkt::ipv4(POD_A, POD_B, pkt::TCP, 40000, 8080, b"hi");
        let res = dp.test_run(programs::FROM_POD, &frame).expect("test run");
        assert_eq!(res.action, TC_ACT_REDIRECT, "same-node traffic must be redirected");
        let v = pkt::view(&res.frame);
        assert_eq!(v.dst_mac, POD_MAC);
        assert_eq!(v.src_mac, HOST_MAC);
        assert_eq!((v.src, v.dst), (POD_A, POD_B), "no translation between pods");
        assert!(v.ip_csum_ok && v.l4_csum_ok);
    });
}

#[test]
fn spoofed_malformed_and_ipv6_frames_are_dropped_and_counted() {
    on_node("spoofed_malformed_and_ipv6_frames_are_dropped_and_counted", |dp, eps| {
        let counters = Counters::open(dp).expect("counters");
        add_endpoint(dp, eps, POD_B);

        // Source 10.250.1.77 is nobody's address.
        let mut ring = Events::open(dp).expect("event ring");
        let spoof = pkt::ipv4(Ipv4Addr::new(10, 250, 1, 77), POD_B, pkt::UDP, 1, 2, b"x");
        assert_eq!(dp.test_run(programs::FROM_POD, &spoof).expect("run").action, TC_ACT_SHOT);
        assert_eq!(drops(&counters, DropReason::SpoofedSource), 1);
        // The drop is also reported on the ring buffer, with its reason and addresses.
        let events = ring.drain();
        assert_eq!(events.len(), 1, "{events:?}");
        let Event::Flow(e) = &events[0] else { panic!("{events:?}") };
        assert_eq!((e.kind, e.reason), (EVENT_DROP, DropReason::SpoofedSource as u8));
        assert_eq!(e.saddr.v4_octets(), [10, 250, 1, 77]);
        assert_eq!(e.daddr.v4_octets(), POD_B.octets());
        assert_eq!((u16::from_be(e.sport_be), u16::from_be(e.dport_be), e.proto), (1, 2, pkt::UDP));

        // An IPv4 header claiming 12 bytes (IHL 3).
        let mut short = pkt::ipv4(POD_B, POD_A, pkt::UDP, 1, 2, b"");
        short[14] = 0x43;
        assert_eq!(dp.test_run(programs::FROM_POD, &short).expect("run").action, TC_ACT_SHOT);
        assert_eq!(drops(&counters, DropReason::Malformed), 1);

        // Long enough for an IPv6 header, which BPF_PROG_TEST_RUN insists on.
        let mut v6 = pkt::ipv4(POD_B, POD_A, pkt::UDP, 1, 2, &[0u8; 32]);
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(dp.test_run(programs::FROM_POD, &v6).expect("run").action, TC_ACT_SHOT);
        assert_eq!(drops(&counters, DropReason::UnsupportedL3), 1);

        // Direct routing: a cluster address no route covers belongs to no node.
        let nowhere = pkt::ipv4(POD_B, REMOTE_POD, pkt::TCP, 40000, 80, b"");
        assert_eq!(dp.test_run(programs::FROM_POD, &nowhere).expect("run").action, TC_ACT_SHOT);
        assert_eq!(drops(&counters, DropReason::UnknownClusterDest), 1);

        // ARP from a pod goes to the node stack, untouched.
        let mut arp = pkt::ipv4(POD_B, POD_A, pkt::UDP, 1, 2, b"");
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(dp.test_run(programs::FROM_POD, &arp).expect("run").action, TC_ACT_OK);
    });
}

/// A TCP segment with `flags` (the checksum is not fixed up: nothing here checks it).
fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = pkt::ipv4(src, dst, pkt::TCP, sport, dport, b"");
    f[14 + 20 + 13] = flags;
    f
}

#[test]
fn flows_are_aggregated_and_dns_is_copied() {
    on_node("flows_are_aggregated_and_dns_is_copied", |dp, eps| {
        add_endpoint(dp, eps, POD_B);
        let mut ring = Events::open(dp).expect("event ring");
        let kinds = |evs: &[Event]| {
            evs.iter()
                .map(|e| match e {
                    Event::Flow(f) => (f.kind, f.flags),
                    Event::Payload(d) => (d.event.kind, d.event.flags),
                    Event::Exec(x) => (x.kind, 0),
                })
                .collect::<Vec<_>>()
        };
        // A connection's packets: one event for the first, none for the next, one at FIN.
        let syn = tcp(POD_A, POD_B, 40000, 80, 0x02);
        let ack = tcp(POD_A, POD_B, 40000, 80, 0x10);
        let fin = tcp(POD_A, POD_B, 40000, 80, 0x11);
        for f in [&syn, &ack, &ack, &fin, &ack] {
            dp.test_run(programs::FROM_POD, f).expect("run");
        }
        let evs = ring.drain();
        assert_eq!(kinds(&evs), [(EVENT_FLOW_NEW, 0), (EVENT_FLOW_CLOSE, 0)], "{evs:?}");
        let Event::Flow(close) = &evs[1] else { panic!() };
        assert_eq!((close.packets, close.point, close.tcp_flags), (4, OBS_FROM_POD, 0x13));
        // The same tuple opened again (a SYN after the close) is a new flow.
        dp.test_run(programs::FROM_POD, &syn).expect("run");
        assert_eq!(kinds(&ring.drain()), [(EVENT_FLOW_NEW, 0)]);
        // The reply direction is marked as such.
        dp.test_run(programs::FROM_POD, &tcp(POD_B, POD_A, 80, 40000, 0x12)).expect("run");
        assert_eq!(kinds(&ring.drain()), [(EVENT_FLOW_NEW, FLOW_F_REPLY)]);
        // A SYN opens a connection, never a reply: not even where the reverse tuple still has an
        // entry (here from a packet the other way first).
        dp.test_run(programs::FROM_POD, &tcp(POD_B, POD_A, 80, 40001, 0x10)).expect("run");
        dp.test_run(programs::FROM_POD, &tcp(POD_A, POD_B, 40001, 80, 0x02)).expect("run");
        assert_eq!(kinds(&ring.drain()), [(EVENT_FLOW_NEW, 0), (EVENT_FLOW_NEW, 0)]);

        // A DNS query: its flow, then the message itself, copied whole.
        let query = [0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'e', b'b', 0, 0, 1, 0, 1];
        dp.test_run(programs::FROM_POD, &pkt::ipv4(POD_A, POD_B, pkt::UDP, 5353, 53, &query)).expect("run");
        let evs = ring.drain();
        assert_eq!(kinds(&evs), [(EVENT_FLOW_NEW, 0), (EVENT_DNS, 0)]);
        let Event::Payload(d) = &evs[1] else { panic!() };
        assert_eq!((d.tcp, &d.data[..usize::from(d.len)]), (0, &query[..]));

        // HTTP: a connection whose first payload begins a request has every segment that begins
        // a message copied (not the body segments between them).
        let data = |sport: u16, payload: &[u8]| {
            let mut f = pkt::ipv4(POD_A, POD_B, pkt::TCP, sport, 8080, payload);
            f[14 + 20 + 13] = 0x18; // PSH, ACK
            f
        };
        let request = b"GET /items?id=1 HTTP/1.1\r\nHost: web\r\n\r\n";
        dp.test_run(programs::FROM_POD, &tcp(POD_A, POD_B, 41000, 8080, 0x02)).expect("run");
        dp.test_run(programs::FROM_POD, &data(41000, request)).expect("run");
        dp.test_run(programs::FROM_POD, &data(41000, b"a body segment, not a message start")).expect("run");
        dp.test_run(programs::FROM_POD, &data(41000, b"POST /x HTTP/1.1\r\n\r\n")).expect("run");
        let evs = ring.drain();
        assert_eq!(kinds(&evs), [(EVENT_FLOW_NEW, 0), (EVENT_HTTP, 0), (EVENT_HTTP, 0)], "{evs:?}");
        let Event::Payload(h) = &evs[1] else { panic!() };
        assert_eq!((h.tcp, &h.data[..usize::from(h.len)]), (1, &request[..]));
        // Only the first PAYLOAD_CAPTURE bytes of a long segment.
        let long = [b"GET /".as_slice(), &[b'a'; 1000]].concat();
        dp.test_run(programs::FROM_POD, &data(41000, &long)).expect("run");
        let evs = ring.drain();
        let Some(Event::Payload(h)) = evs.first() else { panic!("{evs:?}") };
        assert_eq!(&h.data[..usize::from(h.len)], &long[..PAYLOAD_CAPTURE]);
        // A connection whose first payload is something else is never looked at again, even
        // when a later segment happens to begin like a request.
        dp.test_run(programs::FROM_POD, &tcp(POD_A, POD_B, 41001, 8080, 0x02)).expect("run");
        dp.test_run(programs::FROM_POD, &data(41001, b"\x16\x03\x01\x02\x00 a TLS hello")).expect("run");
        dp.test_run(programs::FROM_POD, &data(41001, request)).expect("run");
        assert_eq!(kinds(&ring.drain()), [(EVENT_FLOW_NEW, 0)]);

        // HTTP/2 (h2c): a connection whose first payload is the client preface has every
        // segment with a payload copied, with its sequence number and length (HPACK needs every
        // header block); so has the server's direction, whose first payload is a SETTINGS frame.
        let h2 = |payload: &[u8], seq: u32| {
            let mut f = pkt::ipv4(POD_A, POD_B, pkt::TCP, 41002, 50051, payload);
            f[14 + 20 + 4..14 + 20 + 8].copy_from_slice(&seq.to_be_bytes());
            f[14 + 20 + 13] = 0x18;
            f
        };
        let preface = [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(), &[0, 0, 0, 4, 0, 0, 0, 0, 0]].concat();
        let body = [0u8; 700];
        dp.test_run(programs::FROM_POD, &tcp(POD_A, POD_B, 41002, 50051, 0x02)).expect("run");
        dp.test_run(programs::FROM_POD, &h2(&preface, 1000)).expect("run");
        dp.test_run(programs::FROM_POD, &h2(&body, 1033)).expect("run");
        dp.test_run(programs::FROM_POD, &tcp(POD_A, POD_B, 41002, 50051, 0x10)).expect("run");
        let evs = ring.drain();
        assert_eq!(kinds(&evs), [(EVENT_FLOW_NEW, 0), (EVENT_H2, 0), (EVENT_H2, 0)], "{evs:?}");
        let (Event::Payload(p), Event::Payload(b)) = (&evs[1], &evs[2]) else { panic!() };
        assert_eq!((p.seq, p.seg_len, &p.data[..usize::from(p.len)]), (1000, preface.len() as u32, &preface[..]));
        assert_eq!((b.seq, b.seg_len, usize::from(b.len)), (1033, 700, PAYLOAD_CAPTURE));
        let settings = [0u8, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        let reply = |payload: &[u8]| {
            let mut f = pkt::ipv4(POD_B, POD_A, pkt::TCP, 50051, 41002, payload);
            f[14 + 20 + 13] = 0x18;
            f
        };
        dp.test_run(programs::FROM_POD, &tcp(POD_B, POD_A, 50051, 41002, 0x12)).expect("run");
        dp.test_run(programs::FROM_POD, &reply(&settings)).expect("run");
        dp.test_run(programs::FROM_POD, &reply(b"anything after it")).expect("run");
        let evs = ring.drain();
        assert_eq!(kinds(&evs), [(EVENT_FLOW_NEW, FLOW_F_REPLY), (EVENT_H2, 0), (EVENT_H2, 0)], "{evs:?}");
        // A segment that carries data and ends its direction (FIN): its payload is reported
        // before the close, so the agent reads the last data first; a later segment (an RST
        // with data, say) is copied but closes nothing again.
        for (flags, seq) in [(0x19, 2000), (0x1c, 2100)] {
            let mut last = reply(b"a GOAWAY, say");
            last[14 + 20 + 4..14 + 20 + 8].copy_from_slice(&(seq as u32).to_be_bytes());
            last[14 + 20 + 13] = flags;
            dp.test_run(programs::FROM_POD, &last).expect("run");
            let evs = ring.drain();
            let expect: &[(u8, u8)] =
                if flags == 0x19 { &[(EVENT_H2, 0), (EVENT_FLOW_CLOSE, 0)] } else { &[(EVENT_H2, 0)] };
            assert_eq!(kinds(&evs), expect, "flags {flags:#x}: {evs:?}");
        }
        // The same on an HTTP/1.x connection: a response that closes it.
        dp.test_run(programs::FROM_POD, &tcp(POD_B, POD_A, 8080, 41000, 0x12)).expect("run");
        let mut answer =
            pkt::ipv4(POD_B, POD_A, pkt::TCP, 8080, 41000, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        answer[14 + 20 + 13] = 0x19; // FIN, PSH, ACK
        dp.test_run(programs::FROM_POD, &answer).expect("run");
        let evs = ring.drain();
        assert_eq!(kinds(&evs), [(EVENT_FLOW_NEW, FLOW_F_REPLY), (EVENT_HTTP, 0), (EVENT_FLOW_CLOSE, 0)], "{evs:?}");
    });
}

/// The bind reporters (cgroup post_bind4 and post_bind6), attached with the socket programs to a
/// cgroup of its own: a TCP, a UDP and an IPv6 TCP bind by a process in it are reported with
/// their port, the process and its cgroup; a bind outside it is not.
#[test]
fn binds_in_the_pod_cgroup_are_reported_with_their_process() {
    on_node("binds_in_the_pod_cgroup_are_reported_with_their_process", |dp, _eps| {
        use std::os::unix::{fs::MetadataExt as _, process::CommandExt as _};
        struct Cgroup(std::path::PathBuf);
        impl Drop for Cgroup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir(&self.0);
            }
        }
        let cg = Cgroup(
            std::path::PathBuf::from("/sys/fs/cgroup/unified").join(format!("weir-bind-test-{}", std::process::id())),
        );
        std::fs::create_dir_all(&cg.0).expect("test cgroup");
        dp.attach_cgroup(&cg.0).expect("attach the socket programs");
        let mut ring = Events::open(dp).expect("event ring");
        let outside = std::net::TcpListener::bind("0.0.0.0:0").expect("bind outside");
        ring.drain();
        let procs = cg.0.join("cgroup.procs");
        let script = "import socket\n\
                      t = socket.socket(); t.bind(('0.0.0.0', 0)); t.listen()\n\
                      u = socket.socket(type=socket.SOCK_DGRAM); u.bind(('0.0.0.0', 0))\n\
                      s = socket.socket(socket.AF_INET6); s.bind(('::', 0)); s.listen()\n\
                      print(t.getsockname()[1], u.getsockname()[1], s.getsockname()[1])";
        let mut inside = Command::new("/usr/bin/python3");
        inside.args(["-c", script]);
        // SAFETY: as in the exec audit's test: one write between fork and exec.
        unsafe {
            inside.pre_exec(move || std::fs::write(&procs, "0"));
        }
        let child = inside.stdout(std::process::Stdio::piped()).spawn().expect("spawn in the cgroup");
        let pid = child.id();
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success());
        let ports: Vec<u16> =
            String::from_utf8_lossy(&out.stdout).split_whitespace().map(|p| p.parse().expect("port")).collect();
        let again = std::net::TcpListener::bind("0.0.0.0:0").expect("bind outside");
        std::thread::sleep(std::time::Duration::from_millis(50));
        let binds: Vec<_> = ring
            .drain()
            .into_iter()
            .filter_map(|e| match e {
                Event::Flow(b) if b.kind == weir_bpf_common::EVENT_BIND => Some(b),
                _ => None,
            })
            .collect();
        let got: Vec<(u8, u16)> = binds.iter().map(|b| (b.proto, u16::from_be(b.sport_be))).collect();
        // The third a dual-stack IPv6 listener (post_bind6), as Go's `:8080` makes one.
        assert_eq!(got, [(6, ports[0]), (17, ports[1]), (6, ports[2])], "{binds:?} (outside: {outside:?} {again:?})");
        let cgroup = std::fs::metadata(&cg.0).expect("meta").ino();
        for b in &binds {
            assert_eq!((b.proc_tgid, b.bind_cgroup_id(), &b.proc_comm[..8]), (pid, cgroup, &b"python3\0"[..]));
        }
        // And remembered in WEIR_BINDS, which a restarted agent reads (only the cgroup's binds).
        let mut kept: Vec<(u8, u16, u64, u32)> = weir_dataplane::reader::binds(dp)
            .expect("read WEIR_BINDS")
            .into_iter()
            .map(|(k, p)| (k.proto, k.port, k.cgroup_id, p.tgid))
            .collect();
        kept.sort();
        let mut want = [(6, ports[0], cgroup, pid), (17, ports[1], cgroup, pid), (6, ports[2], cgroup, pid)];
        want.sort();
        assert_eq!(kept, want);
    });
}

/// The exec audit, attached for a cgroup of its own: a program started by a process in it is
/// reported with its path, arguments and parent; one started outside it is not.
#[test]
fn exec_audit_reports_programs_started_in_its_cgroup_only() {
    on_node("exec_audit_reports_programs_started_in_its_cgroup_only", |dp, _eps| {
        use std::os::unix::process::CommandExt as _;
        struct Cgroup(std::path::PathBuf);
        impl Drop for Cgroup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir(&self.0);
            }
        }
        let cg = Cgroup(
            std::path::PathBuf::from("/sys/fs/cgroup/unified").join(format!("weir-exec-test-{}", std::process::id())),
        );
        std::fs::create_dir_all(&cg.0).expect("test cgroup");
        let _audit = dp.attach_exec(&cg.0).expect("attach the exec audit");
        let mut ring = Events::open(dp).expect("event ring");
        ring.drain();
        let procs = cg.0.join("cgroup.procs");
        let mut inside = Command::new("/bin/sh");
        inside.args(["-c", "exec /bin/true weir-audit-arg"]);
        // SAFETY: only a write of "0" to a file between fork and exec (async-signal-safe enough
        // for a test: no locks are taken by std::fs::write on this path).
        unsafe {
            inside.pre_exec(move || std::fs::write(&procs, "0"));
        }
        let child = inside.spawn().expect("spawn in the cgroup");
        let pid = child.id();
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success());
        let outside = Command::new("/bin/true").arg("not-audited").status().expect("outside");
        assert!(outside.success());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let execs: Vec<_> = ring
            .drain()
            .into_iter()
            .filter_map(|e| match e {
                Event::Exec(x) => Some(x),
                _ => None,
            })
            .collect();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let names: Vec<String> = execs.iter().map(|x| text(&x.filename[..usize::from(x.filename_len)])).collect();
        assert_eq!(names, ["/bin/sh", "/bin/true"], "{execs:?}");
        let t = &execs[1];
        assert_eq!(t.tgid, pid, "the shell's exec of /bin/true keeps its pid");
        assert_eq!(t.ppid, std::process::id(), "its parent is this test");
        assert_eq!(text(&t.args[..usize::from(t.args_len)]), "/bin/true\0weir-audit-arg\0");
        assert_eq!(u32::from(t.args_len), t.args_total);
        assert!(t.cgroup_id != 0);
    });
}

#[test]
fn load_balanced_flows_carry_their_service_frontend() {
    on_node("load_balanced_flows_carry_their_service_frontend", |dp, eps| {
        add_endpoint(dp, eps, POD_B);
        // A NodePort frontend on the node address with POD_B:8080 as its only backend.
        let front = ServiceKey {
            addr: Addr16::from_v4_octets(NODE.octets()),
            port_be: 30080u16.to_be(),
            proto: 6,
            _pad: [0; 5],
        };
        let mut services = Services::open(dp).expect("services");
        let mut backends = Backends::open(dp).expect("backends");
        let b = BackendAddr { addr: Addr16::from_v4_octets(POD_B.octets()), port_be: 8080u16.to_be(), _pad: [0; 6] };
        backends.upsert(BackendKey { set: 1, slot: 0 }, b).expect("backend");
        let v = ServiceValue { count: 1, flags: 0, affinity_timeout_s: 0, set: 1, _pad: [0; 4] };
        services.upsert(front, v).expect("frontend");
        let mut ring = Events::open(dp).expect("event ring");
        let flows = |ring: &mut Events| -> Vec<_> {
            ring.drain()
                .into_iter()
                .filter_map(|e| match e {
                    Event::Flow(f) => Some(f),
                    Event::Payload(_) | Event::Exec(_) => None,
                })
                .collect()
        };
        let syn = tcp(EXTERNAL, NODE, 40000, 30080, 0x02);
        let res = dp.test_run(programs::FROM_WIRE, &syn).expect("run");
        assert_eq!((res.action, pkt::view(&res.frame).dst), (TC_ACT_REDIRECT, POD_B), "DNAT to the local backend");
        let evs = flows(&mut ring);
        assert_eq!(evs.len(), 1, "{evs:?}");
        let new = &evs[0];
        assert_eq!(
            (new.kind, new.point, new.daddr, u16::from_be(new.dport_be)),
            (EVENT_FLOW_NEW, OBS_TO_POD, b.addr, 8080)
        );
        assert_eq!(
            (new.svc_addr, u16::from_be(new.svc_port_be)),
            (front.addr, 30080),
            "the frontend it was translated from"
        );
        // The backend's reply (before its reverse translation) names the same frontend.
        dp.test_run(programs::FROM_POD, &tcp(POD_B, EXTERNAL, 8080, 40000, 0x12)).expect("run");
        let evs = flows(&mut ring);
        assert_eq!(evs.len(), 1, "{evs:?}");
        assert_eq!((evs[0].kind, evs[0].flags, evs[0].point), (EVENT_FLOW_NEW, FLOW_F_REPLY, OBS_FROM_POD));
        assert_eq!((evs[0].svc_addr, evs[0].svc_port_be), (front.addr, front.port_be));
        // Pod-to-pod traffic that no Service translated carries none.
        dp.test_run(programs::FROM_POD, &tcp(POD_A, POD_B, 40001, 8080, 0x02)).expect("run");
        let evs = flows(&mut ring);
        assert_eq!((evs.len(), evs[0].svc_port_be, evs[0].svc_addr), (1, 0, Addr16::default()), "{evs:?}");
    });
}

/// Runs `f` (as root) in a fresh node namespace with a VXLAN device and the datapath loaded in
/// VXLAN mode.
fn on_vxlan_node(test: &str, f: impl FnOnce(&mut Datapath) + Send + 'static) {
    if !require_root(test) {
        return;
    }
    let bpffs = Bpffs::mount();
    in_fresh_netns(move || {
        node_netns_setup();
        run(Command::new("ip").args(["link", "add", "vx0", "type", "vxlan", "external", "dstport", "4789"]));
        run(Command::new("ip").args(["link", "set", "vx0", "up"]));
        let ifindex = nix::net::if_::if_nametoindex("vx0").expect("vx0 ifindex");
        let mut dp = Datapath::load(&config(&bpffs, ifindex)).expect("load datapath");
        f(&mut dp);
    });
}

#[test]
fn remote_pod_in_vxlan_mode_needs_a_tunnel_entry() {
    on_vxlan_node("remote_pod_in_vxlan_mode_needs_a_tunnel_entry", |dp| {
        let mut eps = Endpoints::open(dp).expect("endpoints");
        let mut tunnel = Tunnel::open(dp).expect("tunnel");
        let counters = Counters::open(dp).expect("counters");
        add_endpoint(dp, &mut eps, POD_A);
        let frame = pkt::ipv4(POD_A, REMOTE_POD, pkt::TCP, 40000, 80, b"");
        assert_eq!(dp.test_run(programs::FROM_POD, &frame).expect("run").action, TC_ACT_SHOT);
        assert_eq!(drops(&counters, DropReason::UnknownClusterDest), 1);
        tunnel.upsert((Ipv4Addr::new(10, 250, 2, 0), 24), Ipv4Addr::new(172, 31, 0, 2)).expect("tunnel upsert");
        assert_eq!(tunnel.list().expect("list").len(), 1);
        assert_eq!(dp.test_run(programs::FROM_POD, &frame).expect("run").action, TC_ACT_REDIRECT);
    });
}

/// Masquerade ports have lifetimes: with 11 ports, 40 sequential connections to one outside
/// address and port all get one, because a closed connection's port goes to the next SYN; a
/// live connection's port is never taken, and a taken port's old forward entry is gone, so the
/// old connection can never send with it again (it gets a new port) and replies reach only the
/// connection that owns the port.
#[test]
fn masquerade_ports_are_reused_after_close_and_never_taken_from_live_connections() {
    on_node("masquerade_ports_are_reused_after_close_and_never_taken_from_live_connections", |dp, _| {
        const SYN: u8 = 0x02;
        const ACK: u8 = 0x10;
        const FIN_ACK: u8 = 0x11;
        fn send(dp: &mut Datapath, sport: u16, flags: u8) -> (u32, u16) {
            let res = dp.test_run(programs::FROM_POD, &pkt::tcp(POD_A, EXTERNAL, sport, 443, flags)).expect("run");
            (res.action, pkt::view(&res.frame).sport)
        }
        fn reply(dp: &mut Datapath, port: u16, flags: u8) -> (u32, pkt::View) {
            let res = dp.test_run(programs::FROM_WIRE, &pkt::tcp(EXTERNAL, NODE, 443, port, flags)).expect("run");
            (res.action, pkt::view(&res.frame))
        }
        // 11 live (answered, not closed) connections hold all 11 ports; a 12th finds none.
        let mut live = Vec::new();
        for i in 0..11u16 {
            let (action, port) = send(dp, 30000 + i, SYN);
            assert_eq!(action, TC_ACT_REDIRECT, "connection {i} gets a port");
            assert_eq!(reply(dp, port, SYN | ACK).1.dport, 30000 + i);
            live.push(port);
        }
        let ports: BTreeSet<u16> = live.iter().copied().collect();
        assert_eq!(ports.len(), 11, "{live:?}");
        assert_eq!(send(dp, 31000, SYN).0, TC_ACT_SHOT, "no live connection loses its port");
        // Close them all (FIN both ways), then 40 sequential short connections: each gets a port.
        for (i, port) in live.iter().enumerate() {
            send(dp, 30000 + i as u16, FIN_ACK);
            reply(dp, *port, FIN_ACK);
        }
        for i in 0..40u16 {
            let sport = 32000 + i;
            let (action, port) = send(dp, sport, SYN);
            assert_eq!(action, TC_ACT_REDIRECT, "sequential connection {i} gets a port");
            let (action, back) = reply(dp, port, SYN | ACK);
            assert_eq!((action, back.dst, back.dport), (TC_ACT_REDIRECT, POD_A, sport), "its replies reach it");
            send(dp, sport, FIN_ACK);
            reply(dp, port, FIN_ACK);
        }
        // An old connection whose port was taken sends again: it gets another port (its forward
        // entry went with the port), never the one that is now someone else's.
        let (_, taken) = send(dp, 30000, ACK);
        let owner = 32039u16;
        let (_, owners_port) = send(dp, owner, ACK);
        assert_ne!(taken, owners_port, "two connections never send with one port");
        let (_, back) = reply(dp, owners_port, ACK);
        assert_eq!(back.dport, owner, "the port's replies go to its owner");
    });
}

#[test]
fn masquerade_translates_out_and_back_with_valid_checksums() {
    on_node("masquerade_translates_out_and_back_with_valid_checksums", |dp, _| {
        for (proto, sport, dport) in [(pkt::TCP, 40000, 443), (pkt::UDP, 5353, 53), (pkt::ICMP, 77, 0)] {
            let out = pkt::ipv4(POD_A, EXTERNAL, proto, sport, dport, b"payload");
            let res = dp.test_run(programs::FROM_POD, &out).expect("run");
            assert_eq!(res.action, TC_ACT_REDIRECT, "proto {proto}: leaves through the uplink");
            let v = pkt::view(&res.frame);
            assert_eq!(v.src, NODE, "proto {proto}: source masqueraded to the node");
            assert!((61000..=61010).contains(&v.sport), "proto {proto}: port {} in range", v.sport);
            assert!(v.ip_csum_ok && v.l4_csum_ok, "proto {proto}: checksums after SNAT: {v:?}");

            // The same flow again keeps its port.
            let again = pkt::view(&dp.test_run(programs::FROM_POD, &out).expect("run").frame);
            assert_eq!(again.sport, v.sport);

            // The reply comes back on the uplink and is translated to the pod.
            let reply = if proto == pkt::ICMP {
                pkt::ipv4(EXTERNAL, NODE, proto, v.sport, 1, b"payload")
            } else {
                pkt::ipv4(EXTERNAL, NODE, proto, dport, v.sport, b"payload")
            };
            let res = dp.test_run(programs::FROM_WIRE, &reply).expect("run");
            assert_eq!(res.action, TC_ACT_REDIRECT, "proto {proto}: reply delivered to the pod");
            let r = pkt::view(&res.frame);
            assert_eq!(r.dst, POD_A);
            if proto == pkt::ICMP {
                assert_eq!(r.sport, sport, "echo id restored");
            } else {
                assert_eq!(r.dport, sport, "port restored");
            }
            assert!(r.ip_csum_ok && r.l4_csum_ok, "proto {proto}: checksums after reverse NAT: {r:?}");
        }
        // Traffic to the node that is no reply goes to the stack untouched.
        let stray = pkt::ipv4(EXTERNAL, NODE, pkt::TCP, 1234, 22, b"");
        assert_eq!(dp.test_run(programs::FROM_WIRE, &stray).expect("run").action, TC_ACT_OK);
    });
}

#[test]
fn a_second_load_reuses_the_pinned_maps() {
    if !require_root("a_second_load_reuses_the_pinned_maps") {
        return;
    }
    let bpffs = Bpffs::mount();
    let cfg = config(&bpffs, 0);
    in_fresh_netns(move || {
        let mut first = Datapath::load(&cfg).expect("load");
        let mut eps = Endpoints::open(&mut first).expect("endpoints");
        add_endpoint(&first, &mut eps, POD_A);
        drop(eps);
        drop(first);
        let mut second = Datapath::load(&cfg).expect("reload");
        let eps = Endpoints::open(&mut second).expect("endpoints");
        assert!(eps.list().expect("list").contains_key(&POD_A), "pinned endpoint survives a reload");
    });
}

/// NetworkPolicy in the kernel: B isolated for ingress, an entry for A's identity on TCP
/// 8000-8003 (a port prefix), replies through policy conntrack, fail-closed endpoints.
#[test]
fn policy_isolation_entries_replies_and_fail_closed() {
    use weir_bpf_common::{PolicyEndpoint, POLICY_F_EGRESS, POLICY_F_FAIL_CLOSED, POLICY_F_INGRESS};
    use weir_dataplane::maps::{Ipcache, PolicyEndpoints, PolicyEntries, PolicyEntry};
    on_node("policy_isolation_entries_replies_and_fail_closed", |dp, eps| {
        let counters = Counters::open(dp).expect("counters");
        add_endpoint(dp, eps, POD_B);
        let mut ipcache = Ipcache::open(dp).expect("ipcache");
        let mut entries = PolicyEntries::open(dp).expect("policy");
        let mut peps = PolicyEndpoints::open(dp).expect("policy endpoints");
        const ID_A: u32 = 300;
        ipcache.upsert((POD_A, 32), ID_A).expect("ipcache");
        let a_to_b = |dport| pkt::ipv4(POD_A, POD_B, pkt::TCP, 40000, dport, b"hi");
        let run = |dp: &mut Datapath, f: &[u8]| dp.test_run(programs::FROM_POD, f).expect("test run").action;

        // Not isolated: allowed.
        assert_eq!(run(dp, &a_to_b(8001)), TC_ACT_REDIRECT);
        // Isolated for ingress, no entries: denied at B's ingress, counted by reason.
        peps.upsert(POD_B, PolicyEndpoint { identity: 301, flags: POLICY_F_INGRESS }).expect("isolate");
        assert_eq!(run(dp, &a_to_b(8001)), TC_ACT_SHOT);
        assert_eq!(drops(&counters, DropReason::PolicyDeniedIngress), 1);
        // 8000-8003 for A's identity: a 14-bit port prefix.
        let e =
            PolicyEntry { endpoint: POD_B, direction: 0, identity: ID_A, proto: pkt::TCP, port: 8000, port_bits: 14 };
        entries.upsert(e, 1).expect("entry");
        for (port, want) in [(8000, TC_ACT_REDIRECT), (8003, TC_ACT_REDIRECT), (8004, TC_ACT_SHOT), (7999, TC_ACT_SHOT)]
        {
            assert_eq!(run(dp, &a_to_b(port)), want, "port {port}");
        }
        // UDP to the same port is a different protocol.
        let udp = pkt::ipv4(POD_A, POD_B, pkt::UDP, 40000, 8001, b"u");
        assert_eq!(run(dp, &udp), TC_ACT_SHOT);

        // The reply of an accepted connection passes A's egress even when A denies all egress.
        peps.upsert(POD_A, PolicyEndpoint { identity: ID_A, flags: POLICY_F_EGRESS }).expect("isolate A");
        let reply = pkt::ipv4(POD_B, POD_A, pkt::TCP, 8001, 40000, b"re");
        assert_eq!(run(dp, &reply), TC_ACT_REDIRECT, "a reply (B's egress, A's ingress) passes");
        let new_from_a = pkt::ipv4(POD_A, POD_B, pkt::TCP, 40001, 8001, b"x");
        assert_eq!(run(dp, &new_from_a), TC_ACT_SHOT, "A's new connection: egress isolated, no entry");
        assert_eq!(drops(&counters, DropReason::PolicyDeniedEgress), 1);
        // Any-peer entry for A's egress: allowed again.
        let any = PolicyEntry { endpoint: POD_A, direction: 1, identity: 0, proto: 0, port: 0, port_bits: 0 };
        entries.upsert(any, 2).expect("any entry");
        assert_eq!(run(dp, &new_from_a), TC_ACT_REDIRECT);

        // Established connection, policy starts denying: its next forward packet is dropped.
        entries.remove(e).expect("remove entry");
        assert_eq!(run(dp, &a_to_b(8001)), TC_ACT_SHOT, "forward packets are judged every time");

        // Fail-closed: everything to or from the endpoint is denied, with its own reason.
        peps.upsert(POD_B, PolicyEndpoint { identity: 301, flags: POLICY_F_FAIL_CLOSED }).expect("fail closed");
        assert_eq!(run(dp, &pkt::ipv4(POD_A, POD_B, pkt::TCP, 40002, 9, b"x")), TC_ACT_SHOT);
        assert_eq!(drops(&counters, DropReason::PolicyFailClosed), 1);
    });
}

/// An endpoint whose policy is not in force yet (no `WEIR_POLICY_EP` entry: its pod's labels are
/// unknown) passes nothing, in either direction, not even what looks like a reply.
#[test]
fn endpoints_without_policy_are_closed_both_ways() {
    on_node("endpoints_without_policy_are_closed_both_ways", |dp, eps| {
        let counters = Counters::open(dp).expect("counters");
        // POD_B is wired (endpoint map) but has no policy entry yet.
        eps.upsert(POD_B, EndpointInfo { ifindex: 1, flags: 0, pod_mac: POD_MAC, host_mac: HOST_MAC, _pad: [0; 4] })
            .expect("endpoint");
        let run = |dp: &mut Datapath, prog, f: &[u8]| dp.test_run(prog, f).expect("test run").action;
        // A's connection to B: B's side is closed.
        assert_eq!(run(dp, programs::FROM_POD, &pkt::ipv4(POD_A, POD_B, pkt::TCP, 40000, 80, b"")), TC_ACT_SHOT);
        // B's packets, to A and out of the cluster, whatever they look like.
        assert_eq!(run(dp, programs::FROM_POD, &pkt::ipv4(POD_B, POD_A, pkt::TCP, 80, 40000, b"")), TC_ACT_SHOT);
        assert_eq!(run(dp, programs::FROM_POD, &pkt::ipv4(POD_B, EXTERNAL, pkt::UDP, 1, 53, b"q")), TC_ACT_SHOT);
        // From the wire and from the node's stack.
        assert_eq!(run(dp, programs::FROM_WIRE, &pkt::ipv4(EXTERNAL, POD_B, pkt::TCP, 1, 80, b"")), TC_ACT_SHOT);
        assert_eq!(run(dp, programs::TO_POD, &pkt::ipv4(NODE, POD_B, pkt::TCP, 1, 80, b"")), TC_ACT_SHOT);
        assert_eq!(drops(&counters, DropReason::EndpointNotReady), 5);
        // Once its policy is written (here: open), it passes.
        let mut peps = weir_dataplane::maps::PolicyEndpoints::open_pinned(dp).expect("policy endpoints");
        peps.upsert(POD_B, weir_bpf_common::PolicyEndpoint { identity: 1, flags: 0 }).expect("open");
        assert_eq!(run(dp, programs::FROM_POD, &pkt::ipv4(POD_A, POD_B, pkt::TCP, 40000, 80, b"")), TC_ACT_REDIRECT);
    });
}

/// Unencapsulated sources from the wire: never this node's address; with direct routing a
/// cluster address only inside another node's pod CIDR.
#[test]
fn wire_sources_claiming_pods_are_verified() {
    on_node("wire_sources_claiming_pods_are_verified", |dp, _| {
        let counters = Counters::open(dp).expect("counters");
        let mut tunnel = Tunnel::open(dp).expect("pod CIDR owners");
        let run = |dp: &mut Datapath, f: &[u8]| dp.test_run(programs::FROM_WIRE, f).expect("test run").action;
        // This node's own pod CIDR, another pod of it, and the node itself, from the wire.
        assert_eq!(run(dp, &pkt::ipv4(POD_B, POD_A, pkt::TCP, 80, 40000, b"")), TC_ACT_SHOT);
        assert_eq!(run(dp, &pkt::ipv4(NODE, POD_A, pkt::TCP, 1, 80, b"")), TC_ACT_SHOT);
        // A remote pod of a CIDR no node owns.
        assert_eq!(run(dp, &pkt::ipv4(REMOTE_POD, POD_A, pkt::TCP, 1, 80, b"")), TC_ACT_SHOT);
        assert_eq!(drops(&counters, DropReason::SpoofedSourceFromWire), 3);
        // Once another node owns that CIDR, its pods' packets are delivered; outside sources
        // always were.
        tunnel.upsert((Ipv4Addr::new(10, 250, 2, 0), 24), Ipv4Addr::new(172, 31, 0, 2)).expect("owner");
        assert_eq!(run(dp, &pkt::ipv4(REMOTE_POD, POD_A, pkt::TCP, 1, 80, b"")), TC_ACT_REDIRECT);
        assert_eq!(run(dp, &pkt::ipv4(EXTERNAL, POD_A, pkt::TCP, 1, 80, b"")), TC_ACT_REDIRECT);
    });
}

/// VXLAN mode: pod sources arrive only inside the tunnel; pods cannot reach a node's tunnel
/// port; a decapsulated packet without tunnel metadata (here: no tunnel at all) is refused.
/// (A genuine tunnel key cannot be made by BPF_PROG_TEST_RUN: the lab tests the accepted path.)
#[test]
fn vxlan_mode_refuses_unencapsulated_pod_sources_and_pods_at_the_tunnel_port() {
    use weir_dataplane::maps::Nodes;
    on_vxlan_node("vxlan_mode_refuses_unencapsulated_pod_sources_and_pods_at_the_tunnel_port", |dp| {
        let mut eps = Endpoints::open(dp).expect("endpoints");
        let mut tunnel = Tunnel::open(dp).expect("tunnel");
        let mut nodes = Nodes::open(dp).expect("nodes");
        let counters = Counters::open(dp).expect("counters");
        add_endpoint(dp, &mut eps, POD_A);
        let other_node = Ipv4Addr::new(172, 31, 0, 2);
        tunnel.upsert((Ipv4Addr::new(10, 250, 2, 0), 24), other_node).expect("tunnel");
        nodes.upsert(NODE, weir_bpf_common::NODE_F_SELF).expect("node");
        nodes.upsert(other_node, 0).expect("node");
        let action = |dp: &mut Datapath, prog, f: &[u8]| dp.test_run(prog, f).expect("run").action;
        // Even a pod of a known node's CIDR, unencapsulated.
        let f = pkt::ipv4(REMOTE_POD, POD_A, pkt::TCP, 1, 80, b"");
        assert_eq!(action(dp, programs::FROM_WIRE, &f), TC_ACT_SHOT);
        assert_eq!(drops(&counters, DropReason::SpoofedSourceFromWire), 1);
        // A pod hand-building VXLAN to this node or another: refused (any other UDP passes).
        for to in [NODE, other_node] {
            let f = pkt::ipv4(POD_A, to, pkt::UDP, 40000, 4789, b"vxlan");
            assert_eq!(action(dp, programs::FROM_POD, &f), TC_ACT_SHOT, "to {to}");
        }
        assert_eq!(drops(&counters, DropReason::TunnelPortFromPod), 2);
        assert_ne!(action(dp, programs::FROM_POD, &pkt::ipv4(POD_A, other_node, pkt::UDP, 1, 4790, b"x")), TC_ACT_SHOT);
        // Decapsulated without tunnel metadata.
        let f = pkt::ipv4(REMOTE_POD, POD_A, pkt::TCP, 1, 80, b"");
        assert_eq!(action(dp, programs::FROM_VXLAN, &f), TC_ACT_SHOT);
        assert_eq!(drops(&counters, DropReason::TunnelSourceInvalid), 1);
    });
}

/// Fragments: a later fragment gets its first fragment's verdict (or is dropped without one);
/// one overlapping the transport header, or a second first fragment naming other ports, poisons
/// the datagram; and no fragment passes as the reply of a different flow (the attack:
/// after E sent fragmented UDP to P, P's fragments reached a port E denies).
#[test]
fn fragments_take_their_first_fragments_verdict() {
    use weir_bpf_common::{PolicyEndpoint, POLICY_F_INGRESS};
    use weir_dataplane::maps::PolicyEndpoints;
    on_node("fragments_take_their_first_fragments_verdict", |dp, eps| {
        let counters = Counters::open(dp).expect("counters");
        add_endpoint(dp, eps, POD_B);
        let run = |dp: &mut Datapath, f: &[u8]| dp.test_run(programs::FROM_POD, f).expect("test run").action;
        let (e, p) = (POD_A, POD_B);
        // E sends a fragmented datagram to P: first fragment with ports, then a later one.
        let first = pkt::fragment(pkt::ipv4(e, p, pkt::UDP, 5000, 7000, &[1; 64]), 11, 0, true);
        let later = pkt::fragment(pkt::ipv4(e, p, pkt::UDP, 5000, 7000, &[2; 64]), 11, 9, false);
        assert_eq!(run(dp, &first), TC_ACT_REDIRECT);
        assert_eq!(run(dp, &later), TC_ACT_REDIRECT, "a later fragment follows its first");
        // A later fragment of a datagram whose first was never seen.
        let orphan = pkt::fragment(pkt::ipv4(e, p, pkt::UDP, 5000, 7000, &[3; 64]), 12, 9, false);
        assert_eq!(run(dp, &orphan), TC_ACT_SHOT);
        assert_eq!(drops(&counters, DropReason::FragmentWithoutFirst), 1);
        // Offset 1 (8 bytes) would rewrite part of a TCP header.
        let tiny = pkt::fragment(pkt::ipv4(e, p, pkt::TCP, 5000, 7000, &[4; 64]), 13, 1, false);
        assert_eq!(run(dp, &tiny), TC_ACT_SHOT);
        // A second first fragment of datagram 11 that names other ports poisons it.
        let other = pkt::fragment(pkt::ipv4(e, p, pkt::UDP, 5000, 7001, &[5; 64]), 11, 0, true);
        assert_eq!(run(dp, &other), TC_ACT_SHOT);
        assert_eq!(run(dp, &later), TC_ACT_SHOT, "the poisoned datagram's later fragments are dropped");
        assert_eq!(drops(&counters, DropReason::FragmentInvalid), 3);

        // Now E is isolated for ingress with nothing allowed: P's fragmented datagrams to E's
        // UDP port 9999 must not pass as "replies" of E's fragmented flow.
        let mut peps = PolicyEndpoints::open_pinned(dp).expect("policy endpoints");
        peps.upsert(e, PolicyEndpoint { identity: 1, flags: POLICY_F_INGRESS }).expect("isolate E");
        for id in [21, 22] {
            let first = pkt::fragment(pkt::ipv4(p, e, pkt::UDP, 7000, 9999, &[6; 64]), id, 0, true);
            let later = pkt::fragment(pkt::ipv4(p, e, pkt::UDP, 7000, 9999, &[7; 64]), id, 9, false);
            assert_eq!(run(dp, &first), TC_ACT_SHOT, "P's first fragment to a denied port");
            assert_eq!(run(dp, &later), TC_ACT_SHOT, "P's later fragment");
        }
        // The genuine reply of E's flow (P:7000 -> E:5000) still passes, fragmented too.
        let first = pkt::fragment(pkt::ipv4(p, e, pkt::UDP, 7000, 5000, &[8; 64]), 23, 0, true);
        let later = pkt::fragment(pkt::ipv4(p, e, pkt::UDP, 7000, 5000, &[9; 64]), 23, 9, false);
        assert_eq!(run(dp, &first), TC_ACT_REDIRECT);
        assert_eq!(run(dp, &later), TC_ACT_REDIRECT);
        // Port-less traffic (GRE) is never a reply: judged, and E denies it.
        let gre = pkt::ipv4_raw(p, e, 47, &[0; 8]);
        assert_eq!(run(dp, &gre), TC_ACT_SHOT);
    });
}

/// ICMP errors: one about an accepted connection reaches an isolated pod, translated back
/// through masquerade with valid checksums (path MTU discovery through NAT); one about
/// nothing the pod has is judged as plain ICMP and denied.
#[test]
fn icmp_errors_follow_their_connection_and_are_reverse_translated() {
    use weir_bpf_common::{PolicyEndpoint, POLICY_F_INGRESS};
    use weir_dataplane::maps::PolicyEndpoints;
    on_node("icmp_errors_follow_their_connection_and_are_reverse_translated", |dp, _| {
        let counters = Counters::open(dp).expect("counters");
        let mut peps = PolicyEndpoints::open_pinned(dp).expect("policy endpoints");
        peps.upsert(POD_A, PolicyEndpoint { identity: 1, flags: POLICY_F_INGRESS }).expect("isolate A");
        // A connects out (masqueraded).
        let out = pkt::ipv4(POD_A, EXTERNAL, pkt::TCP, 40000, 443, b"big");
        let sent = dp.test_run(programs::FROM_POD, &out).expect("run");
        assert_eq!(sent.action, TC_ACT_REDIRECT);
        let natport = pkt::view(&sent.frame).sport;
        // A router on the way says "fragmentation needed" to the node, quoting what it got.
        let router = Ipv4Addr::new(172, 31, 0, 254);
        let err = pkt::icmp_error(router, NODE, 3, 4, &sent.frame);
        let res = dp.test_run(programs::FROM_WIRE, &err).expect("run");
        assert_eq!(res.action, TC_ACT_REDIRECT, "the error reaches the isolated pod: it is about its connection");
        let v = pkt::view(&res.frame);
        let q = pkt::quoted(&res.frame);
        assert_eq!((v.src, v.dst), (router, POD_A));
        assert_eq!((q.src, q.sport, q.dst, q.dport), (POD_A, 40000, EXTERNAL, 443), "quoted packet translated back");
        assert!(v.ip_csum_ok && q.ip_csum_ok && q.icmp_csum_ok, "checksums: {v:?} {q:?}");
        assert_ne!(natport, 40000);
        // An error quoting a connection the pod never made is plain ICMP: denied.
        let stray = pkt::icmp_error(router, POD_A, 3, 1, &pkt::ipv4(POD_A, EXTERNAL, pkt::TCP, 40999, 443, b""));
        assert_eq!(dp.test_run(programs::FROM_WIRE, &stray).expect("run").action, TC_ACT_SHOT);
        assert_eq!(drops(&counters, DropReason::PolicyDeniedIngress), 1);
    });
}

/// What the node's stack sends to a pod (`weir_to_pod` on `weir_host`: hostPort DNAT, other
/// interfaces) is judged by the pod's ingress policy; the node itself may always reach its pods
/// (the kubelet's probes), and the pod's replies to stack-delivered connections go back to the
/// stack. An address of the pod CIDR no pod holds goes nowhere.
#[test]
fn stack_delivered_traffic_is_judged_and_replies_return_to_the_stack() {
    use weir_bpf_common::{PolicyEndpoint, POLICY_F_INGRESS};
    use weir_dataplane::maps::PolicyEndpoints;
    on_node("stack_delivered_traffic_is_judged_and_replies_return_to_the_stack", |dp, _| {
        let counters = Counters::open(dp).expect("counters");
        let mut peps = PolicyEndpoints::open_pinned(dp).expect("policy endpoints");
        peps.upsert(POD_A, PolicyEndpoint { identity: 1, flags: POLICY_F_INGRESS }).expect("isolate A");
        let action = |dp: &mut Datapath, prog, f: &[u8]| dp.test_run(prog, f).expect("run").action;
        // hostPort DNAT from outside into the isolated pod: denied.
        let dnat = pkt::ipv4(EXTERNAL, POD_A, pkt::TCP, 50000, 8080, b"");
        assert_eq!(action(dp, programs::TO_POD, &dnat), TC_ACT_SHOT);
        assert_eq!(drops(&counters, DropReason::PolicyDeniedIngress), 1);
        // The node (kubelet) may, into the pod's veth with its MACs; the pod's reply is handed
        // back to the stack, untranslated.
        let probe = pkt::ipv4(NODE, POD_A, pkt::TCP, 51000, 8080, b"");
        let res = dp.test_run(programs::TO_POD, &probe).expect("run");
        assert_eq!(res.action, TC_ACT_REDIRECT);
        assert_eq!((pkt::view(&res.frame).dst_mac, pkt::view(&res.frame).src_mac), (POD_MAC, HOST_MAC));
        let reply = pkt::ipv4(POD_A, NODE, pkt::TCP, 8080, 51000, b"");
        let res = dp.test_run(programs::FROM_POD, &reply).expect("run");
        assert_eq!(res.action, TC_ACT_OK);
        assert_eq!(pkt::view(&res.frame).src, POD_A);
        // A packet for another address on the pod's interface is not delivered.
        assert_eq!(action(dp, programs::TO_POD, &pkt::ipv4(NODE, POD_B, pkt::TCP, 1, 80, b"")), TC_ACT_SHOT);
        // Open again (no isolation): stack-delivered traffic from outside passes, and its
        // reply returns to the stack (whose conntrack undoes the DNAT) instead of being
        // masqueraded.
        peps.upsert(POD_A, PolicyEndpoint { identity: 1, flags: 0 }).expect("open A");
        assert_eq!(action(dp, programs::TO_POD, &dnat), TC_ACT_REDIRECT);
        let back = pkt::ipv4(POD_A, EXTERNAL, pkt::TCP, 8080, 50000, b"");
        let res = dp.test_run(programs::FROM_POD, &back).expect("run");
        assert_eq!((res.action, pkt::view(&res.frame).src), (TC_ACT_OK, POD_A));
    });
}

/// Restarts and upgrades never leave two programs deciding on a hook: a restart of the same
/// version replaces the program behind the pinned link at once (carrying new settings); over an
/// older version's pins (simulated by renaming the pin directory, as a release with a new ABI
/// finds it) or a pinned map that does not match the object, the old program keeps deciding
/// until `finish_takeover` (called once the maps are filled) swaps it, and the older
/// version's pins go.
#[test]
fn restarts_and_upgrades_take_pinned_links_over_with_one_program_per_hook() {
    if !require_root("restarts_and_upgrades_take_pinned_links_over_with_one_program_per_hook") {
        return;
    }
    use weir_dataplane::tcx::{ingress_program_ids, Attachment};
    let bpffs = Bpffs::mount();
    let root = bpffs.path.clone();
    let cfg = config(&bpffs, 0);
    in_fresh_netns(move || {
        node_netns_setup();
        run(Command::new("ip").args(["link", "add", "lxcup0", "type", "veth", "peer", "name", "lxcup0p"]));
        let attach = |cfg: &LoadConfig| {
            let mut dp = Datapath::load(cfg).expect("load datapath");
            let how = dp.attach_ingress("lxcup0", programs::FROM_POD).expect("attach");
            (dp, how)
        };
        let one_program = || {
            let ids = ingress_program_ids("lxcup0").expect("query");
            assert_eq!(ids.len(), 1, "exactly one program on the hook: {ids:?}");
            ids[0]
        };
        let (first, how) = attach(&cfg);
        assert_eq!(how, Attachment::Attached);
        let id1 = one_program();
        drop(first);

        // Same version, changed settings: replaced at once.
        let mut changed = cfg.clone();
        changed.nat_ports = (62000, 62063);
        let (second, how) = attach(&changed);
        assert_eq!(how, Attachment::Replaced);
        let id2 = one_program();
        assert_ne!(id1, id2, "the restarted agent's program (new settings) runs");
        drop(second);

        // An older ABI's pins: the old program decides until the takeover, then the new one.
        let current = weir_dataplane::loader::pin_dir(&root);
        let older = root.join("weir").join("v0");
        std::fs::rename(&current, &older).expect("rename the pin directory (bpffs supports rename)");
        let (mut third, how) = attach(&cfg);
        assert_eq!(how, Attachment::Deferred, "new maps are empty: the old program keeps deciding");
        assert_eq!(one_program(), id2);
        assert!(third.takeover_pending());
        let report = third.finish_takeover().expect("finish takeover");
        assert_eq!((report.replaced, report.versions_removed.clone()), (1, vec!["v0".to_owned()]), "{report:?}");
        let id3 = one_program();
        assert_ne!(id3, id2);
        assert!(!older.exists(), "the older version's pins are gone");
        assert!(current.join("links").join(format!("{}-lxcup0", programs::FROM_POD)).exists());
        assert!(!third.takeover_pending());
        drop(third);

        // A pinned map that does not match the object (another map pinned under its name) is
        // retired and recreated; the takeover waits for the refill.
        let maps = current.join("maps");
        std::fs::rename(maps.join(weir_bpf_common::maps::TAILS), maps.join(weir_bpf_common::maps::SETTINGS))
            .expect("pin one map under another's name");
        let (mut fourth, how) = attach(&cfg);
        let retired: Vec<&str> = fourth.retired_maps().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(retired, [weir_bpf_common::maps::SETTINGS], "{:?}", fourth.retired_maps());
        assert!(fourth.retired_maps()[0].reason.contains("type"), "{:?}", fourth.retired_maps());
        assert_eq!(how, Attachment::Deferred);
        assert_eq!(one_program(), id3);
        assert_eq!(fourth.finish_takeover().expect("finish").replaced, 1);
        assert_ne!(one_program(), id3);
        // The next restart finds every map matching and replaces at once.
        drop(fourth);
        let (_fifth, how) = attach(&cfg);
        assert_eq!(how, Attachment::Replaced);
        one_program();
    });
}

/// Datapath fuzzer: 3000 frames from a seeded generator (the seed is printed; set
/// `WEIR_FUZZ_SEED` to replay) — valid TCP, UDP and ICMP frames of a pod and from the wire,
/// then truncated, given IP options, bad versions, header and total lengths, fragment bits and
/// flipped bytes — through `weir_from_pod` and `weir_from_wire`. Every frame gets a verdict the
/// kernel knows (pass, drop, redirect); every frame whose IPv4 header is broken (shorter than
/// 20 bytes, version not 4, header length under 5 words) is dropped and counted as malformed,
/// one count each; and the agent-owned state (endpoints, policy endpoints) is exactly as before.
#[test]
fn random_and_truncated_frames_are_dropped_and_counted_and_change_nothing_else() {
    on_node("random_and_truncated_frames_are_dropped_and_counted_and_change_nothing_else", |dp, eps| {
        add_endpoint(dp, eps, POD_B);
        let counters = Counters::open(dp).expect("counters");
        let peps = weir_dataplane::maps::PolicyEndpoints::open_pinned(dp).expect("policy endpoints");
        let state =
            |eps: &Endpoints| format!("{:?} {:?}", eps.list().expect("endpoints"), peps.list().expect("policy"));
        let before = state(eps);
        let seed: u64 = std::env::var("WEIR_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
        });
        eprintln!("datapath fuzzer seed: {seed} (WEIR_FUZZ_SEED={seed} replays it)");
        let mut x = seed;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n.max(1)
        };
        let (mut broken, mut malformed, mut verdicts, mut refused) = (0u64, 0u64, [0u32; 3], 0u32);
        for i in 0..3000u32 {
            let from_pod = i % 2 == 0;
            let (src, dst) = if from_pod { (POD_A, [POD_B, EXTERNAL][rnd(2) as usize]) } else { (EXTERNAL, NODE) };
            let mut f = match rnd(3) {
                0 => pkt::tcp(
                    src,
                    dst,
                    40000 + rnd(1000) as u16,
                    [80, 443, 53][rnd(3) as usize],
                    [0x02, 0x10, 0x11, 0x04][rnd(4) as usize],
                ),
                1 => pkt::ipv4(src, dst, pkt::UDP, 40000 + rnd(1000) as u16, 53, &vec![0u8; rnd(64) as usize]),
                _ => pkt::ipv4_raw(src, dst, 1, &[8, 0, 0, 0, 0, 1, 0, 1]),
            };
            for _ in 0..=rnd(3) {
                match rnd(7) {
                    0 => f.truncate(14 + rnd(f.len() as u64 - 13) as usize),
                    1 if f.len() > 14 => f[14] = (f[14] & 0xf0) | rnd(16) as u8,
                    2 if f.len() > 14 => f[14] = (rnd(16) as u8) << 4 | (f[14] & 0x0f),
                    3 if f.len() >= 18 => f[16..18].copy_from_slice(&(rnd(2000) as u16).to_be_bytes()),
                    4 if f.len() >= 22 => {
                        f[20..22].copy_from_slice(&[[0x20, 0], [0, 0x10], [0x20, 0x05], [0x40, 0]][rnd(4) as usize])
                    }
                    5 if f.len() >= 34 => {
                        // IP options: 4..40 bytes after the fixed header, IHL to match.
                        let words = 1 + rnd(10) as usize;
                        let opts: Vec<u8> = (0..words * 4).map(|_| rnd(256) as u8).collect();
                        f.splice(34..34, opts);
                        f[14] = 0x40 | (5 + words) as u8;
                    }
                    _ => {
                        let at = 14 + rnd(f.len() as u64 - 14) as usize;
                        if at < f.len() {
                            f[at] ^= 1 << rnd(8);
                        }
                    }
                }
            }
            let header_broken = f.len() < 34 || f[14] >> 4 != 4 || f[14] & 0x0f < 5;
            let program = if from_pod { programs::FROM_POD } else { programs::FROM_WIRE };
            let counted_before = drops(&counters, DropReason::Malformed);
            let res = match dp.test_run(program, &f) {
                Ok(res) => res,
                // BPF_PROG_TEST_RUN itself refuses an IPv4 frame too short for an IPv4 header
                // (EINVAL); such frames cannot be fed to the program here.
                Err(_) if f.len() < 34 => {
                    refused += 1;
                    continue;
                }
                Err(e) => panic!("seed {seed}: frame {i} ({} bytes): {e}", f.len()),
            };
            let slot = match res.action {
                TC_ACT_OK => 0,
                TC_ACT_SHOT => 1,
                TC_ACT_REDIRECT => 2,
                other => panic!("seed {seed}: frame {i} got verdict {other}: {f:02x?}"),
            };
            verdicts[slot] += 1;
            let counted = drops(&counters, DropReason::Malformed) - counted_before;
            assert!(counted <= 1, "seed {seed}: frame {i} counted {counted} times");
            if counted == 1 {
                assert_eq!(res.action, TC_ACT_SHOT, "seed {seed}: counted as malformed but not dropped: {f:02x?}");
                malformed += 1;
            }
            if header_broken {
                broken += 1;
                assert_eq!(res.action, TC_ACT_SHOT, "seed {seed}: a broken header passed: {f:02x?}");
                assert_eq!(counted, 1, "seed {seed}: frame {i} not counted as malformed: {f:02x?}");
            }
        }
        eprintln!(
            "3000 frames: {refused} too short for the test run, {broken} with a broken header, {malformed} counted malformed; pass/drop/redirect {verdicts:?}"
        );
        assert!(broken > 100, "the generator makes broken headers ({broken})");
        assert_eq!(state(eps), before, "seed {seed}: the agent's state changed");
    });
}
