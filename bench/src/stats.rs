//! Latency samples and the figures drawn from them.

use std::time::Duration;

/// Latencies in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Samples(pub Vec<u64>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_micros() as u64);
    }

    pub fn merge(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Nearest-rank percentile, in milliseconds.
    pub fn pct_ms(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut v = self.0.clone();
        v.sort_unstable();
        let rank = ((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1] as f64 / 1000.0
    }

    pub fn median_ms(&self) -> f64 {
        self.pct_ms(50.0)
    }

    /// The first sample, in milliseconds.
    pub fn first_ms(&self) -> f64 {
        self.0
            .first()
            .map(|m| *m as f64 / 1000.0)
            .unwrap_or(f64::NAN)
    }

    pub fn max_ms(&self) -> f64 {
        self.0
            .iter()
            .max()
            .map(|m| *m as f64 / 1000.0)
            .unwrap_or(f64::NAN)
    }
}

/// A throughput run: how many requests in how long, with their latencies.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Samples,
}

impl Throughput {
    pub fn per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub fn describe(&self) -> String {
        format!(
            "{:.0}/s ({} ok, {} errors in {:.2} s; p50 {:.2} ms, p99 {:.2} ms)",
            self.per_sec(),
            self.ok,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.latency.pct_ms(50.0),
            self.latency.pct_ms(99.0)
        )
    }
}
