//! Summary statistics for latency samples.

use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub n: usize,
    pub mean_ms: f64,
    pub stdev_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

/// Summarizes samples given in milliseconds (sample standard deviation; nearest-rank
/// percentiles).
pub fn summarize(samples_ms: &[f64]) -> Summary {
    if samples_ms.is_empty() {
        return Summary::default();
    }
    let n = samples_ms.len();
    let mean = samples_ms.iter().sum::<f64>() / n as f64;
    let var = if n > 1 {
        samples_ms.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    let mut sorted = samples_ms.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| sorted[(((p / 100.0) * n as f64).ceil() as usize).clamp(1, n) - 1];
    Summary {
        n,
        mean_ms: mean,
        stdev_ms: var.sqrt(),
        p50_ms: pct(50.0),
        p99_ms: pct(99.0),
        min_ms: sorted[0],
        max_ms: sorted[n - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize(&samples);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.mean_ms, 50.5);
        assert_eq!(summarize(&[3.0]).stdev_ms, 0.0);
    }
}
