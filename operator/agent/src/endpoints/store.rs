//! The endpoint store: every attachment this node made, persisted as JSON (write to a temp
//! file, fsync, rename) before the agent answers ADD or DEL. It is also the IPAM record.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub pod_mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub mtu: u32,
    /// Rebuilt from the kernel without the pod it belongs to (no CNI cache entry): no policy
    /// entry (closed) until the cluster state shows a pod on this node with its address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub identity_unknown: bool,
}

impl EndpointRecord {
    /// The attachment as the API reports it (CNI results, `weir endpoints`).
    pub fn to_api(&self) -> weir_operator_api::Endpoint {
        weir_operator_api::Endpoint {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
            netns: self.netns.clone(),
            pod_namespace: self.pod_namespace.clone(),
            pod_name: self.pod_name.clone(),
            host_ifname: self.host_ifname.clone(),
            host_mac: mac_str(&self.host_mac),
            pod_mac: mac_str(&self.pod_mac),
            ip: self.ip,
            prefix_len: 32,
            gateway: crate::config::GATEWAY,
            mtu: self.mtu,
        }
    }

    /// What `WEIR_ENDPOINTS` holds for this attachment.
    pub fn datapath_info(&self) -> weir_bpf_common::EndpointInfo {
        weir_bpf_common::EndpointInfo {
            ifindex: self.host_ifindex,
            flags: 0,
            pod_mac: self.pod_mac,
            host_mac: self.host_mac,
            _pad: [0; 4],
        }
    }
}

