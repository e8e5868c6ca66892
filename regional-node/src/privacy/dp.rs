//! Differential privacy: an exact discrete Laplace sampler and the noise plan of an aggregate.
//!
//! The sampler follows Canonne, Kamath and Steinke, "The Discrete Gaussian for Differential
//! Privacy" (NeurIPS 2020), Algorithms 1 and 2: every step draws uniform integers and exact
//! Bernoulli trials with rational parameters, so no floating-point arithmetic touches the noise
//! (the attack of Mironov 2012 on textbook Laplace samplers does not apply). Epsilon is a whole
//! number of thousandths ([`Epsilon`]) for the same reason.
//!
//! An aggregate spends its epsilon evenly over the statistic families it releases (interaction
//! count, distinct subjects, NPS histogram, CSAT sum and count, …). Each subject contributes at
//! most `L` interactions (the policy's `max_contributions_per_subject`) and handle times are
//! clamped to `H` seconds, which bounds every family's L1 sensitivity over all groups together.

use domicile_proto::{domain::Epsilon, pb::Metric};
use rand::{Rng, RngCore};

/// A node's noise randomness, shared by its calls. The lock is taken for each draw only
/// ([`SharedRng::draws`]): a release that draws, writes SQL and an audit entry, then draws
/// again never holds it across that I/O, so one release's transaction does not stall
/// another's noise.
#[derive(Debug)]
pub struct SharedRng(std::sync::Mutex<rand_chacha::ChaCha20Rng>);

impl SharedRng {
    /// Seeded from the operating system.
    pub fn from_os_rng() -> Self {
        use rand::SeedableRng;
        Self(std::sync::Mutex::new(
            rand_chacha::ChaCha20Rng::from_os_rng(),
        ))
    }

    /// A source of draws from it, for a noise plan.
    pub fn draws(&self) -> Draws<'_> {
        Draws(&self.0)
    }
}

/// Draws from a [`SharedRng`], each under the lock for that draw only.
#[derive(Debug)]
pub struct Draws<'a>(&'a std::sync::Mutex<rand_chacha::ChaCha20Rng>);

