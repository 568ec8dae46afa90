//! `config.json`: the model's architecture and its dimensions.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{LocalError, Result};
pub use crate::models::gpt2::Gpt2Config;
pub use crate::models::llama::LlamaConfig;
pub use crate::models::mistral::MistralConfig;
pub use crate::models::qwen2::Qwen2Config;
pub use crate::models::qwen3::Qwen3Config;

/// The model types this crate implements.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "gpt2"];

/// The architecture family of a model, from `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Architecture {
    /// Llama 1/2/3 (incl. Llama 3 rope scaling and GQA).
    Llama,
    /// Mistral (sliding-window attention when configured).
    Mistral,
    /// Qwen2 / Qwen2.5 (bias on q/k/v).
    Qwen2,
    /// Qwen3 (RMSNorm on q and k per head).
    Qwen3,
    /// GPT-2 (learned positions, Conv1D layout, LayerNorm, GELU).
    Gpt2,
}

impl Architecture {
    /// The HF `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gpt2 => "gpt2",
        }
    }
}

/// How rotary position embeddings are computed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor`.
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        /// The scaling factor for low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was pretrained with.
        original_max_position_embeddings: f64,
    },
}

/// The rotary embedding settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// The base `theta`.
    pub theta: f64,
    /// The scaling variant.
    pub scaling: RopeScaling,
}

/// A model's configuration, normalised across architectures.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The architecture.
    pub architecture: Architecture,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: i64,
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Width of the MLP.
    pub intermediate_size: i64,
    /// Decoder layers.
    pub num_layers: i64,
    /// Query heads.
    pub num_heads: i64,
    /// Key/value heads (fewer than `num_heads` with GQA).
    pub num_kv_heads: i64,
    /// Width of one head.
    pub head_dim: i64,
    /// Epsilon of the normalisation layers.
    pub norm_eps: f64,
    /// The MLP activation (`silu`, `gelu_new`, …).
    pub hidden_act: String,
    /// Whether the LM head shares the embedding's weights.
    pub tie_word_embeddings: bool,
    /// Bias on the q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// RMSNorm on q and k per head (Qwen3).
    pub qk_norm: bool,
    /// Rotary embeddings; `None` for learned positions (GPT-2).
    pub rope: Option<Rope>,
    /// The longest sequence the model supports.
    pub max_position_embeddings: i64,
    /// Attend only to this many most recent keys (Mistral), when set.
    pub sliding_window: Option<i64>,
    /// BOS token id from the config, when set.
    pub bos_token_id: Option<i64>,
    /// EOS token ids from the config (one or several).
    pub eos_token_ids: Vec<i64>,
    /// The dtype the checkpoint was saved in (`float32`, `bfloat16`, …).
    pub torch_dtype: Option<String>,
    /// Where this configuration was read from.
    pub path: PathBuf,
}

impl ModelConfig {
    /// Reads `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| LocalError::io(&path, e))?;
        Self::parse(&text, &path)
    }

    /// Parses the text of a `config.json` (`path` is for messages): each
    /// architecture's own `Config` (in its model file) reads the fields,
    /// and says what they mean for the shared decoder.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            LocalError::invalid(path, None, format!("line {} column {}: {e}", e.line(), e.column()))
        })?;
        let model_type = value.get("model_type").and_then(Value::as_str).unwrap_or_default();
        match model_type {
            "llama" => read::<LlamaConfig>(value, path)?.model_config(Architecture::Llama, path),
            "mistral" => read_decoder::<MistralConfig>(value, path)?.model_config(path),
            "qwen2" => read_decoder::<Qwen2Config>(value, path)?.model_config(path),
            "qwen3" => read_decoder::<Qwen3Config>(value, path)?.model_config(path),
            "gpt2" => read::<Gpt2Config>(value, path)?.model_config(path),
            _ => Err(LocalError::UnsupportedArchitecture {
                model_type: model_type.to_owned(),
                path: path.to_path_buf(),
                supported: SUPPORTED_MODEL_TYPES.to_vec(),
            }),
        }
    }
}

/// Deserializes an architecture's config, naming the field an error is
/// about (`hidden_size`, `rope_scaling.factor`).
fn read<T: DeserializeOwned>(value: Value, path: &Path) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let at = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde names a missing field in its message, at the parent's path.
        if let Some(name) =
            message.strip_prefix("missing field `").and_then(|m| m.split('`').next())
        {
            let field = if at == "." { name.to_owned() } else { format!("{at}.{name}") };
            return LocalError::invalid(path, Some(&field), "is missing");
        }
        LocalError::invalid(path, (at != ".").then_some(at.as_str()), message)
    })
}

/// Deserializes a config that flattens [`LlamaConfig`] into its own. serde
/// loses the field's name inside a flattened struct, so Llama's fields are
/// read (and their errors named) first.
fn read_decoder<T: DeserializeOwned>(value: Value, path: &Path) -> Result<T> {
    read::<LlamaConfig>(value.clone(), path)?;
    read(value, path)
}

/// Field readers for the architectures' `Config`s, with the messages a
/// user sees next to the field's name.
pub(crate) mod field {
    use serde::Deserialize;
    use serde::de::{Deserializer, Error};
    use serde_json::Value;

