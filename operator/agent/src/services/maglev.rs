//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, §3.4) for the per-packet load
//! balancer: every node builds the same table from the same backends, so any node sends a flow
//! to the same backend, and a backend change remaps few flows beyond the changed backend's.
use weir_bpf_common::{MaglevTable, MAGLEV_M};

fn fnv1a(seed: u64, s: &str) -> u64 {
    let mut h = seed;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The lookup table for `backends` (by name, e.g. `ip:port`): slot → index into `backends`.
/// The table depends on the names only, not on their order (they are filled in sorted order),
/// so the agent may keep each backend at its set slot across updates. Empty input gives an
/// all-zero table (unused: a frontend without backends is refused before any lookup).
pub fn table<S: AsRef<str>>(backends: &[S]) -> MaglevTable {
    let mut t = MaglevTable::default();
    let n = backends.len();
    if n == 0 {
        return t;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| backends[*a].as_ref().cmp(backends[*b].as_ref()));
    let m = MAGLEV_M as u64;
    let perm: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let b = backends[i].as_ref();
            let offset = fnv1a(0xcbf2_9ce4_8422_2325, b) % m;
            let skip = fnv1a(0x8422_2325_cbf2_9ce4, b) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut owner: Vec<Option<u16>> = vec![None; MAGLEV_M];
    let mut next = vec![0u64; n];
    let mut filled = 0;
    'fill: loop {
        for (j, (offset, skip)) in perm.iter().enumerate() {
            let mut c = ((offset + next[j] * skip) % m) as usize;
            while owner[c].is_some() {
                next[j] += 1;
                c = ((offset + next[j] * skip) % m) as usize;
            }
            owner[c] = Some(order[j] as u16);
            next[j] += 1;
            filled += 1;
            if filled == MAGLEV_M {
                break 'fill;
            }
        }
    }
    for (slot, o) in t.slots.iter_mut().zip(owner) {
        *slot = o.unwrap_or(0);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.244.{}.{}:8080", i / 200, i % 200 + 2)).collect()
    }

    #[test]
    fn balanced_and_deterministic() {
        for n in [1, 2, 3, 7, 16, 300, 1024] {
            let t = table(&names(n));
            assert_eq!(t, table(&names(n)));
            let mut per = vec![0usize; n];
            for s in t.slots {
                per[s as usize] += 1;
            }
            let (lo, hi) = (per.iter().min().copied().unwrap_or(0), per.iter().max().copied().unwrap_or(0));
            assert!(hi - lo <= 1, "n={n}: slots per backend {per:?}");
        }
    }

    /// Removing one backend of 16 moves that backend's flows and at most 1 % of the others.
    #[test]
    fn a_backend_change_moves_few_other_flows() {
        let all = names(16);
        let before = table(&all);
        let removed = 5;
        let rest: Vec<&String> = all.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, b)| b).collect();
        let after = table(&rest);
        let (mut others, mut moved) = (0, 0);
        for (b, a) in before.slots.iter().zip(after.slots.iter()) {
            if *b as usize == removed {
                continue;
            }
            others += 1;
            if all[*b as usize] != *rest[*a as usize] {
                moved += 1;
            }
        }
        let share = moved as f64 / others as f64;
        assert!(share <= 0.01, "{moved} of {others} flows of unchanged backends moved ({:.2} %)", share * 100.0);
    }

    /// The table names the same backend in every slot whatever order the names come in.
    #[test]
    fn independent_of_the_order_of_names() {
        let all = names(40);
        let mut shuffled = all.clone();
        shuffled.reverse();
        shuffled.swap(3, 17);
        let (a, b) = (table(&all), table(&shuffled));
        for (x, y) in a.slots.iter().zip(b.slots.iter()) {
            assert_eq!(all[*x as usize], shuffled[*y as usize]);
        }
    }
}
