//! Links, addresses, routes and neighbours through rtnetlink.
//!
//! [`Netlink`] works in the agent's own (node) network namespace. Work inside a pod's namespace
//! happens in [`in_netns`]: a dedicated OS thread that enters the namespace, opens its own
//! netlink socket there and runs a current-thread runtime — never a tokio worker.
use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
};

use futures::TryStreamExt as _;
use rtnetlink::{
    packet_route::{
        address::AddressAttribute,
        link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage},
        neighbour::NeighbourState,
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope},
    },
    Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

/// Routes the agent installs carry this protocol number, so reconcile can tell them apart.
pub const WEIR_ROUTE_PROTO: u8 = 0x57;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink {op}: {source}")]
    Request {
        op: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("opening netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("network namespace {path}: {source}")]
    Netns { path: String, source: std::io::Error },
    #[error("link {0} not found")]
    NoSuchLink(String),
    #[error("link {0} has no usable MAC address")]
    NoMac(String),
}

pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;

fn req(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    move |source| NetlinkError::Request { op, source: Box::new(source) }
}

/// True for "no such device/entry" answers, which teardown treats as already done.
pub fn is_not_found(e: &NetlinkError) -> bool {
    match e {
        NetlinkError::NoSuchLink(_) => true,
        NetlinkError::Request { source, .. } => match source.as_ref() {
            rtnetlink::Error::NetlinkError(m) => {
                m.raw_code() == -libc::ENODEV || m.raw_code() == -libc::ENOENT || m.raw_code() == -libc::ESRCH
            }
            _ => false,
        },
        _ => false,
    }
}

fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

/// A netlink handle bound to the network namespace of the thread that created it.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

pub struct LinkInfo {
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// One interface of a [`Netlink::links_with_prefix`] dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixedLink {
    pub index: u32,
    /// `IFLA_IFALIAS` (weir marks its own interfaces there).
    pub alias: Option<String>,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
}

fn link_info(name: &str, msg: &LinkMessage) -> Result<LinkInfo> {
    let mut mac = None;
    let mut mtu = 0;
    for a in &msg.attributes {
        match a {
            LinkAttribute::Address(m) if m.len() == 6 => mac = m.as_slice().try_into().ok(),
            LinkAttribute::Mtu(m) => mtu = *m,
            _ => {}
        }
    }
    Ok(LinkInfo { index: msg.header.index, mac: mac.ok_or_else(|| NetlinkError::NoMac(name.to_owned()))?, mtu })
}

impl Netlink {
    /// Opens a netlink socket in the current thread's network namespace; the connection task
    /// runs on the current tokio runtime.
    pub fn open() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>> {
        let h = self.handle.clone();
        let mut stream = h.link().get().match_name(name.to_owned()).execute();
        match stream.try_next().await {
            Ok(Some(msg)) => link_info(name, &msg).map(Some),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(req(format!("get link {name}"))(e)),
        }
    }

    /// Index and alias of every link in this namespace whose name starts with `prefix` (one dump).
    /// Every interface whose name starts with `prefix`, by name, from one dump.
    pub async fn links_with_prefix(&self, prefix: &str) -> Result<std::collections::BTreeMap<String, PrefixedLink>> {
        let h = self.handle.clone();
        let mut stream = h.link().get().execute();
        let mut out = std::collections::BTreeMap::new();
        while let Some(msg) = stream.try_next().await.map_err(req("list links"))? {
            let (mut name, mut alias, mut mtu, mut mac) = (None, None, 0, None);
            for a in &msg.attributes {
                match a {
                    LinkAttribute::IfName(n) if n.starts_with(prefix) => name = Some(n.clone()),
                    LinkAttribute::IfAlias(s) => alias = Some(s.clone()),
                    LinkAttribute::Mtu(m) => mtu = *m,
                    LinkAttribute::Address(m) => mac = m.as_slice().try_into().ok(),
                    _ => {}
                }
            }
            if let Some(n) = name {
                out.insert(n, PrefixedLink { index: msg.header.index, alias, mtu, mac });
            }
        }
        Ok(out)
    }

    pub async fn require_link(&self, name: &str) -> Result<LinkInfo> {
        self.link(name).await?.ok_or_else(|| NetlinkError::NoSuchLink(name.to_owned()))
    }

    /// Creates a veth pair: `host` here, its peer named `peer` with MAC `peer_mac` directly in
    /// the namespace `peer_netns`. Creating the peer in place avoids moving a device between
    /// namespaces, which costs an RCU grace period (~20 ms measured here).
    pub async fn create_veth_into(
        &self,
        host: &str,
        peer: &str,
        peer_mac: [u8; 6],
        peer_netns: &OwnedFd,
        mtu: u32,
    ) -> Result<()> {
        let peer_msg = LinkUnspec::new_with_name(peer)
            .address(peer_mac.to_vec())
            .mtu(mtu)
            .setns_by_fd(peer_netns.as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        let add = self.handle.link().add(msg);
        add.execute().await.map_err(req(format!("add veth {host} with peer {peer} in the pod namespace")))
    }

    /// Sets a link up and gives it `alias` (the kernel takes no alias when a link is created).
    pub async fn set_up_with_alias(&self, index: u32, alias: &str) -> Result<()> {
        let set = self.handle.link().set(LinkUnspec::new_with_index(index).up().alias(alias).build());
        set.execute().await.map_err(req(format!("set link {index} up with alias {alias:?}")))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(req(format!("set link {index} up")))
    }

    pub async fn delete_link(&self, name: &str) -> Result<()> {
        let Some(l) = self.link(name).await? else { return Ok(()) };
        let h = self.handle.clone();
        match h.link().del(l.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = req(format!("delete link {name}"))(e);
                if is_not_found(&e) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Creates (or finds) the veth pair `name`/`peer` that the node's stack sends pod traffic to
    /// (`name` without ARP: the datapath on its egress addresses each packet to its pod), both
    /// ends up.
    pub async fn ensure_host_device(&self, name: &str, peer: &str, mtu: u32) -> Result<LinkInfo> {
        if self.link(name).await?.is_none() {
            let add = self.handle.link().add(LinkVeth::new(name, peer).build());
            match add.execute().await {
                Ok(()) => {}
                Err(e) if is_exists(&e) => {}
                Err(e) => return Err(req(format!("add veth {name}"))(e)),
            }
        }
        let p = self.require_link(peer).await?;
        let set = self.handle.link().set(LinkUnspec::new_with_index(p.index).mtu(mtu).up().build());
        set.execute().await.map_err(req(format!("set {peer} up")))?;
        let info = self.require_link(name).await?;
        let set = self.handle.link().set(LinkUnspec::new_with_index(info.index).mtu(mtu).arp(false).up().build());
        set.execute().await.map_err(req(format!("set {name} noarp/up")))?;
        self.require_link(name).await
    }

    /// Creates (or finds) the collect_metadata VXLAN device `name`. The device itself has VNI 0:
    /// in metadata mode the kernel looks received packets up under VNI 0 and the VNI travels in
    /// the tunnel key, set per packet by the datapath.
    pub async fn ensure_vxlan(&self, name: &str, port: u16, mtu: u32) -> Result<LinkInfo> {
        if self.link(name).await?.is_none() {
            let msg = LinkVxlan::new(name, 0).port(port).collect_metadata(true).learning(false).build();
            let add = self.handle.link().add(msg);
            match add.execute().await {
                Ok(()) => {}
                Err(e) if is_exists(&e) => {}
                Err(e) => return Err(req(format!("add vxlan {name}"))(e)),
            }
        }
        let info = self.require_link(name).await?;
        let set = self.handle.link().set(LinkUnspec::new_with_index(info.index).mtu(mtu).up().build());
        set.execute().await.map_err(req(format!("set {name} mtu/up")))?;
        self.require_link(name).await
    }

    /// Adds or replaces `dst/prefix` via `oif` (and `via`, when given), marked as weir's.
    pub async fn replace_route(&self, dst: Ipv4Addr, prefix: u8, oif: u32, via: Option<Ipv4Addr>) -> Result<()> {
        let r = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .output_interface(oif)
            .protocol(RouteProtocol::Other(WEIR_ROUTE_PROTO));
        let r = match via {
            Some(gw) => r.gateway(gw),
            None => r.scope(RouteScope::Link),
        };
        self.handle
            .route()
            .add(r.build())
            .replace()
            .execute()
            .await
            .map_err(req(format!("replace route {dst}/{prefix}")))
    }

    pub async fn delete_route(&self, msg: RouteMessage) -> Result<()> {
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = req("delete route")(e);
                if is_not_found(&e) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The IPv4 networks of a link's addresses (what is on-link there).
    pub async fn ipv4_networks(&self, index: u32) -> Result<Vec<ipnetwork::Ipv4Network>> {
        let mut out = Vec::new();
        let mut stream = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(msg) = stream.try_next().await.map_err(req("list addresses"))? {
            for a in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                    if let Ok(n) = ipnetwork::Ipv4Network::new(*ip, msg.header.prefix_len) {
                        out.push(n);
                    }
                }
            }
        }
        Ok(out)
    }

    /// IPv4 routes in the main table that weir installed: (dst, prefix, gateway, message).
    pub async fn weir_routes(&self) -> Result<Vec<(Ipv4Addr, u8, Option<Ipv4Addr>, RouteMessage)>> {
        let mut out = Vec::new();
        let mut stream = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(msg) = stream.try_next().await.map_err(req("list routes"))? {
            if msg.header.protocol != RouteProtocol::Other(WEIR_ROUTE_PROTO) {
                continue;
            }
            let mut dst = None;
            let mut gw = None;
            for a in &msg.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                    _ => {}
                }
            }
            if let Some(d) = dst {
                out.push((d, msg.header.destination_prefix_length, gw, msg));
            }
        }
        Ok(out)
    }
}

/// What the pod side of a veth gets (the interface already exists there, named and sized).
pub struct PodSide {
    pub netns: std::path::PathBuf,
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub gateway_mac: [u8; 6],
}

/// Opens a network namespace file (e.g. /var/run/netns/x or /proc/PID/ns/net).
pub fn open_netns(path: &Path) -> Result<OwnedFd> {
    std::fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(|source| NetlinkError::Netns { path: path.display().to_string(), source })
}

/// Runs `f` with a [`Netlink`] opened inside the namespace at `netns`, on a dedicated thread.
pub fn in_netns<T, F, Fut>(netns: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let fd = open_netns(netns)?;
    let path = netns.display().to_string();
    std::thread::spawn(move || -> Result<T> {
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetlinkError::Netns { path: path.clone(), source: e.into() })?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(NetlinkError::Socket)?;
        rt.block_on(async move {
            let nl = Netlink::open()?;
            f(nl).await
        })
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Configures the pod end of a veth inside its namespace: up, address, gateway route and
/// neighbour, default route.
pub fn configure_pod_side(p: PodSide) -> Result<()> {
    let PodSide { netns, ifname, ip, gateway: gw, gateway_mac: gw_mac } = p;
    in_netns(&netns, move |nl| async move {
        let link = nl.require_link(&ifname).await?;
        let h = nl.handle.clone();
        // IPv6 is not carried yet: keep the pod from emitting RS/MLD that would only be dropped.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"), "1");
        nl.set_up(link.index).await?;
        if let Some(lo) = nl.link("lo").await? {
            nl.set_up(lo.index).await?;
        }
        h.address()
            .add(link.index, IpAddr::V4(ip), 32)
            .execute()
            .await
            .map_err(req(format!("add {ip}/32 to {ifname}")))?;
        let to_gateway = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(gw, 32)
            .output_interface(link.index)
            .scope(RouteScope::Link)
            .build();
        h.route().add(to_gateway).execute().await.map_err(req("add gateway route"))?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(gw)
            .output_interface(link.index)
            .build();
        h.route().add(default).execute().await.map_err(req("add default route"))?;
        h.neighbours()
            .add(link.index, IpAddr::V4(gw))
            .link_layer_address(&gw_mac)
            .state(NeighbourState::Permanent)
            .execute()
            .await
            .map_err(req("add gateway neighbour"))?;
        Ok(())
    })
}

/// What CHECK verifies inside the pod namespace: `ifname` exists, is up, and holds `ip`.
pub fn pod_side_has_address(netns: &Path, ifname: &str, ip: Ipv4Addr) -> Result<bool> {
    let ifname = ifname.to_owned();
    in_netns(netns, move |nl| async move {
        let Some(link) = nl.link(&ifname).await? else { return Ok(false) };
        let mut addrs = nl.handle.address().get().set_link_index_filter(link.index).execute();
        while let Some(msg) = addrs.try_next().await.map_err(req("list addresses"))? {
            for a in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V4(v4)) = a {
                    if *v4 == ip {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    })
}
