//! `WEIR_EVENTS`: the datapath's ring buffer of events (drops, flow reports, DNS and HTTP messages, execs). The reader is
//! readiness-driven: poll the fd (it implements `AsFd`), then [`Events::drain`].
use std::os::fd::{AsFd, BorrowedFd};

use aya::maps::{MapData, RingBuf};
use weir_bpf_common::{maps, DatapathEvent, ExecEvent, PayloadEvent};

use crate::{map_err, Datapath, Result};

const NAME: &str = maps::EVENTS;

pub struct Events(RingBuf<MapData>);

impl Events {
    pub fn open(dp: &mut Datapath) -> Result<Self> {
        let map = dp.take_map(NAME)?;
        Ok(Self(RingBuf::try_from(map).map_err(map_err(NAME))?))
    }

    /// Every event available now. Records of another size (a newer ABI) are skipped.
    pub fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.0.next() {
            if let Some(e) = Event::decode(&item) {
                out.push(e);
            }
        }
        out
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
        self.0.as_fd()
    }
}
