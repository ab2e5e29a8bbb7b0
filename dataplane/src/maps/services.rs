//! `WEIR_SERVICES`: Service frontend → its backends, inline (one map update per frontend, so a
//! frontend is never seen half-written); `WEIR_MAGLEV`: per-packet frontend → its Maglev table.
use std::collections::BTreeMap;

use aya::maps::{HashMap, MapData};
use weir_bpf_common::{maps, sizes, MaglevTable, ServiceKey, ServiceValue};

use super::{removed, write_err, KeyValueMap};
use crate::{map_err, Datapath, Result};

/// A kernel hash map keyed by Service frontend.
pub struct FrontendMap<V> {
    map: HashMap<MapData, ServiceKey, V>,
    name: &'static str,
    capacity: u32,
}

pub type Services = FrontendMap<ServiceValue>;
pub type Maglev = FrontendMap<MaglevTable>;

impl<V: aya::Pod> FrontendMap<V> {
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

impl Maglev {
    pub fn open(dp: &mut Datapath) -> Result<Self> {
        Self::open_named(dp, maps::MAGLEV, sizes::MAGLEV)
    }
}

impl<V: aya::Pod + PartialEq + std::fmt::Debug> KeyValueMap for FrontendMap<V> {
    type Key = ServiceKey;
    type Value = V;

    fn list(&self) -> Result<BTreeMap<ServiceKey, V>> {
        let mut out = BTreeMap::new();
        for item in self.map.iter() {
            let (k, v) = item.map_err(map_err(self.name))?;
            out.insert(k, v);
        }
        Ok(out)
    }
    fn upsert(&mut self, key: ServiceKey, value: V) -> Result<()> {
        self.map.insert(key, value, 0).map_err(write_err(self.name, self.capacity))
    }
    fn remove(&mut self, key: ServiceKey) -> Result<()> {
        removed(self.name, self.map.remove(&key))
    }
}
