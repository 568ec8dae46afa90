//! What a training run is asked to do: the method (LoRA or full), the
//! schedule, batch sizes, evaluation, early stopping and checkpointing.

use super::optim::{AdamWConfig, Schedule};
use crate::error::{LocalError, Result};
use crate::lora::LoraConfig;
use crate::models::Checkpointing;

/// What is trained.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// LoRA adapters on a frozen base.
    Lora(LoraConfig),
    /// Every weight.
    Full,
}

impl Default for Method {
    fn default() -> Self {
        Self::Lora(LoraConfig::default())
    }
}

/// Training settings. The defaults are those of a typical LoRA run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// LoRA or full fine-tuning.
    pub method: Method,
    /// Passes over the training examples.
    pub epochs: usize,
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Examples (padded) or packed rows of `max_length` (packing; a
    /// micro-batch's rows run side by side as one row) per forward pass;
    /// the step's examples are accumulated over as many passes as needed.
    pub micro_batch_size: usize,
    /// The peak learning rate.
    pub learning_rate: f64,
    /// AdamW's betas, epsilon and weight decay.
    pub optimizer: AdamWConfig,
    /// How the learning rate moves after warmup.
    pub schedule: Schedule,
    /// Steps of linear warmup from zero.
    pub warmup_steps: usize,
    /// Clip the global gradient norm to this; `None` does not clip.
    pub max_grad_norm: Option<f64>,
    /// Stop after this many optimizer steps in all, if fewer than the epochs
    /// make.
    pub max_steps: Option<usize>,
    /// Pack several examples into rows of `max_length` tokens (no
    /// attention across examples) instead of padding each; the rows of a
    /// micro-batch are put side by side in one row, so nothing pads them.
    pub packing: bool,
    /// The row length for packing, in tokens.
    pub max_length: usize,
    /// Seed of the data order and of dropout.
    pub seed: u64,
    /// Evaluate every this many steps (and always at each epoch's end).
    pub eval_every: Option<usize>,
    /// Stop when the validation loss has not improved for this many
    /// evaluations.
    pub early_stopping_patience: Option<usize>,
    /// Write a checkpoint every this many steps (needs an output folder).
    pub checkpoint_every: Option<usize>,
    /// Checkpoints kept; older ones are deleted.
    pub keep_checkpoints: usize,
    /// The LM head and loss run over at most this many trained positions
    /// at a time, so `[tokens, vocab]` logits are never held whole (the
    /// hidden states' gradient is gathered chunk by chunk, then sent back
    /// through the model once: the same gradients, to float rounding).
    /// `None` computes all positions at once.
    pub loss_chunk_tokens: Option<usize>,
    /// Activation checkpointing (the Llama family): keep part of each
    /// decoder layer's activations and recompute the rest in the backward
    /// pass, trading compute for memory (see [`Checkpointing`]).
    pub gradient_checkpointing: Checkpointing,
    /// On the CPU, keep the memory of the step's freed tensors for the
    /// next ones of a like size instead of handing it back to malloc (see
    /// [`HostCache`](super::HostCache)). A LoRA step on SmolLM2-135M on a
    /// 2-core CPU ran 5–10% faster in fp32 and 17% in bf16; peak RSS fell
    /// on fixed-length rows (a third less) and rose by a tenth on packed
    /// ones. On by default.
    pub cache_host_memory: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            method: Method::default(),
            epochs: 3,
            batch_size: 8,
            micro_batch_size: 8,
            learning_rate: 2e-4,
            optimizer: AdamWConfig::default(),
            schedule: Schedule::Linear,
            warmup_steps: 0,
            max_grad_norm: Some(1.0),
            max_steps: None,
            packing: false,
            max_length: 1024,
            seed: 42,
            eval_every: None,
            early_stopping_patience: None,
            checkpoint_every: None,
            keep_checkpoints: 2,
            loss_chunk_tokens: Some(512),
            gradient_checkpointing: Checkpointing::Off,
            cache_host_memory: true,
        }
    }
}

impl TrainConfig {
    /// Refuses settings that cannot train (zero epochs, a non-positive
    /// learning rate, …).
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(LocalError::InvalidArgument(m));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size == 0 || self.micro_batch_size == 0 {
            return bad("batch_size and micro_batch_size must be at least 1".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(format!("learning rate must be positive, got {}", self.learning_rate));
        }
        if let Some(n) = self.max_grad_norm
            && !(n.is_finite() && n > 0.0)
        {
            return bad(format!("max_grad_norm must be positive, got {n}"));
        }
        if self.eval_every == Some(0) || self.checkpoint_every == Some(0) {
            return bad("eval_every and checkpoint_every must be at least 1".into());
        }
        if self.loss_chunk_tokens == Some(0) {
            return bad("loss_chunk_tokens must be at least 1".into());
        }
        if self.keep_checkpoints == 0 {
            return bad("keep_checkpoints must be at least 1".into());
        }
        if self.max_length < 2 {
            return bad("max_length must be at least 2".into());
        }
        Ok(())
    }

    /// What must match for a checkpoint to be resumed by this config.
    pub(super) fn fingerprint(&self) -> String {
        // Everything but the bookkeeping of evaluation and checkpoints.
        let mut c = self.clone();
        c.eval_every = None;
        c.early_stopping_patience = None;
        c.checkpoint_every = None;
        c.keep_checkpoints = 1;
        // Chunking, checkpointing and the memory cache change how, not
        // what, is computed.
        c.loss_chunk_tokens = None;
        c.gradient_checkpointing = Checkpointing::Off;
        c.cache_host_memory = true;
        format!("{c:?}")
    }
}
