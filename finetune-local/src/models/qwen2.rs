//! Qwen2 and Qwen2.5 (`Qwen2ForCausalLM`): the Llama decoder with a bias on
//! the q, k and v projections (none on o), usually tied embeddings and a
//! large RoPE theta.

use std::path::Path;

use serde::Deserialize;

use super::layers::Loader;
use super::llama::{LlamaConfig, LlamaForCausalLm, refuse_per_layer_windows};
use crate::config::{Architecture, ModelConfig, field};
use crate::error::Result;

/// Qwen2's `config.json`: Llama's fields; q/k/v carry a bias, o none.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Qwen2Config {
    /// The fields it shares with Llama.
    #[serde(flatten)]
    pub llama: LlamaConfig,
    /// Per-layer sliding windows (not implemented: refused when true).
    #[serde(default, deserialize_with = "field::boolean")]
    pub use_sliding_window: Option<bool>,
}

impl Qwen2Config {
    /// The shared decoder's settings for this architecture.
    pub(crate) fn model_config(&self, path: &Path) -> Result<ModelConfig> {
        let mut c = self.llama.model_config(Architecture::Qwen2, path)?;
        refuse_per_layer_windows(self.use_sliding_window, path)?;
        (c.qkv_bias, c.o_bias) = (true, false);
        Ok(c)
    }
}

pub(crate) fn load(c: &ModelConfig, l: &mut Loader<'_>) -> Result<LlamaForCausalLm> {
    debug_assert!(c.architecture == Architecture::Qwen2 && c.qkv_bias && !c.o_bias);
    LlamaForCausalLm::load(c, l)
}
