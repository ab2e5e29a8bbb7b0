//! Unit tier (no root): the embedded eBPF object has every program and map the ABI crate names,
//! with the key and value sizes of the Rust types userspace uses — a cheap alignment checker.
use std::mem::size_of;

use aya_obj::{Object, ProgramSection};
use weir_bpf_common::{
    maps, programs, Addr16, AffinityKey, AffinityValue, BackendAddr, BackendKey, BindKey, EndpointInfo, FragKey,
    FragValue, MaglevTable, NatEntry, NatKey, NodeKey, PolicyCtKey, PolicyEndpoint, RemoteNode, ServiceKey,
    ServiceValue, SockProc, SockRevKey,
};

fn object() -> Option<Object> {
    if weir_dataplane::OBJECT.is_empty() {
        assert!(
            std::env::var("WEIR_REQUIRE_PRIVILEGED").is_err(),
            "the eBPF object is a stub (WEIR_BPF_STUB=1); CI must build the real one"
        );
        eprintln!("SKIPPED: built with WEIR_BPF_STUB=1, no eBPF object to check");
        return None;
    }
    Some(Object::parse(weir_dataplane::OBJECT).expect("parse embedded object"))
}

#[test]
fn every_program_is_a_classifier() {
    let Some(obj) = object() else { return };
    for name in programs::ALL {
        let p = obj.programs.get(name).unwrap_or_else(|| panic!("program {name} missing"));
        assert!(matches!(p.section, ProgramSection::SchedClassifier), "{name} is {:?}", p.section);
    }
    for name in programs::SOCK {
        let p = obj.programs.get(name).unwrap_or_else(|| panic!("program {name} missing"));
        assert!(matches!(p.section, ProgramSection::CgroupSockAddr { .. }), "{name} is {:?}", p.section);
    }
    for name in programs::SOCK_BIND {
        let p = obj.programs.get(name).unwrap_or_else(|| panic!("program {name} missing"));
        assert!(matches!(p.section, ProgramSection::CgroupSock { .. }), "{name} is {:?}", p.section);
    }
}

#[test]
fn map_layouts_match_the_abi_crate() {
    let Some(obj) = object() else { return };
    // (name, key size, value size); the LPM key carries a 4-byte prefix length.
    let want = [
        (maps::ENDPOINTS, size_of::<Addr16>(), size_of::<EndpointInfo>()),
        (maps::TUNNEL, 4 + size_of::<Addr16>(), size_of::<RemoteNode>()),
        (maps::NAT_FWD, size_of::<NatKey>(), size_of::<NatEntry>()),
        (maps::NAT_REV, size_of::<NatKey>(), size_of::<NatEntry>()),
        (maps::BINDS, size_of::<BindKey>(), size_of::<SockProc>()),
        (maps::COUNTERS, 4, 8),
        (maps::SERVICES, size_of::<ServiceKey>(), size_of::<ServiceValue>()),
        (maps::BACKENDS, size_of::<BackendKey>(), size_of::<BackendAddr>()),
        (maps::SOCK_REVNAT, size_of::<SockRevKey>(), size_of::<NatEntry>()),
        (maps::AFFINITY, size_of::<AffinityKey>(), size_of::<AffinityValue>()),
        (maps::MAGLEV, size_of::<ServiceKey>(), size_of::<MaglevTable>()),
        (maps::LB_CT, size_of::<NatKey>(), size_of::<NatEntry>()),
        (maps::LB_REV, size_of::<NatKey>(), size_of::<NatEntry>()),
        (maps::CT_IN, size_of::<NatKey>(), 4),
        (maps::TAILS, 4, 4),
        (maps::NODES, size_of::<NodeKey>(), 4),
        (maps::FRAGS, size_of::<FragKey>(), size_of::<FragValue>()),
        (maps::POLICY_CT, size_of::<PolicyCtKey>(), 4),
        (maps::POLICY_EP, 4, size_of::<PolicyEndpoint>()),
    ];
    for (name, k, v) in want {
        let m = obj.maps.get(name).unwrap_or_else(|| panic!("map {name} missing"));
        assert_eq!((m.key_size() as usize, m.value_size() as usize), (k, v), "{name} key/value size");
    }
    let ring = obj.maps.get(maps::EVENTS).expect("events ring buffer");
    assert!(ring.max_entries().is_power_of_two(), "ring buffer size must be a power of two");
    for name in maps::ALL {
        assert!(obj.maps.contains_key(name), "{name} missing");
    }
}
