//! Local fine-tuning of HuggingFace causal language models on libtorch.
//!
//! This is the only crate of the workspace that links libtorch (through
//! `tch` 0.24.0, paired with PyTorch 2.11.0). It will hold the model cache for
//! air-gapped sites, the HF architectures, generation, the LoRA / full
//! fine-tuning trainer and the local [`finetune_core::FineTuneProvider`]
//! (see the project's issues). Today it reports the libtorch runtime.
//!
//! # Linking
//! Binaries that link this crate need an rpath to libtorch and must keep
//! `libtorch_cuda.so` linked for CUDA to be found. Inside this workspace the
//! build scripts do it; a downstream package adds a `build.rs` that reads
//! `DEP_FINETUNE_LOCAL_LIBTORCH_LIB` and emits
//! `cargo::rustc-link-arg=-Wl,-rpath,<lib>` and
//! `cargo::rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed`
//! (this crate's own `build.rs` is such a script).

use std::fmt;

pub use tch;

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
