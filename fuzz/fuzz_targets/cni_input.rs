//! weir-cni's input: the runtime's environment (any bytes, not only UTF-8) and the network
//! configuration on stdin. Input: environment lines (`K=V`, `\n`-separated), a NUL, then stdin.
//! Nothing may panic; every error renders as CNI error JSON.
#![no_main]
use std::{ffi::OsString, os::unix::ffi::OsStringExt as _};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (env_bytes, stdin) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let vars = env_bytes.split(|b| *b == b'\n').filter_map(|line| {
        let eq = line.iter().position(|b| *b == b'=')?;
        Some((OsString::from_vec(line[..eq].to_vec()), OsString::from_vec(line[eq + 1..].to_vec())))
    });
    let (env, _bad) = weir_cni::environment(vars);
    let _ = weir_cni::command(&env);
    let _ = weir_cni::cni_args(&env);
    for (k, v) in &env {
        if k == "CNI_CONTAINERID" {
            let _ = weir_cni::valid_container_id(v);
        }
    }
    let conf = weir_cni::parse_conf(stdin);
    let outcome = conf.map(|_| serde_json::Value::Null);
    let (out, code) = weir_cni::render(stdin, outcome);
    if code != 0 {
        let v: serde_json::Value = serde_json::from_str(&out).expect("a CNI error is JSON");
        assert!(v.get("code").is_some(), "{out}");
    }
});
