//! What runs in a lab pod: the test server every lab pod serves, and the sandbox's pause
//! process. Std and libc only, so the binary links statically (musl) into the offline images
//! the lab imports into containerd; `weir-lab serve` runs the same server in home-made pods.
use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener, UdpSocket},
    time::Duration,
};

/// The server's answer: its name, then the client address it saw (the probe reads both).
pub fn answer(name: &str, client: SocketAddr) -> String {
    format!("{name}\nclient {client}\n")
}

/// Answers on every given port, TCP and UDP, with `name` and the client address it saw. Prints
/// `ready` once all are bound; with no ports, stays alive like a sleeping container.
pub fn serve(name: &str, tcp: &[u16], udp: &[u16]) -> std::io::Result<()> {
    let mut threads = Vec::new();
    for &port in tcp {
        let l = TcpListener::bind(("0.0.0.0", port)).map_err(|e| with_port(e, "tcp", port))?;
        let name = name.to_owned();
        threads.push(std::thread::spawn(move || {
            for mut conn in l.incoming().flatten() {
                if let Ok(client) = conn.peer_addr() {
                    let _ = conn.write_all(answer(&name, client).as_bytes());
                }
            }
        }));
    }
    for &port in udp {
        let s = UdpSocket::bind(("0.0.0.0", port)).map_err(|e| with_port(e, "udp", port))?;
        let name = name.to_owned();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((_, peer)) = s.recv_from(&mut buf) {
                let _ = s.send_to(answer(&name, peer).as_bytes(), peer);
            }
        }));
    }
    println!("ready");
    std::io::stdout().flush()?;
    for t in threads {
        let _ = t.join();
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn with_port(e: std::io::Error, proto: &str, port: u16) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("binding {proto}/{port}: {e}"))
}

extern "C" fn exit_now(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

/// The sandbox's process: holds the pod's namespaces, reaps what is reparented to it (it is
/// PID 1 of its PID namespace) and ends on SIGTERM or SIGINT (as PID 1 it would otherwise
/// ignore them).
pub fn pause() -> ! {
    // SAFETY: installing a handler that only calls _exit; waitpid on any child.
    unsafe {
        libc::signal(libc::SIGTERM, exit_now as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, exit_now as *const () as libc::sighandler_t);
        loop {
            if libc::waitpid(-1, std::ptr::null_mut(), 0) < 0 {
                libc::pause();
            }
        }
    }
}
