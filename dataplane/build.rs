//! Builds bpf/programs for the BPF target with aya-build on the pinned nightly and leaves the
//! object in OUT_DIR for `include_bytes_aligned!`.
//!
//! `WEIR_BPF_STUB=1` (or aya's `AYA_BUILD_SKIP=1`) writes an empty object instead, so
//! `cargo check`/`clippy` work on machines without bpf-linker; loading then fails with a clear
//! error.
use std::{env, fs, path::PathBuf};

use anyhow::{bail, Context as _};

const PINNED_NIGHTLY: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=WEIR_BPF_STUB");
    println!("cargo:rerun-if-env-changed=WEIR_BPF_TOOLCHAIN");
    let out = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR")?);
    let object = out.join("weir-tc");
    let stub = env::var("WEIR_BPF_STUB").is_ok_and(|v| v == "1") || env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1");
    if stub {
        println!("cargo:warning=WEIR_BPF_STUB=1: embedding an empty eBPF object");
        fs::write(&object, b"").context("writing stub object")?;
        return Ok(());
    }
    if which_on_path("bpf-linker").is_none() {
        bail!("bpf-linker is not on PATH: run scripts/setup.sh and `. ~/.cache/weir/tools/env.sh`, or set WEIR_BPF_STUB=1 for a check-only build");
    }
    let toolchain = env::var("WEIR_BPF_TOOLCHAIN").unwrap_or_else(|_| PINNED_NIGHTLY.to_owned());
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let root = manifest.join("../bpf/programs");
    let root = root.to_str().context("non-UTF-8 path")?;
    let common = manifest.join("../bpf/common");
    println!("cargo:rerun-if-changed={}", common.display());
    aya_build::build_ebpf(
        [aya_build::Package { name: "weir-bpf-programs", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::Custom(&toolchain),
    )?;
    if !object.exists() {
        bail!("aya-build produced no {}", object.display());
    }
    Ok(())
}

fn which_on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}
