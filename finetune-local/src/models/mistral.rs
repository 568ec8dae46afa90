//! Mistral (`MistralForCausalLM`): the Llama decoder with sliding-window
//! attention when `sliding_window` is set (a token sees itself and the
//! `sliding_window - 1` tokens before it).

use std::path::Path;

use serde::Deserialize;

use super::layers::Loader;
use super::llama::{LlamaConfig, LlamaForCausalLm};
use crate::config::{Architecture, ModelConfig, field};
use crate::error::Result;

/// Mistral's `config.json`: Llama's fields and a sliding window.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MistralConfig {
    /// The fields it shares with Llama.
    #[serde(flatten)]
    pub llama: LlamaConfig,
    /// Attend only to this many most recent keys, when set.
    #[serde(default, deserialize_with = "field::int")]
    pub sliding_window: Option<i64>,
}

impl MistralConfig {
    /// The shared decoder's settings for this architecture.
    pub(crate) fn model_config(&self, path: &Path) -> Result<ModelConfig> {
        let mut c = self.llama.model_config(Architecture::Mistral, path)?;
        c.sliding_window = self.sliding_window;
        Ok(c)
    }
}

pub(crate) fn load(c: &ModelConfig, l: &mut Loader<'_>) -> Result<LlamaForCausalLm> {
    debug_assert_eq!(c.architecture, Architecture::Mistral);
    LlamaForCausalLm::load(c, l)
}
