//! The lab's built-in test server and the probe client. Both run inside a pod's namespace.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs as _, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ProbeResult {
    /// Exactly one of `connected`, `refused`, `timeout`.
    pub result: &'static str,
    /// What the server said (the lab server answers with its pod name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// Why a probe that did not connect ended that way, when the OS said more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The peer as getpeername() reports it (a Service address stays the Service address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The client address as the server saw it (the lab server's second line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// A connected probe's result from the server's answer.
fn connected(answer: &[u8], peer: Option<String>) -> ProbeResult {
    let text = String::from_utf8_lossy(answer);
    let mut lines = text.lines().map(str::trim);
    let reply = lines.next().filter(|l| !l.is_empty()).map(str::to_owned);
    let client = lines.find_map(|l| l.strip_prefix("client ")).map(str::to_owned);
    ProbeResult { result: "connected", reply, error: None, peer, client }
}

fn classify(e: &std::io::Error) -> &'static str {
    match e.kind() {
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset => "refused",
        _ => "timeout",
    }
}

pub fn probe(target: &str, proto: Protocol, timeout: Duration) -> anyhow::Result<ProbeResult> {
    let addr: SocketAddr = target
        .to_socket_addrs()
        .with_context(|| format!("{target:?} is not HOST:PORT"))?
        .next()
        .with_context(|| format!("{target:?} resolves to nothing"))?;
    let failed = |e: std::io::Error| ProbeResult {
        result: classify(&e),
        reply: None,
        error: Some(e.to_string()),
        peer: None,
        client: None,
    };
    Ok(match proto {
        Protocol::Tcp => match TcpStream::connect_timeout(&addr, timeout) {
            Ok(mut s) => {
                s.set_read_timeout(Some(timeout))?;
                let peer = s.peer_addr().ok().map(|p| p.to_string());
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                connected(&buf, peer)
            }
            Err(e) => failed(e),
        },
        Protocol::Udp => {
            let sock = UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
            if let Err(e) = sock.connect(addr) {
                return Ok(failed(e));
            }
            let peer = sock.peer_addr().ok().map(|p| p.to_string());
            let deadline = Instant::now() + timeout;
            let mut buf = [0u8; 512];
            // Re-send now and then: a datagram can be lost while neighbours resolve.
            loop {
                if let Err(e) = sock.send(b"probe") {
                    break failed(e);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break ProbeResult { result: "timeout", reply: None, error: None, peer: None, client: None };
                }
                sock.set_read_timeout(Some(left.min(Duration::from_millis(300))))?;
                match sock.recv(&mut buf) {
                    Ok(n) => break connected(&buf[..n], peer),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
                    Err(e) => break failed(e),
                }
            }
        }
    })
}

/// The lab's test server (see `weir_lab_pod::serve`).
pub fn serve(name: &str, tcp: &[u16], udp: &[u16]) -> anyhow::Result<()> {
    Ok(weir_lab_pod::serve(name, tcp, udp)?)
}

/// Request/response server for the benchmark: echoes each byte on every connection.
pub fn rr_serve(port: u16) -> anyhow::Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding tcp/{port}"))?;
    println!("ready");
    std::io::stdout().flush()?;
    for conn in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut conn = conn;
            let _ = conn.set_nodelay(true);
            let mut b = [0u8; 1];
            while conn.read_exact(&mut b).is_ok() {
                if conn.write_all(&b).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct RrResult {
    pub count: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

/// One-byte request/response round trips on one TCP connection (after a warm-up).
pub fn rr(target: &str, count: usize) -> anyhow::Result<RrResult> {
    let mut s = TcpStream::connect(target).with_context(|| format!("connecting {target}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut b = [7u8; 1];
    let mut samples = Vec::with_capacity(count);
    for i in 0..count + 200 {
        let t = Instant::now();
        s.write_all(&b)?;
        s.read_exact(&mut b)?;
        if i >= 200 {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    Ok(RrResult {
        count,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        mean_us: samples.iter().sum::<f64>() / samples.len() as f64,
    })
}

#[derive(Debug, Serialize)]
pub struct CrrResult {
    pub count: usize,
    pub conns_per_sec: f64,
}

/// New TCP connections, one after another: connect, one-byte request and response, close.
/// Closed with a reset (SO_LINGER 0), so no TIME_WAIT piles up and later runs find free ports
/// as fast as earlier ones.
pub fn crr(target: &str, count: usize) -> anyhow::Result<CrrResult> {
    let start = Instant::now();
    for _ in 0..count {
        let mut s = TcpStream::connect(target).with_context(|| format!("connecting {target}"))?;
        let linger = nix::libc::linger { l_onoff: 1, l_linger: 0 };
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &linger)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut b = [7u8; 1];
        s.write_all(&b)?;
        s.read_exact(&mut b)?;
    }
    Ok(CrrResult { count, conns_per_sec: count as f64 / start.elapsed().as_secs_f64() })
}
