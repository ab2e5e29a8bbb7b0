//! cgroup attachment of the socket-level Service programs and the bind reporter, with pinned links
//! (`<pin_dir>/links/<program>-cgroup`): they keep translating while the agent is down, and a
//! restarted or upgraded agent takes them over (link update) instead of attaching again.
use std::path::Path;

use aya::programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr};
use weir_bpf_common::programs;

use crate::{tcx::Attachment, Datapath, Error, Result};

impl Datapath {
    /// Attaches every socket program to the cgroup v2 directory `cgroup` (all pods below it).
    /// Returns what happened to the last program (all six are treated alike).
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<Attachment> {
        let mut outcome = Attachment::Attached;
        for name in programs::SOCK.into_iter().chain(programs::SOCK_BIND) {
            let pin_name = format!("{name}-cgroup");
            let pin = self.pin_dir.join("links").join(&pin_name);
            if let Some(existing) = self.existing_pins(&pin_name).into_iter().next() {
                outcome = self.take_over(existing, pin, name)?;
                continue;
            }
            outcome = Attachment::Attached;
            let dir = open_cgroup(cgroup)?;
            let attach_err =
                |source| Error::Attach { program: name, iface: cgroup.display().to_string(), source: Box::new(source) };
            let prog = self.ebpf.program_mut(name).ok_or(Error::MissingProgram { name })?;
            let program_err = |source| Error::Program { name, source: Box::new(source) };
            // With BPF links the kernel always allows several programs; link_create rejects any flag.
            if programs::SOCK_BIND.contains(&name) {
                let prog: &mut CgroupSock = prog.try_into().map_err(program_err)?;
                let id = prog.attach(&dir, CgroupAttachMode::Single).map_err(attach_err)?;
                crate::pin_link(prog.take_link(id).map_err(attach_err)?, &pin)?;
            } else {
                let prog: &mut CgroupSockAddr = prog.try_into().map_err(program_err)?;
                let id = prog.attach(&dir, CgroupAttachMode::Single).map_err(attach_err)?;
                crate::pin_link(prog.take_link(id).map_err(attach_err)?, &pin)?;
            }
        }
        Ok(outcome)
    }
}

/// A cgroup v2 directory opened for attaching programs to it or naming it in a map.
pub(crate) fn open_cgroup(cgroup: &Path) -> Result<std::fs::File> {
    std::fs::File::open(cgroup).map_err(|source| Error::Io { op: "opening cgroup", path: cgroup.to_owned(), source })
}
