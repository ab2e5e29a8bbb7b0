//! Loading the datapath: globals, map sizes, pinned maps under `<bpffs>/weir/v{ABI}/maps`.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    maps::ProgramArray,
    programs::{CgroupSock, CgroupSockAddr, SchedClassifier},
    Ebpf, EbpfLoader,
};
use weir_bpf_common::{globals, maps, programs, settings, tails, ABI_VERSION};

use crate::{Error, Result, OBJECT};

/// Everything the programs are configured with at load time.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// A directory on a bpffs mount; pins go below `<bpffs_root>/weir/v{ABI_VERSION}/`.
    pub bpffs_root: PathBuf,
    pub node_ipv4: Ipv4Addr,
    pub cluster_cidr_v4: (Ipv4Addr, u8),
    /// ifindex of the VXLAN device, or 0 for direct routing.
    pub vxlan_ifindex: u32,
    pub vxlan_vni: u32,
    /// The VXLAN UDP port (pods may not send to it on any node).
    pub vxlan_port: u16,
    pub nat_ports: (u16, u16),
    /// Flow and DNS events (observability). Off, only drops are reported.
    pub observe: bool,
    /// With `observe`: HTTP/1.x message starts copied for the agent to parse (L7 records).
    pub observe_http: bool,
    /// Look up the kernel fields the exec audit reads (`Datapath::attach_exec` needs them).
    pub exec_audit: bool,
}

impl LoadConfig {
    pub fn pin_dir(&self) -> PathBuf {
        pin_dir(&self.bpffs_root)
    }
}

/// `<bpffs_root>/weir/v{ABI_VERSION}`: versioned so an upgrade never misreads old maps.
pub fn pin_dir(bpffs_root: &Path) -> PathBuf {
    bpffs_root.join("weir").join(format!("v{ABI_VERSION}"))
}

/// The loaded datapath: programs verified and ready to attach, maps open (and pinned).
pub struct Datapath {
    pub(crate) ebpf: Ebpf,
    pub(crate) pin_dir: PathBuf,
    /// Older versions' pin directories found at load (`weir/v<N>`, N not this ABI version);
    /// emptied by [`Datapath::finish_takeover`], which removes them.
    pub(crate) older: Vec<PathBuf>,
    /// Every pinned map of this version was found and matched the object: this load decides
    /// with the same state as the programs it replaces, so takeovers need not wait.
    pub(crate) maps_inherited: bool,
    /// Attachments to take over once the agent has filled the maps.
    pub(crate) pending: Vec<crate::takeover::Pending>,
    pub(crate) retired: Vec<crate::takeover::RetiredMap>,
    /// The exec audit's kernel field offsets were found (set as globals), or why not.
    pub(crate) exec_offsets: std::result::Result<(), String>,
}

