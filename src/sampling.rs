//! Logits → next token: penalties, then top-k / top-p / min-p filtering on the model's
//! distribution, then temperature, then a draw from a seeded RNG (greedy at temperature 0).

use rand::{Rng, SeedableRng};

use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// How to pick tokens. The defaults are llama.cpp's. Read from JSON (the Maze protocol's
/// `sampling`), a field it does not have is refused, not dropped.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 = greedy (argmax after penalties).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p; 1 = off.
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely one; 0 = off.
    pub min_p: f32,
    /// CTRL-style repetition penalty on recent tokens; 1 = off.
    pub repetition_penalty: f32,
    /// How many recent tokens (prompt included) the penalties look at; 0 = all of them.
    pub penalty_last_n: usize,
    /// Subtracted once per earlier occurrence (OpenAI semantics); 0 = off.
    pub frequency_penalty: f32,
    /// Subtracted once if the token occurred at all; 0 = off.
    pub presence_penalty: f32,
    /// Same seed + same input = same output. `None` = drawn from the engine's seed sequence.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            penalty_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    /// Checks every field; the error names the field and the allowed range.
    pub fn validate(&self) -> Result<()> {
        let check =
            |ok: bool, what: &str| if ok { Ok(()) } else { Err(Error::invalid_argument(what.to_string())) };
        check(
            self.temperature.is_finite() && self.temperature >= 0.0,
            &format!("temperature must be a finite number >= 0, got {}", self.temperature),
        )?;
        check(
            self.top_p > 0.0 && self.top_p <= 1.0,
            &format!("top_p must be in (0, 1], got {}", self.top_p),
        )?;
        check((0.0..=1.0).contains(&self.min_p), &format!("min_p must be in [0, 1], got {}", self.min_p))?;
        check(
            self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0,
            &format!("repetition_penalty must be a finite number > 0, got {}", self.repetition_penalty),
        )?;
        check(
            self.frequency_penalty.is_finite(),
            &format!("frequency_penalty must be finite, got {}", self.frequency_penalty),
        )?;
        check(
            self.presence_penalty.is_finite(),
            &format!("presence_penalty must be finite, got {}", self.presence_penalty),
        )?;
        Ok(())
    }
}

/// A sampler for one generation.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    counts: Vec<u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        Self { params, rng: ChaCha8Rng::seed_from_u64(seed), counts: Vec::new() }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token given the logits and the tokens so far (for the penalties).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let penalised;
        let adjusted = if self.has_penalties() {
            let mut l = logits.to_vec();
            self.apply_penalties(&mut l, history);
            penalised = l;
            &penalised[..]
        } else {
            logits
        };
        if self.params.temperature <= 0.0 {
            return argmax(adjusted);
        }
        let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let mut cands = if self.params.top_k > 0 && self.params.top_k < adjusted.len() {
            top_k(adjusted, self.params.top_k)
        } else {
            let mut all: Vec<(u32, f32)> = adjusted
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (i as u32, l))
                .collect();
            all.sort_unstable_by(desc);
            all
        };
        if cands.is_empty() {
            return 0;
        }
        let max = cands[0].1;
        if max == f32::NEG_INFINITY {
            return cands[0].0;
        }
        let probs: Vec<f32> = cands.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        let mut keep = cands.len();
        if self.params.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, p) in probs.iter().enumerate() {
                cum += p / total;
                if cum >= self.params.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if self.params.min_p > 0.0 {
            // probs[0] is the most likely token's unnormalised weight (exp(0) = 1).
            let floor = self.params.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        cands.truncate(keep.max(1));
        let t = self.params.temperature;
        let weights: Vec<f32> = cands.iter().map(|c| ((c.1 - max) / t).exp()).collect();
        let sum: f32 = weights.iter().sum();
        let mut r = self.rng.random::<f32>() * sum;
        for (c, w) in cands.iter().zip(&weights) {
            if r < *w {
                return c.0;
            }
            r -= w;
        }
        cands[cands.len() - 1].0
    }

    fn has_penalties(&self) -> bool {
        let p = &self.params;
        p.repetition_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0
    }

    fn apply_penalties(&mut self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
        let window = if p.penalty_last_n == 0 {
            history
        } else {
            &history[history.len().saturating_sub(p.penalty_last_n)..]
        };
        self.counts.clear();
        self.counts.resize(logits.len(), 0);
        for &t in window {
            if let Some(c) = self.counts.get_mut(t as usize) {
                *c += 1;
            }
        }
        for &t in window {
            let i = t as usize;
            let Some(&n) = self.counts.get(i) else { continue };
            if n == 0 {
                continue; // already penalised
            }
            let l = &mut logits[i];
            if p.repetition_penalty != 1.0 {
                *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
            }
            *l -= n as f32 * p.frequency_penalty + p.presence_penalty;
            self.counts[i] = 0;
        }
    }
}

