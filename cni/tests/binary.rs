//! The `weir-cni` binary as a runtime executes it: environment and stdin in, one JSON document
//! and the exit status out, whatever the environment holds. (No agent is needed for these; the
//! conformance tests with an agent are in `tests/tests/cni.rs`.)
use std::{
    ffi::OsStr,
    io::Write,
    os::unix::ffi::OsStrExt,
    process::{Command, Stdio},
};

use serde_json::Value;

const PLUGIN: &str = env!("CARGO_BIN_EXE_weir-cni");

/// Runs the plugin with exactly `env` and `stdin`: (exit status, stdout as JSON).
fn run(env: &[(&OsStr, &OsStr)], stdin: &str) -> (i32, Value) {
    let mut child = Command::new(PLUGIN)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir-cni");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("weir-cni");
    let text = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {text:?} stderr {:?}", out.stderr));
    (out.status.code().unwrap_or(-1), json)
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

const CONF: &str = r#"{"cniVersion":"1.0.0","name":"weir","type":"weir-cni"}"#;

#[test]
fn version_answers_with_the_supported_versions() {
    let (code, v) = run(&[(os("CNI_COMMAND"), os("VERSION"))], r#"{"cniVersion":"1.1.0"}"#);
    assert_eq!(code, 0);
    assert_eq!(v["cniVersion"], "1.1.0");
    assert!(v["supportedVersions"].as_array().is_some_and(|a| a.contains(&"0.4.0".into())), "{v}");
}

#[test]
fn a_foreign_non_utf8_variable_is_ignored_and_a_cni_one_is_named() {
    let junk = OsStr::from_bytes(b"\xff\xfe junk");
    let (code, v) = run(&[(os("CNI_COMMAND"), os("VERSION")), (os("SOME_RUNTIME_VAR"), junk)], CONF);
    assert_eq!((code, v["supportedVersions"].is_array()), (0, true), "an unrelated variable is ignored: {v}");
    let env = [
        (os("CNI_COMMAND"), os("ADD")),
        (os("CNI_CONTAINERID"), junk),
        (os("CNI_NETNS"), os("/var/run/netns/x")),
        (os("CNI_IFNAME"), os("eth0")),
        (os("CNI_PATH"), os("/opt/cni/bin")),
    ];
    let (code, v) = run(&env, CONF);
    assert_eq!((code, v["code"].as_u64()), (1, Some(4)), "invalid environment, as the spec's code 4: {v}");
    assert!(v["msg"].as_str().unwrap_or("").contains("CNI_CONTAINERID"), "the variable is named: {v}");
    assert_eq!(v["cniVersion"], "1.0.0", "answered in the caller's version");
}

#[test]
fn missing_command_and_bad_config_get_spec_errors() {
    let (code, v) = run(&[], CONF);
    assert_eq!((code, v["code"].as_u64()), (1, Some(4)), "{v}");
    assert!(v["msg"].as_str().unwrap_or("").contains("CNI_COMMAND"), "{v}");
    let env = [(os("CNI_COMMAND"), os("STATUS"))];
    let (code, v) = run(&env, "{not json");
    assert_eq!((code, v["code"].as_u64()), (1, Some(6)), "decoding failure: {v}");
    let (code, v) = run(&env, r#"{"cniVersion":"9.9.9","name":"weir","type":"weir-cni"}"#);
    assert_eq!((code, v["code"].as_u64()), (1, Some(1)), "incompatible version: {v}");
}
