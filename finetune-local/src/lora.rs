//! LoRA adapters as PEFT defines them: `y = W x + (B A dropout(x)) · s`
//! with `A` of `[r, in]` initialised kaiming-uniform (PEFT's default, i.e.
//! `U(-1/√in, 1/√in)`), `B` of `[out, r]` zeros, and `s = alpha / r`
//! (`alpha / √r` with rsLoRA). The base weights stay frozen; the adapters
//! live in their own var store under the module's HF name plus
//! `lora_A.weight` / `lora_B.weight`, which is PEFT's saved key once
//! prefixed with `base_model.model.`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Kind, Tensor};

use crate::error::{LocalError, Result};

/// Which modules get adapters and how large they are.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// The rank `r`.
    pub r: i64,
    /// `lora_alpha`.
    pub alpha: f64,
    /// Dropout on the adapter's input, in training only.
    pub dropout: f64,
    /// Module names (the last component, e.g. `q_proj`, `c_attn`), or
    /// `all-linear` for every projection except the LM head.
    pub target_modules: Vec<String>,
    /// rsLoRA: scale by `alpha / √r` instead of `alpha / r`.
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// The factor applied to the adapter's output.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.r <= 0 {
            return Err(LocalError::InvalidArgument(format!(
                "LoRA rank must be positive, got {}",
                self.r
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(LocalError::InvalidArgument(format!(
                "LoRA dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if self.target_modules.is_empty() {
            return Err(LocalError::InvalidArgument(
                "LoRA needs at least one target module".into(),
            ));
        }
        Ok(())
    }

    /// Whether the module `name` (a full HF name) is targeted.
    pub(crate) fn targets(&self, name: &str) -> bool {
        let leaf = name.rsplit('.').next().unwrap_or(name);
        self.target_modules.iter().any(|t| t == "all-linear" || t == leaf || t == name)
    }
}

/// One module's adapter.
#[derive(Debug)]
pub(crate) struct Lora {
    pub(crate) a: Tensor,
    pub(crate) b: Tensor,
    pub(crate) scaling: f64,
    dropout: f64,
    training: Arc<AtomicBool>,
}

impl Lora {
    /// Creates A and B in `vs` under `{name}.lora_A.weight` / `lora_B.weight`.
    pub(crate) fn new(
        vs: &tch::nn::VarStore,
        name: &str,
        in_dim: i64,
        out_dim: i64,
        config: &LoraConfig,
        training: Arc<AtomicBool>,
    ) -> Result<Self> {
        let mut path = vs.root();
        for part in name.split('.') {
            path = path.sub(part);
        }
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a = path.sub("lora_A").f_var(
            "weight",
            &[config.r, in_dim],
            tch::nn::Init::Uniform { lo: -bound, up: bound },
        )?;
        let b =
            path.sub("lora_B").f_var("weight", &[out_dim, config.r], tch::nn::Init::Const(0.0))?;
        Ok(Self { a, b, scaling: config.scaling(), dropout: config.dropout, training })
    }

    /// The rank `r`.
    pub(crate) fn rank(&self) -> i64 {
        self.a.size()[0]
    }

    /// The adapter's contribution in two factors, both in x's dtype:
    /// `A dropout(x)` (`[.., r]`) and the scaled `B` (`[out, r]`); the
    /// contribution is `down · upᵀ`.
    ///
    /// Dropout zeroes each input with probability `p` through a boolean
    /// mask ([`drop_mask`]), as `where(mask, 0, x)` ([`dropped`]): one
    /// pass, where `masked_fill` copies `x` and then fills it with a scalar
    /// loop (on the CPU, forward and backward at 1072 × 576: 0.95 ms against
    /// 1.25 through libtorch's `where`). What
    /// backward keeps is a byte per element, and neither pass converts the
    /// mask to `x`'s dtype: a product with a byte mask ran 2× faster per
    /// call than `masked_fill` but, through the temporary float copies the
    /// CPU kernels make of the mask, raised peak RSS by 0.4–0.5 GB with no
    /// measurable gain per step; a product with an f32 mask keeps 4 bytes
    /// an element. Its `1 / (1 - p)` joins the scaling on `B` (`[out, r]`),
    /// so no pass over the activations scales them: the same function as
    /// PEFT's `lora_B(lora_A(dropout(x))) · s`.
    pub(crate) fn factors(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let train = self.training.load(Ordering::Relaxed);
        let kind = x.kind();
        let (x, scale) = if train && self.dropout > 0.0 {
            let drop = drop_mask(x, self.dropout)?;
            (dropped(x, &drop)?, self.scaling / (1.0 - self.dropout))
        } else {
            (x.shallow_clone(), self.scaling)
        };
        let a = self.a.f_to_kind(kind)?;
        let b = self.b.f_mul_scalar(scale)?.f_to_kind(kind)?;
        Ok((x.f_linear::<Tensor>(&a, None)?, b))
    }

    /// `s · B A`, of `[out, in]`, in `kind`.
    pub(crate) fn delta(&self, kind: Kind) -> Result<Tensor> {
        Ok(self.b.f_matmul(&self.a)?.f_mul_scalar(self.scaling)?.f_to_kind(kind)?)
    }
}

/// `x` with the elements `drop` marks zeroed (`where(drop, 0, x)`), its
/// gradient zeroed at the same elements.
///
/// On the CPU in f32 or bf16 one autograd node of `lora_dropout.cpp` does
/// it with a vectorised loop, where libtorch's `where` runs a scalar one in
/// each pass (forward and backward of the dropout and the adapter's first
/// GEMM at 1080 × 576 took 1.40 ms through `where` against 0.40 without
/// dropout). In a LoRA step on SmolLM2-135M with dropout on every linear
/// layer (packed rows, f32, 2 threads) dropout's share of the profile fell
/// from 5.2% to 2.1% a thread; tokens/s rose 0–4%, within the machine's
/// run-to-run variation.
fn dropped(x: &Tensor, drop: &Tensor) -> Result<Tensor> {
    #[cfg(finetune_shims)]
    if x.device() == tch::Device::Cpu && matches!(x.kind(), Kind::Float | Kind::BFloat16) {
        return shim::dropped(x, drop);
    }
    Ok(Tensor::f_where_scalarself(drop, 0.0, x)?)
}

#[cfg(finetune_shims)]
#[allow(unsafe_code)]
mod shim {
    use std::ffi::{c_char, c_void};

    use tch::Tensor;

    use crate::error::Result;
    use crate::models::varlen::shim_error;

    unsafe extern "C" {
        fn ft_lora_dropped(
            x: *const c_void,
            drop: *const c_void,
            error: *mut *mut c_char,
        ) -> *mut c_void;
    }

    pub(super) fn dropped(x: &Tensor, drop: &Tensor) -> Result<Tensor> {
        let mut error: *mut c_char = std::ptr::null_mut();
        // SAFETY: both pointers are `at::Tensor*` held by live tensors for
        // the call; the function sets `error` or returns a tensor, never
        // both.
        let out =
            unsafe { ft_lora_dropped(x.as_ptr().cast(), drop.as_ptr().cast(), &raw mut error) };
        if out.is_null() {
            // SAFETY: null, or set by the C side and not freed yet.
            let why = unsafe { shim_error(error) };
            return Err(tch::TchError::Torch(format!("LoRA dropout: {why}")).into());
        }
        // SAFETY: a new `at::Tensor*` from the C side, owned from here on.
        Ok(unsafe { Tensor::from_ptr(out.cast()) })
    }
}

/// A boolean mask of `x`'s shape and device, each element true (dropped)
/// with probability `p`, drawn from libtorch's generator (so
/// `tch::manual_seed` fixes it, as recomputation under activation
/// checkpointing needs).
///
/// On the CPU libtorch draws Bernoulli samples one element at a time on one
/// thread (its parallel path needs MKL on an Intel CPU): about 5 ns an
/// element, 15% of a LoRA step with dropout on every linear layer. Here
/// libtorch draws one seed and the mask comes from SplitMix64 streams, one
/// per block of 64Ki elements (the same mask whatever the thread count),
/// filled on up to libtorch's thread count, a thread for each million
/// elements: each 64-bit draw gives two 32-bit samples, dropped when below
/// `p · 2³²`.
fn drop_mask(x: &Tensor, p: f64) -> Result<Tensor> {
    if x.device() != tch::Device::Cpu {
        return Ok(Tensor::f_empty(x.size(), (Kind::Bool, x.device()))?.f_bernoulli_float_(p)?);
    }
    let seed = Tensor::f_randint(i64::MAX, [1], (Kind::Int64, tch::Device::Cpu))?
        .f_int64_value(&[0])? as u64;
    // A thread only for each `PER_THREAD` elements: starting one costs
    // more than drawing a smaller share, and it competes for the cores
    // with libtorch's own waiting threads.
    let threads =
        usize::try_from(tch::get_num_threads()).unwrap_or(1).min(x.numel() / PER_THREAD).max(1);
    let drop = draw_mask(x.numel(), p, seed, threads);
    Ok(Tensor::f_from_slice(&drop)?.f_view(x.size().as_slice())?)
}

/// `n` samples, each true with probability `rate`, from `seed`, filled on
/// up to `threads` threads (the same samples whatever their number).
fn draw_mask(n: usize, rate: f64, seed: u64, threads: usize) -> Vec<bool> {
    let threshold = (rate.clamp(0.0, 1.0) * 4_294_967_296.0) as u64;
    let mut mask = vec![false; n];
    let blocks = n.div_ceil(BLOCK);
    let threads = threads.clamp(1, blocks.max(1));
    let per_thread = (blocks.div_ceil(threads) * BLOCK).max(1);
    std::thread::scope(|scope| {
        for (t, part) in mask.chunks_mut(per_thread).enumerate() {
            let first_block = t * per_thread / BLOCK;
            let mut fill = move || {
                for (b, block) in part.chunks_mut(BLOCK).enumerate() {
                    fill_block(block, seed, (first_block + b) as u64, threshold);
                }
            };
            if threads == 1 {
                fill();
            } else {
                scope.spawn(fill);
            }
        }
    });
    mask
}

/// Elements per SplitMix64 stream of [`drop_mask`].
const BLOCK: usize = 1 << 16;

/// [`drop_mask`] draws on more than one thread only when each gets at
/// least this many elements (about a millisecond's work).
const PER_THREAD: usize = 1 << 20;

/// Fills `block` from its own SplitMix64 stream: the stream's state after
/// its `i`-th step is `start + i·γ`, so each draw depends on its index
/// alone, and on CPUs with AVX-512 or AVX2 the draws are computed eight or
/// four at a time ([`wide`]; 0.27 and 0.49 ns an element on this machine
/// against 0.82 one at a time); the same samples either way.
fn fill_block(block: &mut [bool], seed: u64, index: u64, threshold: u64) {
    let start = splitmix64(&mut seed.wrapping_add(index.wrapping_mul(0xD1B5_4A32_D192_ED03)));
    #[cfg(target_arch = "x86_64")]
    if wide::fill(block, start, threshold) {
        return;
    }
    fill_stream(block, start, threshold);
}

/// [`fill_block`] one draw after another.
fn fill_stream(block: &mut [bool], start: u64, threshold: u64) {
    let mut state = start;
    for pair in block.chunks_mut(2) {
        let r = splitmix64(&mut state);
        pair[0] = (r & 0xFFFF_FFFF) < threshold;
        if let Some(second) = pair.get_mut(1) {
            *second = (r >> 32) < threshold;
        }
    }
}

/// [`fill_block`] with each draw computed from its index, a loop the
/// compiler vectorises when the target has wide integer multiplies.
#[inline(always)]
fn fill_indexed(block: &mut [bool], start: u64, threshold: u64) {
    let draw = |i: u64| mix64(start.wrapping_add(i.wrapping_mul(GOLDEN_GAMMA)));
    let mut pairs = block.chunks_exact_mut(2);
    let mut i = 0u64;
    for pair in &mut pairs {
        i += 1;
        let r = draw(i);
        pair[0] = (r & 0xFFFF_FFFF) < threshold;
        pair[1] = (r >> 32) < threshold;
    }
    if let [last] = pairs.into_remainder() {
        *last = (draw(i + 1) & 0xFFFF_FFFF) < threshold;
    }
}

/// [`fill_indexed`] compiled for AVX-512 and AVX2, chosen at run time.
#[cfg(target_arch = "x86_64")]
mod wide {
    #![allow(unsafe_code)]

    /// Fills `block` as [`super::fill_stream`] does when the CPU has
    /// AVX-512 (F, DQ, BW, VL) or AVX2; false, leaving it, otherwise.
    pub(super) fn fill(block: &mut [bool], start: u64, threshold: u64) -> bool {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU has every feature the function is compiled
            // for (checked just above).
            unsafe { fill_avx512(block, start, threshold) };
            true
        } else if is_x86_feature_detected!("avx2") {
            // SAFETY: as above, for AVX2.
            unsafe { fill_avx2(block, start, threshold) };
            true
        } else {
            false
        }
    }

    #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
    fn fill_avx512(block: &mut [bool], start: u64, threshold: u64) {
        super::fill_indexed(block, start, threshold);
    }

    #[target_feature(enable = "avx2")]
    fn fill_avx2(block: &mut [bool], start: u64, threshold: u64) {
        super::fill_indexed(block, start, threshold);
    }
}

/// SplitMix64's increment (the golden ratio in 64 bits).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64 (Steele, Lea, Flood 2014): advances `state`, returns a draw.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN_GAMMA);
    mix64(*state)
}

/// SplitMix64's output function.
#[inline(always)]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_true_at_the_rate_asked_independently_and_reproducibly() {
        let n = 1_000_003; // not a whole number of blocks or pairs
        let a = draw_mask(n, 0.95, 11, 2);
        let rate = a.iter().filter(|&&k| k).count() as f64 / n as f64;
        // Four standard deviations of a binomial rate.
        assert!((rate - 0.95).abs() < 4.0 * (0.95 * 0.05 / n as f64).sqrt(), "{rate}");
        // Neighbours (the two halves of one draw, and across draws) are
        // independent: both kept at keep².
        let both = a.windows(2).filter(|w| w[0] && w[1]).count() as f64 / (n - 1) as f64;
        assert!((both - 0.95 * 0.95).abs() < 2e-3, "{both}");
        // The same seed, the same mask whatever the thread count; another
        // seed, another mask.
        assert_eq!(a, draw_mask(n, 0.95, 11, 1));
        assert_eq!(a, draw_mask(n, 0.95, 11, 3));
        assert_ne!(a, draw_mask(n, 0.95, 12, 2));
        assert!(draw_mask(1000, 1.0, 5, 2).iter().all(|&k| k));
        assert!(draw_mask(1000, 0.0, 5, 2).iter().all(|&k| !k));
    }

    #[test]
    fn the_vectorised_draw_equals_the_sequential_stream() {
        let threshold = (0.3 * 4_294_967_296.0) as u64;
        for len in [BLOCK, 4097, 1, 0] {
            let (mut stream, mut indexed) = (vec![false; len], vec![true; len]);
            fill_stream(&mut stream, 0x1234_5678_9ABC, threshold);
            fill_indexed(&mut indexed, 0x1234_5678_9ABC, threshold);
            assert_eq!(stream, indexed, "{len} samples");
            #[cfg(target_arch = "x86_64")]
            {
                let mut wide = vec![true; len];
                if wide::fill(&mut wide, 0x1234_5678_9ABC, threshold) {
                    assert_eq!(stream, wide, "{len} samples, wide");
                }
            }
        }
        // About 30% true.
        let mut sample = vec![false; BLOCK];
        fill_block(&mut sample, 3, 0, threshold);
        let rate = sample.iter().filter(|&&k| k).count() as f64 / BLOCK as f64;
        assert!((rate - 0.3).abs() < 0.01, "{rate}");
    }

    #[test]
    fn dropping_equals_where_forward_and_backward() {
        tch::manual_seed(3);
        // Small (one thread, a vector loop's tail) and split across threads
        // (libtorch's grain is 32768 elements); transposed, so not
        // contiguous.
        for (kind, rows, cols) in
            [(Kind::Float, 70, 33), (Kind::BFloat16, 70, 33), (Kind::Float, 301, 257)]
        {
            let x =
                Tensor::randn([rows, cols], (kind, tch::Device::Cpu)).tr().set_requires_grad(true);
            let drop = drop_mask(&x, 0.3).unwrap();
            let g = Tensor::randn([cols, rows], (kind, tch::Device::Cpu));
            let ours = dropped(&x, &drop).unwrap();
            let grad = Tensor::run_backward(
                &[ours.f_mul(&g).unwrap().sum(Kind::Float)],
                &[&x],
                false,
                false,
            );
            let reference = Tensor::where_scalarself(&drop, 0.0, &x);
            let expected = Tensor::run_backward(
                &[reference.f_mul(&g).unwrap().sum(Kind::Float)],
                &[&x],
                false,
                false,
            );
            assert_eq!(ours.kind(), kind);
            assert!(ours.equal(&reference), "{kind:?} forward");
            assert!(grad[0].equal(&expected[0]), "{kind:?} backward");
            // Some kept, some dropped.
            let kept = ours.ne(0.0).sum(Kind::Int64).int64_value(&[]);
            assert!(kept > 0 && kept < rows * cols, "{kept}");
        }
        // Without a graph (evaluation, recomputation under no_grad).
        let x = Tensor::ones([4, 8], (Kind::Float, tch::Device::Cpu));
        let drop = Tensor::from_slice(&[true, false]).repeat([16]).view([4, 8]);
        let y = tch::no_grad(|| dropped(&x, &drop)).unwrap();
        assert_eq!(y.sum(Kind::Float).double_value(&[]), 16.0);
        assert!(!y.requires_grad());
    }

    #[test]
    fn a_drop_mask_is_boolean_in_its_inputs_shape() {
        let x = Tensor::zeros([3, 5, 7], (Kind::Float, tch::Device::Cpu));
        let m = drop_mask(&x, 0.5).unwrap();
        assert_eq!((m.size(), m.kind()), (vec![3, 5, 7], Kind::Bool));
    }
}
