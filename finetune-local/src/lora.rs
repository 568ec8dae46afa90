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

    /// The adapter's contribution for input `x` (in x's dtype).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let train = self.training.load(Ordering::Relaxed);
        let x = if train && self.dropout > 0.0 {
            x.f_dropout(self.dropout, true)?
        } else {
            x.shallow_clone()
        };
        let kind = x.kind();
        let a = self.a.f_to_kind(kind)?;
        let b = self.b.f_to_kind(kind)?;
        Ok(x.f_linear::<Tensor>(&a, None)?
            .f_linear::<Tensor>(&b, None)?
            .f_mul_scalar(self.scaling)?)
    }

    /// `s · B A`, of `[out, in]`, in `kind`.
    pub(crate) fn delta(&self, kind: Kind) -> Result<Tensor> {
        Ok(self.b.f_matmul(&self.a)?.f_mul_scalar(self.scaling)?.f_to_kind(kind)?)
    }
}
