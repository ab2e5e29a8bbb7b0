//! The Service maps: `WEIR_SERVICES` (frontend → how it is served and which backend set),
//! `WEIR_BACKENDS` (set and slot → backend address) and `WEIR_MAGLEV` (per-packet frontend →
//! its Maglev table).
use std::collections::BTreeMap;

use aya::maps::{HashMap, MapData};
use weir_bpf_common::{maps, sizes, BackendAddr, BackendKey, MaglevTable, ServiceKey, ServiceValue};

use super::{removed, write_err, KeyValueMap};
use crate::{map_err, Datapath, Result};

/// A kernel hash map with typed keys and values.
pub struct HashKv<K, V> {
    map: HashMap<MapData, K, V>,
    name: &'static str,
    capacity: u32,
}

pub type Services = HashKv<ServiceKey, ServiceValue>;
pub type Backends = HashKv<BackendKey, BackendAddr>;
pub type Maglev = HashKv<ServiceKey, MaglevTable>;

impl<K: aya::Pod, V: aya::Pod> HashKv<K, V> {
    fn open_named(dp: &mut Datapath, name: &'static str, capacity: u32) -> Result<Self> {
        let map = dp.take_map(name)?;
        Ok(Self { map: HashMap::try_from(map).map_err(map_err(name))?, name, capacity })
    }
}

impl Services {
    pub fn open(dp: &mut Datapath) -> Result<Self> {
        Self::open_named(dp, maps::SERVICES, sizes::SERVICES)
    }
}

impl Backends {
    pub fn open(dp: &mut Datapath) -> Result<Self> {
        Self::open_named(dp, maps::BACKENDS, sizes::BACKENDS)
    }
}

impl Maglev {
    pub fn open(dp: &mut Datapath) -> Result<Self> {
        Self::open_named(dp, maps::MAGLEV, sizes::MAGLEV)
    }
}

impl<K, V> KeyValueMap for HashKv<K, V>
where
    K: aya::Pod + Ord + std::fmt::Debug,
    V: aya::Pod + PartialEq + std::fmt::Debug,
{
    type Key = K;
    type Value = V;

    fn list(&self) -> Result<BTreeMap<K, V>> {
        let mut out = BTreeMap::new();
        for item in self.map.iter() {
            let (k, v) = item.map_err(map_err(self.name))?;
            out.insert(k, v);
        }
        Ok(out)
    }
    fn upsert(&mut self, key: K, value: V) -> Result<()> {
        self.map.insert(key, value, 0).map_err(write_err(self.name, self.capacity))
    }
    fn remove(&mut self, key: K) -> Result<()> {
        removed(self.name, self.map.remove(&key))
    }
    fn capacity(&self) -> Option<u32> {
        Some(self.capacity)
    }
}
