//! `WEIR_SERVICES`: Service frontend → its backends, inline (one map update per frontend, so
//! a frontend is never seen half-written).
use std::collections::BTreeMap;

use aya::maps::{HashMap, MapData};
use weir_bpf_common::{maps, sizes, ServiceKey, ServiceValue};

use super::{removed, write_err, KeyValueMap};
use crate::{map_err, Datapath, Result};

const NAME: &str = maps::SERVICES;

pub struct Services(HashMap<MapData, ServiceKey, ServiceValue>);

impl Services {
    pub fn open(dp: &mut Datapath) -> Result<Self> {
        let map = dp.take_map(NAME)?;
        Ok(Self(HashMap::try_from(map).map_err(map_err(NAME))?))
    }
}

impl KeyValueMap for Services {
    type Key = ServiceKey;
    type Value = ServiceValue;

    fn list(&self) -> Result<BTreeMap<ServiceKey, ServiceValue>> {
        let mut out = BTreeMap::new();
        for item in self.0.iter() {
            let (k, v) = item.map_err(map_err(NAME))?;
            out.insert(k, v);
        }
        Ok(out)
    }
    fn upsert(&mut self, key: ServiceKey, value: ServiceValue) -> Result<()> {
        self.0.insert(key, value, 0).map_err(write_err(NAME, sizes::SERVICES))
    }
    fn remove(&mut self, key: ServiceKey) -> Result<()> {
        removed(NAME, self.0.remove(&key))
    }
}

/// In-memory `WEIR_SERVICES` for reconcile tests; `fail_writes` makes every write fail.
#[derive(Debug, Default)]
pub struct FakeServices {
    pub entries: BTreeMap<ServiceKey, ServiceValue>,
    pub fail_writes: bool,
}

impl FakeServices {
    fn write(&self) -> Result<()> {
        match self.fail_writes {
            true => Err(crate::Error::MapFull { name: NAME, capacity: sizes::SERVICES }),
            false => Ok(()),
        }
    }
}

impl KeyValueMap for FakeServices {
    type Key = ServiceKey;
    type Value = ServiceValue;

    fn list(&self) -> Result<BTreeMap<ServiceKey, ServiceValue>> {
        Ok(self.entries.clone())
    }
    fn upsert(&mut self, key: ServiceKey, value: ServiceValue) -> Result<()> {
        self.write()?;
        self.entries.insert(key, value);
        Ok(())
    }
    fn remove(&mut self, key: ServiceKey) -> Result<()> {
        self.write()?;
        self.entries.remove(&key);
        Ok(())
    }
}
