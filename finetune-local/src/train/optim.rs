//! AdamW (decoupled weight decay, as `torch.optim.AdamW`), learning-rate
//! schedules (as transformers' `get_*_schedule_with_warmup`) and
//! gradient-norm clipping (as `torch.nn.utils.clip_grad_norm_`).
//!
//! The optimizer is ours rather than libtorch's so that its state (the two
//! moments and the step count) can be checkpointed and restored exactly.

use tch::{Kind, Tensor};

use crate::error::{LocalError, Result};

/// How the learning rate moves over training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Schedule {
    /// Constant after warmup.
    Constant,
    /// Linear decay to zero after warmup.
    #[default]
    Linear,
    /// Half-cosine decay to zero after warmup.
    Cosine,
}

impl std::str::FromStr for Schedule {
    type Err = LocalError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(Self::Constant),
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            other => Err(LocalError::InvalidArgument(format!(
                "unknown schedule `{other}` (constant, linear or cosine)"
            ))),
        }
    }
}

impl Schedule {
    /// The factor of the peak learning rate at optimizer step `step`
    /// (0-based: the factor the `step`-th update uses), as transformers
    /// computes it: `step / warmup` during warmup, then the decay over the
    /// remaining `total - warmup` steps.
    pub fn factor(self, step: usize, warmup: usize, total: usize) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
        match self {
            Self::Constant => 1.0,
            Self::Linear => (1.0 - progress).max(0.0),
            Self::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        }
    }
}

/// AdamW's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// `β₁`.
    pub beta1: f64,
    /// `β₂`.
    pub beta2: f64,
    /// `ε`.
    pub eps: f64,
    /// Decoupled weight decay; applied to matrices only, not to biases and
    /// norm weights (as transformers' Trainer groups them).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// One trained tensor and its moments.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) name: String,
    pub(crate) param: Tensor,
    pub(crate) m: Tensor,
    pub(crate) v: Tensor,
    /// The f32 master copy of a parameter held in a narrower type (bf16,
    /// f16): updates accumulate here, and the parameter is its rounding, so
    /// updates smaller than the parameter's precision are not lost.
    pub(crate) master: Option<Tensor>,
    decay: bool,
}

/// AdamW over a fixed list of named parameters.
#[derive(Debug)]
pub(crate) struct AdamW {
    pub(crate) slots: Vec<Slot>,
    /// Updates done so far.
    pub(crate) steps: i64,
    config: AdamWConfig,
}

impl AdamW {
    /// Moments start at zero, in fp32, on each parameter's device; a
    /// parameter narrower than fp32 gets an fp32 master copy.
    pub(crate) fn new(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Result<Self> {
        let mut slots = Vec::with_capacity(params.len());
        for (name, param) in params {
            let zeros = || param.f_zeros_like()?.f_to_kind(Kind::Float);
            let (m, v) = (zeros()?, zeros()?);
            let decay = param.dim() >= 2;
            let master = match param.kind() {
                Kind::BFloat16 | Kind::Half => {
                    Some(tch::no_grad(|| param.f_to_kind(Kind::Float))?.f_detach_copy()?)
                }
                _ => None,
            };
            slots.push(Slot { name, param, m, v, master, decay });
        }
        Ok(Self { slots, steps: 0, config })
    }

    /// The global L2 norm of the gradients, before any clipping.
    pub(crate) fn grad_norm(&self) -> Result<f64> {
        let mut total = 0.0;
        for slot in &self.slots {
            let g = slot.param.grad();
            if g.defined() {
                let n = g.f_to_kind(Kind::Float)?.f_square()?.f_sum(Kind::Double)?;
                total += n.f_double_value(&[])?;
            }
        }
        Ok(total.sqrt())
    }

    /// Scales the gradients so their global norm is at most `max_norm`
    /// (`clip = max_norm / (norm + 1e-6)`, applied when below 1).
    pub(crate) fn clip(&self, norm: f64, max_norm: f64) -> Result<()> {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for slot in &self.slots {
                let mut g = slot.param.grad();
                if g.defined() {
                    let _scaled = tch::no_grad(|| g.f_mul_scalar_(coef))?;
                }
            }
        }
        Ok(())
    }

