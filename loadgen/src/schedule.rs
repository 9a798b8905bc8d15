//! Open-loop arrival schedules and the small PRNG behind them (and behind the
//! size draw). Pure arithmetic: no clock reads, no executor.
//!
//! A schedule yields the *intended* start of each message as an offset from the
//! run's start. The engine hands them out in order to whichever connection is
//! free; when all are busy the due times pile up and the wait counts in the
//! latency (coordinated omission corrected, as in wrk2).

use crate::config::Arrivals;

/// SplitMix64: small, fast, and good enough for picking sizes and gaps; not for
/// anything secret.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`; equal seeds give equal sequences.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Intended start times of messages, in nanoseconds since the run's start.
#[derive(Debug, Clone)]
pub struct Schedule {
    arrivals: Arrivals,
    /// Messages per second.
    rate: f64,
    /// Mean gap in nanoseconds (1e9 / rate).
    gap_ns: f64,
    /// Messages handed out so far.
    issued: u64,
    /// Poisson: the running sum of gaps.
    poisson_at: f64,
    rng: Rng,
}

impl Schedule {
    /// A schedule of `rate` messages per second; the first is due at 0.
    ///
    /// # Panics
    /// If `rate` is not positive and finite (config validation rejects that first).
    pub fn new(rate: f64, arrivals: Arrivals, seed: u64) -> Schedule {
        assert!(
            rate.is_finite() && rate > 0.0,
            "rate must be positive, got {rate}"
        );
        Schedule {
            arrivals,
            rate,
            gap_ns: 1e9 / rate,
            issued: 0,
            poisson_at: 0.0,
            rng: Rng::new(seed),
        }
    }

    /// The due time of the next message, without taking it.
    pub fn peek(&self) -> u64 {
        match self.arrivals {
            // Computed from the index, not summed, so there is no drift over
            // millions of messages.
            Arrivals::Constant => (self.issued as f64 * 1e9 / self.rate) as u64,
            Arrivals::Poisson => self.poisson_at as u64,
        }
    }

    /// Takes the next message and returns its due time.
    pub fn take(&mut self) -> u64 {
        let due = self.peek();
        self.issued += 1;
        if self.arrivals == Arrivals::Poisson {
            // Exponential gap by inversion; 1 - u is in (0, 1], so ln is finite.
            let u = self.rng.next_f64();
            self.poisson_at += -(1.0 - u).ln() * self.gap_ns;
        }
        due
    }

    /// How many messages are due before `end_ns` and not yet taken.
    pub fn due_before(&self, end_ns: u64) -> u64 {
        let mut probe = self.clone();
        let mut n = 0;
        while probe.peek() < end_ns {
            probe.take();
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_spacing_has_no_drift() {
        let mut s = Schedule::new(3.0, Arrivals::Constant, 1);
        let times: Vec<u64> = (0..4).map(|_| s.take()).collect();
        assert_eq!(times, vec![0, 333_333_333, 666_666_666, 1_000_000_000]);
        let mut s = Schedule::new(7_000.0, Arrivals::Constant, 1);
        for _ in 0..7_000_000 {
            s.take();
        }
        assert_eq!(s.peek(), 1_000_000_000_000); // 1000 s exactly
    }

    #[test]
    fn poisson_mean_rate_and_spread() {
        let rate = 1000.0;
        let mut s = Schedule::new(rate, Arrivals::Poisson, 42);
        let n = 200_000;
        let mut last = s.take();
        let mut gaps = Vec::with_capacity(n);
        for _ in 0..n {
            let t = s.take();
            assert!(t >= last);
            gaps.push((t - last) as f64 / 1e9);
            last = t;
        }
        let mean = gaps.iter().sum::<f64>() / n as f64;
        assert!((mean * rate - 1.0).abs() < 0.01, "mean gap {mean}");
        // Exponential: standard deviation equals the mean.
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((var.sqrt() / mean - 1.0).abs() < 0.02);
        // Same seed, same schedule.
        let mut a = Schedule::new(rate, Arrivals::Poisson, 7);
        let mut b = Schedule::new(rate, Arrivals::Poisson, 7);
        assert!((0..100).all(|_| a.take() == b.take()));
    }

    #[test]
    fn backlog_count() {
        let mut s = Schedule::new(10.0, Arrivals::Constant, 1);
        assert_eq!(s.due_before(1_000_000_000), 10);
        for _ in 0..4 {
            s.take();
        }
        assert_eq!(s.due_before(1_000_000_000), 6);
        assert_eq!(s.due_before(0), 0);
    }

    #[test]
    fn uniform_floats() {
        let mut r = Rng::new(3);
        let xs: Vec<f64> = (0..100_000).map(|_| r.next_f64()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.01);
    }
}
