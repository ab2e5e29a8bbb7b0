//! `WEIR_NODES`: every node's underlay address (this node's too) → flags. The tunnel accepts
//! encapsulated traffic only from these addresses, and pods may not send to their tunnel port.
use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::{HashMap, MapData};
use weir_bpf_common::{maps, sizes, NodeKey};

use super::{removed, write_err, KeyValueMap};
use crate::{map_err, Datapath, Result};

const NAME: &str = maps::NODES;

pub struct Nodes(HashMap<MapData, NodeKey, u32>);

impl Nodes {
    pub fn open(dp: &mut Datapath) -> Result<Self> {
        let map = dp.take_map(NAME)?;
        Ok(Self(HashMap::try_from(map).map_err(map_err(NAME))?))
    }
}

fn key(a: Ipv4Addr) -> NodeKey {
    u32::from_ne_bytes(a.octets())
}

impl KeyValueMap for Nodes {
    type Key = Ipv4Addr;
    /// `NODE_F_*` flags.
    type Value = u32;

    fn upsert(&mut self, addr: Ipv4Addr, flags: u32) -> Result<()> {
        self.0.insert(key(addr), flags, 0).map_err(write_err(NAME, sizes::NODES))
    }
    fn remove(&mut self, addr: Ipv4Addr) -> Result<()> {
        removed(NAME, self.0.remove(&key(addr)))
    }
    fn list(&self) -> Result<BTreeMap<Ipv4Addr, u32>> {
        let mut out = BTreeMap::new();
        for item in self.0.iter() {
            let (k, v) = item.map_err(map_err(NAME))?;
            out.insert(Ipv4Addr::from(k.to_ne_bytes()), v);
        }
        Ok(out)
    }
    fn capacity(&self) -> Option<u32> {
        Some(sizes::NODES)
    }
}
