//! The memory a run will need, estimated before it starts: weights,
//! gradients, optimizer state, the activations one micro-batch keeps for
//! backward (and the working memory of one layer's backward), the logits of
//! one loss chunk, and on the CPU what the process already holds besides
//! the weights.
//!
//! An estimate, not a measurement: it counts the tensors the decoder keeps
//! for backward (the residual stream, the q/k/v and attention outputs, the
//! MLP's gate/up/product, each adapter's dropped-out input, mask and
//! rank-wide output; attention runs fused, so no scores are kept, only a
//! mask when there is one) and adds nothing for the allocator's slack
//! during training. The training benchmark prints it next to the measured
//! peak.

use std::fmt;

use serde::Serialize;

use crate::config::ModelConfig;
use crate::models::Checkpointing;

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
    /// On the CPU, what the process held besides the weights when the plan
    /// was made (libraries, tokenizer, the data, allocator slack from
    /// loading); 0 on a GPU.
    pub runtime: u64,
}

impl MemoryPlan {
    /// The sum of the parts.
    pub fn total(&self) -> u64 {
        self.weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.logits
            + self.runtime
    }
}

/// What the estimate is made of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PlanInputs<'a> {
    pub config: &'a ModelConfig,
    /// Parameters in all, and bytes per element of the model.
    pub parameters: u64,
    pub dtype_bytes: u64,
    /// Parameters trained (LoRA adapters, or all), and bytes per element
    /// of them (f32 adapters over a bf16 base).
    pub trained: u64,
    pub trained_bytes: u64,
    /// Resident bytes of the process now (CPU), weights included.
    pub resident: Option<u64>,
    /// Rows of a micro-batch and tokens per row (the longest).
    pub rows: u64,
    pub row_tokens: u64,
    /// Positions whose logits are computed at once.
    pub loss_chunk: Option<u64>,
    pub checkpointing: Checkpointing,
    /// Packed micro-batches: one row of examples attended one by one.
    pub packed: bool,
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
    let q = (c.num_heads * c.head_dim).max(0) as u64;
    // Per token of one layer: the input, the two norms' outputs and the
    // residual between them; q and k after rotation, k and v repeated to
    // the query heads, the attention output and its reshaped copy; the
    // MLP's gate, its activation, up and their product. Norms of a
    // narrower dtype also keep their f32 input.
    let norms32 = if b < 4 { 2 * hidden * 4 } else { 0 };
    let per_token = (4 * hidden + 5 * q + 4 * inter) * b + norms32;
    // Fused attention keeps no scores; a padded micro-batch keeps one
    // `[rows, 1, len, len]` mask for every layer (packed examples are
    // attended one by one).
    let mask = if i.packed { 0 } else { i.rows * i.row_tokens * i.row_tokens * b };
    let layers = c.num_layers.max(0) as u64;
    // The adapters' share per token of one layer: the masked input (and
    // its one-byte mask) when dropout is on, and `A`'s output.
    let masked = if i.adapter_dropout { i.adapter_inputs * (b + 1) } else { 0 };
    let adapters = (masked + i.adapter_ranks * b) / layers.max(1);
    let layer = tokens * (per_token + adapters);
    // Backward through a layer holds gradients about as large as what the
    // layer kept.
    let activations = mask
        + match i.checkpointing {
            Checkpointing::Off => (layers + 1) * layer,
            // Every layer's input, and one layer recomputed at a time.
            Checkpointing::Full => layers * tokens * hidden * b + 2 * layer,
            // Every layer's input, the residual after attention and the
            // outputs of q, k, v, gate and up; one layer at a time.
            Checkpointing::Selective => {
                let kv = (c.num_kv_heads * c.head_dim).max(0) as u64;
                layers * tokens * (2 * hidden + q + 2 * kv + 2 * inter) * b + 2 * layer
            }
        };
    let chunk = i.loss_chunk.map_or(tokens, |n| n.min(tokens));
    let weights = i.parameters * b;
    let tb = i.trained_bytes;
    MemoryPlan {
        weights,
        gradients: i.trained * tb,
        // Two f32 moments, and an f32 master copy of narrower weights.
        optimizer: i.trained * if tb < 4 { 3 * 4 } else { 2 * 4 },
        activations,
        logits: chunk * c.vocab_size.max(0) as u64 * 4 * 3,
        runtime: i.resident.map_or(0, |r| r.saturating_sub(weights)),
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |n: u64| n as f64 / (1024.0 * 1024.0);
        write!(
            f,
            "about {:.0} MiB: weights {:.0}, gradients {:.0}, optimizer {:.0}, activations {:.0}, \
             logits {:.0}, rest of the process {:.0}",
            mib(self.total()),
            mib(self.weights),
            mib(self.gradients),
            mib(self.optimizer),
            mib(self.activations),
            mib(self.logits),
            mib(self.runtime)
        )
    }
}

/// A process's resident memory in bytes, from Linux's
/// `/proc/<pid>/status`: now (`VmRSS`) and at its peak (`VmHWM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResidentMemory {
    /// Resident now.
    pub now: u64,
    /// The most it has been resident (since start, or since the peak was
    /// last reset through `/proc/<pid>/clear_refs`).
    pub peak: u64,
}

impl ResidentMemory {
    /// This process's; `None` where `/proc` does not say.
    pub fn of_this_process() -> Option<Self> {
        Self::read("self")
    }

    /// Process `pid`'s; `None` where `/proc` does not say.
    pub fn of_process(pid: u32) -> Option<Self> {
        Self::read(&pid.to_string())
    }

    fn read(pid: &str) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            let kib = status.lines().find_map(|l| l.strip_prefix(name))?;
            kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|k| k * 1024)
        };
        Some(Self { now: field("VmRSS:")?, peak: field("VmHWM:")? })
    }
}
