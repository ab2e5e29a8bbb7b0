//! Restarts and upgrades. An earlier agent (this ABI version or an older one) left programs
//! attached through pinned links, with maps pinned beside them. This load takes each of those
//! attachments over with a link update: the kernel swaps the program behind the link in one step,
//! so at every hook exactly one program decides at every moment, and never none. When this
//! load's maps are the ones the attached programs already use (same version, every map reused),
//! the swap happens at once and the new program carries this start's settings. Otherwise (an
//! older version's maps, or a pinned map that did not match the object and was recreated) the
//! new maps are empty until the agent's first reconcile pass fills them, so the swaps wait for
//! [`Datapath::finish_takeover`]; until then the old programs keep deciding with their own maps.
//! Finishing also removes every older version's pins: links not taken over (attachments this
//! version no longer makes) are detached with them.
use std::{
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::MapInfo,
    programs::links::{FdLink, PinnedLink},
};
use weir_bpf_common::ABI_VERSION;

use crate::{tcx::Attachment, Datapath, Error, Result, OBJECT};

/// An attachment to take over once the maps are filled.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The pinned link now on the hook (an older version's pin, or this version's).
    from: PathBuf,
    /// Where this version pins it.
    to: PathBuf,
    program: &'static str,
}

/// What [`Datapath::finish_takeover`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TakeoverReport {
    /// Attachments whose program was replaced by this load's.
    pub replaced: usize,
    /// Pinned links of older versions that nothing took over, removed (their programs detached).
    pub detached: usize,
    /// Older versions' pin directories removed (`v<N>`).
    pub versions_removed: Vec<String>,
}

/// A pinned map that did not match the object's definition: retired and recreated empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredMap {
    pub name: String,
    /// What differed (`max_entries 65536 != 131072`, ...).
    pub reason: String,
}

