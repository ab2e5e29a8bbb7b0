//! Unit tier (no root): the observer over TCP with TLS, as a relay reaches the node agents. Two
//! `weir-relay` processes chained: the first serves on loopback TCP with a certificate and
//! requires client certificates (as a node's observer does off loopback; the same serving code),
//! the second reaches it as a peer over mutual TLS. Certificates are made with Debian's
//! `openssl` (installed by setup). Also: a relay presenting a certificate of another CA is
//! refused, and serving off loopback without TLS is refused at start.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use weir_operator_agent::observe::{
    grpc::proto::{
        observer::{observer_client::ObserverClient, GetNodesRequest},
        relay::NodeState,
    },
    relay,
};

const RELAY: &str = env!("CARGO_BIN_EXE_weir-relay");

/// A relay process, ended by its PID when dropped (also on a failed assertion).
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out =
        Command::new("openssl").current_dir(dir).args(args).output().expect("openssl (scripts/setup.sh installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA's key and self-signed certificate, in `dir`.
fn ca(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
        ],
    );
}

/// A key and a certificate for `name` (also its DNS name) signed by `ca`, in `dir`.
fn signed(dir: &Path, ca: &str, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), format!("subjectAltName=DNS:{name}\n")).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(args: &[String]) -> Relay {
    Relay(Command::new(RELAY).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("weir-relay"))
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The nodes a relay lists, with their state and (for unavailable ones) nothing more.
fn nodes(socket: &Path) -> Vec<(String, i32)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let channel = relay::unix_channel(socket.to_path_buf(), Duration::from_secs(5)).await.expect("relay socket");
        let got = ObserverClient::new(channel).get_nodes(GetNodesRequest {}).await.expect("GetNodes").into_inner();
        got.nodes.into_iter().map(|n| (n.name, n.state)).collect()
    })
}

#[test]
fn relays_reach_observers_over_mutual_tls_only() {
    let dir: PathBuf = std::env::temp_dir().join(format!("weir-relay-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let p = |f: &str| dir.join(f).display().to_string();
    ca(&dir, "cluster-ca");
    signed(&dir, "cluster-ca", "weir-observer");
    signed(&dir, "cluster-ca", "weir-relay");
    ca(&dir, "other-ca");
    signed(&dir, "other-ca", "intruder");
    std::fs::write(dir.join("no-peers"), "").unwrap();

    // The observer: TLS with client certificates, on loopback TCP.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _observer = start(&[
        "--peers-file".into(),
        p("no-peers"),
        "--socket".into(),
        p("observer.sock"),
        "--listen".into(),
        addr.clone(),
        "--tls-cert".into(),
        p("weir-observer.pem"),
        "--tls-key".into(),
        p("weir-observer.key"),
        "--tls-client-ca".into(),
        p("cluster-ca.pem"),
    ]);
    wait_for(&dir.join("observer.sock"));
    let relay = |name: &str, client: &str| {
        start(&[
            "--peer".into(),
            format!("n1={addr}"),
            "--socket".into(),
            p(&format!("{name}.sock")),
            "--peer-tls-ca".into(),
            p("cluster-ca.pem"),
            "--peer-tls-cert".into(),
            p(&format!("{client}.pem")),
            "--peer-tls-key".into(),
            p(&format!("{client}.key")),
            "--node-timeout".into(),
            "3".into(),
        ])
    };
    let up = NodeState::NodeConnected as i32;
    let down = NodeState::NodeUnavailable as i32;
    // With the cluster's client certificate: connected.
    let _good = relay("good", "weir-relay");
    wait_for(&dir.join("good.sock"));
    assert_eq!(nodes(&dir.join("good.sock")), [("n1".to_owned(), up)]);
    // With a certificate of another CA: refused by the observer, so the node is unavailable.
    let _bad = relay("bad", "intruder");
    wait_for(&dir.join("bad.sock"));
    assert_eq!(nodes(&dir.join("bad.sock")), [("n1".to_owned(), down)]);

    // Off loopback without TLS: refused at start, by name.
    let out = Command::new(RELAY)
        .args(["--peers-file", &p("no-peers"), "--socket", &p("open.sock"), "--listen", "0.0.0.0:4245"])
        .output()
        .expect("weir-relay");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("only over TLS"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}