/// Index of the largest logit; the lowest index on ties.
/// The `k` highest logits (NaN skipped), highest first, ties to the lower id: one pass over the
/// vocabulary keeping a small sorted list, rather than copying and partitioning all of it.
fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() || (best.len() == k && l.total_cmp(&best[k - 1].1).is_le()) {
            continue;
        }
        // After every equal logit: ids ascend among ties.
        let at = best.partition_point(|&(_, b)| b.total_cmp(&l).is_ge());
        best.insert(at, (i as u32, l));
        best.truncate(k);
    }
    best
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// log p(token) under softmax(logits): the model's own distribution, before any sampling step.
pub fn log_prob(logits: &[f32], token: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
    logits.get(token as usize).map(|l| l - lse).unwrap_or(f32::NEG_INFINITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_equals_sorting_everything() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // Coarse values so that ties are common; a few NaNs and infinities.
        let mut l: Vec<f32> = (0..5000).map(|_| (rng.random_range(0..40) as f32) / 4.0).collect();
        l[7] = f32::NAN;
        l[100] = f32::INFINITY;
        l[101] = f32::NEG_INFINITY;
        let mut all: Vec<(u32, f32)> =
            l.iter().enumerate().filter(|(_, v)| !v.is_nan()).map(|(i, &v)| (i as u32, v)).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for k in [1, 2, 40, 333, 4998, 4999] {
            assert_eq!(top_k(&l, k), all[..k.min(all.len())].to_vec(), "k {k}");
        }
    }

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_takes_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy(), 1);
        assert_eq!(s.sample(&logits(), &[]), 1);
    }

    #[test]
    fn repetition_penalty_changes_greedy_choice() {
        let params = SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() };
        let mut s = Sampler::new(params, 1);
        assert_eq!(s.sample(&logits(), &[1]), 4);
    }

    #[test]
    fn frequency_and_presence_penalties_count_occurrences() {
        let params = SamplingParams { frequency_penalty: 0.06, ..SamplingParams::greedy() };
        let mut s = Sampler::new(params, 1);
        assert_eq!(s.sample(&logits(), &[1]), 1, "one occurrence costs 0.06 < 0.1 gap");
        assert_eq!(s.sample(&logits(), &[1, 1]), 4, "two cost 0.12 > 0.1 gap");
        let params = SamplingParams { presence_penalty: 0.2, ..SamplingParams::greedy() };
        let mut s = Sampler::new(params, 1);
        assert_eq!(s.sample(&logits(), &[1]), 4);
    }

    #[test]
    fn penalty_window_only_sees_recent_tokens() {
        let params = SamplingParams { presence_penalty: 5.0, penalty_last_n: 1, ..SamplingParams::greedy() };
        let mut s = Sampler::new(params, 1);
        assert_eq!(s.sample(&logits(), &[1, 0]), 1, "token 1 is outside the window of 1");
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let params =
            SamplingParams { temperature: 5.0, top_k: 1, top_p: 1.0, min_p: 0.0, ..Default::default() };
        let mut s = Sampler::new(params, 7);
        for _ in 0..50 {
            assert_eq!(s.sample(&logits(), &[]), 1);
        }
    }

    #[test]
    fn top_p_restricts_to_nucleus() {
        // p(1) ≈ 0.39, p(4) ≈ 0.35: top_p 0.5 keeps exactly those two.
        let params =
            SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.5, min_p: 0.0, ..Default::default() };
        let mut s = Sampler::new(params, 3);
        let seen: std::collections::HashSet<u32> = (0..300).map(|_| s.sample(&logits(), &[])).collect();
        assert_eq!(seen, [1, 4].into_iter().collect());
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        // relative to p(1): p(2)/p(1) = e^-1 ≈ 0.37, p(0) ≈ 0.14, p(3) ≈ 0.08.
        let params =
            SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.3, ..Default::default() };
        let mut s = Sampler::new(params, 3);
        let seen: std::collections::HashSet<u32> = (0..500).map(|_| s.sample(&logits(), &[])).collect();
        assert_eq!(seen, [1, 2, 4].into_iter().collect());
    }

    #[test]
    fn same_seed_same_draws_and_different_seed_differs() {
        let params =
            SamplingParams { temperature: 1.5, top_k: 0, top_p: 1.0, min_p: 0.0, ..Default::default() };
        let draw = |seed| {
            let mut s = Sampler::new(params.clone(), seed);
            (0..64).map(|_| s.sample(&logits(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn log_prob_matches_softmax() {
        let l = logits();
        let z: f32 = l.iter().map(|x| x.exp()).sum();
        assert!((log_prob(&l, 1) - (3.0f32.exp() / z).ln()).abs() < 1e-5);
    }

    #[test]
    fn validate_names_the_bad_field() {
        let e = SamplingParams { top_p: 0.0, ..Default::default() }.validate().unwrap_err();
        assert!(e.message().contains("top_p"), "{}", e.message());
        let e = SamplingParams { temperature: f32::NAN, ..Default::default() }.validate().unwrap_err();
        assert!(e.message().contains("temperature"));
    }
}