/// `<bpffs_root>/weir/v<N>` directories of versions other than this one.
pub(crate) fn older_versions(bpffs_root: &Path) -> Vec<PathBuf> {
    let current = format!("v{ABI_VERSION}");
    let Ok(rd) = std::fs::read_dir(bpffs_root.join("weir")) else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n != current && n.strip_prefix('v').is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

/// Checks every map pinned in `maps_dir` against the object's definition of it (type, key and
/// value size, entries, flags). A mismatch (or a pin that is not a readable map) is unpinned, so
/// the loader creates the map afresh; programs still using the old map keep it alive until they
/// are replaced. Returns the retired maps and whether every pinned map of the object was found
/// and kept (this load then decides with the same state as the programs it replaces).
pub(crate) fn check_pinned_maps(maps_dir: &Path) -> Result<(Vec<RetiredMap>, bool)> {
    let obj = aya_obj::Object::parse(OBJECT).map_err(|e| Error::Pin {
        path: maps_dir.to_owned(),
        message: format!("parsing the embedded object to check pinned maps: {e}"),
    })?;
    let mut retired = Vec::new();
    let mut all_kept = true;
    for (name, def) in &obj.maps {
        if def.pinning() != aya_obj::maps::PinningType::ByName {
            continue;
        }
        let pin = maps_dir.join(name);
        if !pin.exists() {
            all_kept = false;
            continue;
        }
        let reason = match MapInfo::from_pin(&pin) {
            Err(e) => Some(format!("unreadable: {}", crate::chain(&e))),
            Ok(info) => map_mismatch(&info, def),
        };
        if let Some(reason) = reason {
            std::fs::remove_file(&pin).map_err(|source| Error::Io { op: "unpinning", path: pin.clone(), source })?;
            retired.push(RetiredMap { name: name.clone(), reason });
            all_kept = false;
        }
    }
    retired.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((retired, all_kept))
}

fn map_mismatch(info: &MapInfo, def: &aya_obj::Map) -> Option<String> {
    let have_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
    let mut diffs = Vec::new();
    let mut cmp = |what: &str, have: u32, want: u32| {
        if have != want {
            diffs.push(format!("{what} {have} != {want}"));
        }
    };
    cmp("type", have_type, def.map_type());
    cmp("key_size", info.key_size(), def.key_size());
    cmp("value_size", info.value_size(), def.value_size());
    // 0 entries in the object means "one per CPU", filled in by the loader.
    if def.max_entries() != 0 {
        cmp("max_entries", info.max_entries(), def.max_entries());
    }
    cmp("flags", info.map_flags(), def.map_flags());
    (!diffs.is_empty()).then(|| diffs.join(", "))
}

impl Datapath {
    /// Takes over the live attachment pinned at `from` (re-pinned at `to`) for `program`: at once
    /// when this load shares the attached programs' maps, else after the first reconcile pass.
    pub(crate) fn take_over(&mut self, from: PathBuf, to: PathBuf, program: &'static str) -> Result<Attachment> {
        if self.maps_inherited && from == to {
            self.update_link(&from, &to, program)?;
            return Ok(Attachment::Replaced);
        }
        self.pending.retain(|p| p.to != to);
        self.pending.push(Pending { from, to, program });
        Ok(Attachment::Deferred)
    }

    /// The pin of a live attachment of `program` under name `pin_name` in this version's
    /// `links/` or an older version's (this version's first).
    pub(crate) fn existing_pins(&self, pin_name: &str) -> Vec<PathBuf> {
        std::iter::once(self.pin_dir.clone())
            .chain(self.older.iter().cloned())
            .map(|d| d.join("links").join(pin_name))
            .filter(|p| p.exists())
            .collect()
    }

    /// Forgets a deferred takeover of the pin at `to` (its interface went away).
    pub(crate) fn forget_pending(&mut self, to: &Path) {
        self.pending.retain(|p| p.to != to);
    }

    /// Whether attachments still wait for [`Datapath::finish_takeover`], or older versions'
    /// pins remain.
    pub fn takeover_pending(&self) -> bool {
        !self.pending.is_empty() || !self.older.is_empty()
    }

    /// Maps this load found pinned but not matching the object, and recreated.
    pub fn retired_maps(&self) -> &[RetiredMap] {
        &self.retired
    }

    /// Replaces the program of every deferred attachment with this load's (the caller has filled
    /// the maps), then removes older versions' pins: their remaining links are detached, their
    /// maps freed once no program uses them.
    pub fn finish_takeover(&mut self) -> Result<TakeoverReport> {
        let mut report = TakeoverReport::default();
        for p in std::mem::take(&mut self.pending) {
            if !p.from.exists() {
                continue; // detached meanwhile (DEL)
            }
            self.update_link(&p.from, &p.to, p.program)?;
            report.replaced += 1;
        }
        self.maps_inherited = true;
        // A directory leaves `older` only once removed: a failure is retried by the next call.
        while let Some(dir) = self.older.first().cloned() {
            if let Ok(rd) = std::fs::read_dir(dir.join("links")) {
                for e in rd.flatten() {
                    remove_file(&e.path())?;
                    report.detached += 1;
                }
            }
            std::fs::remove_dir_all(&dir).map_err(|source| Error::Io { op: "removing", path: dir.clone(), source })?;
            report.versions_removed.push(dir.file_name().unwrap_or_default().to_string_lossy().into_owned());
            self.older.remove(0);
        }
        Ok(report)
    }

    /// Points the link pinned at `from` at this load's `program`, and pins it at `to`.
    fn update_link(&mut self, from: &Path, to: &Path, program: &'static str) -> Result<()> {
        let prog = self.ebpf.program(program).ok_or(Error::MissingProgram { name: program })?;
        let prog_fd = prog.fd().map_err(|source| Error::Program { name: program, source: Box::new(source) })?;
        let link = sys::obj_get(from).map_err(|source| Error::Io {
            op: "opening pinned link",
            path: from.to_owned(),
            source,
        })?;
        use std::os::fd::AsFd as _;
        sys::link_update(link.as_fd(), prog_fd.as_fd()).map_err(|source| Error::Io {
            op: "updating the program of link",
            path: from.to_owned(),
            source,
        })?;
        if from != to {
            let pinned = PinnedLink::from_pin(from)
                .map_err(|e| Error::Pin { path: from.to_owned(), message: crate::chain(&e) })?;
            FdLink::from(pinned).pin(to).map_err(|e| Error::Pin { path: to.to_owned(), message: crate::chain(&e) })?;
            std::fs::remove_file(from).map_err(|source| Error::Io {
                op: "unpinning",
                path: from.to_owned(),
                source,
            })?;
        }
        Ok(())
    }
}

fn remove_file(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::Io { op: "removing", path: p.to_owned(), source: e })
        }
        _ => Ok(()),
    }
}

/// The two bpf(2) commands aya 0.14 does not offer for every link type: it updates tc and XDP
/// links but not cgroup ones, and keeps a link's descriptor private.
mod sys {
    use super::*;

    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_UPDATE: libc::c_long = 29;

    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }

    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }

    /// A descriptor of the object pinned at `path`.
    pub(super) fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
        use std::os::unix::ffi::OsStrExt as _;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let attr = ObjGet { pathname: c.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, _pad: 0 };
        // SAFETY: `attr` is a valid BPF_OBJ_GET attribute whose path outlives the call; on
        // success the kernel returns a new descriptor that we own.
        let fd =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &attr as *const ObjGet, std::mem::size_of::<ObjGet>()) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor from the kernel, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Replaces the program of `link` with `prog` (BPF_LINK_UPDATE, no expected old program).
    pub(super) fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> std::io::Result<()> {
        let attr = LinkUpdate {
            link_fd: link.as_raw_fd() as u32,
            new_prog_fd: prog.as_raw_fd() as u32,
            flags: 0,
            old_prog_fd: 0,
        };
        // SAFETY: `attr` is a valid BPF_LINK_UPDATE attribute; both descriptors are borrowed for
        // the call.
        let r = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_LINK_UPDATE, &attr as *const LinkUpdate, std::mem::size_of::<LinkUpdate>())
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