    fn value<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }

    /// A required positive integer (null counts as missing).
    pub(crate) fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        match value(d)? {
            Value::Null => Err(D::Error::custom("is missing")),
            v => match v.as_i64() {
                Some(n) if n > 0 => Ok(n),
                Some(_) => Err(D::Error::custom("must be positive")),
                None => Err(D::Error::custom("is not an integer")),
            },
        }
    }

    /// An optional integer.
    pub(crate) fn int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        match value(d)? {
            Value::Null => Ok(None),
            v => v.as_i64().map(Some).ok_or_else(|| D::Error::custom("is not an integer")),
        }
    }

    /// An optional number.
    pub(crate) fn float<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match value(d)? {
            Value::Null => Ok(None),
            v => v.as_f64().map(Some).ok_or_else(|| D::Error::custom("is not a number")),
        }
    }

    /// An optional boolean.
    pub(crate) fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        match value(d)? {
            Value::Null => Ok(None),
            v => v.as_bool().map(Some).ok_or_else(|| D::Error::custom("is not a boolean")),
        }
    }

    /// An optional string.
    pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        match value(d)? {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            _ => Err(D::Error::custom("is not a string")),
        }
    }

    /// A token id or a list of them (none when null).
    pub(crate) fn token_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
        super::token_ids(Some(&value(d)?))
            .ok_or_else(|| D::Error::custom("is not a token id or a list of them"))
    }

    /// An optional JSON object.
    pub(crate) fn object<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<serde_json::Map<String, Value>>, D::Error> {
        match value(d)? {
            Value::Null => Ok(None),
            Value::Object(m) => Ok(Some(m)),
            _ => Err(D::Error::custom("is not an object")),
        }
    }
}

/// The dtype a checkpoint was saved in: `dtype` (transformers ≥ 5) or
/// `torch_dtype`.
pub(crate) fn saved_dtype(dtype: &Option<String>, torch_dtype: &Option<String>) -> Option<String> {
    dtype.clone().or_else(|| torch_dtype.clone())
}

/// Reads a token id field that may be null, one integer or a list.
pub(crate) fn token_ids(v: Option<&Value>) -> Option<Vec<i64>> {
    match v {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Number(n)) => n.as_i64().map(|i| vec![i]),
        Some(Value::Array(items)) => items.iter().map(Value::as_i64).collect(),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ModelConfig> {
        ModelConfig::parse(json, Path::new("config.json"))
    }

    #[test]
    fn classic_llama3_rope_scaling_form() {
        // The form Meta-Llama-3.1 checkpoints ship with (transformers 4.x).
        let c = parse(
            r#"{"model_type":"llama","vocab_size":128256,"hidden_size":4096,
            "intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,
            "num_key_value_heads":8,"rms_norm_eps":1e-05,"rope_theta":500000.0,
            "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"},
            "bos_token_id":128000,"eos_token_id":[128001,128008,128009],
            "torch_dtype":"bfloat16","max_position_embeddings":131072}"#,
        )
        .unwrap();
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.num_kv_heads, 8);
        assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
        let rope = c.rope.unwrap();
        assert_eq!(rope.theta, 500000.0);
        assert!(
            matches!(rope.scaling, RopeScaling::Llama3 { factor, original_max_position_embeddings, .. }
            if factor == 8.0 && original_max_position_embeddings == 8192.0)
        );
    }

    #[test]
    fn new_rope_parameters_form_and_qwen2_bias() {
        let c = parse(
            r#"{"model_type":"qwen2","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,
            "rope_parameters":{"rope_theta":1000000.0,"rope_type":"default"},"eos_token_id":3}"#,
        )
        .unwrap();
        assert!(c.qkv_bias && !c.o_bias);
        assert_eq!(c.rope.unwrap(), Rope { theta: 1e6, scaling: RopeScaling::Default });
        assert_eq!(c.eos_token_ids, vec![3]);
    }

    #[test]
    fn unsupported_types_and_bad_fields_are_named() {
        let e = parse(r#"{"model_type":"mamba"}"#).unwrap_err().to_string();
        assert!(e.contains("mamba") && e.contains("llama, mistral, qwen2, qwen3, gpt2"), "{e}");
        let e = parse(r#"{"model_type":"llama","hidden_size":"many"}"#).unwrap_err().to_string();
        assert!(e.contains("`hidden_size`") && e.contains("not an integer"), "{e}");
        let e = parse(r#"{"model_type":"llama",}"#).unwrap_err().to_string();
        assert!(e.contains("line 1 column"), "{e}");
        let e = parse(
            r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"rope_scaling":{"rope_type":"yarn","factor":4.0}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("yarn") && e.contains("rope_scaling"), "{e}");
    }

    #[test]
    fn each_architecture_names_its_bad_or_missing_fields() {
        let e = parse(r#"{"model_type":"mistral","hidden_size":true}"#).unwrap_err().to_string();
        assert!(e.contains("`hidden_size`") && e.contains("not an integer"), "{e}");
        let e = parse(
            r#"{"model_type":"qwen2","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"use_sliding_window":true}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`use_sliding_window`"), "{e}");
        let e = parse(
            r#"{"model_type":"gpt2","vocab_size":10,"n_head":2,"n_layer":1,"n_positions":8}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`n_embd`") && e.contains("is missing"), "{e}");
        let e = parse(
            r#"{"model_type":"qwen3","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":0}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`num_key_value_heads`"), "{e}");
    }
}
