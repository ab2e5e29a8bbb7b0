//! BPF_PROG_TEST_RUN for datapath tests: run a loaded program on a crafted frame.
use aya::programs::{TestRun, TestRunOptions};

use crate::{Datapath, Error, Result};

/// What a program did with a frame.
#[derive(Debug)]
pub struct RunResult {
    /// The tc action (TC_ACT_OK = 0, TC_ACT_SHOT = 2, TC_ACT_REDIRECT = 7).
    pub action: u32,
    /// The frame after the program ran.
    pub frame: Vec<u8>,
}

impl Datapath {
    /// Runs `program` once on `frame` (an Ethernet frame) in the caller's network namespace.
    pub fn test_run(&mut self, program: &'static str, frame: &[u8]) -> Result<RunResult> {
        self.test_run_repeat(program, frame, 1).map(|(r, _)| r)
    }

    /// Runs `program` `repeat` times on `frame`; also returns the kernel's mean time per run.
    pub fn test_run_repeat(
        &mut self,
        program: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(RunResult, std::time::Duration)> {
        let prog = self.classifier(program)?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat.max(1);
        let res = prog.test_run(opts).map_err(|source| Error::Program { name: program, source: Box::new(source) })?;
        out.truncate(res.data_size_out as usize);
        Ok((RunResult { action: res.return_value, frame: out }, res.duration))
    }
}
