//! The memory a run will need, estimated before it starts: weights,
//! gradients, optimizer state, the activations one micro-batch keeps for
//! backward, and the logits of one loss chunk.
//!
//! An estimate, not a measurement: it counts the tensors the decoder keeps
//! for backward (the residual stream, the q/k/v and attention outputs, the
//! MLP's gate/up/product, the attention scores of the eager path, each
//! adapter's dropped-out input, mask and rank-wide output) and adds
//! nothing for the allocator's slack or the framework's own buffers. The
//! training benchmark prints it next to the measured peak.

use std::fmt;

use serde::Serialize;

use crate::config::ModelConfig;

/// Bytes per part, for one micro-batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct MemoryPlan {
    /// Every parameter, in the model's dtype.
    pub weights: u64,
    /// The gradients of the trained parameters.
    pub gradients: u64,
    /// AdamW's two moments (f32) of the trained parameters, and their f32
    /// master copy when the model is bf16 or f16.
    pub optimizer: u64,
    /// What one micro-batch keeps for backward.
    pub activations: u64,
    /// One loss chunk's logits, their log-softmax and gradient (f32).
    pub logits: u64,
}

impl MemoryPlan {
    /// The sum of the parts.
    pub fn total(&self) -> u64 {
        self.weights + self.gradients + self.optimizer + self.activations + self.logits
    }
}

/// What the estimate is made of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PlanInputs<'a> {
    pub config: &'a ModelConfig,
    /// Parameters in all, and bytes per element of the model.
    pub parameters: u64,
    pub dtype_bytes: u64,
    /// Parameters trained (LoRA adapters, or all).
    pub trained: u64,
    /// Rows of a micro-batch and tokens per row (the longest).
    pub rows: u64,
    pub row_tokens: u64,
    /// Positions whose logits are computed at once.
    pub loss_chunk: Option<u64>,
    pub checkpointing: bool,
    /// Over every adapter of the model: the input widths (the `in` of each
    /// `A`), counted when dropout makes a masked copy of the input, and
    /// the ranks.
    pub adapter_inputs: u64,
    pub adapter_ranks: u64,
    pub adapter_dropout: bool,
}

pub(crate) fn plan(i: &PlanInputs<'_>) -> MemoryPlan {
    let c = i.config;
    let b = i.dtype_bytes;
    let tokens = i.rows * i.row_tokens;
    let (hidden, inter) = (c.hidden_size.max(0) as u64, c.intermediate_size.max(0) as u64);
    let (heads, kv) = (c.num_heads.max(0) as u64, (c.num_kv_heads * c.head_dim).max(0) as u64);
    let q = (c.num_heads * c.head_dim).max(0) as u64;
    // Per token of one layer: the input and two norms' outputs, q and k
    // before and after rotation, v, the attention output, the MLP's
    // gate, up, activation and product; plus each head's row of scores and
    // probabilities over the row's tokens.
    let per_token = (3 * hidden + 3 * q + 3 * kv + 4 * inter) * b;
    let scores = i.rows * heads * i.row_tokens * i.row_tokens * 2 * b;
    let layers = c.num_layers.max(0) as u64;
    // The adapters' share per token of one layer: the masked input (and
    // its one-byte mask) when dropout is on, and `A`'s output.
    let masked = if i.adapter_dropout { i.adapter_inputs * (b + 1) } else { 0 };
    let adapters = (masked + i.adapter_ranks * b) / layers.max(1);
    let layer = tokens * (per_token + adapters) + scores;
    let activations = if i.checkpointing {
        // Every layer's input, and one layer recomputed at a time.
        layers * tokens * hidden * b + layer
    } else {
        layers * layer
    };
    let chunk = i.loss_chunk.map_or(tokens, |n| n.min(tokens));
    MemoryPlan {
        weights: i.parameters * b,
        gradients: i.trained * b,
        // Two f32 moments, and an f32 master copy of narrower weights.
        optimizer: i.trained * if b < 4 { 3 * 4 } else { 2 * 4 },
        activations,
        logits: chunk * c.vocab_size.max(0) as u64 * 4 * 3,
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |n: u64| n as f64 / (1024.0 * 1024.0);
        write!(
            f,
            "about {:.0} MiB: weights {:.0}, gradients {:.0}, optimizer {:.0}, activations {:.0}, \
             logits {:.0}",
            mib(self.total()),
            mib(self.weights),
            mib(self.gradients),
            mib(self.optimizer),
            mib(self.activations),
            mib(self.logits)
        )
    }
}
