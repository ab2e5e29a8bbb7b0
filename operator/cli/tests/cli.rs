//! The `weir` binary as on-call engineers run it: bad input is refused with a message naming
//! what was wrong, before anything is asked of an agent.
use std::process::Command;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn weir(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(WEIR).args(args).output().expect("run weir");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_absent_agent_is_named() {
    let (ok, _, err) = weir(&["--socket", "/nonexistent/weir.sock", "status"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/weir.sock"), "{err}");
}

#[test]
fn only_observe_reads_several_agents() {
    let (ok, _, err) = weir(&["--socket", "/a.sock", "--socket", "/b.sock", "endpoints"]);
    assert!(!ok);
    assert!(err.contains("only `weir observe`"), "{err}");
}

#[test]
fn observe_refuses_bad_filters_by_name_and_explains_itself() {
    let (ok, _, err) = weir(&["--socket", "/nonexistent.sock", "observe", "--colour", "red"]);
    assert!(!ok && err.contains("unknown flag --colour"), "{err}");
    let (ok, _, err) = weir(&["observe", "--port", "http"]);
    assert!(!ok && err.contains("--port http"), "{err}");
    let (ok, out, _) = weir(&["observe", "--help"]);
    assert!(ok && out.contains("--to-pod") && out.contains("several --socket"), "{out}");
}