fn mac_str(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub type Key = (String, String);
/// The records by container and interface; a clone shares structure and costs nothing.
pub type Records = imbl::OrdMap<Key, EndpointRecord>;

#[derive(Debug)]
pub struct EndpointStore {
    path: PathBuf,
    /// Persistent (structure-sharing): the node's read view takes a copy after every change
    /// at no cost.
    records: Records,
    /// Released addresses in quarantine → when (Unix seconds), persisted in `released.json`.
    released: BTreeMap<Ipv4Addr, u64>,
    /// How the record was found at open.
    opened: Opened,
}

/// What `EndpointStore::open` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    Read,
    /// No `endpoints.json`: a new node, or a lost file. Rebuilt from the kernel (nothing there
    /// on a new node).
    Missing,
    /// Unreadable; moved aside to `kept` and rebuilt from the kernel.
    Corrupt {
        kept: PathBuf,
        error: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Released {
    ip: Ipv4Addr,
    released_unix: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("writing {path}: the state directory's filesystem is full (no space left on device)")]
    Full { path: PathBuf },
    #[error("another weir-agent (pid {holder}) holds {path}: one agent per node")]
    Locked { path: PathBuf, holder: String },
}

impl EndpointStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("endpoints.json");
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Write { path: dir.to_owned(), source })?;
        let (records, opened) = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<EndpointRecord>>(&bytes) {
                Ok(list) => {
                    (list.into_iter().map(|r| ((r.container_id.clone(), r.ifname.clone()), r)).collect(), Opened::Read)
                }
                Err(e) => {
                    // Kept for a post-mortem; the record is rebuilt from what the kernel holds.
                    let kept = path.with_extension(format!("json.corrupt-{}", std::process::id()));
                    std::fs::rename(&path, &kept).map_err(|source| StoreError::Write { path: kept.clone(), source })?;
                    (Records::new(), Opened::Corrupt { kept, error: e.to_string() })
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Records::new(), Opened::Missing),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        // The quarantine is a safety margin, not a record: an unreadable one is started afresh.
        let released = match std::fs::read(dir.join("released.json")) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Released>>(&bytes) {
                Ok(list) => list.into_iter().map(|r| (r.ip, r.released_unix)).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "released.json is unreadable; the address quarantine starts empty");
                    BTreeMap::new()
                }
            },
            Err(_) => BTreeMap::new(),
        };
        ensure_reserve(&dir.join(RESERVE));
        Ok(Self { path, records, released, opened })
    }

    /// What the open found; anything but `Read` asks for a rebuild from the kernel.
    pub fn opened(&self) -> &Opened {
        &self.opened
    }

    /// Replaces the records with ones rebuilt from the kernel, persisted; the store reads as
    /// found from then on.
    pub fn rebuilt(&mut self, records: Vec<EndpointRecord>) -> Result<(), StoreError> {
        self.records = records.into_iter().map(|r| ((r.container_id.clone(), r.ifname.clone()), r)).collect();
        self.save()?;
        self.opened = Opened::Read;
        Ok(())
    }

    /// Addresses in quarantine and when they were released (Unix seconds).
    pub fn released(&self) -> &BTreeMap<Ipv4Addr, u64> {
        &self.released
    }

    /// Puts `ip` in quarantine from `now` (dropping entries older than `quarantine`), persisted.
    pub fn release(&mut self, ip: Ipv4Addr, now: u64, quarantine: std::time::Duration) -> Result<(), StoreError> {
        self.released.retain(|_, t| now.saturating_sub(*t) < quarantine.as_secs());
        if quarantine.is_zero() {
            return Ok(());
        }
        self.released.insert(ip, now);
        let list: Vec<Released> = self.released.iter().map(|(ip, t)| Released { ip: *ip, released_unix: *t }).collect();
        let path = self.path.with_file_name("released.json");
        write_atomic(
            &path,
            &serde_json::to_vec(&list)
                .map_err(|e| StoreError::Write { path: path.clone(), source: std::io::Error::other(e) })?,
        )
    }

    pub fn get(&self, container_id: &str, ifname: &str) -> Option<&EndpointRecord> {
        self.records.get(&(container_id.to_owned(), ifname.to_owned()))
    }

    /// Every record, as of now (for the read view: later changes do not show in it).
    pub fn records(&self) -> Records {
        self.records.clone()
    }

    pub fn all(&self) -> impl Iterator<Item = &EndpointRecord> {
        self.records.values()
    }

    pub fn used_ips(&self) -> BTreeSet<Ipv4Addr> {
        self.records.values().map(|r| r.ip).collect()
    }

    /// Inserts and persists; on a write failure the in-memory state is rolled back.
    pub fn insert(&mut self, rec: EndpointRecord) -> Result<(), StoreError> {
        let key = (rec.container_id.clone(), rec.ifname.clone());
        let old = self.records.insert(key.clone(), rec);
        self.save().inspect_err(|_| {
            match &old {
                Some(o) => self.records.insert(key.clone(), o.clone()),
                None => self.records.remove(&key),
            };
        })
    }

    pub fn remove(&mut self, container_id: &str, ifname: &str) -> Result<Option<EndpointRecord>, StoreError> {
        let key = (container_id.to_owned(), ifname.to_owned());
        let Some(old) = self.records.remove(&key) else { return Ok(None) };
        match self.save_with(true) {
            Ok(()) => Ok(Some(old)),
            Err(e) => {
                self.records.insert(key, old);
                Err(e)
            }
        }
    }

    fn save(&self) -> Result<(), StoreError> {
        self.save_with(false)
    }

    /// Writes the records. A write that only shrinks the store (`shrinking`: a DEL) may free
    /// the reserve when the filesystem is full, so that removing a pod never fails for want of
    /// space; an ADD never uses it and fails with `StoreError::Full`.
    fn save_with(&self, shrinking: bool) -> Result<(), StoreError> {
        let list: Vec<&EndpointRecord> = self.records.values().collect();
        let bytes = serde_json::to_vec_pretty(&list)
            .map_err(|e| StoreError::Write { path: self.path.clone(), source: std::io::Error::other(e) })?;
        let reserve = self.path.with_file_name(RESERVE);
        match write_atomic(&self.path, &bytes) {
            Err(StoreError::Full { .. }) if shrinking && reserve.exists() => {
                tracing::warn!(reserve = %reserve.display(), "state directory full: freeing the reserve to record a removal");
                std::fs::remove_file(&reserve).map_err(|source| StoreError::Write { path: reserve.clone(), source })?;
                write_atomic(&self.path, &bytes)
            }
            Ok(()) => {
                ensure_reserve(&reserve);
                Ok(())
            }
            r => r,
        }
    }
}

/// A file of zeros kept beside the store: freed when a removal meets a full filesystem.
const RESERVE: &str = "reserve";
/// Room for the record of ~500 endpoints, more than a node runs.
const RESERVE_BYTES: usize = 256 * 1024;

