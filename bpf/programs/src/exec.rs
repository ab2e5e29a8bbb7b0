//! Exec audit: every program a process in this node's pods starts (`sched_process_exec`, a
//! BTF tracepoint: it runs in the new program's own context, after the exec succeeded).
//!
//! The record (`ExecEvent` on `WEIR_EVENTS`) holds the process (pid, parent pid, uid, command
//! name), its cgroup (the agent turns it into the pod), the path it executed and the start of its
//! argument list. Kernel struct fields are read at the offsets the agent found in the running
//! kernel's BTF (load-time globals): Rust eBPF has no CO-RE relocations. Only processes in the
//! node's pod cgroup or below it (`WEIR_EXEC_CGROUP`, checked by the entry point) are recorded;
//! a record that does not fit the ring buffer is counted as lost, like every event.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_kernel,
        generated::{bpf_get_current_cgroup_id, bpf_probe_read_kernel_str, bpf_probe_read_user},
    },
    programs::BtfTracePointContext,
    Global,
};
use weir_bpf_common::{counters, ExecEvent, EVENT_EXEC, EXEC_ARGS, EXEC_FILENAME};

use crate::{counter, flow::submit_flags, WEIR_EVENTS};

/// Byte offsets of the kernel fields read, from the running kernel's BTF (set by the loader).
#[unsafe(no_mangle)]
static WEIR_OFF_BPRM_FILENAME: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static WEIR_OFF_TASK_REAL_PARENT: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static WEIR_OFF_TASK_TGID: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static WEIR_OFF_TASK_MM: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static WEIR_OFF_MM_ARG_START: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static WEIR_OFF_MM_ARG_END: Global<u32> = Global::new(0);

/// A kernel pointer-sized field at `base + off` (0 when it cannot be read).
#[inline(always)]
fn read_u64(base: u64, off: u32) -> u64 {
    // SAFETY: bpf_probe_read_kernel checks the address; a fault reads as an error.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const u64) }.unwrap_or(0)
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`: the
/// record of the exec that just succeeded.
#[inline(always)]
pub fn record(ctx: &BtfTracePointContext) {
    let task: u64 = ctx.arg(0);
    let bprm: u64 = ctx.arg(2);
    let Some(mut slot) = WEIR_EVENTS.reserve::<ExecEvent>(0) else {
        counter::count(counters::EVENTS_LOST);
        return;
    };
    let p = slot.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let parent = read_u64(task, WEIR_OFF_TASK_REAL_PARENT.load());
    let ppid = read_u64(parent, WEIR_OFF_TASK_TGID.load()) as u32;
    let mm = read_u64(task, WEIR_OFF_TASK_MM.load());
    let (start, end) = (read_u64(mm, WEIR_OFF_MM_ARG_START.load()), read_u64(mm, WEIR_OFF_MM_ARG_END.load()));
    let filename = read_u64(bprm, WEIR_OFF_BPRM_FILENAME.load());
    // SAFETY: `p` is the reserved record, sized for an ExecEvent, ours until submitted; the
    // helpers write at most the sizes given, which are the arrays' own.
    unsafe {
        (*p).ktime_ns = bpf_ktime_get_ns();
        (*p).cgroup_id = bpf_get_current_cgroup_id();
        (*p).tgid = (pid_tgid >> 32) as u32;
        (*p).ppid = ppid;
        (*p).uid = bpf_get_current_uid_gid() as u32;
        (*p).kind = EVENT_EXEC;
        (*p)._pad = [0; 3];
        (*p).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let n = bpf_probe_read_kernel_str(
            (*p).filename.as_mut_ptr().cast(),
            EXEC_FILENAME as u32,
            filename as *const core::ffi::c_void,
        );
        // The length without its NUL; 0 when it could not be read.
        (*p).filename_len = if n > 0 { (n - 1) as u16 } else { 0 };
        let total = end.saturating_sub(start);
        (*p).args_total = total.min(u64::from(u32::MAX)) as u32;
        let mut want = total as usize;
        if want > EXEC_ARGS {
            want = EXEC_ARGS;
        }
        (*p).args_len = 0;
        if want > 0 {
            // 1..=EXEC_ARGS in a form the verifier can follow (a power of two).
            let want = ((want - 1) & (EXEC_ARGS - 1)) + 1;
            if bpf_probe_read_user((*p).args.as_mut_ptr().cast(), want as u32, start as *const core::ffi::c_void) == 0 {
                (*p).args_len = want as u16;
            }
        }
    }
    slot.submit(submit_flags(core::mem::size_of::<ExecEvent>()));
}
