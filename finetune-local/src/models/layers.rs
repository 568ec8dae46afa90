//! Building blocks shared by the architectures: weight loading, linear and
//! norm layers, rotary embeddings and attention masks.

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::{ForwardInput, KvCache};
use crate::config::{Rope, RopeScaling};
use crate::error::{LocalError, Result};
use crate::lora::Lora;
use crate::weights::SafetensorsFiles;

/// Reads weights from a checkpoint into a var store under their HF names.
pub(crate) struct Loader<'a> {
    checkpoint: &'a mut SafetensorsFiles,
    vs: &'a VarStore,
    kind: Kind,
}

impl<'a> Loader<'a> {
    pub(crate) fn new(checkpoint: &'a mut SafetensorsFiles, vs: &'a VarStore, kind: Kind) -> Self {
        Self { checkpoint, vs, kind }
    }

    pub(crate) fn device(&self) -> Device {
        self.vs.device()
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.checkpoint.contains(name)
    }

    /// Loads `name` (checking `shape`) and registers it as a variable of
    /// the same name.
    pub(crate) fn get(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        self.get_as(name, name, shape)
    }

    /// Loads checkpoint tensor `stored` and registers it as `name`.
    pub(crate) fn get_as(&mut self, name: &str, stored: &str, shape: &[i64]) -> Result<Tensor> {
        let tensor = self.checkpoint.load(stored, shape, self.kind, self.vs.device())?;
        let mut parts: Vec<&str> = name.split('.').collect();
        let leaf = parts.pop().unwrap_or(name);
        let mut path = self.vs.root();
        for p in parts {
            path = path.sub(p);
        }
        Ok(path.add(leaf, tensor, true))
    }
}

/// A projection: `y = x Wᵀ + b` with `W` of `[out, in]` (`torch.nn.Linear`),
/// or `y = x W + b` with `W` of `[in, out]` (HF's `Conv1D`, GPT-2), plus an
/// optional LoRA adapter.
#[derive(Debug)]
pub(crate) struct Linear {
    pub(crate) name: String,
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
    pub(crate) in_dim: i64,
    pub(crate) out_dim: i64,
    /// `W` is stored `[in, out]` (Conv1D).
    pub(crate) transposed: bool,
    pub(crate) lora: Option<Lora>,
}