/// Creates the reserve if it is missing (best effort: a full filesystem gets it back later).
fn ensure_reserve(path: &Path) {
    if path.exists() {
        return;
    }
    let tmp = path.with_extension("tmp");
    let made = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&vec![0u8; RESERVE_BYTES]).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Write to a temporary file, fsync, rename over `path`, fsync the directory (so the rename
/// itself survives a power loss).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let err = |source: std::io::Error| {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            StoreError::Full { path: path.to_owned() }
        } else {
            StoreError::Write { path: path.to_owned(), source }
        }
    };
    let tmp = path.with_extension("json.tmp");
    let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}

/// The state directory's lock: one agent per node. Held (an exclusive `flock`) for as long as
/// the returned file is open; a second agent fails at start naming the holder, before it
/// touches the socket, the store or the datapath.
pub fn lock_instance(dir: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::fd::AsRawFd as _;
    let path = dir.join("agent.lock");
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Write { path: dir.to_owned(), source })?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::Write { path: path.clone(), source })?;
    // SAFETY: flock on an fd this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        return Err(StoreError::Locked { path, holder: holder.trim().to_owned() });
    }
    let pid = std::process::id().to_string();
    f.set_len(0).and_then(|()| f.write_all(pid.as_bytes())).map_err(|source| StoreError::Write { path, source })?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, ip: [u8; 4]) -> EndpointRecord {
        EndpointRecord {
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            pod_namespace: "default".into(),
            pod_name: id.into(),
            pod_uid: String::new(),
            host_ifname: format!("lxc{id}"),
            host_ifindex: 9,
            host_mac: [2, 0, 0, 0, 0, 1],
            pod_mac: [2, 0, 0, 0, 0, 2],
            identity_unknown: false,
            ip: Ipv4Addr::from(ip),
            mtu: 1500,
        }
    }

    #[test]
    fn survives_a_restart_and_tracks_used_addresses() {
        let dir = std::env::temp_dir().join(format!("weir-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = EndpointStore::open(&dir).expect("open");
        s.insert(rec("a", [10, 0, 0, 2])).expect("insert");
        s.insert(rec("b", [10, 0, 0, 3])).expect("insert");
        assert_eq!(s.remove("a", "eth0").expect("remove").map(|r| r.ip), Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(s.remove("a", "eth0").expect("remove twice"), None);
        s.release(Ipv4Addr::new(10, 0, 0, 2), 1000, std::time::Duration::from_secs(60)).expect("release");
        let mut s = EndpointStore::open(&dir).expect("reopen");
        assert_eq!(s.used_ips().into_iter().collect::<Vec<_>>(), [Ipv4Addr::new(10, 0, 0, 3)]);
        assert_eq!(s.released().get(&Ipv4Addr::new(10, 0, 0, 2)), Some(&1000), "the quarantine survives a restart");
        s.release(Ipv4Addr::new(10, 0, 0, 9), 1061, std::time::Duration::from_secs(60)).expect("release");
        assert_eq!(s.released().keys().copied().collect::<Vec<_>>(), [Ipv4Addr::new(10, 0, 0, 9)], "expired ones go");
        let lock = lock_instance(&dir).expect("first agent");
        let second = lock_instance(&dir).expect_err("a second agent is refused");
        assert!(second.to_string().contains(&std::process::id().to_string()), "{second}");
        drop(lock);
        lock_instance(&dir).expect("free again once the first is gone");
        assert_eq!(s.opened(), &Opened::Read);
        std::fs::write(dir.join("endpoints.json"), "{oops").expect("corrupt");
        let mut s = EndpointStore::open(&dir).expect("a corrupt store opens empty, to be rebuilt");
        let Opened::Corrupt { kept, .. } = s.opened().clone() else { panic!("{:?}", s.opened()) };
        assert_eq!(std::fs::read_to_string(&kept).expect("kept aside"), "{oops");
        assert_eq!(s.all().count(), 0);
        s.rebuilt(vec![rec("c", [10, 0, 0, 4])]).expect("rebuilt");
        assert_eq!(EndpointStore::open(&dir).expect("reopen").used_ips().len(), 1);
        std::fs::remove_file(dir.join("endpoints.json")).expect("lose it");
        assert_eq!(EndpointStore::open(&dir).expect("open").opened(), &Opened::Missing);
        std::fs::remove_dir_all(&dir).ok();
    }
}
