//! `config.json`: the model's architecture and its dimensions.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{LocalError, Result};

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

#[derive(Deserialize)]
struct Raw {
    model_type: Option<String>,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

impl ModelConfig {
    /// Reads `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| LocalError::io(&path, e))?;
        Self::parse(&text, &path)
    }

    /// Parses the text of a `config.json` (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| {
            LocalError::invalid(path, None, format!("line {} column {}: {e}", e.line(), e.column()))
        })?;
        let model_type = raw.model_type.clone().unwrap_or_default();
        let architecture = match model_type.as_str() {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "gpt2" => Architecture::Gpt2,
            _ => {
                return Err(LocalError::UnsupportedArchitecture {
                    model_type,
                    path: path.to_path_buf(),
                    supported: SUPPORTED_MODEL_TYPES.to_vec(),
                });
            }
        };
        let f = Fields { map: &raw.rest, path };
        if architecture == Architecture::Gpt2 {
            return gpt2(&f, path);
        }
        let hidden_size = f.int("hidden_size")?;
        let num_heads = f.int("num_attention_heads")?;
        let num_kv_heads = f.opt_int("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = f.opt_int("head_dim")?.unwrap_or(hidden_size / num_heads.max(1));
        if num_heads <= 0 || num_kv_heads <= 0 || num_heads % num_kv_heads != 0 {
            return Err(LocalError::invalid(
                path,
                Some("num_key_value_heads"),
                format!("{num_kv_heads} key/value heads do not divide {num_heads} heads"),
            ));
        }
        let attention_bias = f.opt_bool("attention_bias")?.unwrap_or(false);
        let qkv_bias = match architecture {
            Architecture::Qwen2 => true,
            _ => attention_bias,
        };
        let o_bias = match architecture {
            Architecture::Qwen2 => false,
            _ => attention_bias,
        };
        let sliding_window = match architecture {
            Architecture::Mistral => f.opt_int("sliding_window")?,
            Architecture::Qwen2 | Architecture::Qwen3
                if f.opt_bool("use_sliding_window")?.unwrap_or(false) =>
            {
                return Err(LocalError::invalid(
                    path,
                    Some("use_sliding_window"),
                    "per-layer sliding windows (max_window_layers) are not implemented",
                ));
            }
            _ => None,
        };
        Ok(Self {
            architecture,
            vocab_size: f.int("vocab_size")?,
            hidden_size,
            intermediate_size: f.int("intermediate_size")?,
            num_layers: f.int("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            norm_eps: f.opt_float("rms_norm_eps")?.unwrap_or(1e-6),
            hidden_act: f.opt_str("hidden_act")?.unwrap_or_else(|| "silu".into()),
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: f.opt_bool("mlp_bias")?.unwrap_or(false),
            qk_norm: architecture == Architecture::Qwen3,
            rope: Some(rope(&f, path)?),
            max_position_embeddings: f.opt_int("max_position_embeddings")?.unwrap_or(2048),
            sliding_window,
            bos_token_id: f.opt_int("bos_token_id")?,
            eos_token_ids: f.ids("eos_token_id")?,
            torch_dtype: f.opt_str("dtype")?.or(f.opt_str("torch_dtype")?),
            path: path.to_path_buf(),
        })
    }
}

fn gpt2(f: &Fields<'_>, path: &Path) -> Result<ModelConfig> {
    let hidden_size = f.int("n_embd")?;
    let num_heads = f.int("n_head")?;
    for flag in
        ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"]
    {
        if f.opt_bool(flag)?.unwrap_or(false) {
            return Err(LocalError::invalid(path, Some(flag), "is not implemented"));
        }
    }
    if !f.opt_bool("scale_attn_weights")?.unwrap_or(true) {
        return Err(LocalError::invalid(
            path,
            Some("scale_attn_weights"),
            "false is not implemented",
        ));
    }
    Ok(ModelConfig {
        architecture: Architecture::Gpt2,
        vocab_size: f.int("vocab_size")?,
        hidden_size,
        intermediate_size: f.opt_int("n_inner")?.unwrap_or(4 * hidden_size),
        num_layers: f.int("n_layer")?,
        num_heads,
        num_kv_heads: num_heads,
        head_dim: hidden_size / num_heads.max(1),
        norm_eps: f.opt_float("layer_norm_epsilon")?.unwrap_or(1e-5),
        hidden_act: f.opt_str("activation_function")?.unwrap_or_else(|| "gelu_new".into()),
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        qkv_bias: true,
        o_bias: true,
        mlp_bias: true,
        qk_norm: false,
        rope: None,
        max_position_embeddings: f.int("n_positions")?,
        sliding_window: None,
        bos_token_id: f.opt_int("bos_token_id")?,
        eos_token_ids: f.ids("eos_token_id")?,
        torch_dtype: f.opt_str("dtype")?.or(f.opt_str("torch_dtype")?),
        path: path.to_path_buf(),
    })
}

