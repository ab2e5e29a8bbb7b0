//! Which process bound which port in which pod, so that connections a pod accepts name a
//! process too.
//!
//! The cgroup `connect4`/`sendmsg4` hooks see the process that opens a connection; nothing that
//! runs in an accepting process's context can be attached here (kprobes, fentry and BPF-LSM are
//! refused; `sockops` runs in softirq). The `post_bind4` hook does run in the binding process's
//! context: the datapath reports each bind (`EVENT_BIND`: protocol, port, process, cgroup id)
//! and a connection accepted on that port in that pod is attributed to the process that bound
//! it — for a server that forks its workers after binding (nginx, gunicorn), the parent, which
//! the record says (`Process::bound`).
//!
//! The pod of a bind comes from its cgroup, the exec audit's way ([`super::exec::Cgroups`]),
//! resolved when a connection asks (the cgroup walk runs at most once a second, and a
//! container's first bind may come before the walk has seen its cgroup). Bounded: at most
//! [`PORTS`] (protocol, port) pairs, those bound or last used longest ago forgotten first (a
//! port that keeps naming accepted connections outlives one-off binds), and [`PER_PORT`] binds
//! of one port (the newest kept), and [`PER_CGROUP`] ports of one cgroup (those it bound or used
//! longest ago forgotten first: a container that binds in a loop, or a resolver's per-query
//! source ports, pushes out its own one-off binds, not other containers' listeners); every bind
//! forgotten is counted. Many containers that bind in a loop together can still push other
//! pods' idle ports out: attribution is best effort, never a verdict. A bind that replaces an
//! older one of the same cgroup and port takes its place: the newest binder of a port wins.
use foldhash::HashMap;

use super::{bounded::Bounded, exec};

/// (protocol, port) pairs remembered at most.
pub const PORTS: usize = 8192;
/// Binds of one (protocol, port) remembered at most (one per container that bound it).
pub const PER_PORT: usize = 8;
/// Ports of one cgroup (container) remembered at most: far more than a server listens on.
pub const PER_CGROUP: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binder {
    pub pid: u32,
    pub command: String,
}

struct Bind {
    cgroup: u64,
    binder: Binder,
    /// The pod UIDs its cgroup path names, once found (empty: given up on).
    pods: Option<Vec<String>>,
    /// Lookups of its cgroup that failed: after [`TRIES`] the bind is given up on (its cgroup
    /// is gone, or outside the pod cgroup root) instead of costing every connection a lookup.
    tries: u8,
}

/// Failed cgroup lookups before a bind is given up on.
const TRIES: u8 = 3;

pub struct Listeners {
    by_port: Bounded<(u8, u16), Vec<Bind>>,
    /// Each cgroup's ports in `by_port`, in the order they were bound or last named a process.
    by_cgroup: HashMap<u64, Bounded<(u8, u16), ()>>,
}

impl Default for Listeners {
    fn default() -> Self {
        Self { by_port: Bounded::new(PORTS), by_cgroup: HashMap::default() }
    }
}

/// Forgets `port` of `cgroup` in the per-cgroup index (its bind left `by_port`).
fn unindex(by_cgroup: &mut HashMap<u64, Bounded<(u8, u16), ()>>, cgroup: u64, port: (u8, u16)) {
    if let Some(ports) = by_cgroup.get_mut(&cgroup) {
        ports.remove(&port);
        if ports.is_empty() {
            by_cgroup.remove(&cgroup);
        }
    }
}

impl Listeners {
    pub fn len(&self) -> usize {
        self.by_port.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_port.is_empty()
    }

    /// Whether any bind of `port` over `proto` is known (a cheap test before finding the pod).
    pub fn has(&self, proto: u8, port: u16) -> bool {
        self.by_port.contains(&(proto, port))
    }

