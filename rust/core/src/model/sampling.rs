//! Choosing the next token from logits, with the meaning `transformers`' `generate` gives each
//! argument, applied in its order: repetition penalty, no-repeat n-grams, minimum length (the
//! end token banned), then for sampling temperature, top-k, top-p, min-p; then the arg-max
//! (greedy) or a draw from the softmax.
//!
//! The random numbers come from seeded xoshiro256** streams, one per output sequence, derived
//! from the seed and the sequence's row: a seed gives the same tokens on every run and at every
//! thread count, and a row's draws do not depend on the other rows of its batch (how many there
//! are, their prompts, or when they end).

use crate::{Error, Result};

/// The sampling arguments of `generate`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub do_sample: bool,
    pub temperature: f32,
    /// 0: off.
    pub top_k: usize,
    /// 1.0: off.
    pub top_p: f32,
    /// 0.0: off.
    pub min_p: f32,
    /// 1.0: off.
    pub repetition_penalty: f32,
    /// 0: off.
    pub no_repeat_ngram_size: usize,
}

impl Default for Sampling {
    /// `transformers`' defaults: greedy; when sampling, temperature 1 and top-k 50.
    fn default() -> Self {
        Sampling {
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
        }
    }
}

impl Sampling {
    /// Checks each argument, naming the first that is out of range.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid(format!(
                "temperature must be a positive number, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(Error::invalid(format!(
                "min_p must be in [0, 1], got {}",
                self.min_p
            )));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(Error::invalid(format!(
                "repetition_penalty must be a positive number, got {}",
                self.repetition_penalty
            )));
        }
        Ok(())
    }
}

/// xoshiro256** (Blackman and Vigna), seeded through splitmix64.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The stream of output row `row` of a generation seeded with `seed`: independent of every
    /// other row's (the pair goes through splitmix64 before seeding).
    pub fn stream(seed: u64, row: usize) -> Self {
        let mix = |mut z: u64| {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng::new(mix(seed) ^ mix(mix(row as u64 ^ 0x5bd1_e995_7f4a_7c15)))
    }

    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Reusable buffers of [`choose`].
#[derive(Debug, Default)]
pub struct Scratch {
    order: Vec<u32>,
    probs: Vec<f64>,
}

/// Picks the next token of one sequence from its `logits` (modified in place). `history` is the
/// whole sequence so far (prompt included, padding excluded); `ban` lists tokens that may not
/// come now (the end tokens before `min_new_tokens`).
pub fn choose(
    logits: &mut [f32],
    history: &[u32],
    ban: &[u32],
    p: &Sampling,
    rng: &mut Rng,
    scratch: &mut Scratch,
) -> u32 {
    let v = logits.len();
    // Repetition penalty: each distinct token already in the sequence, once.
    if p.repetition_penalty != 1.0 {
        let distinct = &mut scratch.order;
        distinct.clear();
        distinct.extend_from_slice(history);
        distinct.sort_unstable();
        distinct.dedup();
        for &t in distinct.iter() {
            let x = &mut logits[t as usize];
            *x = if *x < 0.0 {
                *x * p.repetition_penalty
            } else {
                *x / p.repetition_penalty
            };
        }
    }
    // No-repeat n-grams: ban the tokens that would complete an n-gram seen before.
    let n = p.no_repeat_ngram_size;
    if n > 0 && history.len() + 1 >= n {
        let prefix = &history[history.len() + 1 - n..];
        for start in 0..=history.len().saturating_sub(n) {
            if &history[start..start + n - 1] == prefix {
                logits[history[start + n - 1] as usize] = f32::NEG_INFINITY;
            }
        }
    }
    for &t in ban {
        if (t as usize) < v {
            logits[t as usize] = f32::NEG_INFINITY;
        }
    }
    if !p.do_sample {
        return argmax(logits);
    }
    if p.temperature != 1.0 {
        let inv = 1.0 / p.temperature;
        logits.iter_mut().for_each(|x| *x *= inv);
    }
    // Candidates, best first (only as many as top-k keeps need sorting).
    let order = &mut scratch.order;
    order.clear();
    order.extend(0..v as u32);
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .partial_cmp(&logits[*a as usize])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(b))
    };
    let mut keep = v;
    if p.top_k > 0 && p.top_k < v {
        // The k best in O(vocab), then only those sorted.
        order.select_nth_unstable_by(p.top_k - 1, by_logit);
        // As transformers: everything at least as large as the k-th value stays, so ties of
        // the k-th value left in the tail join the head.
        let kth = logits[order[p.top_k - 1] as usize];
        keep = p.top_k;
        for i in p.top_k..v {
            if logits[order[i] as usize] >= kth {
                order.swap(keep, i);
                keep += 1;
            }
        }
        order[..keep].sort_by(by_logit);
    } else {
        order.sort_by(by_logit);
    }
    let order = &order[..keep];
    let max = logits[order[0] as usize];
    let probs = &mut scratch.probs;
    probs.clear();
    probs.extend(
        order
            .iter()
            .map(|&t| f64::from(logits[t as usize] - max).exp()),
    );
    let total: f64 = probs.iter().sum();
    let mut keep = order.len();
    if p.top_p < 1.0 {
        // Keep the smallest head whose mass exceeds top_p: transformers removes the tail whose
        // cumulative mass (from the least likely up) is at most 1 - top_p.
        let limit = (1.0 - f64::from(p.top_p)) * total;
        let mut tail = 0.0;
        let mut cut = order.len();
        for i in (1..order.len()).rev() {
            tail += probs[i];
            if tail <= limit {
                cut = i;
            } else {
                break;
            }
        }
        keep = cut;
    }
    if p.min_p > 0.0 {
        let threshold = f64::from(p.min_p) * probs[0];
        keep = keep.min(probs.iter().take_while(|&&q| q >= threshold).count().max(1));
    }
    let mass: f64 = probs[..keep].iter().sum();
    let mut u = rng.next_f64() * mass;
    for (i, &q) in probs[..keep].iter().enumerate() {
        u -= q;
        if u < 0.0 {
            return order[i];
        }
    }
    order[keep - 1]
}

