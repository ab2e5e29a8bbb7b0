//! `WEIR_SERVICES`: Service frontend → its backends, inline (one map update per frontend, so
//! a frontend is never seen half-written).
use std::collections::BTreeMap;

use aya::maps::{HashMap, MapData};
use weir_bpf_common::{maps, sizes, ServiceKey, ServiceValue};

use super::KeyValueMap;
use crate::{map_err, Datapath, Error, Result};

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
        self.0.insert(key, value, 0).map_err(|e| match &e {
            aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
                Error::MapFull { name: NAME, capacity: sizes::SERVICES }
            }
            _ => map_err(NAME)(e),
        })
    }
    fn remove(&mut self, key: ServiceKey) -> Result<()> {
        match self.0.remove(&key) {
            Err(aya::maps::MapError::KeyNotFound) | Ok(()) => Ok(()),
            Err(aya::maps::MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(map_err(NAME)(e)),
        }
    }
}