    /// A process in cgroup `cgroup` bound `port` (`proto`: 6 or 17). Returns how many binds were
    /// forgotten to make room.
    pub fn bound(&mut self, proto: u8, port: u16, cgroup: u64, binder: Binder) -> u64 {
        let mut forgotten = 0;
        let key = (proto, port);
        let binds = self.by_port.get_or_insert_with(key, Vec::new);
        binds.retain(|b| b.cgroup != cgroup);
        if binds.len() >= PER_PORT {
            let old = binds.remove(0);
            unindex(&mut self.by_cgroup, old.cgroup, key);
            forgotten += 1;
        }
        binds.push(Bind { cgroup, binder, pods: None, tries: 0 });
        let by_cgroup = &mut self.by_cgroup;
        self.by_port.trim(|port, binds| {
            forgotten += binds.len() as u64;
            for b in binds {
                unindex(by_cgroup, b.cgroup, port);
            }
        });
        // This cgroup's own oldest port goes when it has too many.
        let ports = self.by_cgroup.entry(cgroup).or_insert_with(|| Bounded::new(PER_CGROUP));
        if ports.contains(&key) {
            ports.touch(&key);
        } else {
            ports.insert(key, ());
        }
        let mut own = Vec::new();
        ports.trim(|port, ()| own.push(port));
        for port in own {
            if let Some(binds) = self.by_port.get_mut(&port) {
                let before = binds.len();
                binds.retain(|b| b.cgroup != cgroup);
                forgotten += (before - binds.len()) as u64;
                if binds.is_empty() {
                    self.by_port.remove(&port);
                }
            }
        }
        forgotten
    }

