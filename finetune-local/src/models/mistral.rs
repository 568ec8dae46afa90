//! Mistral (`MistralForCausalLM`): the Llama decoder with sliding-window
//! attention when `sliding_window` is set (a token sees itself and the
//! `sliding_window - 1` tokens before it).

use super::layers::Loader;
use super::llama::LlamaForCausalLm;
use crate::config::{Architecture, ModelConfig};
use crate::error::Result;

pub(crate) fn load(c: &ModelConfig, l: &mut Loader<'_>) -> Result<LlamaForCausalLm> {
    debug_assert_eq!(c.architecture, Architecture::Mistral);
    LlamaForCausalLm::load(c, l)
}
