//! Qwen3 (`Qwen3ForCausalLM`): the Llama decoder with an RMSNorm over each
//! query and key head (`q_norm`, `k_norm`) before RoPE, and an explicit
//! `head_dim` that need not be `hidden_size / num_attention_heads`.

use super::layers::Loader;
use super::llama::LlamaForCausalLm;
use crate::config::{Architecture, ModelConfig};
use crate::error::Result;

pub(crate) fn load(c: &ModelConfig, l: &mut Loader<'_>) -> Result<LlamaForCausalLm> {
    debug_assert!(c.architecture == Architecture::Qwen3 && c.qk_norm);
    LlamaForCausalLm::load(c, l)
}
