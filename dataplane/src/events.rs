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
        self.for_each(|e| out.push(e.to_owned()));
        out
    }

    /// Hands every event available now to `f`, read where it lies in the ring (no copy of a
    /// payload's 512 bytes, no allocation): the record is given back to the kernel when `f`
    /// returns. Returns how many were handed. Records of another size are skipped and counted.
    pub fn for_each(&mut self, mut f: impl FnMut(EventRef<'_>)) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            match EventRef::decode(&item) {
                Some(e) => {
                    f(e);
                    n += 1;
                }
                None => self.undecodable += 1,
            }
        }
        n
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

/// One record of the ring buffer, borrowed where it lies ([`Events::for_each`]) or from an
/// [`Event`]. Lengths inside a payload or exec record are as the kernel wrote them: readers
/// bound them by the arrays they index.
#[derive(Clone, Copy, Debug)]
pub enum EventRef<'a> {
    Flow(&'a DatapathEvent),
    Payload(&'a PayloadEvent),
    Exec(&'a ExecEvent),
}

/// The ring's record types: `repr(C)` plain data (integers and byte arrays), for which every bit
/// pattern is a valid value.
///
/// # Safety
/// Only for such types.
unsafe trait Record {}
// SAFETY: repr(C) structs of integers and byte arrays (weir-bpf-common, checked by its ABI tests).
unsafe impl Record for DatapathEvent {}
// SAFETY: as above.
unsafe impl Record for PayloadEvent {}
// SAFETY: as above.
unsafe impl Record for ExecEvent {}

/// `item` as a `T` in place: a record of exactly `T`'s size, aligned for it (ring-buffer records
/// are 8-byte aligned).
fn view<T: Record>(item: &[u8]) -> Option<&T> {
    if item.len() != size_of::<T>() || !item.as_ptr().cast::<T>().is_aligned() {
        return None;
    }
    // SAFETY: size and alignment checked above; T is plain data (Record: every bit pattern
    // valid), and the record is not written while it is borrowed (the kernel has
    // submitted it and does not reuse its space before the reader gives it back).
    Some(unsafe { &*item.as_ptr().cast::<T>() })
}

impl<'a> EventRef<'a> {
    /// Reads a record in place; `None` for a size no event of this ABI has. A record that is
    /// not aligned (never, from the kernel's ring) is not read in place either: `None`.
    pub fn decode(item: &'a [u8]) -> Option<Self> {
        if let Some(e) = view::<DatapathEvent>(item) {
            return Some(Self::Flow(e));
        }
        if let Some(e) = view::<PayloadEvent>(item) {
            return Some(Self::Payload(e));
        }
        view::<ExecEvent>(item).map(Self::Exec)
    }

    /// An owned copy, with its lengths bounded as [`Event::decode`] bounds them.
    pub fn to_owned(self) -> Event {
        match self {
            Self::Flow(e) => Event::Flow(*e),
            Self::Payload(e) => Event::Payload(Box::new(*e)),
            Self::Exec(e) => Event::Exec(Box::new(*e)),
        }
        .bounded()
    }
}

/// `item` copied out as a `T`: a record of exactly `T`'s size, at any alignment.
fn read<T: Record>(item: &[u8]) -> Option<T> {
    // SAFETY: the size is checked; T is plain data (Record: every bit pattern valid); the read
    // is unaligned-safe.
    (item.len() == size_of::<T>()).then(|| unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) })
}

impl Event {
    /// The event borrowed.
    pub fn as_ref(&self) -> EventRef<'_> {
        match self {
            Self::Flow(e) => EventRef::Flow(e),
            Self::Payload(e) => EventRef::Payload(e),
            Self::Exec(e) => EventRef::Exec(e),
        }
    }

    /// Reads a record; `None` for a size no event of this ABI has.
    pub fn decode(item: &[u8]) -> Option<Self> {
        let e = if let Some(e) = read::<DatapathEvent>(item) {
            Self::Flow(e)
        } else if let Some(e) = read::<PayloadEvent>(item) {
            Self::Payload(Box::new(e))
        } else {
            Self::Exec(Box::new(read::<ExecEvent>(item)?))
        };
        Some(e.bounded())
    }

    /// The event with the lengths it carries bounded by the arrays they index.
    fn bounded(mut self) -> Self {
        match &mut self {
            Self::Flow(_) => {}
            Self::Payload(e) => e.len = e.len.min(e.data.len() as u16),
            Self::Exec(e) => {
                e.filename_len = e.filename_len.min(e.filename.len() as u16);
                e.args_len = e.args_len.min(e.args.len() as u16);
            }
        }
        self
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

    #[test]
    fn records_are_read_in_place_when_aligned() {
        // u64 words: 8-byte aligned, as the ring's records are.
        let words = vec![0u64; size_of::<PayloadEvent>() / 8 + 1];
        // SAFETY: the byte view of a live Vec<u64>, within its length.
        let bytes = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 8) };
        let aligned = &bytes[..size_of::<PayloadEvent>()];
        assert!(matches!(EventRef::decode(aligned), Some(EventRef::Payload(_))));
        assert!(matches!(EventRef::decode(&bytes[..size_of::<DatapathEvent>()]), Some(EventRef::Flow(_))));
        // Misaligned or of an unknown size: not read in place.
        assert!(EventRef::decode(&bytes[1..=size_of::<DatapathEvent>()]).is_none());
        assert!(EventRef::decode(&bytes[..size_of::<DatapathEvent>() - 8]).is_none());
        // The owned copy bounds a length the kernel could have written too large.
        let mut p = PayloadEvent::with_data(DatapathEvent::default(), true, b"GET / HTTP/1.1\r\n\r\n");
        p.len = u16::MAX;
        let Event::Payload(owned) = EventRef::Payload(&p).to_owned() else { panic!("payload") };
        assert_eq!(usize::from(owned.len), owned.data.len());
    }
}
