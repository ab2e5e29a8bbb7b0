//! `WEIR_EVENTS`: the datapath's ring buffer of events (drops, flow reports, DNS and HTTP messages, execs). The reader is
//! readiness-driven: poll the fd (it implements `AsFd`), then [`Events::drain`].
use std::os::fd::{AsFd, BorrowedFd};

use aya::maps::{MapData, RingBuf};
use weir_bpf_common::{maps, DatapathEvent, ExecEvent, PayloadEvent};

use crate::{map_err, Datapath, Result};

const NAME: &str = maps::EVENTS;

pub struct Events {
    ring: RingBuf<MapData>,
    /// Records of a size this build does not know, skipped (programs of another build still
    /// writing to the ring, as during an upgrade's takeover).
    undecodable: u64,
}

impl Events {
    pub fn open(dp: &mut Datapath) -> Result<Self> {
        let map = dp.take_map(NAME)?;
        Ok(Self { ring: RingBuf::try_from(map).map_err(map_err(NAME))?, undecodable: 0 })
    }

    /// Every event available now. Records of another size (another build's) are skipped and
    /// counted ([`Events::undecodable`]).
    pub fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            match Event::decode(&item) {
                Some(e) => out.push(e),
                None => self.undecodable += 1,
            }
        }
        out
    }

    /// Records skipped since the ring was opened because no event of this build has their size.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }
}

/// One record of the ring buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A drop or a flow report.
    Flow(DatapathEvent),
    /// The start of a DNS or HTTP message and the packet that carried it (`event.kind` says
    /// which).
    Payload(Box<PayloadEvent>),
    /// A program started in a pod (the exec audit).
    Exec(Box<ExecEvent>),
}

impl Event {
    /// Reads a record; `None` for a size no event of this ABI has.
    pub fn decode(item: &[u8]) -> Option<Self> {
        if item.len() == size_of::<DatapathEvent>() {
            // SAFETY: DatapathEvent is repr(C) plain data of exactly this size; the read is
            // unaligned-safe.
            return Some(Self::Flow(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DatapathEvent>()) }));
        }
        if item.len() == size_of::<PayloadEvent>() {
            // SAFETY: as above, for PayloadEvent.
            let mut e = Box::new(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<PayloadEvent>()) });
            e.len = e.len.min(e.data.len() as u16);
            return Some(Self::Payload(e));
        }
        if item.len() == size_of::<ExecEvent>() {
            // SAFETY: as above, for ExecEvent.
            let mut e = Box::new(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ExecEvent>()) });
            e.filename_len = e.filename_len.min(e.filename.len() as u16);
            e.args_len = e.args_len.min(e.args.len() as u16);
            return Some(Self::Exec(e));
        }
        None
    }
}

impl AsFd for Events {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_another_size_are_not_read() {
        for size in [size_of::<DatapathEvent>(), size_of::<PayloadEvent>(), size_of::<ExecEvent>()] {
            assert!(Event::decode(&vec![0; size]).is_some(), "{size}");
            // A record of the previous layout, or of a later one.
            assert!(Event::decode(&vec![0; size - 8]).is_none(), "{size}");
            assert!(Event::decode(&vec![0; size + 8]).is_none(), "{size}");
        }
    }
}