/// RoPE from either the classic `rope_theta` + `rope_scaling` fields or the
/// newer `rope_parameters` object (transformers ≥ 5).
fn rope(f: &Fields<'_>, path: &Path) -> Result<Rope> {
    let params = match f.map.get("rope_parameters") {
        Some(Value::Object(p)) => Some(p),
        Some(Value::Null) | None => None,
        Some(_) => {
            return Err(LocalError::invalid(path, Some("rope_parameters"), "is not an object"));
        }
    };
    let scaling = match f.map.get("rope_scaling") {
        Some(Value::Object(s)) => Some(s),
        Some(Value::Null) | None => None,
        Some(_) => return Err(LocalError::invalid(path, Some("rope_scaling"), "is not an object")),
    };
    let (theta, spec, field) = match (params, scaling) {
        (Some(p), _) => {
            let pf = Fields { map: p, path };
            let theta = pf.opt_float("rope_theta")?.or(f.opt_float("rope_theta")?);
            (theta, Some(p), "rope_parameters")
        }
        (None, s) => (f.opt_float("rope_theta")?, s, "rope_scaling"),
    };
    let theta = theta.unwrap_or(10_000.0);
    let Some(spec) = spec else { return Ok(Rope { theta, scaling: RopeScaling::Default }) };
    let sf = Fields { map: spec, path };
    let kind = sf.opt_str("rope_type")?.or(sf.opt_str("type")?).unwrap_or_else(|| "default".into());
    let scaling = match kind.as_str() {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: sf.float("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: sf.float("factor")?,
            low_freq_factor: sf.float("low_freq_factor")?,
            high_freq_factor: sf.float("high_freq_factor")?,
            original_max_position_embeddings: sf.float("original_max_position_embeddings")?,
        },
        other => {
            return Err(LocalError::invalid(
                path,
                Some(field),
                format!("rope type `{other}` is not implemented (default, linear, llama3 are)"),
            ));
        }
    };
    Ok(Rope { theta, scaling })
}

struct Fields<'a> {
    map: &'a serde_json::Map<String, Value>,
    path: &'a Path,
}

impl Fields<'_> {
    fn err(&self, key: &str, message: &str) -> LocalError {
        LocalError::invalid(self.path, Some(key), message)
    }

    fn opt_int(&self, key: &str) -> Result<Option<i64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| self.err(key, "is not an integer")),
        }
    }

    fn int(&self, key: &str) -> Result<i64> {
        let v = self.opt_int(key)?.ok_or_else(|| self.err(key, "is missing"))?;
        if v <= 0 {
            return Err(self.err(key, "must be positive"));
        }
        Ok(v)
    }

    fn opt_float(&self, key: &str) -> Result<Option<f64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.err(key, "is not a number")),
        }
    }

    fn float(&self, key: &str) -> Result<f64> {
        self.opt_float(key)?.ok_or_else(|| self.err(key, "is missing"))
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.err(key, "is not a boolean")),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<String>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_owned()))
                .ok_or_else(|| self.err(key, "is not a string")),
        }
    }

    /// A token id or a list of them.
    fn ids(&self, key: &str) -> Result<Vec<i64>> {
        token_ids(self.map.get(key))
            .ok_or_else(|| self.err(key, "is not a token id or a list of them"))
    }
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
}
