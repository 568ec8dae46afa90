//! Text generation with a KV cache: greedy or seeded temperature / top-p
//! sampling, stopping at any EOS id or after a number of new tokens, for a
//! batch of prompts of different lengths (left-padded, as transformers
//! pads decoder-only models for generation).

use tch::{Device, Kind, Tensor};

use crate::error::{LocalError, Result};
use crate::models::{CausalLm, ForwardInput};

/// How to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOptions {
    /// The most tokens to add to each prompt.
    pub max_new_tokens: usize,
    /// Softmax temperature; `0` picks the most likely token (greedy).
    pub temperature: f64,
    /// Nucleus sampling: sample only from the most likely tokens whose
    /// probabilities add up to `top_p` (1 = all).
    pub top_p: f64,
    /// Seed of the sampler; the same seed gives the same tokens.
    pub seed: u64,
    /// Generation of a row stops after any of these ids (which is kept).
    pub eos_token_ids: Vec<i64>,
    /// The id used to pad prompts on the left.
    pub pad_token_id: i64,
}

impl Default for GenerationOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            eos_token_ids: Vec::new(),
            pad_token_id: 0,
        }
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// It produced an EOS id.
    Eos,
    /// It reached `max_new_tokens`.
    Length,
}

/// The continuation of one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The new token ids (ending with the EOS id when one was produced).
    pub tokens: Vec<i64>,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
}

/// Continues every prompt (token ids) with `model`.
pub fn generate(
    model: &CausalLm,
    prompts: &[Vec<i64>],
    options: &GenerationOptions,
) -> Result<Vec<Generation>> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    if prompts.iter().any(Vec::is_empty) {
        return Err(LocalError::InvalidArgument("a prompt has no tokens".into()));
    }
    if !(options.temperature >= 0.0 && options.temperature.is_finite()) {
        return Err(LocalError::InvalidArgument(format!(
            "temperature must be a finite number >= 0, got {}",
            options.temperature
        )));
    }
    if !(options.top_p > 0.0 && options.top_p <= 1.0) {
        return Err(LocalError::InvalidArgument(format!(
            "top_p must be in (0, 1], got {}",
            options.top_p
        )));
    }
    let vocab = model.config().vocab_size;
    if let Some(bad) = prompts.iter().flatten().find(|&&id| id < 0 || id >= vocab) {
        return Err(LocalError::InvalidArgument(format!(
            "token id {bad} is outside the vocabulary (0..{vocab})"
        )));
    }
    tch::no_grad(|| run(model, prompts, options))
}

fn run(
    model: &CausalLm,
    prompts: &[Vec<i64>],
    options: &GenerationOptions,
) -> Result<Vec<Generation>> {
    let device = model.device();
    let batch = prompts.len();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let max_len = model.config().max_position_embeddings as usize;
    if longest + options.max_new_tokens > max_len && model.config().rope.is_none() {
        return Err(LocalError::InvalidArgument(format!(
            "{longest} prompt tokens + {} new tokens exceed the model's {max_len} positions",
            options.max_new_tokens
        )));
    }
    let padded = prompts.iter().any(|p| p.len() != longest);

    let mut ids = Vec::with_capacity(batch * longest);
    let mut mask = Vec::with_capacity(batch * longest);
    for p in prompts {
        let pad = longest - p.len();
        ids.extend(std::iter::repeat_n(options.pad_token_id, pad).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, p.len())));
    }
    let (b, l) = (batch as i64, longest as i64);
    let input_ids = Tensor::from_slice(&ids).f_view([b, l])?.f_to_device(device)?;
    let mut attention = Tensor::from_slice(&mask).f_view([b, l])?.f_to_device(device)?;
    // Positions count real tokens only, so a padded prompt sees the same
    // positions as it would alone.
    let positions = attention.f_cumsum(1, Kind::Int64)?.f_sub_scalar(1)?.f_clamp_min(0)?;
    let mut next_pos = positions.f_select(1, l - 1)?.f_add_scalar(1)?.f_unsqueeze(1)?;

    let mut cache = model.new_cache();
    let input = ForwardInput {
        input_ids: &input_ids,
        position_ids: Some(&positions),
        attention_mask: padded.then_some(&attention),
        sequence_ids: None,
    };
    let mut logits = last_logits(&model.forward(&input, Some(&mut cache))?)?;

    let mut sampler = Sampler::new(options.seed);
    let mut out: Vec<Vec<i64>> = vec![Vec::new(); batch];
    let mut done: Vec<Option<FinishReason>> = vec![None; batch];
    for step in 0..options.max_new_tokens {
        let rows = logits_rows(&logits, batch)?;
        let mut next = Vec::with_capacity(batch);
        for (i, row) in rows.iter().enumerate() {
            if done[i].is_some() {
                next.push(options.pad_token_id);
                continue;
            }
            let token = if options.temperature == 0.0 {
                argmax(row)
            } else {
                sampler.sample(row, options.temperature, options.top_p)
            } as i64;
            out[i].push(token);
            if options.eos_token_ids.contains(&token) {
                done[i] = Some(FinishReason::Eos);
            }
            next.push(token);
        }
        if done.iter().all(Option::is_some) || step + 1 == options.max_new_tokens {
            break;
        }
        let step_ids = Tensor::from_slice(&next).f_view([b, 1])?.f_to_device(device)?;
        attention =
            Tensor::f_cat(&[&attention, &Tensor::f_ones([b, 1], (Kind::Int64, device))?], 1)?;
        let input = ForwardInput {
            input_ids: &step_ids,
            position_ids: Some(&next_pos),
            attention_mask: padded.then_some(&attention),
            sequence_ids: None,
        };
        logits = last_logits(&model.forward(&input, Some(&mut cache))?)?;
        next_pos = next_pos.f_add_scalar(1)?;
    }
    Ok(out
        .into_iter()
        .zip(done)
        .map(|(tokens, done)| Generation {
            tokens,
            finish_reason: done.unwrap_or(FinishReason::Length),
        })
        .collect())
}

