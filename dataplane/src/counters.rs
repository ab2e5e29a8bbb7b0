//! `WEIR_COUNTERS`: per-CPU drop and forwarding counters, summed over CPUs.
use aya::maps::{MapData, PerCpuArray};
use weir_bpf_common::{counters, maps, DropReason};

use crate::{map_err, Datapath, Result};

const NAME: &str = maps::COUNTERS;

pub struct Counters(PerCpuArray<MapData, u64>);

/// A snapshot of the datapath counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub drops: Vec<(DropReason, u64)>,
    pub events_lost: u64,
    pub forwarded_local: u64,
    pub forwarded_remote: u64,
    pub masqueraded: u64,
    pub to_stack: u64,
    pub lb_translated: u64,
    pub lb_no_backend: u64,
    /// Packets the node's stack delivered into pods that their ingress policy let through.
    pub from_stack: u64,
}

impl Counters {
    pub fn open(dp: &mut Datapath) -> Result<Self> {
        let map = dp.take_map(NAME)?;
        Ok(Self(PerCpuArray::try_from(map).map_err(map_err(NAME))?))
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        snapshot_of(&self.0)
    }
}

/// Sums every counter of `map` over CPUs.
pub(crate) fn snapshot_of(map: &PerCpuArray<MapData, u64>) -> Result<Snapshot> {
    let sum = |index: u32| -> Result<u64> { Ok(map.get(&index, 0).map_err(map_err(NAME))?.iter().sum()) };
    let mut drops = Vec::new();
    for r in DropReason::ALL {
        drops.push((*r, sum(*r as u32)?));
    }
    Ok(Snapshot {
        drops,
        events_lost: sum(counters::EVENTS_LOST)?,
        forwarded_local: sum(counters::FORWARDED_LOCAL)?,
        forwarded_remote: sum(counters::FORWARDED_REMOTE)?,
        masqueraded: sum(counters::MASQUERADED)?,
        to_stack: sum(counters::TO_STACK)?,
        lb_translated: sum(counters::LB_TRANSLATED)?,
        lb_no_backend: sum(counters::LB_NO_BACKEND)?,
        from_stack: sum(counters::FROM_STACK)?,
    })
}

impl Snapshot {
    /// The forwarding outcomes by the names metrics and the CLI show (drops are by reason).
    pub fn outcomes(&self) -> [(&'static str, u64); 7] {
        [
            ("forwarded_local", self.forwarded_local),
            ("forwarded_remote", self.forwarded_remote),
            ("masqueraded", self.masqueraded),
            ("to_stack", self.to_stack),
            ("lb_translated", self.lb_translated),
            ("lb_no_backend", self.lb_no_backend),
            ("from_stack", self.from_stack),
        ]
    }
}