impl Linear {
    pub(crate) fn load(
        l: &mut Loader<'_>,
        prefix: &str,
        in_dim: i64,
        out_dim: i64,
        bias: bool,
    ) -> Result<Self> {
        let weight = l.get(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        let bias = if bias { Some(l.get(&format!("{prefix}.bias"), &[out_dim])?) } else { None };
        Ok(Self {
            name: prefix.to_owned(),
            weight,
            bias,
            in_dim,
            out_dim,
            transposed: false,
            lora: None,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let Some(lora) = &self.lora else { return self.base(x) };
        // The adapter's second GEMM accumulates into the projection's
        // output (`y += (A x') (s B)ᵀ`, in place: backward keeps neither
        // output), so no `[tokens, out]` product is written and then added.
        let mut size = x.size();
        let (down, up) = lora.factors(x)?;
        let mut y = self.base(&x.f_reshape([-1, self.in_dim])?)?;
        let _ = y.f_addmm_(&down.f_reshape([-1, lora.rank()])?, &up.f_tr()?)?;
        if let Some(last) = size.last_mut() {
            *last = self.out_dim;
        }
        Ok(y.f_view(size.as_slice())?)
    }

    /// The frozen or trained projection alone.
    fn base(&self, x: &Tensor) -> Result<Tensor> {
        if self.transposed {
            let y = x.f_matmul(&self.weight)?;
            Ok(match &self.bias {
                Some(b) => y.f_add(b)?,
                None => y,
            })
        } else {
            Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
        }
    }

    /// Whether neither the weight nor the bias is trained.
    pub(crate) fn frozen(&self) -> bool {
        !self.weight.requires_grad() && !self.bias.as_ref().is_some_and(Tensor::requires_grad)
    }

    /// The adapter's factors for `x` (see [`Lora::factors`]; its dropout
    /// mask is drawn now), or `None` without an adapter.
    pub(crate) fn adapter_factors(&self, x: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        self.lora.as_ref().map(|lora| lora.factors(x)).transpose()
    }

    /// A scalar whose gradient is the one `⟨self.forward(x), g⟩` sends to
    /// `x` and the adapter, without the frozen projection's output (see
    /// [`projections_surrogate`]). `None` when `W` or the bias is trained
    /// (their gradients need the real product).
    pub(crate) fn backward_surrogate(&self, x: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        if !self.frozen() {
            return Ok(None);
        }
        let factors = self.adapter_factors(x)?;
        Ok(Some(projections_surrogate(x, &[(self, factors, g)])?))
    }

    /// Folds the adapter into the weight and drops it.
    pub(crate) fn merge(&mut self) -> Result<()> {
        if let Some(lora) = self.lora.take() {
            let delta = lora.delta(self.weight.kind())?;
            let delta = if self.transposed { delta.f_tr()? } else { delta };
            let _ = tch::no_grad(|| self.weight.f_add_(&delta))?;
        }
        Ok(())
    }
}

/// A frozen projection, its adapter's factors for the input (see
/// [`Linear::adapter_factors`]) and the gradient of its output.
pub(crate) type SurrogatePart<'a> = (&'a Linear, Option<(Tensor, Tensor)>, &'a Tensor);

/// A scalar whose gradient is the one `Σⱼ ⟨Pⱼ(x), gⱼ⟩` sends to `x` and
/// the adapters, for frozen projections `Pⱼ` of one input `x` given with
/// their adapters' factors for `x` (drawn as the forward pass drew them):
/// `⟨x, Σⱼ gⱼ Wⱼ⟩ + Σⱼ ⟨downⱼ, gⱼ upⱼ⟩`. Backward gets `Σⱼ gⱼ Wⱼ` (the
/// GEMMs it would run anyway, summed into one buffer) and the adapters'
/// gradients, while no projection's output is computed: recomputation
/// under activation checkpointing skips their forward GEMMs.
pub(crate) fn projections_surrogate(x: &Tensor, parts: &[SurrogatePart<'_>]) -> Result<Tensor> {
    let in_dim = x.size().last().copied().unwrap_or(1);
    let mut gw: Option<Tensor> = None;
    let mut adapters: Option<Tensor> = None;
    for (proj, factors, g) in parts {
        let g = g.f_reshape([-1, proj.out_dim])?;
        let w = if proj.transposed { proj.weight.f_tr()? } else { proj.weight.shallow_clone() };
        tch::no_grad(|| -> Result<()> {
            match &mut gw {
                Some(sum) => {
                    let _ = sum.f_addmm_(&g, &w)?;
                }
                None => gw = Some(g.f_matmul(&w)?),
            }
            Ok(())
        })?;
        if let Some((down, up)) = factors {
            let down = down.f_reshape([-1, up.size()[1]])?;
            let s = down.f_mul(&g.f_matmul(up)?)?.f_sum(Kind::Float)?;
            adapters = Some(match adapters {
                Some(a) => a.f_add(&s)?,
                None => s,
            });
        }
    }
    let mut s = match gw {
        Some(gw) => x.f_reshape([-1, in_dim])?.f_mul(&gw)?.f_sum(Kind::Float)?,
        None => Tensor::f_zeros([], (Kind::Float, x.device()))?,
    };
    if let Some(a) = adapters {
        s = s.f_add(&a)?;
    }
    Ok(s)
}

/// Llama's RMSNorm: normalise in fp32, scale in the input dtype.
#[derive(Debug)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn load(l: &mut Loader<'_>, name: &str, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self { weight: l.get(&format!("{name}.weight"), &[dim])?, eps })
    }

    ///
    /// The sum of squares is `2s − s̄` with `s = Σ x·x̄`, where a bar is the
    /// same value detached from the graph: the value of `Σ x²` bit for bit
    /// and its gradient `2x`, with a backward of one product where `pow`'s
    /// takes several passes (the whole norm, forward and backward, 30% less
    /// time at 1072 × 576 on the CPU, fp32 and bf16).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let kind = x.kind();
        let x32 = x.f_to_kind(Kind::Float)?;
        let s = x32.f_mul(&x32.f_detach()?)?.f_sum_dim_intlist(-1, true, Kind::Float)?;
        let sum_sq = s.f_mul_scalar(2.0)?.f_sub(&s.f_detach()?)?;
        let var = sum_sq.f_div_scalar(x32.size().last().copied().unwrap_or(1) as f64)?;
        let normed = x32.f_mul(&var.f_add_scalar(self.eps)?.f_rsqrt()?)?;
        Ok(self.weight.f_mul(&normed.f_to_kind(kind)?)?)
    }
}

/// The inverse frequencies of rotary embeddings, computed as transformers
/// computes them (fp32, same operation order).
pub(crate) fn rope_inv_freq(rope: &Rope, head_dim: i64) -> Result<Tensor> {
    let exponents = Tensor::f_arange_start_step(0, head_dim, 2, (Kind::Int64, Device::Cpu))?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(head_dim as f64)?;
    let inv_freq = Tensor::f_pow_scalar(rope.theta, &exponents)?.f_reciprocal()?;
    Ok(match rope.scaling {
        RopeScaling::Default => inv_freq,
        RopeScaling::Linear { factor } => inv_freq.f_div_scalar(factor)?,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old_len,
        } => {
            let low_freq_wavelen = old_len / low_freq_factor;
            let high_freq_wavelen = old_len / high_freq_factor;
            let wavelen = inv_freq.f_reciprocal()?.f_mul_scalar(2.0 * std::f64::consts::PI)?;
            let scaled = inv_freq
                .f_where_self(&wavelen.f_le(low_freq_wavelen)?, &inv_freq.f_div_scalar(factor)?)?;
            let smooth = wavelen
                .f_reciprocal()?
                .f_mul_scalar(old_len)?
                .f_sub_scalar(low_freq_factor)?
                .f_div_scalar(high_freq_factor - low_freq_factor)?;
            let smoothed = smooth
                .f_neg()?
                .f_add_scalar(1.0)?
                .f_mul(&scaled)?
                .f_div_scalar(factor)?
                .f_add(&smooth.f_mul(&scaled)?)?;
            let medium =
                wavelen.f_ge(high_freq_wavelen)?.f_logical_and(&wavelen.f_le(low_freq_wavelen)?)?;
            smoothed.f_where_self(&medium, &scaled)?
        }
    })
}