/// The index of the largest value (the first of equals, as `torch.argmax`).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    let mut val = f32::NEG_INFINITY;
    for (i, &v) in x.iter().enumerate() {
        if v > val {
            val = v;
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greedy() -> Sampling {
        Sampling::default()
    }

    #[test]
    fn greedy_and_penalties() {
        let mut s = Scratch::default();
        let mut rng = Rng::new(0);
        assert_eq!(
            choose(&mut [0.1, 3.0, 2.0], &[], &[], &greedy(), &mut rng, &mut s),
            1
        );
        let p = Sampling {
            repetition_penalty: 2.0,
            ..greedy()
        };
        // 3.0 / 2 = 1.5 < 2.0: token 2 wins; a repeated token is penalised once.
        assert_eq!(
            choose(&mut [0.1, 3.0, 2.0], &[1, 1, 1], &[], &p, &mut rng, &mut s),
            2
        );
        let mut l = [0.1, 3.0, -2.0];
        choose(&mut l, &[1, 2, 2], &[], &p, &mut rng, &mut s);
        assert_eq!(l, [0.1, 1.5, -4.0]);
        let ngram = Sampling {
            no_repeat_ngram_size: 2,
            ..greedy()
        };
        // History 5 1 ... 5: "5 1" seen, so 1 is banned after 5.
        assert_eq!(
            choose(
                &mut [0.0, 9.0, 1.0, 0.0, 0.0, 0.0],
                &[5, 1, 2, 5],
                &[],
                &ngram,
                &mut rng,
                &mut s
            ),
            2
        );
        assert_eq!(
            choose(&mut [0.0, 9.0, 1.0], &[], &[1], &greedy(), &mut rng, &mut s),
            2
        );
    }

    #[test]
    fn sampling_respects_top_k_top_p_min_p_and_the_seed() {
        let logits = [1.0f32, 2.0, 3.0, 4.0, 5.0];
        let draw = |p: &Sampling, seed: u64| -> Vec<u32> {
            let mut rng = Rng::new(seed);
            let mut s = Scratch::default();
            (0..400)
                .map(|_| choose(&mut logits.clone(), &[], &[], p, &mut rng, &mut s))
                .collect()
        };
        let base = Sampling {
            do_sample: true,
            top_k: 0,
            ..Sampling::default()
        };
        let all = draw(&base, 1);
        assert_eq!(all, draw(&base, 1));
        assert_ne!(all, draw(&base, 2));
        assert!((0..5).all(|t| all.contains(&t)));
        let k2 = draw(
            &Sampling {
                top_k: 2,
                ..base.clone()
            },
            1,
        );
        assert!(k2.iter().all(|&t| t >= 3) && k2.contains(&3));
        // softmax of 1..5: the top two hold 0.64 + 0.24 = 0.87 of the mass.
        let p = draw(
            &Sampling {
                top_p: 0.8,
                ..base.clone()
            },
            1,
        );
        assert!(p.iter().all(|&t| t >= 3));
        let m = draw(
            &Sampling {
                min_p: 0.3,
                ..base.clone()
            },
            1,
        );
        assert!(m.iter().all(|&t| t >= 3)); // e^-1 = 0.37 >= 0.3, e^-2 = 0.14 < 0.3
        assert!(Sampling {
            top_p: 0.0,
            ..base.clone()
        }
        .validate()
        .is_err());
        assert!(Sampling {
            temperature: 0.0,
            ..base
        }
        .validate()
        .is_err());
    }
}
