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

    fn sum(&self, index: u32) -> Result<u64> {
        Ok(self.0.get(&index, 0).map_err(map_err(NAME))?.iter().sum())
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        let mut drops = Vec::new();
        for r in DropReason::ALL {
            drops.push((*r, self.sum(*r as u32)?));
        }
        Ok(Snapshot {
            drops,
            events_lost: self.sum(counters::EVENTS_LOST)?,
            forwarded_local: self.sum(counters::FORWARDED_LOCAL)?,
            forwarded_remote: self.sum(counters::FORWARDED_REMOTE)?,
            masqueraded: self.sum(counters::MASQUERADED)?,
            to_stack: self.sum(counters::TO_STACK)?,
            lb_translated: self.sum(counters::LB_TRANSLATED)?,
            lb_no_backend: self.sum(counters::LB_NO_BACKEND)?,
            from_stack: self.sum(counters::FROM_STACK)?,
        })
    }
}
