//! Local fine-tuning of HuggingFace causal language models on libtorch.
//!
//! This is the only crate of the workspace that links libtorch (through
//! `tch` 0.24.0, paired with PyTorch 2.11.0). It holds:
//!
//! - [`hub`]: the model cache in the HF hub layout, resolved offline, and
//!   [`ModelCache::preload`] for air-gapped sites;
//! - [`config`], [`weights`], [`models`]: `config.json`, single and sharded
//!   safetensors (bf16/fp16/fp32, loaded one tensor at a time into the chosen
//!   compute dtype) and the architectures — Llama, Mistral, Qwen2, Qwen3,
//!   GPT-2 — whose logits match transformers (see `tests/parity.rs`);
//! - [`tokenizer`] and [`chat`]: `tokenizer.json`, special tokens and chat
//!   templates rendered as transformers renders them;
//! - [`generate`]: KV-cached greedy and sampled generation over batches;
//! - [`lora`], [`sft`], [`train`]: PEFT-compatible LoRA, examples to tokens
//!   with completion-only targets, padded and packed batches, and the
//!   trainer (AdamW, schedules, accumulation, clipping, evaluation, early
//!   stopping, metrics, checkpoints and exact resume);
//! - [`job`] and [`provider`]: a whole job into one output folder, and
//!   [`LocalProvider`], the trainer behind `FineTuneProvider`, whose jobs
//!   outlive the process ([`job_folder`]);
//! - [`chat_model`] and [`factory`]: [`LocalChatModel`], a model (base +
//!   adapter, or merged) behind `ChatModel`, and [`LocalFactory`], which
//!   opens both from a `local_hf` connection; [`import`]: a folder custom
//!   training code wrote, checked by loading it, as a fine-tuned model;
//! - [`gguf`]: llama.cpp's GGUF files read and dequantized (F32 to the
//!   K-quants), and a GGUF model imported into the model cache;
//! - [`data`]: datasets of the canonical schema as examples;
//!   [`builtin`]: small models made here (the quickstart's).
//!
//! ```no_run
//! use finetune_local::{CausalLm, LoadOptions, ModelCache, Tokenizer, locate};
//! use finetune_local::generate::{GenerationOptions, generate};
//!
//! let dir = locate("Qwen/Qwen2.5-0.5B-Instruct", &ModelCache::from_env())?;
//! let model = CausalLm::load(&dir, &LoadOptions::default())?;
//! let tokenizer = Tokenizer::from_dir(&dir)?;
//! let prompt = tokenizer.encode("The capital of France is", true)?;
//! let options = GenerationOptions {
//!     max_new_tokens: 8,
//!     eos_token_ids: tokenizer.eos_token_ids().to_vec(),
//!     ..Default::default()
//! };
//! let out = generate(&model, &[prompt], &options)?;
//! println!("{}", tokenizer.decode(&out[0].tokens, true)?);
//! # Ok::<(), finetune_local::LocalError>(())
//! ```
//!
//! # Linking
//! Binaries that link this crate need an rpath to libtorch and must keep
//! `libtorch_cuda.so` linked for CUDA to be found; link arguments cannot
//! travel from a library to its dependents, so a package with binaries adds
//! `finetune-build` under `[build-dependencies]` and a `build.rs` that calls
//! `finetune_build::link_libtorch()` (the README's "Using these crates in
//! your project" shows all a user adds).

use std::fmt;

pub mod builtin;
pub mod chat;
pub mod chat_model;
pub mod config;
pub mod data;
#[cfg(feature = "distributed")]
pub mod distributed;
mod error;
pub mod factory;
pub mod generate;
pub mod gguf;
pub mod hub;
pub mod import;
pub mod job;
pub mod job_folder;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod lora;
pub mod models;
pub mod provider;
pub mod sft;
pub mod tokenizer;
pub mod topology;
pub mod train;
pub mod weights;

pub use chat::ChatTemplate;
pub use chat_model::LocalChatModel;
pub use config::{Architecture, ModelConfig};
pub use error::{LocalError, Result};
pub use factory::LocalFactory;
pub use finetune_core::{ChatMessage, ChatModel, ChatRequest, ChatResponse, Role};
pub use hub::{ModelCache, ModelId, locate};
pub use import::import_trained;
pub use job::{JobReport, LocalJob, Outputs, Runtime, run_job, run_job_on};
pub use models::{CausalLm, ForwardInput, KvCache, LoadOptions};
pub use provider::LocalProvider;
// The foreign crates in this crate's public API (tensors, devices, dtypes;
// the wrapped tokenizer), so that users name them without matching our
// versions.
pub use tch;
pub use tokenizer::Tokenizer;
pub use tokenizers;

/// What libtorch offers on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// Whether a CUDA device can be used.
    pub cuda_available: bool,
    /// How many CUDA devices there are.
    pub cuda_devices: usize,
    /// Whether cuDNN can be used.
    pub cudnn_available: bool,
    /// libtorch's intra-op CPU threads.
    pub cpu_threads: usize,
}

impl RuntimeInfo {
    /// Asks libtorch.
    pub fn detect() -> Self {
        Self {
            cuda_available: tch::Cuda::is_available(),
            cuda_devices: usize::try_from(tch::Cuda::device_count()).unwrap_or(0),
            cudnn_available: tch::Cuda::cudnn_is_available(),
            cpu_threads: usize::try_from(tch::get_num_threads()).unwrap_or(1),
        }
    }

    /// The device training should use: the first CUDA device when there is
    /// one, else the CPU.
    pub fn preferred_device(&self) -> tch::Device {
        if self.cuda_available { tch::Device::Cuda(0) } else { tch::Device::Cpu }
    }
}

impl fmt::Display for RuntimeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "libtorch: cuda available: {} ({} device(s)), cudnn: {}, cpu threads: {}",
            self.cuda_available, self.cuda_devices, self.cudnn_available, self.cpu_threads
        )
    }
}
