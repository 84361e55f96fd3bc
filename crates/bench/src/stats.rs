//! Latency histograms (HDR, nanoseconds) and the medians of repeated runs.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Longest latency a histogram holds; longer ones are clamped to it.
const MAX_NANOS: u64 = 60_000_000_000;

/// A histogram of latencies in nanoseconds, 3 significant digits, 1 µs to 60 s.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, MAX_NANOS, 3).expect("valid histogram bounds")
}

/// Records one latency (clamped into the histogram's range).
pub fn record(h: &mut Histogram<u64>, latency: Duration) {
    let nanos = u64::try_from(latency.as_nanos()).unwrap_or(MAX_NANOS).clamp(1_000, MAX_NANOS);
    h.saturating_record(nanos);
}

/// The percentiles a report shows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let at = |q: f64| Duration::from_nanos(h.value_at_quantile(q));
        Latency {
            count: h.len(),
            mean: Duration::from_nanos(h.mean() as u64),
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: Duration::from_nanos(h.max()),
        }
    }
}

/// Milliseconds with three decimals, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 })
}

/// The element whose `key` is the median (the lower middle for an even count).
pub fn median_by<T: Clone>(items: &[T], key: impl Fn(&T) -> f64) -> Option<T> {
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted.get(sorted.len().saturating_sub(1) / 2).map(|t| (*t).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut h = histogram();
        for us in 1..=10_000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 10_000);
        let close = |d: Duration, us: f64| (d.as_secs_f64() * 1e6 - us).abs() <= us * 0.001 + 1.0;
        assert!(close(l.p50, 5_000.0), "{:?}", l.p50);
        assert!(close(l.p99, 9_900.0), "{:?}", l.p99);
        assert!(close(l.p999, 9_990.0), "{:?}", l.p999);
        assert!(close(l.max, 10_000.0), "{:?}", l.max);
        assert!(close(l.mean, 5_000.5), "{:?}", l.mean);
    }

    #[test]
    fn out_of_range_latencies_are_clamped_not_lost() {
        let mut h = histogram();
        record(&mut h, Duration::ZERO);
        record(&mut h, Duration::from_secs(3600));
        let l = Latency::of(&h);
        assert_eq!(l.count, 2);
        assert!(l.max >= Duration::from_secs(59));
        assert_eq!(Latency::of(&histogram()), Latency::default());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
        assert_eq!(median_by(&[(1, 9.0), (2, 1.0), (3, 5.0)], |t| t.1), Some((3, 5.0)));
        assert_eq!(median_by(&[(1, 9.0), (2, 1.0)], |t| t.1), Some((2, 1.0)));
        assert_eq!(median_by(&Vec::<(u8, f64)>::new(), |t| t.1), None);
        assert_eq!(ms(Duration::from_micros(1500)), "1.500");
    }
}
