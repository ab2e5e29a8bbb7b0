//! The NetworkPolicy maps: `WEIR_IPCACHE` (prefix → identity), `WEIR_POLICY` (per-endpoint
//! allow entries, LPM) and `WEIR_POLICY_EP` (endpoint → identity and isolation flags).
use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    HashMap, MapData,
};
use weir_bpf_common::{
    maps, sizes, PolicyEndpoint, PolicyKey, PolicyValue, POLICY_PREFIX_ALL_PROTOCOLS, POLICY_PREFIX_PROTOCOL,
};

use super::{removed, write_err, KeyValueMap};
use crate::{map_err, Datapath, Result};

fn be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// `WEIR_IPCACHE`: (network, prefix length) → identity.
pub struct Ipcache(LpmTrie<MapData, u32, u32>);

impl Ipcache {
    pub fn open(dp: &mut Datapath) -> Result<Self> {
        let name = maps::IPCACHE;
        Ok(Self(LpmTrie::try_from(dp.take_map(name)?).map_err(map_err(name))?))
    }
}

impl KeyValueMap for Ipcache {
    type Key = (Ipv4Addr, u8);
    type Value = u32;

    fn upsert(&mut self, (net, len): (Ipv4Addr, u8), id: u32) -> Result<()> {
        self.0.insert(&Key::new(u32::from(len), be(net)), id, 0).map_err(write_err(maps::IPCACHE, sizes::IPCACHE))
    }
    fn remove(&mut self, (net, len): (Ipv4Addr, u8)) -> Result<()> {
        removed(maps::IPCACHE, self.0.remove(&Key::new(u32::from(len), be(net))))
    }
    fn list(&self) -> Result<BTreeMap<(Ipv4Addr, u8), u32>> {
        let mut out = BTreeMap::new();
        for item in self.0.iter() {
            let (k, v) = item.map_err(map_err(maps::IPCACHE))?;
            out.insert((Ipv4Addr::from(k.data().to_ne_bytes()), k.prefix_len() as u8), v);
        }
        Ok(out)
    }
    fn capacity(&self) -> Option<u32> {
        Some(sizes::IPCACHE)
    }
}

/// One `WEIR_POLICY` entry as the agent plans it. `proto == 0`: every protocol (`port` and
/// `port_bits` 0); else the top `port_bits` bits of `port` (0 = any port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyEntry {
    pub endpoint: Ipv4Addr,
    pub direction: u8,
    pub identity: u32,
    pub proto: u8,
    pub port: u16,
    pub port_bits: u8,
}

impl PolicyEntry {
    pub fn key(&self) -> Key<PolicyKey> {
        let prefix = if self.proto == 0 {
            POLICY_PREFIX_ALL_PROTOCOLS
        } else {
            POLICY_PREFIX_PROTOCOL + u32::from(self.port_bits.min(16))
        };
        Key::new(
            prefix,
            PolicyKey {
                endpoint: self.endpoint.octets(),
                direction: self.direction,
                identity: self.identity.to_be_bytes(),
                proto: self.proto,
                port: self.port.to_be_bytes(),
            },
        )
    }

    fn from_key(k: &Key<PolicyKey>) -> Self {
        let d = k.data();
        let bits = k.prefix_len().saturating_sub(POLICY_PREFIX_PROTOCOL) as u8;
        PolicyEntry {
            endpoint: Ipv4Addr::from(d.endpoint),
            direction: d.direction,
            identity: u32::from_be_bytes(d.identity),
            proto: if k.prefix_len() <= POLICY_PREFIX_ALL_PROTOCOLS { 0 } else { d.proto },
            port: u16::from_be_bytes(d.port),
            port_bits: bits,
        }
    }
}

/// `WEIR_POLICY`: allow entry → attribution id.
pub struct PolicyEntries(LpmTrie<MapData, PolicyKey, PolicyValue>);

impl PolicyEntries {
    pub fn open(dp: &mut Datapath) -> Result<Self> {
        let name = maps::POLICY;
        Ok(Self(LpmTrie::try_from(dp.take_map(name)?).map_err(map_err(name))?))
    }
}

impl KeyValueMap for PolicyEntries {
    type Key = PolicyEntry;
    type Value = u32;

    fn upsert(&mut self, e: PolicyEntry, attribution: u32) -> Result<()> {
        self.0
            .insert(&e.key(), PolicyValue { attribution, flags: 0 }, 0)
            .map_err(write_err(maps::POLICY, sizes::POLICY))
    }
    fn remove(&mut self, e: PolicyEntry) -> Result<()> {
        removed(maps::POLICY, self.0.remove(&e.key()))
    }
    fn list(&self) -> Result<BTreeMap<PolicyEntry, u32>> {
        let mut out = BTreeMap::new();
        for item in self.0.iter() {
            let (k, v) = item.map_err(map_err(maps::POLICY))?;
            out.insert(PolicyEntry::from_key(&k), v.attribution);
        }
        Ok(out)
    }
    fn capacity(&self) -> Option<u32> {
        Some(sizes::POLICY)
    }
}

/// `WEIR_POLICY_EP`: local endpoint → identity and `POLICY_F_*` flags.
pub struct PolicyEndpoints(HashMap<MapData, u32, PolicyEndpoint>);

impl PolicyEndpoints {
    pub fn open(dp: &mut Datapath) -> Result<Self> {
        let name = maps::POLICY_EP;
        Ok(Self(HashMap::try_from(dp.take_map(name)?).map_err(map_err(name))?))
    }

    /// Another handle on the pinned map (tools and tests that set up endpoints beside the
    /// agent's own writer).
    pub fn open_pinned(dp: &Datapath) -> Result<Self> {
        let name = maps::POLICY_EP;
        let data = aya::maps::MapData::from_pin(dp.map_pin(name)).map_err(map_err(name))?;
        Ok(Self(HashMap::try_from(aya::maps::Map::HashMap(data)).map_err(map_err(name))?))
    }
}

impl KeyValueMap for PolicyEndpoints {
    type Key = Ipv4Addr;
    type Value = PolicyEndpoint;

    fn upsert(&mut self, ip: Ipv4Addr, v: PolicyEndpoint) -> Result<()> {
        self.0.insert(be(ip), v, 0).map_err(write_err(maps::POLICY_EP, sizes::POLICY_EP))
    }
    fn remove(&mut self, ip: Ipv4Addr) -> Result<()> {
        removed(maps::POLICY_EP, self.0.remove(&be(ip)))
    }
    fn list(&self) -> Result<BTreeMap<Ipv4Addr, PolicyEndpoint>> {
        let mut out = BTreeMap::new();
        for item in self.0.iter() {
            let (k, v) = item.map_err(map_err(maps::POLICY_EP))?;
            out.insert(Ipv4Addr::from(k.to_ne_bytes()), v);
        }
        Ok(out)
    }
    fn capacity(&self) -> Option<u32> {
        Some(sizes::POLICY_EP)
    }
}