    /// The process that bound `port` in the pod whose UID is `pod_uid`, newest bind first.
    pub fn binder(&mut self, proto: u8, port: u16, pod_uid: &str, cgroups: &mut exec::Cgroups) -> Option<Binder> {
        if pod_uid.is_empty() {
            return None;
        }
        let binds = self.by_port.get_mut(&(proto, port))?;
        let mut found = None;
        for b in binds.iter_mut().rev() {
            if b.pods.is_none() {
                b.pods = cgroups.path_of(b.cgroup).map(exec::pod_uids_in);
                if b.pods.is_none() {
                    b.tries += 1;
                    if b.tries >= TRIES {
                        b.pods = Some(Vec::new());
                    }
                }
            }
            if b.pods.as_ref().is_some_and(|uids| uids.iter().any(|u| u == pod_uid)) {
                found = Some((b.cgroup, b.binder.clone()));
                break;
            }
        }
        // A port that names a process stays: binds made and never used (a client's, a bind
        // flood) are forgotten before it.
        if let Some((cgroup, _)) = &found {
            self.by_port.touch(&(proto, port));
            if let Some(ports) = self.by_cgroup.get_mut(cgroup) {
                ports.touch(&(proto, port));
            }
        }
        found.map(|(_, b)| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binder(pid: u32) -> Binder {
        Binder { pid, command: format!("srv{pid}") }
    }

    #[test]
    fn a_port_names_the_process_of_its_pod_that_bound_it_last() {
        let root = std::env::temp_dir().join(format!("weir-listeners-{}", std::process::id()));
        let a = root.join("kubepods/podaaaaaaaa-0000-0000-0000-000000000001/c1");
        let b = root.join("kubepods/podbbbbbbbb-0000-0000-0000-000000000002/c2");
        let host = root.join("system");
        for d in [&a, &b, &host] {
            std::fs::create_dir_all(d).expect("cgroup dir");
        }
        let ino = |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("meta"));
        let mut cgroups = exec::Cgroups::new(Some(root.clone()));
        let mut l = Listeners::default();
        let (pod_a, pod_b) = ("aaaaaaaa-0000-0000-0000-000000000001", "bbbbbbbb-0000-0000-0000-000000000002");
        assert_eq!(l.bound(6, 80, ino(&a), binder(10)), 0);
        assert_eq!(l.bound(6, 80, ino(&b), binder(20)), 0);
        assert_eq!(l.bound(6, 80, ino(&host), binder(30)), 0);
        assert_eq!(l.binder(6, 80, pod_a, &mut cgroups), Some(binder(10)));
        assert_eq!(l.binder(6, 80, pod_b, &mut cgroups), Some(binder(20)));
        // Another protocol, another port, a pod that bound nothing there: nobody.
        assert_eq!(l.binder(17, 80, pod_a, &mut cgroups), None);
        assert_eq!(l.binder(6, 81, pod_a, &mut cgroups), None);
        assert_eq!(l.binder(6, 80, "cccccccc-0000-0000-0000-000000000003", &mut cgroups), None);
        assert_eq!(l.binder(6, 80, "", &mut cgroups), None);
        // A new bind of the same port in the same container replaces the old one.
        l.bound(6, 80, ino(&a), binder(11));
        assert_eq!(l.binder(6, 80, pod_a, &mut cgroups), Some(binder(11)));
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn binds_are_bounded_per_port_and_in_all_and_counted_when_forgotten() {
        let mut l = Listeners::default();
        let mut forgotten = 0;
        for cgroup in 0..PER_PORT as u64 + 3 {
            forgotten += l.bound(6, 80, cgroup, binder(1));
        }
        assert_eq!(forgotten, 3);
        // (Each port from a container of its own: one container is held to PER_CGROUP.)
        for port in 0..PORTS as u16 + 5 {
            forgotten += l.bound(17, port, 100 + u64::from(port), binder(1));
        }
        // The oldest pair (TCP 80, with its PER_PORT binds) went first, then five UDP ports.
        assert_eq!(forgotten, 3 + PER_PORT as u64 + 5);
        assert_eq!(l.len(), PORTS);
    }

    #[test]
    fn a_container_that_binds_in_a_loop_pushes_out_only_its_own_ports() {
        let mut l = Listeners::default();
        let (quiet, loud) = (1, 2);
        assert_eq!(l.bound(6, 80, quiet, binder(1)), 0);
        let mut forgotten = 0;
        for port in 1000..1000 + PORTS as u16 * 2 {
            forgotten += l.bound(17, port, loud, binder(2));
        }
        // The loud container keeps its newest PER_CGROUP ports; the quiet one's idle listener,
        // bound before them all, is still known.
        assert_eq!(forgotten, PORTS as u64 * 2 - PER_CGROUP as u64);
        assert_eq!(l.len(), PER_CGROUP + 1);
        assert!(l.has(6, 80));
        assert!(l.has(17, 1000 + PORTS as u16 * 2 - 1));
        assert!(!l.has(17, 1000));
        // A port both bound: the loud container forgetting its own bind leaves the other's.
        l.bound(6, 443, quiet, binder(1));
        l.bound(6, 443, loud, binder(2));
        for port in 30000..30000 + PER_CGROUP as u16 {
            l.bound(17, port, loud, binder(2));
        }
        let binds = l.by_port.get_mut(&(6, 443)).expect("kept");
        assert_eq!(binds.iter().map(|b| b.cgroup).collect::<Vec<_>>(), vec![quiet]);
        assert_eq!(l.by_cgroup.get(&loud).map(|p| p.len()), Some(PER_CGROUP));
    }

    #[test]
    fn a_port_in_use_outlives_one_off_binds_and_a_gone_cgroup_is_given_up() {
        let root = std::env::temp_dir().join(format!("weir-listeners-use-{}", std::process::id()));
        let a = root.join("podaaaaaaaa-0000-0000-0000-000000000001");
        std::fs::create_dir_all(&a).expect("cgroup dir");
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&a).expect("meta"));
        let mut cgroups = exec::Cgroups::new(Some(root.clone()));
        let pod = "aaaaaaaa-0000-0000-0000-000000000001";
        let mut l = Listeners::default();
        l.bound(6, 80, ino, binder(1));
        // One-off binds (ephemeral ports, of this very container) fill the table; port 80 keeps
        // naming connections (more often than PER_CGROUP binds).
        for port in 1000..1000 + PORTS as u16 * 2 {
            l.bound(17, port, ino, binder(2));
            if port % 100 == 0 {
                assert_eq!(l.binder(6, 80, pod, &mut cgroups), Some(binder(1)), "port {port}");
            }
        }
        assert_eq!(l.binder(6, 80, pod, &mut cgroups), Some(binder(1)));
        // A bind whose cgroup cannot be found is given up after a few lookups.
        l.bound(6, 81, u64::MAX, binder(3));
        for _ in 0..5 {
            assert_eq!(l.binder(6, 81, pod, &mut cgroups), None);
        }
        let b = &l.by_port.get_mut(&(6, 81)).expect("kept")[0];
        assert_eq!((b.tries, b.pods.as_deref()), (TRIES, Some(&[][..])));
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