/// Rotary tables for the given positions, `[batch, 1, seq, head_dim]`
/// (one for all heads): cos, and sin with its first half negated, which is
/// `rotate_half`'s sign (see [`apply_rope`]).
pub(crate) fn rope_cos_sin(
    inv_freq: &Tensor,
    positions: &Tensor,
    kind: Kind,
) -> Result<(Tensor, Tensor)> {
    let inv = inv_freq.f_to_device(positions.device())?;
    let freqs = positions.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?.f_mul(&inv)?;
    let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
    let sin = emb.f_sin()?;
    let half = sin.size().last().copied().unwrap_or(0) / 2;
    let signed =
        Tensor::f_cat(&[&sin.f_narrow(-1, 0, half)?.f_neg()?, &sin.f_narrow(-1, half, half)?], -1)?;
    Ok((emb.f_cos()?.f_to_kind(kind)?.f_unsqueeze(1)?, signed.f_to_kind(kind)?.f_unsqueeze(1)?))
}

/// `x * cos + rotate_half(x) * sin` for `x` of `[batch, heads, seq, dim]`,
/// as transformers computes it: `rotate_half(x)` is `[-x₂, x₁]`, here `x`
/// rolled by half its width (`[x₂, x₁]`) times the signed sin of
/// [`rope_cos_sin`]: the same products, with a backward of one roll where
/// slicing and concatenating took several passes (a third less time).
pub(crate) fn apply_rope(x: &Tensor, cos: &Tensor, signed_sin: &Tensor) -> Result<Tensor> {
    let half = x.size()[3] / 2;
    let rolled = x.f_roll([half], [3])?;
    Ok(x.f_mul(cos)?.f_add(&rolled.f_mul(signed_sin)?)?)
}

