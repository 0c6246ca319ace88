//! Account choice: uniform, or Zipf(s) by rejection-inversion sampling
//! (Hörmann & Derflinger 1996, as in Apache Commons RNG): O(1) time and
//! memory per sample, so 10 million accounts need no table.

use rand::Rng;

/// How accounts are picked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distribution {
    Uniform,
    /// Zipf with exponent `s` (> 0); rank 1 (account 0) is the hottest.
    Zipf(f64),
}

impl std::str::FromStr for Distribution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "uniform" {
            return Ok(Distribution::Uniform);
        }
        let Some(v) = s.strip_prefix("zipf:").or_else(|| s.strip_prefix("zipf=")) else {
            return Err(format!("distribution: `{s}` is not `uniform` or `zipf:S`"));
        };
        let e: f64 = v
            .parse()
            .map_err(|_| format!("distribution: `{v}` is not a number"))?;
        if !(e.is_finite() && e >= 0.0) {
            return Err("distribution: the Zipf exponent must be >= 0".into());
        }
        Ok(if e == 0.0 {
            Distribution::Uniform
        } else {
            Distribution::Zipf(e)
        })
    }
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Distribution::Uniform => write!(f, "uniform"),
            Distribution::Zipf(s) => write!(f, "zipf:{s}"),
        }
    }
}

/// Samples account indexes in `0..n`.
#[derive(Debug, Clone)]
pub enum Sampler {
    Uniform(u64),
    Zipf(Zipf),
}

impl Sampler {
    pub fn new(dist: Distribution, n: u64) -> Sampler {
        let n = n.max(1);
        match dist {
            Distribution::Uniform => Sampler::Uniform(n),
            Distribution::Zipf(s) => Sampler::Zipf(Zipf::new(n, s)),
        }
    }

    /// An index in `0..n`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match self {
            Sampler::Uniform(n) => rng.random_range(0..*n),
            Sampler::Zipf(z) => z.sample(rng) - 1,
        }
    }
}

/// Zipf distribution over ranks `1..=n`: P(k) ∝ k^-s.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: f64,
    s: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    threshold: f64,
}

impl Zipf {
    pub fn new(n: u64, s: f64) -> Zipf {
        assert!(n >= 1 && s > 0.0, "zipf needs n >= 1 and s > 0");
        let mut z = Zipf {
            n: n as f64,
            s,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            threshold: 0.0,
        };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(z.n + 0.5);
        z.threshold = 2.0 - z.h_integral_inverse(z.h_integral(2.5) - z.h(2.0));
        z
    }

    /// A rank in `1..=n`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        loop {
            let u: f64 =
                self.h_integral_n + rng.random::<f64>() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.threshold || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }

    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.s) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (helper1(t) * x).exp()
    }
}

/// ln(1+x)/x, accurate near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// (e^x - 1)/x, accurate near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn freqs(n: u64, s: f64, samples: usize) -> Vec<f64> {
        let z = Zipf::new(n, s);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut c = vec![0u64; n as usize + 1];
        for _ in 0..samples {
            let k = z.sample(&mut rng);
            assert!((1..=n).contains(&k), "rank {k} out of range");
            c[k as usize] += 1;
        }
        c.iter().map(|&x| x as f64 / samples as f64).collect()
    }

    fn expected(n: u64, s: f64, k: u64) -> f64 {
        let h: f64 = (1..=n).map(|i| (i as f64).powf(-s)).sum();
        (k as f64).powf(-s) / h
    }

    #[test]
    fn zipf_matches_the_pmf() {
        for s in [0.5, 0.99, 1.0, 1.5] {
            let n = 1000;
            let f = freqs(n, s, 400_000);
            for k in [1u64, 2, 3, 10] {
                let e = expected(n, s, k);
                let rel = (f[k as usize] - e).abs() / e;
                assert!(rel < 0.06, "s={s} k={k}: got {} want {e}", f[k as usize]);
            }
        }
    }

    #[test]
    fn zipf_on_tiny_and_huge_ranges() {
        let mut rng = SmallRng::seed_from_u64(1);
        let one = Zipf::new(1, 0.99);
        assert!((0..100).all(|_| one.sample(&mut rng) == 1));
        let big = Sampler::new(Distribution::Zipf(0.99), 10_000_000);
        let mut hot = 0;
        for _ in 0..100_000 {
            let i = big.sample(&mut rng);
            assert!(i < 10_000_000);
            hot += (i == 0) as u32;
        }
        // P(rank 1) = 1/H(10^7, 0.99) ≈ 0.058
        assert!((4_500..7_000).contains(&hot), "hot = {hot}");
    }

    #[test]
    fn parses_distributions() {
        assert_eq!("uniform".parse::<Distribution>(), Ok(Distribution::Uniform));
        assert_eq!(
            "zipf:0.99".parse::<Distribution>(),
            Ok(Distribution::Zipf(0.99))
        );
        assert_eq!("zipf:0".parse::<Distribution>(), Ok(Distribution::Uniform));
        assert!("zipf:x".parse::<Distribution>().is_err());
        assert!("normal".parse::<Distribution>().is_err());
    }
}
