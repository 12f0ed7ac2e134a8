//! Summary statistics over benchmark samples.
//!
//! Percentiles use linear interpolation between the closest ranks (Hyndman & Fan
//! type 7, the default of R and NumPy): for `p` in `[0, 1]` the rank is `p·(n−1)`
//! over the sorted samples, so the median of an even count is the mean of the two
//! middle values.

use serde::Serialize;

/// Summary of one metric over the runs that reached it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Smallest sample.
    pub min: f64,
    /// 25th percentile.
    pub p25: f64,
    /// 50th percentile.
    pub median: f64,
    /// 75th percentile.
    pub p75: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Largest sample.
    pub max: f64,
}

impl Summary {
    /// Summarises `samples` (any order; NaNs are dropped); `None` when empty.
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(Summary {
            n,
            mean: v.iter().sum::<f64>() / n as f64,
            min: v[0],
            p25: percentile_sorted(&v, 0.25),
            median: percentile_sorted(&v, 0.5),
            p75: percentile_sorted(&v, 0.75),
            p90: percentile_sorted(&v, 0.9),
            max: v[n - 1],
        })
    }
}

/// The `p`-quantile (`p` in `[0, 1]`, clamped) of ascending `sorted`; NaN when empty.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return f64::NAN;
    };
    let rank = p.clamp(0.0, 1.0) * last as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let (a, b) = (sorted[lo.min(last)], sorted[hi.min(last)]);
    a + (b - a) * (rank - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn odd_count() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!(s.n, 5);
        assert!(close(s.median, 3.0));
        assert!(close(s.min, 1.0) && close(s.max, 5.0));
        assert!(close(s.mean, 3.0));
        // rank 0.9·4 = 3.6 → 4 + 0.6·(5 − 4)
        assert!(close(s.p90, 4.6));
        assert!(close(s.p25, 2.0) && close(s.p75, 4.0));
    }

    #[test]
    fn even_count_and_p90_of_1_to_10() {
        let v: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert!(close(s.median, 5.5));
        // rank 0.9·9 = 8.1 → 9 + 0.1·(10 − 9)
        assert!(close(s.p90, 9.1));
        assert!(close(s.p25, 3.25));
    }

    #[test]
    fn p90_of_1_to_101_is_91() {
        let v: Vec<f64> = (1..=101).map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert!(close(s.median, 51.0));
        assert!(close(s.p90, 91.0));
    }

    #[test]
    fn single_empty_and_nan() {
        let s = Summary::of(&[7.0]).unwrap();
        assert!(close(s.median, 7.0) && close(s.p90, 7.0) && close(s.min, s.max));
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[f64::NAN]).is_none());
        assert!(close(Summary::of(&[f64::NAN, 2.0]).unwrap().median, 2.0));
        assert!(percentile_sorted(&[], 0.5).is_nan());
        assert!(close(percentile_sorted(&[1.0, 2.0], 7.0), 2.0));
    }
}