/// Repeats each key/value head `n_rep` times for grouped-query attention.
fn repeat_kv(x: Tensor, n_rep: i64) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let s = x.size();
    let (b, h, t, d) = (s[0], s[1], s[2], s[3]);
    Ok(x.f_unsqueeze(2)?.f_expand([b, h, n_rep, t, d], false)?.f_reshape([b, h * n_rep, t, d])?)
}

/// How attention is restricted for one forward pass.
pub(crate) enum Mask {
    /// Plain causal over the new tokens (no cache, no padding).
    Causal,
    /// Every cached key is visible (one new token, no padding).
    Full,
    /// An additive bias `[batch or 1, 1, seq, keys]`.
    Bias(Tensor),
    /// Packed rows: each row's runs of one sequence id, in order (their
    /// lengths add up to the row's), each attending causally to itself
    /// alone. Attention runs per run, so its cost follows the examples'
    /// lengths, not the row's.
    Segments(Vec<Vec<i64>>),
}

/// A run's attention costs about as much as its own tokens' squared plus
/// this much (the calls it takes), in the same units.
const SEGMENT_OVERHEAD: i64 = 64 * 64;

/// The runs of equal values in each row of `ids` (`[batch, seq]`), when
/// attending run by run (each run costing `overhead` more than its tokens
/// squared) costs less than the whole rows under a mask.
fn segments(ids: &Tensor, overhead: i64) -> Result<Option<Vec<Vec<i64>>>> {
    let s = ids.size();
    let (batch, t) = (s[0], s[1]);
    let flat = Vec::<i64>::try_from(ids.f_to_device(Device::Cpu)?.f_reshape([-1])?)?;
    let mut rows = Vec::with_capacity(batch.max(0) as usize);
    let (mut per_run, mut masked) = (0i64, 0i64);
    for row in flat.chunks(t.max(1) as usize) {
        let mut runs: Vec<i64> = Vec::new();
        for (i, id) in row.iter().enumerate() {
            match runs.last_mut() {
                Some(n) if i > 0 && row[i - 1] == *id => *n += 1,
                _ => runs.push(1),
            }
        }
        per_run += runs.iter().map(|n| n * n + overhead).sum::<i64>();
        masked += t * t;
        rows.push(runs);
    }
    Ok((per_run < masked).then_some(rows))
}

