//! Errors of the local model side.

use std::path::{Path, PathBuf};

/// What can go wrong finding, loading or running a local model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// A model id was not found in the cache (and is not a directory).
    #[error(
        "model `{id}` not found offline; looked in: {}. Preload it on this machine with \
         `ModelCache::preload` (or pass the model's directory)",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    ModelNotFound {
        /// The id (and revision) asked for.
        id: String,
        /// Every place looked at, in order.
        searched: Vec<PathBuf>,
    },

    /// `config.json` names an architecture this crate does not implement.
    #[error("unsupported model_type `{model_type}` in {}; supported: {}", path.display(), supported.join(", "))]
    UnsupportedArchitecture {
        /// The `model_type` found.
        model_type: String,
        /// The config file.
        path: PathBuf,
        /// The model types this crate implements.
        supported: Vec<&'static str>,
    },

    /// A model file is malformed or inconsistent.
    #[error("{}{}: {message}", path.display(), field.as_deref().map(|f| format!(", field `{f}`")).unwrap_or_default())]
    InvalidModelFile {
        /// The file.
        path: PathBuf,
        /// The JSON field or tensor name at fault, when known.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },

    /// A weight the architecture needs is in none of the checkpoint files.
    #[error("weight `{name}` is missing from the checkpoint in {}", dir.display())]
    MissingWeight {
        /// The HF tensor name.
        name: String,
        /// The model directory.
        dir: PathBuf,
    },

    /// A weight has a shape other than the config implies.
    #[error("weight `{name}` in {} has shape {found:?}, the config implies {expected:?}", path.display())]
    ShapeMismatch {
        /// The HF tensor name.
        name: String,
        /// The safetensors file.
        path: PathBuf,
        /// The shape implied by config.json.
        expected: Vec<i64>,
        /// The shape in the file.
        found: Vec<i64>,
    },

    /// The tokenizer could not be loaded or could not encode/decode.
    #[error("tokenizer{}: {message}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Tokenizer {
        /// The tokenizer file, when the error is about loading it.
        path: Option<PathBuf>,
        /// What went wrong.
        message: String,
    },

    /// A chat template failed to compile or render (including the
    /// template's own `raise_exception`).
    #[error("chat template: {message}")]
    Template {
        /// The template engine's message.
        message: String,
    },

    /// A GGUF file is not GGUF, is truncated or damaged.
    #[error("{}{}: {message}", path.display(), tensor.as_deref().map(|t| format!(", tensor `{t}`")).unwrap_or_default())]
    InvalidGguf {
        /// The file.
        path: PathBuf,
        /// The tensor at fault, when the damage is in one.
        tensor: Option<String>,
        /// What is wrong.
        message: String,
    },

    /// A GGUF file holds something this crate does not import: a tensor
    /// type, an architecture, a tokenizer model.
    #[error("{}{}: unsupported {what}", path.display(), tensor.as_deref().map(|t| format!(", tensor `{t}`")).unwrap_or_default())]
    UnsupportedGguf {
        /// The file.
        path: PathBuf,
        /// The tensor, when it is one tensor's type.
        tensor: Option<String>,
        /// What is unsupported (the type, key or value).
        what: String,
    },

    /// The caller asked for something impossible (an empty batch, a
    /// negative temperature, …).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Reading or writing a file failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),

    /// An error of the shared vocabulary: reading a dataset (it names the
    /// file, row and column), drawing the loss graph.
    #[error("{0}")]
    Core(Box<finetune_core::Error>),

    /// The launcher's environment (torchrun, Slurm, a Kubernetes Indexed
    /// Job) is missing a value or holds an inconsistent one.
    #[error("process topology: `{variable}`: {message}")]
    Topology {
        /// The environment variable.
        variable: String,
        /// What is wrong with it.
        message: String,
    },

    /// A collective across the training processes failed: a rank was lost
    /// (named when the others can tell which), the rendezvous timed out.
    #[error("data-parallel training: {}{message}", lost_rank.map(|r| format!("rank {r} was lost: ")).unwrap_or_default())]
    Distributed {
        /// The rank that stopped answering, when known.
        lost_rank: Option<usize>,
        /// What c10d said.
        message: String,
    },

    /// A checkpoint cannot be resumed: it is damaged or was written by a
    /// run with other settings or data.
    #[error("cannot resume from {}: {message}", path.display())]
    Resume {
        /// The checkpoint directory.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

impl From<finetune_core::Error> for LocalError {
    fn from(e: finetune_core::Error) -> Self {
        Self::Core(Box::new(e))
    }
}

impl LocalError {
    /// Whether libtorch ran out of memory (CUDA's "out of memory", the CPU
    /// allocator's "not enough memory" / "can't allocate memory"): the
    /// trainer then retries the step with half the micro-batch.
    pub fn is_out_of_memory(&self) -> bool {
        let Self::Torch(e) = self else { return false };
        let text = e.to_string().to_lowercase();
        ["out of memory", "not enough memory", "can't allocate memory"]
            .iter()
            .any(|m| text.contains(m))
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    pub(crate) fn invalid(path: &Path, field: Option<&str>, message: impl Into<String>) -> Self {
        Self::InvalidModelFile {
            path: path.to_path_buf(),
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }
}

/// Results of this crate.
pub type Result<T, E = LocalError> = std::result::Result<T, E>;

impl From<LocalError> for finetune_core::Error {
    fn from(e: LocalError) -> Self {
        match e {
            LocalError::ModelNotFound { .. } => Self::NotFound { what: e.to_string() },
            LocalError::UnsupportedArchitecture { .. } | LocalError::UnsupportedGguf { .. } => {
                Self::Unsupported { message: e.to_string() }
            }
            LocalError::Io { path, source } => Self::Io { path: Some(path), source },
            LocalError::Core(e) => *e,
            LocalError::InvalidArgument(_)
            | LocalError::Template { .. }
            | LocalError::Topology { .. } => Self::invalid(e.to_string()),
            other => Self::other(other.to_string(), other),
        }
    }
}
