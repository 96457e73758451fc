//! Order statistics over a sample of durations (in milliseconds).

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Summarises a sample; `None` when it is empty. NaNs are dropped.
pub fn summarize(mut v: Vec<f64>) -> Option<Summary> {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    };
    Some(Summary {
        n,
        min: v[0],
        median,
        p90: nearest_rank(&v, 0.90),
        p99: nearest_rank(&v, 0.99),
        max: v[n - 1],
        mean: v.iter().sum::<f64>() / n as f64,
    })
}

/// The nearest-rank percentile of a sorted, non-empty sample: the smallest
/// value with at least `q` of the sample at or below it.
fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let rank = (q * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Rounds to microsecond precision so the JSON stays readable.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `a / b` rounded, or null when it is meaningless.
pub fn ratio(a: f64, b: f64) -> Value {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        json!(round3(a / b))
    } else {
        Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let s = summarize((1..=20).map(f64::from).collect()).unwrap();
        assert_eq!(s.n, 20);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.median, 10.5);
        assert_eq!(s.p90, 18.0);
        assert_eq!(s.p99, 20.0);
        assert_eq!(s.max, 20.0);
        assert_eq!(s.mean, 10.5);
    }

    #[test]
    fn odd_and_tiny_samples() {
        let s = summarize(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.p90, s.min), (2.0, 3.0, 1.0));
        let s = summarize(vec![7.0]).unwrap();
        assert_eq!((s.median, s.p90, s.p99), (7.0, 7.0, 7.0));
        assert!(summarize(vec![]).is_none());
        assert!(summarize(vec![f64::NAN]).is_none());
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(3.0, 2.0), json!(1.5));
        assert_eq!(ratio(1.0, 0.0), Value::Null);
    }
}
