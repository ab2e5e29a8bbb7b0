//! The exec audit's attachment: `weir_exec` on the `sched_process_exec` BTF tracepoint, limited
//! to the processes in one cgroup tree (the node's pods). Unlike the packet programs it is not
//! pinned: it records for the agent that reads the records, and stops with it (its link and the
//! cgroup handle are owned by [`ExecAudit`]; dropping it detaches).
use std::path::Path;

use aya::programs::{links::FdLink, BtfTracePoint};
use weir_bpf_common::{programs, EXEC_CGROUP_MAP};

use crate::{Datapath, Error, Result};

/// The attached exec audit; dropping it detaches the program.
pub struct ExecAudit {
    _link: FdLink,
}

impl Datapath {
    /// Attaches the exec audit for processes in `cgroup` (a cgroup v2 directory) and below.
    /// Fails, naming why, when the running kernel's BTF lacked a field it reads (the loader
    /// looked them up) or the tracepoint cannot be attached.
    pub fn attach_exec(&mut self, cgroup: &Path) -> Result<ExecAudit> {
        let name = programs::EXEC;
        if let Err(reason) = &self.exec_offsets {
            return Err(Error::ExecAudit { reason: reason.clone() });
        }
        let dir = crate::cgroup::open_cgroup(cgroup)?;
        let map = self.ebpf.map_mut(EXEC_CGROUP_MAP).ok_or(Error::MissingMap { name: EXEC_CGROUP_MAP })?;
        let mut slot: aya::maps::CgroupArray<_> =
            aya::maps::CgroupArray::try_from(map).map_err(crate::map_err(EXEC_CGROUP_MAP))?;
        slot.set(0, std::os::fd::AsFd::as_fd(&dir), 0).map_err(crate::map_err(EXEC_CGROUP_MAP))?;
        let btf = aya::Btf::from_sys_fs().map_err(|e| Error::ExecAudit { reason: format!("the kernel's BTF: {e}") })?;
        let attach_err = |source| Error::Attach {
            program: name,
            iface: programs::EXEC_TRACEPOINT.to_owned(),
            source: Box::new(source),
        };
        let prog: &mut BtfTracePoint = self
            .ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram { name })?
            .try_into()
            .map_err(|source| Error::Program { name, source: Box::new(source) })?;
        prog.load(programs::EXEC_TRACEPOINT, &btf)
            .map_err(|source| Error::Program { name, source: Box::new(source) })?;
        let id = prog.attach().map_err(attach_err)?;
        let link: FdLink = prog.take_link(id).map_err(attach_err)?.into();
        Ok(ExecAudit { _link: link })
    }
}

/// Turns on the kernel's run-time statistics of every BPF program while the returned descriptor
/// is open (`BPF_ENABLE_STATS`; nothing global is left changed).
pub fn enable_run_stats() -> Result<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| Error::ExecAudit { reason: format!("enabling run-time statistics: {e}") })
}

impl Datapath {
    /// Total run time and run count of the exec audit program so far (with statistics on).
    pub fn exec_run_stats(&self) -> Result<(std::time::Duration, u64)> {
        let name = programs::EXEC;
        let prog = self.ebpf.program(name).ok_or(Error::MissingProgram { name })?;
        let info = prog.info().map_err(|source| Error::Program { name, source: Box::new(source) })?;
        Ok((info.run_time(), info.run_count()))
    }
}

/// The offsets of the kernel fields `weir_exec` reads, as (global name, offset), from the
/// running kernel's BTF; an error names the first one missing.
pub(crate) fn kernel_offsets() -> std::result::Result<Vec<(&'static str, u32)>, String> {
    use weir_bpf_common::globals as g;
    let btf = crate::btf::Btf::from_kernel()
        .map_err(|e| format!("reading /sys/kernel/btf/vmlinux: {e}"))?
        .map_err(|e| e.to_string())?;
    [
        (g::OFF_BPRM_FILENAME, "linux_binprm", "filename"),
        (g::OFF_TASK_REAL_PARENT, "task_struct", "real_parent"),
        (g::OFF_TASK_TGID, "task_struct", "tgid"),
        (g::OFF_TASK_MM, "task_struct", "mm"),
        (g::OFF_MM_ARG_START, "mm_struct", "arg_start"),
        (g::OFF_MM_ARG_END, "mm_struct", "arg_end"),
    ]
    .into_iter()
    .map(|(global, s, m)| btf.member_offset(s, m).map(|off| (global, off)).map_err(|e| e.to_string()))
    .collect()
}
