//! Percentiles and the other small sums every scenario reports.

use serde::Serialize;

/// The nearest-rank `p`-th percentile (0-100) of `sorted`, which must be
/// sorted ascending; `None` when empty.
pub fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    Some(sorted[index])
}

/// p50 / p99 / max of a set of millisecond values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50_ms: i64,
    pub p99_ms: i64,
    pub max_ms: i64,
}

impl Summary {
    /// `None` when there is nothing to summarise.
    pub fn of(mut values: Vec<i64>) -> Option<Summary> {
        values.sort_unstable();
        Some(Summary {
            count: values.len(),
            p50_ms: percentile(&values, 50.0)?,
            p99_ms: percentile(&values, 99.0)?,
            max_ms: *values.last()?,
        })
    }
}

/// `a / b`, or `None` when `b` is zero (or either is missing).
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// `n / seconds`, per second.
pub fn rate(n: usize, seconds: f64) -> Option<f64> {
    (seconds > 0.0).then(|| n as f64 / seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        // Ten values: p99 is the largest, p50 the fifth.
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!(percentile(&v, 99.0), Some(10));
        assert_eq!(percentile(&v, 50.0), Some(5));
    }

    #[test]
    fn summary_sorts_first() {
        let s = Summary::of(vec![30, -2, 10, 20]).unwrap();
        assert_eq!(
            s,
            Summary {
                count: 4,
                p50_ms: 10,
                p99_ms: 30,
                max_ms: 30
            }
        );
        assert_eq!(Summary::of(Vec::new()), None);
    }

    #[test]
    fn ratio_and_rate_refuse_zero() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(rate(10, 2.0), Some(5.0));
        assert_eq!(rate(10, 0.0), None);
    }
}
