//! Typed map wrappers, one file per map, each implementing [`KeyValueMap`] for the kernel map
//! and for an in-memory fake (so reconcile logic is tested without root).
use std::collections::BTreeMap;

pub mod endpoints;
pub mod nodes;
pub mod policy;
pub mod services;
pub mod tunnel;

pub use endpoints::{Endpoints, FakeEndpoints};
pub use nodes::Nodes;
pub use policy::{Ipcache, PolicyEndpoints, PolicyEntries, PolicyEntry};
pub use services::{Backends, Maglev, Services};
pub use tunnel::{Cidr, FakeTunnel, Tunnel};

/// A kernel map as reconcile sees it: list everything, insert or replace, remove.
pub trait KeyValueMap {
    type Key: Ord + Copy + std::fmt::Debug;
    type Value: PartialEq + Copy + std::fmt::Debug;
    fn list(&self) -> crate::Result<BTreeMap<Self::Key, Self::Value>>;
    fn upsert(&mut self, key: Self::Key, value: Self::Value) -> crate::Result<()>;
    /// Removing an absent key is not an error.
    fn remove(&mut self, key: Self::Key) -> crate::Result<()>;
    /// How many entries the map holds at most, when the writer should plan for it.
    fn capacity(&self) -> Option<u32> {
        None
    }
}

/// An in-memory map for reconcile tests; `fail_writes` makes every write fail as a full map
/// would.
#[derive(Debug)]
pub struct FakeMap<K, V> {
    pub entries: BTreeMap<K, V>,
    pub fail_writes: bool,
    /// Reported capacity; an insert beyond it fails as a full kernel map does.
    pub capacity: Option<u32>,
}

impl<K, V> Default for FakeMap<K, V> {
    fn default() -> Self {
        Self { entries: BTreeMap::new(), fail_writes: false, capacity: None }
    }
}

impl<K: Ord + Copy + std::fmt::Debug, V: PartialEq + Copy + std::fmt::Debug> KeyValueMap for FakeMap<K, V> {
    type Key = K;
    type Value = V;

    fn list(&self) -> crate::Result<BTreeMap<K, V>> {
        Ok(self.entries.clone())
    }
    fn upsert(&mut self, key: K, value: V) -> crate::Result<()> {
        let full = self.capacity.is_some_and(|c| self.entries.len() >= c as usize && !self.entries.contains_key(&key));
        if self.fail_writes || full {
            return Err(crate::Error::MapFull { name: "fake", capacity: self.capacity.unwrap_or(0) });
        }
        self.entries.insert(key, value);
        Ok(())
    }
    fn remove(&mut self, key: K) -> crate::Result<()> {
        if self.fail_writes {
            return Err(crate::Error::MapFull { name: "fake", capacity: 0 });
        }
        self.entries.remove(&key);
        Ok(())
    }
    fn capacity(&self) -> Option<u32> {
        self.capacity
    }
}

/// A map write's error: "full" (E2BIG) named as such, anything else as a map error.
pub(crate) fn write_err(name: &'static str, capacity: u32) -> impl FnOnce(aya::maps::MapError) -> crate::Error {
    move |e| match &e {
        aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
            crate::Error::MapFull { name, capacity }
        }
        _ => crate::map_err(name)(e),
    }
}

/// A removal's outcome: an absent key is success.
pub(crate) fn removed(name: &'static str, r: Result<(), aya::maps::MapError>) -> crate::Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(crate::map_err(name)(e)),
    }
}

/// What [`sync`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub upserted: usize,
    pub removed: usize,
}

/// Makes `map` hold exactly `want`, writing only the differences (idempotent: a second call
/// changes nothing).
pub fn sync<M: KeyValueMap>(map: &mut M, want: &BTreeMap<M::Key, M::Value>) -> crate::Result<Changes> {
    let have = map.list()?;
    sync_from(map, &have, want)
}

/// [`sync`] for a writer that knows what the map holds (`have`) without reading it back.
pub fn sync_from<M: KeyValueMap>(
    map: &mut M,
    have: &BTreeMap<M::Key, M::Value>,
    want: &BTreeMap<M::Key, M::Value>,
) -> crate::Result<Changes> {
    let mut c = Changes::default();
    for k in have.keys().filter(|k| !want.contains_key(k)) {
        map.remove(*k)?;
        c.removed += 1;
    }
    for (k, v) in want {
        if have.get(k) != Some(v) {
            map.upsert(*k, *v)?;
            c.upserted += 1;
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use weir_bpf_common::{sizes, EndpointInfo};

    use super::*;

    fn info(ifindex: u32) -> EndpointInfo {
        EndpointInfo { ifindex, flags: 0, pod_mac: [2, 0, 0, 0, 0, 1], host_mac: [2, 0, 0, 0, 0, 2], _pad: [0; 4] }
    }

    #[test]
    fn sync_converges_and_is_idempotent() {
        let mut map = FakeEndpoints::default();
        map.upsert(Ipv4Addr::new(10, 0, 0, 9), info(9)).expect("stale");
        map.upsert(Ipv4Addr::new(10, 0, 0, 2), info(1)).expect("outdated");
        let want: BTreeMap<_, _> =
            [(Ipv4Addr::new(10, 0, 0, 2), info(2)), (Ipv4Addr::new(10, 0, 0, 3), info(3))].into_iter().collect();
        assert_eq!(sync(&mut map, &want).expect("sync"), Changes { upserted: 2, removed: 1 });
        assert_eq!(map.list().expect("list"), want);
        assert_eq!(sync(&mut map, &want).expect("again"), Changes::default(), "second pass writes nothing");
    }

    #[test]
    fn tunnel_sync_and_capacity() {
        let mut map = FakeTunnel::default();
        let want: BTreeMap<Cidr, Ipv4Addr> =
            (1..=3u8).map(|i| ((Ipv4Addr::new(10, 244, i, 0), 24), Ipv4Addr::new(172, 30, 0, 10 + i))).collect();
        assert_eq!(sync(&mut map, &want).expect("sync").upserted, 3);
        assert_eq!(sync(&mut map, &BTreeMap::new()).expect("empty").removed, 3);
        let too_many: BTreeMap<Cidr, Ipv4Addr> = (0..=sizes::TUNNEL)
            .map(|i| ((Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24), Ipv4Addr::new(172, 30, 0, 1)))
            .collect();
        let err = sync(&mut map, &too_many).expect_err("over capacity");
        assert!(matches!(err, crate::Error::MapFull { .. }), "{err}");
    }
}