fn last_logits(logits: &Tensor) -> Result<Tensor> {
    let t = logits.size()[1];
    Ok(logits.f_select(1, t - 1)?.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?)
}

fn logits_rows(logits: &Tensor, batch: usize) -> Result<Vec<Vec<f32>>> {
    let flat: Vec<f32> = Vec::<f32>::try_from(logits.f_contiguous()?.f_view([-1])?)?;
    let vocab = flat.len() / batch.max(1);
    Ok(flat.chunks(vocab.max(1)).map(<[f32]>::to_vec).collect())
}

/// The index of the largest value; the first one on ties, as `torch.argmax`.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// SplitMix64: a tiny, seeded, platform-independent generator, so the same
/// seed gives the same samples and data orders on every machine.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The token sampler (on [`SplitMix64`]), so the same seed gives the same
/// tokens on CPU and GPU.
struct Sampler {
    rng: SplitMix64,
}

impl Sampler {
    fn new(seed: u64) -> Self {
        Self { rng: SplitMix64::new(seed) }
    }

    fn next_f64(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn sample(&mut self, row: &[f32], temperature: f64, top_p: f64) -> usize {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut probs: Vec<(usize, f64)> = row
            .iter()
            .enumerate()
            .map(|(i, &v)| (i, ((v as f64 - max) / temperature).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        // Keep the smallest prefix whose mass reaches top_p (at least one).
        let mut kept = 0;
        let mut mass = 0.0;
        for p in &probs {
            kept += 1;
            mass += p.1 / total;
            if mass >= top_p {
                break;
            }
        }
        probs.truncate(kept);
        let kept_total: f64 = probs.iter().map(|p| p.1).sum();
        let mut u = self.next_f64() * kept_total;
        for (i, p) in &probs {
            if u < *p {
                return *i;
            }
            u -= p;
        }
        probs.last().map_or(0, |p| p.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_is_seeded_and_respects_top_p() {
        let row = [0.0f32, 3.0, 2.9, -5.0];
        let draw = |seed| {
            let mut s = Sampler::new(seed);
            (0..200).map(|_| s.sample(&row, 1.0, 0.6)).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        // p(1) ≈ 0.50, p(2) ≈ 0.45: top_p 0.6 keeps exactly those two.
        assert!(a.iter().all(|&t| t == 1 || t == 2));
        assert!(a.contains(&1) && a.contains(&2));
        let mut s = Sampler::new(1);
        assert!((0..50).all(|_| s.sample(&row, 1.0, 0.4) == 1));
    }

    #[test]
    fn argmax_takes_the_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }
}
