//! `WEIR_ENDPOINTS`: pod address → host veth ifindex and MACs.
use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::{HashMap, MapData};
use weir_bpf_common::{maps, sizes, Addr16, EndpointInfo};

use super::{removed, write_err, KeyValueMap};
use crate::{map_err, Datapath, Error, Result};

const NAME: &str = maps::ENDPOINTS;

pub struct Endpoints(HashMap<MapData, Addr16, EndpointInfo>);

impl Endpoints {
    pub fn open(dp: &mut Datapath) -> Result<Self> {
        let map = dp.take_map(NAME)?;
        Ok(Self(HashMap::try_from(map).map_err(map_err(NAME))?))
    }
}

impl KeyValueMap for Endpoints {
    type Key = Ipv4Addr;
    type Value = EndpointInfo;

    fn upsert(&mut self, ip: Ipv4Addr, info: EndpointInfo) -> Result<()> {
        self.0.insert(Addr16::from_v4_octets(ip.octets()), info, 0).map_err(write_err(NAME, sizes::ENDPOINTS))
    }
    fn remove(&mut self, ip: Ipv4Addr) -> Result<()> {
        removed(NAME, self.0.remove(&Addr16::from_v4_octets(ip.octets())))
    }
    fn list(&self) -> Result<BTreeMap<Ipv4Addr, EndpointInfo>> {
        let mut out = BTreeMap::new();
        for item in self.0.iter() {
            let (k, v) = item.map_err(map_err(NAME))?;
            out.insert(Ipv4Addr::from(k.v4_octets()), v);
        }
        Ok(out)
    }
}

/// In-memory stand-in with the kernel map's capacity.
#[derive(Default)]
pub struct FakeEndpoints(pub BTreeMap<Ipv4Addr, EndpointInfo>);

impl KeyValueMap for FakeEndpoints {
    type Key = Ipv4Addr;
    type Value = EndpointInfo;

    fn upsert(&mut self, ip: Ipv4Addr, info: EndpointInfo) -> Result<()> {
        if !self.0.contains_key(&ip) && self.0.len() >= sizes::ENDPOINTS as usize {
            return Err(Error::MapFull { name: NAME, capacity: sizes::ENDPOINTS });
        }
        self.0.insert(ip, info);
        Ok(())
    }
    fn remove(&mut self, ip: Ipv4Addr) -> Result<()> {
        self.0.remove(&ip);
        Ok(())
    }
    fn list(&self) -> Result<BTreeMap<Ipv4Addr, EndpointInfo>> {
        Ok(self.0.clone())
    }
}