    /// One update with learning rate `lr`; parameters without a gradient
    /// are left alone (their moments do not move).
    pub(crate) fn step(&mut self, lr: f64) -> Result<()> {
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        tch::no_grad(|| -> Result<()> {
            for slot in &mut self.slots {
                let grad = slot.param.grad();
                if !grad.defined() {
                    continue;
                }
                let g = grad.f_to_kind(Kind::Float)?;
                let mut p = match &slot.master {
                    Some(master) => master.shallow_clone(),
                    None => slot.param.f_to_kind(Kind::Float)?,
                };
                if slot.decay && c.weight_decay != 0.0 {
                    p = p.f_mul_scalar(1.0 - lr * c.weight_decay)?;
                }
                slot.m = slot.m.f_mul_scalar(c.beta1)?.f_add(&g.f_mul_scalar(1.0 - c.beta1)?)?;
                slot.v = slot
                    .v
                    .f_mul_scalar(c.beta2)?
                    .f_add(&g.f_square()?.f_mul_scalar(1.0 - c.beta2)?)?;
                let denom = slot.v.f_sqrt()?.f_div_scalar(bias2_sqrt)?.f_add_scalar(c.eps)?;
                let update = slot.m.f_div(&denom)?.f_mul_scalar(lr / bias1)?;
                let new = p.f_sub(&update)?;
                if let Some(master) = &mut slot.master {
                    master.f_copy_(&new)?;
                }
                slot.param.f_copy_(&new)?;
            }
            Ok(())
        })
    }

    /// Drops every gradient.
    pub(crate) fn zero_grad(&mut self) {
        for slot in &mut self.slots {
            slot.param.zero_grad();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_transformers() {
        // get_linear_schedule_with_warmup(warmup=2, total=10)
        let f = |s| Schedule::Linear.factor(s, 2, 10);
        assert_eq!(f(0), 0.0);
        assert_eq!(f(1), 0.5);
        assert_eq!(f(2), 1.0);
        assert!((f(6) - 0.5).abs() < 1e-12);
        assert_eq!(f(10), 0.0);
        let c = |s| Schedule::Cosine.factor(s, 0, 10);
        assert_eq!(c(0), 1.0);
        assert!((c(5) - 0.5).abs() < 1e-12);
        assert!(c(10).abs() < 1e-12);
        assert_eq!(Schedule::Constant.factor(7, 2, 10), 1.0);
        assert_eq!(Schedule::Constant.factor(1, 4, 10), 0.25);
    }

    #[test]
    fn adamw_matches_the_closed_form_of_its_first_steps() {
        // With a constant gradient g, Adam's first update is lr·sign(g)
        // (up to ε), the second too; weight decay shrinks p by lr·wd·p.
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let config = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], config).unwrap();
        // A 1-D parameter takes no weight decay.
        (&p * 3.0).sum(Kind::Float).backward();
        opt.step(0.01).unwrap();
        let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
        assert!((got[0] - 0.99).abs() < 1e-6 && (got[1] + 2.01).abs() < 1e-6, "{got:?}");

        let w = Tensor::from_slice(&[1.0f32, 1.0]).view([1, 2]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("w".into(), w.shallow_clone())], config).unwrap();
        (&w * 2.0).sum(Kind::Float).backward();
        opt.step(0.01).unwrap();
        let got: Vec<f32> = Vec::try_from(&w.detach().view([-1])).unwrap();
        let expected = 1.0 * (1.0 - 0.01 * 0.1) - 0.01;
        assert!((got[0] - expected as f32).abs() < 1e-6, "{got:?} vs {expected}");
    }

    #[test]
    fn bf16_parameters_keep_updates_smaller_than_their_precision() {
        // bf16 has 8 bits of mantissa: near 1.0 its step is 2^-7 ≈ 0.0078.
        // Adam moves each weight by about lr = 1e-3 per step, so without an
        // f32 master copy every update rounds away and the weight never
        // moves; with one, 20 updates move it by about 0.02.
        let p = Tensor::from_slice(&[1.0f32]).to_kind(Kind::BFloat16).set_requires_grad(true);
        let mut opt =
            AdamW::new(vec![("p".into(), p.shallow_clone())], AdamWConfig::default()).unwrap();
        assert!(opt.slots[0].master.is_some());
        for _ in 0..20 {
            (&p * 1.0).sum(Kind::Float).backward();
            opt.step(1e-3).unwrap();
            opt.zero_grad();
        }
        let master = opt.slots[0].master.as_ref().unwrap().double_value(&[0]);
        assert!((master - 0.98).abs() < 1e-4, "{master}");
        let param = p.to_kind(Kind::Float).double_value(&[0]);
        assert!((param - master).abs() <= 2f64.powi(-8), "{param} vs {master}");
        assert!(param < 1.0, "the parameter follows its master copy");
        // An f32 parameter needs no copy.
        let q = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let opt = AdamW::new(vec![("q".into(), q)], AdamWConfig::default()).unwrap();
        assert!(opt.slots[0].master.is_none());
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let p = Tensor::from_slice(&[0.0f32, 0.0]).set_requires_grad(true);
        let opt =
            AdamW::new(vec![("p".into(), p.shallow_clone())], AdamWConfig::default()).unwrap();
        (&p * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float).backward();
        let norm = opt.grad_norm().unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        opt.clip(norm, 1.0).unwrap();
        assert!((opt.grad_norm().unwrap() - 1.0).abs() < 1e-5);
    }
}
