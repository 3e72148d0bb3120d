//! Robust statistics for baselines: median and median absolute deviation.
//!
//! A mean and standard deviation are pulled up by the very outliers the
//! review looks for; the median and the MAD ignore up to half the values.

/// Median and MAD of `v` (reordered in place); `(0, 0)` for an empty slice.
pub fn median_mad(v: &mut [u32]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mut x: Vec<f64> = v.iter().map(|n| f64::from(*n)).collect();
    let median = median_of(&mut x);
    for d in &mut x {
        *d = (*d - median).abs();
    }
    (median, median_of(&mut x))
}

fn median_of(v: &mut [f64]) -> f64 {
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    let mid = n / 2;
    let (lower, hi, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let hi = *hi;
    if n % 2 == 1 {
        return hi;
    }
    let lo = lower.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo + hi) / 2.0
}

/// A histogram of small counts (`hist[n]` = how many buckets had `n`
/// distinct patients): the baselines keep this instead of every bucket, so
/// their memory is bounded by the largest count, not by the time span.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram(Vec<u64>);

impl Histogram {
    pub fn add(&mut self, n: u32) {
        self.add_times(n, 1);
    }

    fn add_times(&mut self, n: u32, times: u64) {
        let i = n as usize;
        if self.0.len() <= i {
            self.0.resize(i + 1, 0);
        }
        self.0[i] += times;
    }

    /// Add every count of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (n, times) in other.0.iter().enumerate() {
            if *times > 0 {
                self.add_times(n as u32, *times);
            }
        }
    }

    /// How many counts were added.
    pub fn len(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many counts satisfy `f`.
    pub fn count_where(&self, f: impl Fn(u32) -> bool) -> u64 {
        self.0
            .iter()
            .enumerate()
            .filter(|(n, _)| f(*n as u32))
            .map(|(_, t)| *t)
            .sum()
    }

    /// Median and MAD of the counts (as [`median_mad`] of all of them).
    pub fn median_mad(&self) -> (f64, f64) {
        let values: Vec<(f64, u64)> = self
            .0
            .iter()
            .enumerate()
            .filter(|(_, t)| **t > 0)
            .map(|(n, t)| (n as f64, *t))
            .collect();
        let median = weighted_median(values.clone());
        let deviations = values.into_iter().map(|(v, t)| ((v - median).abs(), t)).collect();
        (median, weighted_median(deviations))
    }
}

/// The median of values given with their multiplicities.
fn weighted_median(mut v: Vec<(f64, u64)>) -> f64 {
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n: u64 = v.iter().map(|(_, t)| t).sum();
    if n == 0 {
        return 0.0;
    }
    let at = |rank: u64| {
        let mut seen = 0;
        for (value, times) in &v {
            seen += times;
            if rank < seen {
                return *value;
            }
        }
        0.0
    };
    if n % 2 == 1 {
        at(n / 2)
    } else {
        (at(n / 2 - 1) + at(n / 2)) / 2.0
    }
}

/// `median + k · max(1.4826 · MAD, 1)`: the MAD scaled to estimate a
/// standard deviation for normal data, and at least 1 so that a perfectly
/// regular baseline (MAD 0) does not flag one extra patient.
pub fn threshold(median: f64, mad: f64, k: f64) -> f64 {
    median + k * (1.4826 * mad).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_mad_ignore_outliers() {
        let mut v = vec![10, 12, 9, 11, 10, 500];
        let (m, mad) = median_mad(&mut v);
        assert_eq!(m, 10.5);
        assert_eq!(mad, 1.0);
        assert!(threshold(m, mad, 5.0) < 20.0);
        let mut odd = vec![3, 1, 2];
        assert_eq!(median_mad(&mut odd), (2.0, 1.0));
        assert_eq!(median_mad(&mut []), (0.0, 0.0));
    }

    #[test]
    fn the_histogram_gives_the_median_and_mad_of_all_its_counts() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for len in [1usize, 2, 3, 10, 101, 1000] {
            let mut v = Vec::new();
            let mut h = Histogram::default();
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let n = (x % 40) as u32 + if x.is_multiple_of(97) { 500 } else { 0 };
                v.push(n);
                h.add(n);
            }
            let mut merged = Histogram::default();
            merged.merge(&h);
            assert_eq!(merged.len(), len as u64);
            assert_eq!(merged.median_mad(), median_mad(&mut v), "{len}");
        }
        assert_eq!(Histogram::default().median_mad(), (0.0, 0.0));
    }

    #[test]
    fn a_constant_baseline_still_has_a_margin() {
        let mut v = vec![4; 30];
        let (m, mad) = median_mad(&mut v);
        assert_eq!((m, mad), (4.0, 0.0));
        assert_eq!(threshold(m, mad, 5.0), 9.0);
    }
}