/// Works out the attention mask for `input`, given `past` cached tokens.
pub(crate) fn attention_mask(
    input: &ForwardInput<'_>,
    past: i64,
    sliding_window: Option<i64>,
    kind: Kind,
    device: Device,
) -> Result<Mask> {
    let t = input.input_ids.size()[1];
    let total = past + t;
    let window_matters = sliding_window.is_some_and(|w| total > w);
    if input.attention_mask.is_none() && input.sequence_ids.is_none() && !window_matters {
        if past == 0 {
            return Ok(Mask::Causal);
        }
        if t == 1 {
            return Ok(Mask::Full);
        }
    }
    // One variable-length flash attention call takes every run at once.
    #[cfg(finetune_shims)]
    let overhead = if super::varlen::usable(device, kind) { 0 } else { SEGMENT_OVERHEAD };
    #[cfg(not(finetune_shims))]
    let overhead = SEGMENT_OVERHEAD;
    if let (Some(seq), None, 0) = (input.sequence_ids, input.attention_mask, past)
        && seq.size() == input.input_ids.size()
        && let Some(rows) = segments(seq, overhead)?
        // A window shorter than a run would cut it.
        && rows.iter().flatten().all(|&n| sliding_window.is_none_or(|w| n <= w))
    {
        return Ok(Mask::Segments(rows));
    }
    let q = Tensor::f_arange_start(past, total, (Kind::Int64, device))?.f_unsqueeze(1)?;
    let k = Tensor::f_arange(total, (Kind::Int64, device))?.f_unsqueeze(0)?;
    let mut allowed = k.f_le_tensor(&q)?;
    if let Some(w) = sliding_window {
        allowed = allowed.f_logical_and(&q.f_sub(&k)?.f_lt(w)?)?;
    }
    let mut allowed = allowed.f_unsqueeze(0)?; // [1, t, total]
    if let Some(mask) = input.attention_mask {
        if mask.size() != [input.input_ids.size()[0], total] {
            return Err(LocalError::InvalidArgument(format!(
                "attention_mask is {:?}, expected [batch, {total}] (cached + new tokens)",
                mask.size()
            )));
        }
        let keys = mask.f_to_device(device)?.f_ne(0)?.f_unsqueeze(1)?; // [b, 1, total]
        allowed = allowed.f_logical_and(&keys)?;
    }
    if let Some(seq) = input.sequence_ids {
        if seq.size() != input.input_ids.size() {
            return Err(LocalError::InvalidArgument(format!(
                "sequence_ids is {:?}, expected {:?}",
                seq.size(),
                input.input_ids.size()
            )));
        }
        let same = seq.f_unsqueeze(2)?.f_eq_tensor(&seq.f_unsqueeze(1)?)?; // [b, t, t]
        allowed = allowed.f_logical_and(&same)?;
    }
    // The kind's lowest finite value (`torch.finfo(kind).min`, as
    // transformers masks): a value past it does not convert to the kind.
    let min = match kind {
        Kind::Half => -65504.0,
        // -(2 - 2^-7) * 2^127.
        Kind::BFloat16 => -3.389_531_389_251_535_5e38,
        _ => f64::from(f32::MIN),
    };
    let bias = Tensor::f_zeros(allowed.size(), (kind, device))?
        .f_masked_fill(&allowed.f_logical_not()?, min)?
        .f_unsqueeze(1)?;
    Ok(Mask::Bias(bias))
}

