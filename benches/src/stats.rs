//! Order statistics over sorted samples: nearest-rank on the sample index `(n - 1) · p`,
//! rounded, which is what every bench reports as p50 / p99.

/// A sample value: durations in ns or µs (integers) and derived figures (floats).
pub trait Sample: Copy {
    fn as_f64(self) -> f64;
}

macro_rules! sample {
    ($($t:ty),*) => { $(impl Sample for $t { fn as_f64(self) -> f64 { self as f64 } })* };
}
sample!(u32, u64, usize, f64);

/// The `p` quantile (0.0–1.0) of `sorted` (ascending); NaN when there are no samples.
pub fn quantile<T: Sample>(sorted: &[T], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_f64()
}

/// The median of `values` (NaN when empty); the mean of the two middle values when even.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Of several rounds of samples (each sorted), the round whose median is the median of the
/// rounds' medians (an odd number of rounds gives one of them exactly).
pub fn median_round<T: Sample>(mut rounds: Vec<Vec<T>>) -> Vec<T> {
    if rounds.is_empty() {
        return Vec::new();
    }
    rounds.sort_by(|a, b| quantile(a, 0.5).total_cmp(&quantile(b, 0.5)));
    let mid = rounds.len() / 2;
    rounds.swap_remove(mid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 51.0); // index round(99 · 0.5) = 50
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert!(quantile::<u32>(&[], 0.5).is_nan());
    }

    #[test]
    fn medians_of_values_and_of_rounds() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
        let rounds = vec![vec![10u32, 11, 12], vec![1, 2, 3], vec![5, 6, 7]];
        assert_eq!(median_round(rounds), vec![5, 6, 7]);
    }
}