impl Draws<'_> {
    fn with<T>(&self, f: impl FnOnce(&mut rand_chacha::ChaCha20Rng) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl RngCore for Draws<'_> {
    fn next_u32(&mut self) -> u32 {
        self.with(|r| r.next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        self.with(|r| r.next_u64())
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.with(|r| r.fill_bytes(dst))
    }
}

/// `true` with probability `num / den` (`den > 0`), exactly.
fn bernoulli<R: RngCore + ?Sized>(rng: &mut R, num: u64, den: u64) -> bool {
    rng.random_range(0..den) < num
}

/// `true` with probability `exp(-num / den)`, exactly (CKS 2020, Algorithm 1).
fn bernoulli_exp_neg<R: RngCore + ?Sized>(rng: &mut R, num: u64, den: u64) -> bool {
    if num <= den {
        let mut k: u64 = 1;
        while bernoulli(rng, num, den.saturating_mul(k)) {
            k += 1;
        }
        k % 2 == 1
    } else {
        for _ in 0..num / den {
            if !bernoulli_exp_neg(rng, 1, 1) {
                return false;
            }
        }
        bernoulli_exp_neg(rng, num % den, den)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A sample of the discrete Laplace distribution with `P(y) ∝ exp(-|y| · s / t)` over the
/// integers (CKS 2020, Algorithm 2). `s` and `t` must be positive.
pub fn discrete_laplace<R: RngCore + ?Sized>(rng: &mut R, s: u64, t: u64) -> i64 {
    let g = gcd(s, t).max(1);
    let (s, t) = (s / g, t / g);
    loop {
        let u = rng.random_range(0..t);
        if !bernoulli_exp_neg(rng, u, t) {
            continue;
        }
        let mut v: u64 = 0;
        while bernoulli_exp_neg(rng, 1, 1) {
            v += 1;
        }
        let x = u + t * v;
        let y = (x / s) as i64;
        let negative = bernoulli(rng, 1, 2);
        if negative && y == 0 {
            continue;
        }
        return if negative { -y } else { y };
    }
}

/// Noise for a statistic of L1 sensitivity `sensitivity` under `epsilon / share`-DP.
pub fn noise<R: RngCore + ?Sized>(
    rng: &mut R,
    epsilon: Epsilon,
    share: u32,
    sensitivity: u64,
) -> i64 {
    // exp(-|y| ε / (share Δ)) with ε = milli / 1000: s = milli, t = 1000 · share · Δ.
    let t = u64::from(Epsilon::SCALE) * u64::from(share.max(1)) * sensitivity.max(1);
    discrete_laplace(rng, u64::from(epsilon.milli()), t)
}

/// Which statistic families an aggregate releases under noise, and their sensitivities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoisePlan {
    /// The epsilon spent in total.
    pub epsilon: Epsilon,
    /// Contribution bound L: interactions per subject.
    pub max_contributions: u32,
    /// Handle-time clamp H, in seconds.
    pub handle_time_bound: u32,
    /// NPS histogram released.
    pub nps: bool,
    /// CSAT sum and count released.
    pub csat: bool,
    /// CES sum and count released.
    pub ces: bool,
    /// Handle-time sum released.
    pub handle_sum: bool,
    /// Handle-time count released.
    pub handle_count: bool,
}

impl NoisePlan {
    /// The plan for `metrics`. Interaction and distinct-subject counts are always released
    /// (the latter decides which groups meet *k*).
    pub fn new(
        epsilon: Epsilon,
        max_contributions: u32,
        handle_time_bound: u32,
        metrics: &[Metric],
    ) -> Self {
        let has = |m: Metric| metrics.contains(&m);
        Self {
            epsilon,
            max_contributions,
            handle_time_bound,
            nps: has(Metric::Nps),
            csat: has(Metric::CsatMean),
            ces: has(Metric::CesMean),
            handle_sum: has(Metric::HandleTimeMean) || has(Metric::HandleTimeSum),
            handle_count: has(Metric::HandleTimeMean),
        }
    }

    /// Number of families the epsilon is split over.
    pub fn families(&self) -> u32 {
        2 + u32::from(self.nps)
            + 2 * u32::from(self.csat)
            + 2 * u32::from(self.ces)
            + u32::from(self.handle_sum)
            + u32::from(self.handle_count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared randomness is locked for a draw only: between draws (where a release
    /// writes its SQL and audit entry) another caller can take it at once.
    #[test]
    fn shared_randomness_is_locked_for_each_draw_only() {
        let shared = SharedRng::from_os_rng();
        let mut draws = shared.draws();
        discrete_laplace(&mut draws, 1, 1);
        assert!(shared.0.try_lock().is_ok(), "held after a draw");
        let mut other = shared.draws();
        discrete_laplace(&mut other, 1, 1);
        draws.next_u64();
        assert!(shared.0.try_lock().is_ok(), "held after the other's draws");
    }
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    /// p = exp(-s/t): the distribution is P(y) = (1-p)/(1+p) · p^|y|, with mean 0,
    /// variance 2p/(1-p)², and P(|Y| ≥ k) = 2 p^k / (1+p) for k ≥ 1.
    fn check(s: u64, t: u64, seed: u64) {
        let n = 200_000;
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let samples: Vec<i64> = (0..n).map(|_| discrete_laplace(&mut rng, s, t)).collect();
        let p = (-(s as f64) / t as f64).exp();
        let var = 2.0 * p / (1.0 - p).powi(2);
        let mean = samples.iter().sum::<i64>() as f64 / n as f64;
        let sample_var = samples
            .iter()
            .map(|x| (*x as f64 - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        println!(
            "s={s} t={t}: mean {mean:+.4} (se {:.4}), variance {sample_var:.3} vs {var:.3}",
            (var / n as f64).sqrt()
        );
        // Mean: within 5 standard errors of 0.
        let se = (var / n as f64).sqrt();
        assert!(mean.abs() < 5.0 * se, "mean {mean}, se {se} (s={s}, t={t})");
        // Variance: within 3% (the fourth moment is finite; 200k samples give ~1% error).
        assert!(
            (sample_var / var - 1.0).abs() < 0.03,
            "variance {sample_var} vs {var} (s={s}, t={t})"
        );
        // Tails: P(|Y| >= k) at 1, 2 and 4 standard deviations, within 5 binomial errors.
        for sd in [1.0, 2.0, 4.0] {
            let k = (sd * var.sqrt()).ceil().max(1.0) as i64;
            let expected = 2.0 * p.powi(k as i32) / (1.0 + p);
            let observed = samples.iter().filter(|x| x.abs() >= k).count() as f64 / n as f64;
            let err = (expected * (1.0 - expected) / n as f64).sqrt();
            println!("  P(|Y| >= {k}): {observed:.5} vs {expected:.5}");
            assert!(
                (observed - expected).abs() < 5.0 * err + 1e-4,
                "tail at {k}: {observed} vs {expected} (s={s}, t={t})"
            );
        }
        // Symmetry: as many positives as negatives, within 5 standard errors.
        let pos = samples.iter().filter(|x| **x > 0).count() as f64;
        let neg = samples.iter().filter(|x| **x < 0).count() as f64;
        assert!(
            (pos - neg).abs() < 5.0 * (pos + neg).sqrt(),
            "{pos} vs {neg}"
        );
    }

    #[test]
    fn discrete_laplace_matches_its_distribution() {
        check(1, 1, 1); // scale 1
        check(1, 4, 2); // scale 4
        check(3, 2, 3); // scale 2/3: mostly zeros
        check(1_000, 20_000, 4); // epsilon 1, sensitivity 20
    }

    #[test]
    fn bernoulli_exp_neg_is_exact_in_the_mean() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        for (num, den) in [(1u64, 2u64), (3, 1), (5, 4)] {
            let n = 100_000;
            let hits = (0..n)
                .filter(|_| bernoulli_exp_neg(&mut rng, num, den))
                .count() as f64;
            let p = (-(num as f64) / den as f64).exp();
            let err = (p * (1.0 - p) / n as f64).sqrt();
            assert!((hits / n as f64 - p).abs() < 5.0 * err, "{num}/{den}");
        }
    }

    #[test]
    fn noise_scales_with_sensitivity_over_epsilon() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let eps = Epsilon::from_milli(1_000);
        let n = 50_000;
        let mean_abs = |rng: &mut ChaCha20Rng, share, sens| {
            (0..n)
                .map(|_| noise(rng, eps, share, sens).unsigned_abs())
                .sum::<u64>() as f64
                / n as f64
        };
        let small = mean_abs(&mut rng, 1, 1);
        let large = mean_abs(&mut rng, 2, 10);
        // E|Y| ≈ scale for large scales: 20 vs about 0.9 for scale 1.
        assert!(large > 15.0 * small, "{small} {large}");
    }

    #[test]
    fn families_follow_the_metrics() {
        let eps = Epsilon::from_milli(500);
        let plan = NoisePlan::new(eps, 20, 3600, &[Metric::Count]);
        assert_eq!(plan.families(), 2);
        let plan = NoisePlan::new(eps, 20, 3600, &[Metric::Nps, Metric::HandleTimeMean]);
        assert_eq!(plan.families(), 5);
    }
}
