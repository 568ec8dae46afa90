//! Qwen3 (`Qwen3ForCausalLM`): the Llama decoder with an RMSNorm over each
//! query and key head (`q_norm`, `k_norm`) before RoPE, and an explicit
//! `head_dim` that need not be `hidden_size / num_attention_heads`.

use std::path::Path;

use serde::Deserialize;

use super::layers::Loader;
use super::llama::{LlamaConfig, LlamaForCausalLm, refuse_per_layer_windows};
use crate::config::{Architecture, ModelConfig, field};
use crate::error::Result;

/// Qwen3's `config.json`: Llama's fields (with `head_dim`) and RMSNorm on
/// each query and key head.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Qwen3Config {
    /// The fields it shares with Llama.
    #[serde(flatten)]
    pub llama: LlamaConfig,
    /// Per-layer sliding windows (not implemented: refused when true).
    #[serde(default, deserialize_with = "field::boolean")]
    pub use_sliding_window: Option<bool>,
}

impl Qwen3Config {
    /// The shared decoder's settings for this architecture.
    pub(crate) fn model_config(&self, path: &Path) -> Result<ModelConfig> {
        let mut c = self.llama.model_config(Architecture::Qwen3, path)?;
        refuse_per_layer_windows(self.use_sliding_window, path)?;
        c.qk_norm = true;
        Ok(c)
    }
}

pub(crate) fn load(c: &ModelConfig, l: &mut Loader<'_>) -> Result<LlamaForCausalLm> {
    debug_assert!(c.architecture == Architecture::Qwen3 && c.qk_norm);
    LlamaForCausalLm::load(c, l)
}