/// Scaled dot-product attention of `[batch, heads, seq, dim]` tensors.
///
/// With fewer key/value heads than query heads (grouped-query attention),
/// each key/value head serves `heads / kv_heads` consecutive query heads
/// (transformers' `repeat_kv`). On the CPU the kernels take the groups as
/// they are (`enable_gqa`), without copying each key/value head per query
/// head and summing the copies' gradients; elsewhere the heads are repeated
/// first, which every CUDA kernel accepts.
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Mask,
    scale: Option<f64>,
) -> Result<Tensor> {
    // Packed rows on CUDA: one variable-length flash attention call (the
    // key/value heads as they are) where the device runs it.
    #[cfg(finetune_shims)]
    if let Mask::Segments(rows) = mask
        && super::varlen::eligible(q)
        && let Some(out) = super::varlen::attend(q, k, v, rows, scale)?
    {
        return Ok(out);
    }
    let n_rep = q.size()[1] / k.size()[1].max(1);
    let gqa = n_rep > 1 && q.device() == Device::Cpu;
    let (k, v) = if n_rep > 1 && !gqa {
        (repeat_kv(k.shallow_clone(), n_rep)?, repeat_kv(v.shallow_clone(), n_rep)?)
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    let (bias, causal) = match mask {
        Mask::Causal => (None, true),
        Mask::Full => (None, false),
        Mask::Bias(b) => (Some(b), false),
        Mask::Segments(rows) => return attend_segments(q, &k, &v, rows, scale, gqa),
    };
    Ok(Tensor::f_scaled_dot_product_attention(q, &k, &v, bias, 0.0, causal, scale, gqa)?)
}

/// Causal attention within each run of each row (see [`Mask::Segments`]).
fn attend_segments(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rows: &[Vec<i64>],
    scale: Option<f64>,
    gqa: bool,
) -> Result<Tensor> {
    let (qs, ks, vs) = (q.f_unbind(0)?, k.f_unbind(0)?, v.f_unbind(0)?);
    let mut out = Vec::with_capacity(rows.len());
    for (((q, k), v), runs) in qs.iter().zip(&ks).zip(&vs).zip(rows) {
        // `[heads, seq, dim]`, split along seq.
        let (qr, kr, vr) = (
            q.f_split_with_sizes(runs, 1)?,
            k.f_split_with_sizes(runs, 1)?,
            v.f_split_with_sizes(runs, 1)?,
        );
        let parts = qr
            .iter()
            .zip(&kr)
            .zip(&vr)
            .map(|((q, k), v)| {
                let a = Tensor::f_scaled_dot_product_attention(
                    &q.f_unsqueeze(0)?,
                    &k.f_unsqueeze(0)?,
                    &v.f_unsqueeze(0)?,
                    None::<&Tensor>,
                    0.0,
                    true,
                    scale,
                    gqa,
                )?;
                Ok(a.f_squeeze_dim(0)?)
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(Tensor::f_cat(&parts, 1)?);
    }
    Ok(Tensor::f_stack(&out, 0)?)
}

/// Positions for `input`: given, or continuing from the cache.
pub(crate) fn positions(input: &ForwardInput<'_>, past: i64) -> Result<Tensor> {
    match input.position_ids {
        Some(p) => Ok(p.shallow_clone()),
        None => {
            let s = input.input_ids.size();
            Ok(Tensor::f_arange_start(past, past + s[1], (Kind::Int64, input.input_ids.device()))?
                .f_unsqueeze(0)?
                .f_expand([s[0], s[1]], false)?)
        }
    }
}

/// The cache's length, or 0 without one.
pub(crate) fn past_len(cache: &Option<&mut KvCache>) -> i64 {
    cache.as_ref().map_or(0, |c| c.len())
}

/// The MLP activation named in config.json.
pub(crate) fn activation(name: &str, x: &Tensor) -> Result<Tensor> {
    Ok(match name {
        "silu" | "swish" => x.f_silu()?,
        "gelu" => x.f_gelu("none")?,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => x.f_gelu("tanh")?,
        "relu" => x.f_relu()?,
        other => {
            return Err(LocalError::InvalidArgument(format!(
                "activation `{other}` is not implemented"
            )));
        }
    })
}

/// Checks an activation name at load time, so a model fails early.
pub(crate) fn check_activation(name: &str, config_path: &std::path::Path) -> Result<()> {
    match name {
        "silu" | "swish" | "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "relu" => {
            Ok(())
        }
        other => Err(LocalError::invalid(
            config_path,
            Some("hidden_act"),
            format!("activation `{other}` is not implemented"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_found_and_chosen_only_when_cheaper_than_the_masked_rows() {
        let ids = Tensor::from_slice(&[0i64, 0, 1, 1, 1, 2, 0, 0, 0, 0, 0, 0]).view([2, 6]);
        // Rows of 6 tokens: per-run attention costs more than the mask,
        // unless one call takes every run (variable-length attention).
        assert_eq!(segments(&ids, SEGMENT_OVERHEAD).unwrap(), None);
        assert_eq!(segments(&ids, 0).unwrap(), Some(vec![vec![2, 3, 1], vec![6]]));
        // Rows of 400: three runs of 100, 250, 50 and one of 400.
        let long: Vec<i64> = [(0, 100), (1, 250), (2, 50), (0, 400)]
            .iter()
            .flat_map(|&(id, n)| std::iter::repeat_n(id, n))
            .collect();
        let ids = Tensor::from_slice(&long).view([2, 400]);
        assert_eq!(
            segments(&ids, SEGMENT_OVERHEAD).unwrap(),
            Some(vec![vec![100, 250, 50], vec![400]])
        );
    }

    #[test]
    fn a_sliding_window_cuts_a_packed_row_only_when_a_run_is_longer_than_it() {
        // One row of 300 tokens: runs of 100, 150 and 50.
        let ids: Vec<i64> = [(0, 100), (1, 150), (2, 50)]
            .iter()
            .flat_map(|&(id, n)| std::iter::repeat_n(id, n))
            .collect();
        let seq = Tensor::from_slice(&ids).view([1, 300]);
        let input_ids = Tensor::zeros([1, 300], (Kind::Int64, Device::Cpu));
        let input = ForwardInput {
            input_ids: &input_ids,
            position_ids: None,
            attention_mask: None,
            sequence_ids: Some(&seq),
        };
        let mask = |window| attention_mask(&input, 0, window, Kind::Float, Device::Cpu).unwrap();
        // The row is longer than a window of 200, no run is.
        assert!(matches!(mask(Some(200)), Mask::Segments(ref r) if r == &[vec![100, 150, 50]]));
        assert!(matches!(mask(None), Mask::Segments(_)));
        // A window of 120 cuts the run of 150: the masked path applies it.
        assert!(matches!(mask(Some(120)), Mask::Bias(_)));
    }

    /// The masked path's bias for packed rows of sequence ids `[batch, seq]`
    /// (rows short enough that attending run by run would cost more).
    fn packed_bias(ids: &Tensor) -> Tensor {
        let input_ids = ids.zeros_like();
        let input = ForwardInput {
            input_ids: &input_ids,
            position_ids: None,
            attention_mask: None,
            sequence_ids: Some(ids),
        };
        let Mask::Bias(bias) = attention_mask(&input, 0, None, Kind::Float, Device::Cpu).unwrap()
        else {
            panic!("short rows take the masked path");
        };
        bias
    }

    #[test]
    fn a_padding_mask_takes_each_kinds_lowest_finite_value() {
        // Two rows of three tokens, the first with its first key padded.
        let ids = Tensor::zeros([2, 3], (Kind::Int64, Device::Cpu));
        let padding = Tensor::from_slice(&[0i64, 1, 1, 1, 1, 1]).view([2, 3]);
        let input = ForwardInput { attention_mask: Some(&padding), ..ForwardInput::new(&ids) };
        for (kind, lowest) in [
            (Kind::Float, f64::from(f32::MIN)),
            (Kind::BFloat16, -3.389_531_389_251_535_5e38),
            (Kind::Half, -65504.0),
        ] {
            let Mask::Bias(bias) = attention_mask(&input, 0, None, kind, Device::Cpu).unwrap()
            else {
                panic!("padding takes the masked path");
            };
            assert_eq!((bias.size(), bias.kind()), (vec![2, 1, 3, 3], kind));
            let bias = bias.to_kind(Kind::Double);
            // Causal, and the first row's first key hidden from every query.
            let expected = |row: i64, q: i64, k: i64| k > q || (row == 0 && k == 0);
            for (row, q, k) in
                (0..2).flat_map(|r| (0..3).flat_map(move |q| (0..3).map(move |k| (r, q, k))))
            {
                let value = bias.double_value(&[row, 0, q, k]);
                assert_eq!(value, if expected(row, q, k) { lowest } else { 0.0 }, "{kind:?}");
            }
        }
    }

    #[test]
    fn rms_norm_equals_the_plain_formula_with_its_gradients() {
        tch::manual_seed(9);
        for kind in [Kind::Float, Kind::BFloat16] {
            let x = Tensor::randn([3, 5, 64], (Kind::Float, Device::Cpu))
                .to_kind(kind)
                .set_requires_grad(true);
            let weight = Tensor::randn([64], (Kind::Float, Device::Cpu)).to_kind(kind);
            let norm = RmsNorm { weight: weight.shallow_clone(), eps: 1e-5 };
            // transformers' LlamaRMSNorm.
            let x32 = x.to_kind(Kind::Float);
            let var = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
            let plain = &weight * (&x32 * (var + 1e-5).rsqrt()).to_kind(kind);
            let ours = norm.forward(&x).unwrap();
            assert_eq!(ours.kind(), kind);
            assert!(ours.equal(&plain), "{kind:?}");
            let g = Tensor::randn([3, 5, 64], (Kind::Float, Device::Cpu)).to_kind(kind);
            let grad = |y: &Tensor| {
                Tensor::run_backward(&[(y * &g).sum(Kind::Float)], &[&x], false, false)
                    .remove(0)
                    .to_kind(Kind::Float)
            };
            let (a, b) = (grad(&ours), grad(&plain));
            let diff = (&a - &b).abs().max().double_value(&[]);
            let scale = b.abs().max().double_value(&[]);
            let tol = if kind == Kind::Float { 1e-6 } else { 1e-2 };
            assert!(diff <= tol * scale, "{kind:?}: {diff:e} apart at a scale of {scale}");
        }
    }

    #[test]
    fn grouped_query_attention_equals_attention_over_repeated_heads() {
        tch::manual_seed(5);
        let (b, h, kv, t, d) = (2, 6, 2, 24, 8);
        let leaf = |heads| {
            Tensor::randn([b, heads, t, d], (Kind::Float, Device::Cpu)).set_requires_grad(true)
        };
        let (q, k, v) = (leaf(h), leaf(kv), leaf(kv));
        // transformers' repeat_kv: key/value head j serves query heads
        // 3j, 3j + 1, 3j + 2.
        let repeated = |x: &Tensor| repeat_kv(x.shallow_clone(), h / kv).unwrap();
        // Each row packs three sequences: 10, 10 and 4 tokens.
        let row: Vec<i64> = [(0, 10), (1, 10), (2, 4)]
            .iter()
            .flat_map(|&(id, n)| std::iter::repeat_n(id, n))
            .collect();
        let bias = packed_bias(&Tensor::from_slice(&row).view([1, t]).repeat([b, 1]));
        let weights = Tensor::randn([b, h, t, d], (Kind::Float, Device::Cpu));
        for mask in [Mask::Causal, Mask::Bias(bias), Mask::Segments(vec![vec![10, 10, 4]; 2])] {
            let grouped = attend(&q, &k, &v, &mask, None).unwrap();
            let plain = attend(&q, &repeated(&k), &repeated(&v), &mask, None).unwrap();
            assert!((&grouped - &plain).abs().max().double_value(&[]) < 1e-6);
            let grads = |out: &Tensor| {
                let loss = (out * &weights).sum(Kind::Float);
                Tensor::run_backward(&[loss], &[&q, &k, &v], false, false)
            };
            for (a, b) in grads(&grouped).iter().zip(&grads(&plain)) {
                let diff = (a - b).abs().max().double_value(&[]);
                let scale = a.abs().max().double_value(&[]).max(1.0);
                assert!(diff < 1e-6 * scale, "{diff:e} apart at a scale of {scale}");
            }
        }
    }

    #[test]
    fn attention_run_by_run_equals_the_masked_rows_with_their_gradients() {
        tch::manual_seed(3);
        let (b, h, t, d) = (2, 3, 40, 8);
        let rows = vec![vec![10, 25, 5], vec![40]];
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|runs| {
                runs.iter()
                    .enumerate()
                    .flat_map(|(i, &n)| std::iter::repeat_n(i as i64, n as usize))
            })
            .collect();
        let bias = packed_bias(&Tensor::from_slice(&ids).view([b, t]));
        let leaf =
            || Tensor::randn([b, h, t, d], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let (q, k, v) = (leaf(), leaf(), leaf());
        let masked = attend(&q, &k, &v, &Mask::Bias(bias), None).unwrap();
        let runs = attend(&q, &k, &v, &Mask::Segments(rows), None).unwrap();
        assert!((&masked - &runs).abs().max().double_value(&[]) < 1e-6);
        let weights = Tensor::randn([b, h, t, d], (Kind::Float, Device::Cpu));
        let grads = |out: &Tensor| {
            Tensor::run_backward(&[(out * &weights).sum(Kind::Float)], &[&q, &k, &v], false, false)
        };
        for (a, b) in grads(&masked).iter().zip(&grads(&runs)) {
            // Float rounding, relative to the gradients' size (the two
            // paths sum in different orders; AVX-512 kernels differ in
            // the last bits from AVX2 ones).
            let diff = (a - b).abs().max().double_value(&[]);
            let scale = a.abs().max().double_value(&[]).max(1.0);
            assert!(diff < 1e-6 * scale, "{diff:e} apart at a scale of {scale}");
        }
    }
}
