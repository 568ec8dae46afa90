//! Small models made by this crate, for the quickstart, tests and
//! benchmarks: a Llama-architecture model with a byte-level tokenizer
//! (every byte one token, no merges) and seeded random weights, written in
//! the HF layout so that everything else — our loader, transformers — reads
//! it like any downloaded model. Nothing is downloaded.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{LocalError, Result};
use crate::weights::write_safetensors;

/// The end-of-text token of the byte-level tokenizer.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// The shape of a built-in model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TinyLlama {
    /// Hidden size.
    pub hidden_size: i64,
    /// Decoder layers.
    pub num_layers: i64,
    /// Attention heads.
    pub num_heads: i64,
    /// Key/value heads (grouped-query attention when fewer than heads).
    pub num_kv_heads: i64,
    /// MLP width.
    pub intermediate_size: i64,
    /// Longest sequence.
    pub max_position_embeddings: i64,
    /// Seed of the random weights.
    pub seed: i64,
}

impl Default for TinyLlama {
    /// About 0.9 M parameters: trains in seconds on a CPU.
    fn default() -> Self {
        Self {
            hidden_size: 128,
            num_layers: 4,
            num_heads: 4,
            num_kv_heads: 2,
            intermediate_size: 384,
            max_position_embeddings: 512,
            seed: 0,
        }
    }
}

/// Vocabulary: the 256 bytes, then the end-of-text token.
const VOCAB: i64 = 257;

impl TinyLlama {
    /// Writes `config.json`, `model.safetensors` (random, seeded),
    /// `tokenizer.json`, `tokenizer_config.json` and
    /// `generation_config.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        if self.hidden_size % self.num_heads != 0 || self.num_heads % self.num_kv_heads != 0 {
            return Err(LocalError::InvalidArgument(
                "hidden_size must divide by num_heads, and num_heads by num_kv_heads".into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| LocalError::io(dir, e))?;
        let head_dim = self.hidden_size / self.num_heads;
        let config = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "attention_bias": false,
            "mlp_bias": false,
            "tie_word_embeddings": true,
            "vocab_size": VOCAB,
            "bos_token_id": null,
            "eos_token_id": VOCAB - 1,
            "pad_token_id": null,
            "dtype": "float32",
        });
        write(dir, "config.json", &config)?;
        write(
            dir,
            "generation_config.json",
            &serde_json::json!({ "eos_token_id": VOCAB - 1, "do_sample": false }),
        )?;
        write(dir, "tokenizer.json", &byte_level_tokenizer())?;
        write(
            dir,
            "tokenizer_config.json",
            &serde_json::json!({
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": END_OF_TEXT,
                "pad_token": END_OF_TEXT,
                "bos_token": null,
                "model_max_length": self.max_position_embeddings,
                "clean_up_tokenization_spaces": false,
            }),
        )?;
        write_safetensors(&dir.join("model.safetensors"), &self.weights()?)
    }

    /// Normal(0, 0.02) matrices and unit norms, as transformers initialises.
    fn weights(&self) -> Result<Vec<(String, Tensor)>> {
        tch::manual_seed(self.seed);
        let opts = (Kind::Float, Device::Cpu);
        let normal = |shape: &[i64]| -> Result<Tensor> {
            Ok(Tensor::f_randn(shape, opts)?.f_mul_scalar(0.02)?)
        };
        let ones = |n: i64| -> Result<Tensor> { Ok(Tensor::f_ones([n], opts)?) };
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let head_dim = h / self.num_heads;
        let kv = self.num_kv_heads * head_dim;
        let mut out = vec![
            ("model.embed_tokens.weight".to_owned(), normal(&[VOCAB, h])?),
            ("model.norm.weight".to_owned(), ones(h)?),
        ];
        for l in 0..self.num_layers {
            let p = format!("model.layers.{l}");
            for (name, shape) in [
                ("self_attn.q_proj", [h, h]),
                ("self_attn.k_proj", [kv, h]),
                ("self_attn.v_proj", [kv, h]),
                ("self_attn.o_proj", [h, h]),
                ("mlp.gate_proj", [i, h]),
                ("mlp.up_proj", [i, h]),
                ("mlp.down_proj", [h, i]),
            ] {
                out.push((format!("{p}.{name}.weight"), normal(&shape)?));
            }
            out.push((format!("{p}.input_layernorm.weight"), ones(h)?));
            out.push((format!("{p}.post_attention_layernorm.weight"), ones(h)?));
        }
        Ok(out)
    }
}

fn write(dir: &Path, name: &str, value: &serde_json::Value) -> Result<()> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| LocalError::InvalidArgument(format!("{name}: {e}")))?;
    std::fs::write(&path, text + "\n").map_err(|e| LocalError::io(&path, e))
}

/// GPT-2's byte-to-character table: printable bytes stand for themselves,
/// the others for characters from U+0100 on.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| {
        (u32::from('!')..=u32::from('~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut next = 256;
    (0..256u32)
        .map(|b| {
            let code = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(code).unwrap_or('\u{FFFD}')
        })
        .collect()
}

/// A byte-level BPE tokenizer with no merges: token `b` is byte `b`.
fn byte_level_tokenizer() -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> =
        byte_chars().into_iter().enumerate().map(|(b, c)| (c.to_string(), b.into())).collect();
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": VOCAB - 1, "content": END_OF_TEXT, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_has_its_own_character() {
        let chars = byte_chars();
        let mut unique = chars.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 256);
        assert_eq!(chars[usize::from(b'A')], 'A');
        assert_eq!(chars[usize::from(b' ')], 'Ġ');
        assert_eq!(chars[usize::from(b'\n')], 'Ċ');
    }
}
