//! Read-only handles on the maps the agent's readers show (status, metrics, the CLI): opened on
//! the pins, independent of the writer's handles, so a reader never waits for the writer. The
//! kernel serialises each lookup; a listing taken while the writer changes the map may mix old
//! and new entries, as any dump of a live map does.
use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use weir_bpf_common::{
    maps, Addr16, BackendAddr, BackendKey, BindKey, EndpointInfo, ServiceKey, ServiceValue, SockProc,
};

use crate::{counters::Snapshot, map_err, Datapath, Result};

pub struct Reader {
    counters: PerCpuArray<MapData, u64>,
    endpoints: HashMap<MapData, Addr16, EndpointInfo>,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, BackendKey, BackendAddr>,
}

fn pinned(dp: &Datapath, name: &'static str) -> Result<MapData> {
    MapData::from_pin(dp.map_pin(name)).map_err(map_err(name))
}

fn hash<K: aya::Pod, V: aya::Pod>(dp: &Datapath, name: &'static str) -> Result<HashMap<MapData, K, V>> {
    HashMap::try_from(Map::HashMap(pinned(dp, name)?)).map_err(map_err(name))
}

fn listed<K: aya::Pod + Ord, V: aya::Pod>(m: &HashMap<MapData, K, V>, name: &'static str) -> Result<BTreeMap<K, V>> {
    m.iter().map(|kv| kv.map_err(map_err(name))).collect()
}

impl Reader {
    /// Opens the pins of a loaded datapath (its maps are pinned by then).
    pub fn open(dp: &Datapath) -> Result<Self> {
        let c = maps::COUNTERS;
        Ok(Self {
            counters: PerCpuArray::try_from(Map::PerCpuArray(pinned(dp, c)?)).map_err(map_err(c))?,
            endpoints: hash(dp, maps::ENDPOINTS)?,
            services: hash(dp, maps::SERVICES)?,
            backends: hash(dp, maps::BACKENDS)?,
        })
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<Snapshot> {
        crate::counters::snapshot_of(&self.counters)
    }

    /// `WEIR_ENDPOINTS`: pod address → interface and MACs.
    pub fn endpoints(&self) -> Result<BTreeMap<Ipv4Addr, EndpointInfo>> {
        Ok(listed(&self.endpoints, maps::ENDPOINTS)?
            .into_iter()
            .map(|(k, v)| (Ipv4Addr::from(k.v4_octets()), v))
            .collect())
    }

    /// `WEIR_SERVICES`: frontend → how it is served and its backend set.
    pub fn services(&self) -> Result<BTreeMap<ServiceKey, ServiceValue>> {
        listed(&self.services, maps::SERVICES)
    }

    /// `WEIR_BACKENDS`: set and slot → backend.
    pub fn backends(&self) -> Result<BTreeMap<BackendKey, BackendAddr>> {
        listed(&self.backends, maps::BACKENDS)
    }
}

/// `WEIR_BINDS`: the ports pod processes bound, with the process and its cgroup, as the kernel
/// still holds them (an LRU of `sizes::BINDS`): what a starting agent knows of the binds made
/// before it.
pub fn binds(dp: &Datapath) -> Result<Vec<(BindKey, SockProc)>> {
    let name = maps::BINDS;
    let m: HashMap<MapData, BindKey, SockProc> =
        HashMap::try_from(Map::LruHashMap(pinned(dp, name)?)).map_err(map_err(name))?;
    m.iter().map(|kv| kv.map_err(map_err(name))).collect()
}
