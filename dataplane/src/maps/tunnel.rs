//! `WEIR_TUNNEL`: remote pod CIDR (LPM) → the node that owns it (both routing modes: VXLAN sends
//! by it; both verify pod sources arriving from other nodes by it).
use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    MapData,
};
use weir_bpf_common::{maps, sizes, Addr16, RemoteNode};

use super::{removed, write_err, KeyValueMap};
use crate::{map_err, Datapath, Error, Result};

const NAME: &str = maps::TUNNEL;

/// A remote pod CIDR as (network, prefix length).
pub type Cidr = (Ipv4Addr, u8);

pub struct Tunnel(LpmTrie<MapData, Addr16, RemoteNode>);

impl Tunnel {
    pub fn open(dp: &mut Datapath) -> Result<Self> {
        let map = dp.take_map(NAME)?;
        Ok(Self(LpmTrie::try_from(map).map_err(map_err(NAME))?))
    }
}

fn key((net, len): Cidr) -> Key<Addr16> {
    Key::new(96 + u32::from(len), Addr16::from_v4_octets(net.octets()))
}

impl KeyValueMap for Tunnel {
    type Key = Cidr;
    type Value = Ipv4Addr;

    fn upsert(&mut self, cidr: Cidr, node: Ipv4Addr) -> Result<()> {
        let v = RemoteNode { node_addr: Addr16::from_v4_octets(node.octets()), flags: 0, _pad: [0; 4] };
        self.0.insert(&key(cidr), v, 0).map_err(write_err(NAME, sizes::TUNNEL))
    }
    fn remove(&mut self, cidr: Cidr) -> Result<()> {
        removed(NAME, self.0.remove(&key(cidr)))
    }
    fn list(&self) -> Result<BTreeMap<Cidr, Ipv4Addr>> {
        let mut out = BTreeMap::new();
        for item in self.0.iter() {
            let (k, v) = item.map_err(map_err(NAME))?;
            let len = (k.prefix_len().saturating_sub(96)) as u8;
            out.insert((Ipv4Addr::from(k.data().v4_octets()), len), Ipv4Addr::from(v.node_addr.v4_octets()));
        }
        Ok(out)
    }
}

#[derive(Default)]
pub struct FakeTunnel(pub BTreeMap<Cidr, Ipv4Addr>);

impl KeyValueMap for FakeTunnel {
    type Key = Cidr;
    type Value = Ipv4Addr;

    fn upsert(&mut self, cidr: Cidr, node: Ipv4Addr) -> Result<()> {
        if !self.0.contains_key(&cidr) && self.0.len() >= sizes::TUNNEL as usize {
            return Err(Error::MapFull { name: NAME, capacity: sizes::TUNNEL });
        }
        self.0.insert(cidr, node);
        Ok(())
    }
    fn remove(&mut self, cidr: Cidr) -> Result<()> {
        self.0.remove(&cidr);
        Ok(())
    }
    fn list(&self) -> Result<BTreeMap<Cidr, Ipv4Addr>> {
        Ok(self.0.clone())
    }
}
