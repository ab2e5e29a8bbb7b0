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
    // aya-build keeps its cargo target under OUT_DIR, which differs for every profile and feature
    // set this crate is built with (check, build, test): each would build `core` and the programs
    // from scratch (about a minute each). One directory shared by all of them under the
    // workspace's target dir makes the later builds incremental; a lock serialises them, and the
    // object is copied out under it.
    let shared = shared_dir(&out).unwrap_or_else(|| out.clone());
    fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    let lock = fs::File::create(shared.join(".lock")).context("creating the eBPF build lock")?;
    lock.lock().context("locking the shared eBPF build")?;
    // aya-build reads OUT_DIR to place its target and the object (a build script is
    // single-threaded, so changing the variable for the call is safe).
    env::set_var("OUT_DIR", &shared);
    let built = aya_build::build_ebpf(
        [aya_build::Package { name: "weir-bpf-programs", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::Custom(&toolchain),
    );
    env::set_var("OUT_DIR", &out);
    built?;
    let from = shared.join("weir-tc");
    if !from.exists() {
        bail!("aya-build produced no {}", from.display());
    }
    if from != object {
        fs::copy(&from, &object).with_context(|| format!("copying {} to {}", from.display(), object.display()))?;
    }
    drop(lock);
    Ok(())
}

/// `<target dir>/bpf`, from `OUT_DIR` = `<target dir>/<profile>/build/<pkg>-<hash>/out`.
fn shared_dir(out: &std::path::Path) -> Option<PathBuf> {
    let target = out.ancestors().nth(4)?;
    (out.ancestors().nth(2)?.file_name()? == "build").then(|| target.join("bpf"))
}

fn which_on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}
