//! `WEIR_EVENTS`: the datapath's ring buffer of events (drops today). The reader is
//! readiness-driven: poll the fd (it implements `AsFd`), then [`Events::drain`].
use std::os::fd::{AsFd, BorrowedFd};

use aya::maps::{MapData, RingBuf};
use weir_bpf_common::{maps, DatapathEvent};

use crate::{map_err, Datapath, Result};

const NAME: &str = maps::EVENTS;

pub struct Events(RingBuf<MapData>);

impl Events {
    pub fn open(dp: &mut Datapath) -> Result<Self> {
        let map = dp.take_map(NAME)?;
        Ok(Self(RingBuf::try_from(map).map_err(map_err(NAME))?))
    }

    /// Every event available now. Records of the wrong size (a newer ABI) are skipped.
    pub fn drain(&mut self) -> Vec<DatapathEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.0.next() {
            if item.len() == size_of::<DatapathEvent>() {
                // SAFETY: DatapathEvent is repr(C) plain data of exactly this size; the read is
                // unaligned-safe.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DatapathEvent>()) });
            }
        }
        out
    }
}

impl AsFd for Events {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
