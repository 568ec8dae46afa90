//! Qwen2 and Qwen2.5 (`Qwen2ForCausalLM`): the Llama decoder with a bias on
//! the q, k and v projections (none on o), usually tied embeddings and a
//! large RoPE theta.

use super::layers::Loader;
use super::llama::LlamaForCausalLm;
use crate::config::{Architecture, ModelConfig};
use crate::error::Result;

pub(crate) fn load(c: &ModelConfig, l: &mut Loader<'_>) -> Result<LlamaForCausalLm> {
    debug_assert!(c.architecture == Architecture::Qwen2 && c.qkv_bias && !c.o_bias);
    LlamaForCausalLm::load(c, l)
}
