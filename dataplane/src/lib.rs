//! weir-dataplane: the only crate that names aya. It embeds the eBPF object built by build.rs,
//! loads it with load-time globals, pins maps and links under a versioned bpffs path, attaches
//! programs with tcx, and offers typed map wrappers (each with an in-memory fake for tests of
//! the layers above).
//!
//! Invariants: only this crate touches BPF objects; a restarted loader reuses pinned maps that
//! match the object and takes pinned links over (link update) instead of attaching a second copy.

pub mod btf;
pub mod cgroup;
pub mod counters;
pub mod events;
pub mod exec;
pub mod loader;
pub mod maps;
pub mod reader;
pub mod takeover;
pub mod tcx;
pub mod testrun;

use std::path::PathBuf;

pub use loader::{Datapath, LoadConfig};
pub use weir_bpf_common as abi;

/// The eBPF object, built from bpf/programs for the BPF target.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weir-tc"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the embedded eBPF object is empty (built with WEIR_BPF_STUB=1); rebuild with bpf-linker")]
    StubObject,
    #[error("loading the eBPF object: {source}")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("map {name} is missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("map {name} is full ({capacity} entries)")]
    MapFull { name: &'static str, capacity: u32 },
    #[error("attaching {program} to {iface}: {source}")]
    Attach {
        program: &'static str,
        iface: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("exec audit: {reason}")]
    ExecAudit { reason: String },
    #[error("pin {path}: {message}")]
    Pin { path: PathBuf, message: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `e` and all its sources, `: `-separated (for errors kept as messages).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Pins an owned program link at `pin`, so it outlives this process.
pub(crate) fn pin_link<L>(link: L, pin: &std::path::Path) -> Result<()>
where
    L: TryInto<aya::programs::links::FdLink, Error = aya::programs::links::LinkError>,
{
    let fd = link.try_into().map_err(|e| Error::Pin { path: pin.to_owned(), message: chain(&e) })?;
    fd.pin(pin).map_err(|e| Error::Pin { path: pin.to_owned(), message: chain(&e) })?;
    Ok(())
}

pub(crate) fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source: Box::new(source) }
}