fn be_u32(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

impl Datapath {
    /// Loads (or re-opens, when pins exist) the datapath. Idempotent across agent restarts.
    pub fn load(cfg: &LoadConfig) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(Error::StubObject);
        }
        let pin_dir = cfg.pin_dir();
        let maps_dir = pin_dir.join("maps");
        for dir in [&maps_dir, &pin_dir.join("links")] {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io { op: "creating", path: dir.clone(), source })?;
        }
        let (retired, maps_inherited) = crate::takeover::check_pinned_maps(&maps_dir)?;
        let (net, prefix) = cfg.cluster_cidr_v4;
        let mask: u32 = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
        let mask_be = mask.to_be();
        let net_be = be_u32(net) & mask_be;
        let node = be_u32(cfg.node_ipv4);
        let port_min = u32::from(cfg.nat_ports.0);
        let port_max = u32::from(cfg.nat_ports.1);
        let vxlan_port = u32::from(cfg.vxlan_port);
        let (offsets, exec_offsets) = match cfg.exec_audit {
            true => match crate::exec::kernel_offsets() {
                Ok(o) => (o, Ok(())),
                Err(e) => (Vec::new(), Err(e)),
            },
            false => (Vec::new(), Err("not asked for at load".to_owned())),
        };
        let mut loader = EbpfLoader::new();
        for (global, off) in &offsets {
            loader.override_global(global, off, true);
        }
        let mut ebpf = loader
            .default_map_pin_directory(&maps_dir)
            .override_global(globals::NODE_IPV4, &node, true)
            .override_global(globals::CLUSTER_V4_ADDR, &net_be, true)
            .override_global(globals::CLUSTER_V4_MASK, &mask_be, true)
            .override_global(globals::VXLAN_IFINDEX, &cfg.vxlan_ifindex, true)
            .override_global(globals::VXLAN_VNI, &cfg.vxlan_vni, true)
            .override_global(globals::VXLAN_PORT, &vxlan_port, true)
            .override_global(globals::NAT_PORT_MIN, &port_min, true)
            .override_global(globals::NAT_PORT_MAX, &port_max, true)
            .load(OBJECT)
            .map_err(|source| Error::Load { source: Box::new(source) })?;
        for name in programs::ALL {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(Error::MissingProgram { name })?
                .try_into()
                .map_err(|source| Error::Program { name, source: Box::new(source) })?;
            retry_eagain(|| prog.load()).map_err(|source| Error::Program { name, source: Box::new(source) })?;
        }
        for name in programs::SOCK {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(Error::MissingProgram { name })?
                .try_into()
                .map_err(|source| Error::Program { name, source: Box::new(source) })?;
            retry_eagain(|| prog.load()).map_err(|source| Error::Program { name, source: Box::new(source) })?;
        }
        for name in programs::SOCK_BIND {
            let prog: &mut CgroupSock = ebpf
                .program_mut(name)
                .ok_or(Error::MissingProgram { name })?
                .try_into()
                .map_err(|source| Error::Program { name, source: Box::new(source) })?;
            retry_eagain(|| prog.load()).map_err(|source| Error::Program { name, source: Box::new(source) })?;
        }
        fill_tails(&mut ebpf)?;
        write_settings(&mut ebpf, cfg)?;
        let older = crate::takeover::older_versions(&cfg.bpffs_root);
        Ok(Self { ebpf, pin_dir, older, maps_inherited, pending: Vec::new(), retired, exec_offsets })
    }

    pub(crate) fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier> {
        self.ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram { name })?
            .try_into()
            .map_err(|source| Error::Program { name, source: Box::new(source) })
    }

    /// Where map `name` is pinned.
    pub fn map_pin(&self, name: &str) -> PathBuf {
        self.pin_dir.join("maps").join(name)
    }

    pub(crate) fn take_map(&mut self, name: &'static str) -> Result<aya::maps::Map> {
        self.ebpf.take_map(name).ok_or(Error::MissingMap { name })
    }
}

/// Writes the run-time settings (a pinned map: programs an earlier agent attached follow them
/// too until they are replaced).
fn write_settings(ebpf: &mut Ebpf, cfg: &LoadConfig) -> Result<()> {
    let name = maps::SETTINGS;
    let map = ebpf.map_mut(name).ok_or(Error::MissingMap { name })?;
    let mut arr: aya::maps::Array<_, u32> = aya::maps::Array::try_from(map).map_err(crate::map_err(name))?;
    let mut observe = 0;
    if cfg.observe {
        observe |= settings::OBSERVE_FLOWS;
        if cfg.observe_http {
            observe |= settings::OBSERVE_HTTP;
        }
    }
    arr.set(settings::OBSERVE, observe, 0).map_err(crate::map_err(name))
}

/// Points the tail-call slots at this load's programs. The array is pinned, so a restarted agent
/// swaps the targets in place and packets in flight never find an empty slot.
fn fill_tails(ebpf: &mut Ebpf) -> Result<()> {
    let fd = {
        let name = programs::LB_REMOTE;
        let prog: &SchedClassifier = ebpf
            .program(name)
            .ok_or(Error::MissingProgram { name })?
            .try_into()
            .map_err(|source| Error::Program { name, source: Box::new(source) })?;
        prog.fd()
            .map_err(|source| Error::Program { name, source: Box::new(source) })?
            .try_clone()
            .map_err(|source| Error::Io { op: "duplicating the fd of", path: PathBuf::from(name), source })?
    };
    let name = maps::TAILS;
    let map = ebpf.map_mut(name).ok_or(Error::MissingMap { name })?;
    let mut tails_map = ProgramArray::try_from(map).map_err(|source| Error::Map { name, source: Box::new(source) })?;
    tails_map.set(tails::LB_REMOTE, &fd, 0).map_err(|source| Error::Map { name, source: Box::new(source) })?;
    Ok(())
}

/// Runs a program load again when the kernel answers EAGAIN: the verifier gives up with it under
/// transient pressure (seen with several large programs verified at once), and libbpf retries
/// the same way. Any other error, or the fifth EAGAIN, is returned.
fn retry_eagain(
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    let mut attempt = 1;
    loop {
        match load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < 5 =>
            {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}
