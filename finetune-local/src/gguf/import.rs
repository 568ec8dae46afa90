//! A GGUF model to a HuggingFace model folder, and into the model cache.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{GgufFile, GgufTensor, GgufValue};
use crate::error::{LocalError, Result};
use crate::hub::{ModelCache, ModelId};

/// What [`import_gguf`] read and wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportReport {
    /// `general.architecture`.
    pub architecture: String,
    /// `general.name`, when the file has one.
    pub name: Option<String>,
    /// Tensors written.
    pub tensors: usize,
    /// Values in those tensors (parameters).
    pub parameters: u64,
    /// How many tensors each source type had (`Q4_1` → 210).
    pub source_types: BTreeMap<String, usize>,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Whether the file embedded a chat template (now in
    /// `tokenizer_config.json`).
    pub chat_template: bool,
}

/// The architectures imported, by `general.architecture`.
const ARCHITECTURES: &[&str] = &["llama"];

/// Writes the model in the GGUF file `gguf` as a HuggingFace folder at
/// `out` (created; files already there with the same names are replaced):
/// `config.json` and `generation_config.json` from the `llama.*` keys, every
/// tensor dequantized to f32 in `model.safetensors` under transformers'
/// names (with llama.cpp's rotary row permutation of the q and k
/// projections undone), `tokenizer.json` from the vocabulary, merges, token
/// types and pre-tokenizer, and `tokenizer_config.json` with the special
/// tokens and the chat template. The folder is checked by loading its
/// config and tokenizer before this returns.
pub fn import_gguf(gguf: &Path, out: &Path) -> Result<ImportReport> {
    let file = GgufFile::open(gguf)?;
    let arch = file.str_key("general.architecture")?;
    if !ARCHITECTURES.contains(&arch) {
        return Err(file.unsupported(
            None,
            format!(
                "architecture `{arch}` (general.architecture; imported: {})",
                ARCHITECTURES.join(", ")
            ),
        ));
    }
    let hp = Hparams::read(&file, arch)?;
    let plan = plan_tensors(&file, &hp)?;
    fs::create_dir_all(out).map_err(|e| LocalError::io(out, e))?;

    let vocab = Vocabulary::read(&file)?;
    if vocab.tokens.len() as i64 != hp.vocab_size {
        return Err(file.invalid(
            Some("token_embd.weight"),
            format!(
                "has {} rows but the vocabulary (tokenizer.ggml.tokens) has {} tokens",
                hp.vocab_size,
                vocab.tokens.len()
            ),
        ));
    }
    write_json(&out.join("tokenizer.json"), &vocab.tokenizer_json(&file)?)?;
    let chat_template = file.get("tokenizer.chat_template").and_then(GgufValue::as_str);
    write_json(
        &out.join("tokenizer_config.json"),
        &vocab.tokenizer_config(chat_template, hp.context_length),
    )?;
    write_json(&out.join("config.json"), &hp.config_json(&vocab, plan.tied))?;
    write_json(&out.join("generation_config.json"), &vocab.generation_config())?;
    write_weights(&file, &hp, &plan.tensors, &out.join("model.safetensors"))?;

    // What was written must load: a mistake here surfaces now, naming the
    // file, rather than at the first training run.
    crate::config::ModelConfig::from_dir(out)?;
    crate::tokenizer::Tokenizer::from_dir(out)?;

    let mut source_types = BTreeMap::new();
    for (_, t) in &plan.tensors {
        *source_types.entry(t.ggml_type.to_string()).or_insert(0) += 1;
    }
    Ok(ImportReport {
        architecture: arch.to_owned(),
        name: file.get("general.name").and_then(GgufValue::as_str).map(str::to_owned),
        tensors: plan.tensors.len(),
        parameters: plan.tensors.iter().map(|(_, t)| t.len()).sum(),
        source_types,
        vocab_size: vocab.tokens.len(),
        chat_template: chat_template.is_some(),
    })
}

/// Imports the GGUF file `gguf` ([`import_gguf`]) and preloads the result
/// into `cache` as `id` ([`ModelCache::preload`]); returns the snapshot
/// folder. The folder is staged inside the cache root and removed after, so
/// nothing half-written is ever visible under `id`. Importing the same file
/// again yields the same snapshot.
pub fn import_gguf_to_cache(gguf: &Path, cache: &ModelCache, id: &ModelId) -> Result<PathBuf> {
    let staging = cache.root().join(format!(".gguf-import.{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let result = import_gguf(gguf, &staging).and_then(|_| cache.preload(&staging, id));
    let _ = fs::remove_dir_all(&staging);
    result
}

impl GgufFile {
    fn invalid(&self, tensor: Option<&str>, message: impl Into<String>) -> LocalError {
        LocalError::InvalidGguf {
            path: self.path.clone(),
            tensor: tensor.map(str::to_owned),
            message: message.into(),
        }
    }

    fn unsupported(&self, tensor: Option<&str>, what: impl Into<String>) -> LocalError {
        LocalError::UnsupportedGguf {
            path: self.path.clone(),
            tensor: tensor.map(str::to_owned),
            what: what.into(),
        }
    }

    fn key(&self, key: &str) -> Result<&GgufValue> {
        self.get(key).ok_or_else(|| self.invalid(None, format!("metadata `{key}` is missing")))
    }

    fn str_key(&self, key: &str) -> Result<&str> {
        self.key(key)?
            .as_str()
            .ok_or_else(|| self.invalid(None, format!("metadata `{key}` is not a string")))
    }

    fn int_key(&self, key: &str) -> Result<i64> {
        self.key(key)?.as_i64().filter(|v| *v > 0).ok_or_else(|| {
            self.invalid(None, format!("metadata `{key}` is not a positive integer"))
        })
    }

    fn float_key(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.invalid(None, format!("metadata `{key}` is not a number")))
            })
            .transpose()
    }
}

/// The `llama.*` hyperparameters.
struct Hparams {
    vocab_size: i64,
    hidden: i64,
    intermediate: i64,
    layers: i64,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    context_length: i64,
    rope_theta: f64,
    norm_eps: f64,
}

impl Hparams {
    fn read(file: &GgufFile, arch: &str) -> Result<Self> {
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = file.int_key(&key("embedding_length"))?;
        let heads = file.int_key(&key("attention.head_count"))?;
        let kv_heads = match file.get(&key("attention.head_count_kv")) {
            None => heads,
            Some(_) => file.int_key(&key("attention.head_count_kv"))?,
        };
        let head_dim = match file.get(&key("attention.key_length")) {
            None => hidden / heads,
            Some(_) => file.int_key(&key("attention.key_length"))?,
        };
        if head_dim % 2 != 0 || heads % kv_heads != 0 {
            return Err(file.invalid(
                None,
                format!("{heads} heads of width {head_dim} over {kv_heads} key/value heads"),
            ));
        }
        if let Some(rope) = file.get(&key("rope.dimension_count"))
            && rope.as_i64() != Some(head_dim)
        {
            return Err(file.unsupported(
                None,
                format!(
                    "partial rotary embedding ({arch}.rope.dimension_count {rope:?} of head \
                     width {head_dim})"
                ),
            ));
        }
        if let Some(scaling) = file.get(&key("rope.scaling.type")).and_then(GgufValue::as_str)
            && scaling != "none"
        {
            return Err(file.unsupported(None, format!("rope scaling `{scaling}`")));
        }
        let embedding = file
            .tensor("token_embd.weight")
            .ok_or_else(|| file.invalid(Some("token_embd.weight"), "is missing"))?;
        let vocab_size = match file.get(&key("vocab_size")) {
            Some(_) => file.int_key(&key("vocab_size"))?,
            None => embedding.dims.get(1).map_or(0, |&d| d as i64),
        };
        Ok(Self {
            vocab_size,
            hidden,
            intermediate: file.int_key(&key("feed_forward_length"))?,
            layers: file.int_key(&key("block_count"))?,
            heads,
            kv_heads,
            head_dim,
            context_length: match file.get(&key("context_length")) {
                Some(_) => file.int_key(&key("context_length"))?,
                None => 2048,
            },
            rope_theta: file.float_key(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            norm_eps: file.float_key(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        })
    }

    fn config_json(&self, vocab: &Vocabulary, tied: bool) -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.context_length,
            // The f32 the file holds in GGUF is widened from f32 bits: no
            // f64 noise (1e-05, not 9.999999747378752e-06).
            "rms_norm_eps": shortest(self.norm_eps),
            "rope_theta": shortest(self.rope_theta),
            "attention_bias": false,
            "mlp_bias": false,
            "tie_word_embeddings": tied,
            "bos_token_id": vocab.bos,
            "eos_token_id": vocab.eos,
            "pad_token_id": vocab.pad,
            "torch_dtype": "float32",
        })
    }
}

/// A float read from an f32 field, as the shortest decimal that round-trips
/// through f32.
fn shortest(v: f64) -> f64 {
    (v as f32).to_string().parse().unwrap_or(v)
}

/// Which tensors go where, and whether the LM head is the embedding.
struct Plan<'a> {
    tensors: Vec<(String, &'a GgufTensor)>,
    tied: bool,
}

fn plan_tensors<'a>(file: &'a GgufFile, hp: &Hparams) -> Result<Plan<'a>> {
    let mut tensors = Vec::new();
    let mut tied = true;
    for t in file.tensors() {
        let Some(name) = hf_name(&t.name) else {
            let what = if t.name == "rope_freqs.weight" {
                "rope frequency factors (Llama 3.1 rope scaling)".to_owned()
            } else {
                "tensor (no transformers Llama weight has this name)".to_owned()
            };
            return Err(file.unsupported(Some(&t.name), what));
        };
        if name == "lm_head.weight" {
            tied = false;
        }
        let expected = expected_shape(&name, hp);
        if expected.as_deref() != Some(t.torch_shape().as_slice()) {
            return Err(file.invalid(
                Some(&t.name),
                format!(
                    "has shape {:?}; the hyperparameters imply {}",
                    t.torch_shape(),
                    expected.map_or("no such layer".to_owned(), |s| format!("{s:?}"))
                ),
            ));
        }
        tensors.push((name, t));
    }
    let mut required = vec!["token_embd.weight".to_owned(), "output_norm.weight".to_owned()];
    for i in 0..hp.layers {
        for part in [
            "attn_norm",
            "ffn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            required.push(format!("blk.{i}.{part}.weight"));
        }
    }
    if let Some(missing) = required.iter().find(|r| file.tensor(r).is_none()) {
        return Err(file.invalid(Some(missing), "is missing"));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Plan { tensors, tied })
}

/// llama.cpp's tensor name → transformers' (Llama).
fn hf_name(gguf: &str) -> Option<String> {
    let direct = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = direct {
        return Some(name.to_owned());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: u32 = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

fn expected_shape(hf: &str, hp: &Hparams) -> Option<Vec<i64>> {
    let (h, q, kv) = (hp.hidden, hp.heads * hp.head_dim, hp.kv_heads * hp.head_dim);
    if hf == "model.embed_tokens.weight" || hf == "lm_head.weight" {
        return Some(vec![hp.vocab_size, h]);
    }
    if hf == "model.norm.weight" {
        return Some(vec![h]);
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    if layer.parse::<i64>().ok()? >= hp.layers {
        return None;
    }
    Some(match part {
        "input_layernorm.weight" | "post_attention_layernorm.weight" => vec![h],
        "self_attn.q_proj.weight" => vec![q, h],
        "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kv, h],
        "self_attn.o_proj.weight" => vec![h, q],
        "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![hp.intermediate, h],
        "mlp.down_proj.weight" => vec![h, hp.intermediate],
        _ => return None,
    })
}

/// Writes every planned tensor as f32 into one safetensors file, one tensor
/// in memory at a time, atomically (a temporary file renamed over `path`).
fn write_weights(
    file: &GgufFile,
    hp: &Hparams,
    tensors: &[(String, &GgufTensor)],
    path: &Path,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0u64;
    for (name, t) in tensors {
        let end = offset + t.len() * 4;
        header.insert(
            name.clone(),
            json!({ "dtype": "F32", "shape": t.torch_shape(), "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&header)
        .map_err(|e| LocalError::InvalidArgument(format!("safetensors header: {e}")))?;
    while header.len() % 8 != 0 {
        header.push(b' ');
    }

    let partial = path.with_extension("safetensors.partial");
    let io = |e| LocalError::io(&partial, e);
    let mut out = BufWriter::new(File::create(&partial).map_err(io)?);
    out.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
    out.write_all(&header).map_err(io)?;
    for (name, t) in tensors {
        let mut values = file.read_f32(t)?;
        if name.ends_with("self_attn.q_proj.weight") {
            values = unpermute_rows(&values, hp.heads, hp.head_dim, hp.hidden);
        } else if name.ends_with("self_attn.k_proj.weight") {
            values = unpermute_rows(&values, hp.kv_heads, hp.head_dim, hp.hidden);
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.write_all(&bytes).map_err(io)?;
    }
    out.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
    fs::rename(&partial, path).map_err(|e| LocalError::io(path, e))
}

/// Undoes the row order llama.cpp's converter gives the q and k projections
/// (it interleaves each head's two rotary halves so its kernels rotate
/// adjacent pairs): file row `head, i, half` is transformers' row
/// `head, half, i`.
fn unpermute_rows(values: &[f32], heads: i64, head_dim: i64, cols: i64) -> Vec<f32> {
    let (heads, head_dim, cols) = (heads as usize, head_dim as usize, cols as usize);
    let half = head_dim / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * head_dim + i * 2 + j) * cols;
                let dst = (h * head_dim + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&values[src..src + cols]);
            }
        }
    }
    out
}

/// `tokenizer.ggml.*`: a byte-level BPE vocabulary.
struct Vocabulary {
    tokens: Vec<String>,
    types: Vec<i64>,
    merges: Vec<String>,
    pre: String,
    bos: Option<i64>,
    eos: Option<i64>,
    eot: Option<i64>,
    unk: Option<i64>,
    pad: Option<i64>,
    add_bos: bool,
}

/// Token types (llama.cpp's `llama_token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

impl Vocabulary {
    fn read(file: &GgufFile) -> Result<Self> {
        let model = file.str_key("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(file.unsupported(
                None,
                format!("tokenizer model `{model}` (tokenizer.ggml.model; imported: gpt2, byte-level BPE)"),
            ));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            file.key(key)?
                .as_array()
                .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect())
                .ok_or_else(|| {
                    file.invalid(None, format!("metadata `{key}` is not a list of strings"))
                })
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types = match file.get("tokenizer.ggml.token_type") {
            None => vec![1; tokens.len()],
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(GgufValue::as_i64).collect::<Option<Vec<_>>>())
                .filter(|t| t.len() == tokens.len())
                .ok_or_else(|| {
                    file.invalid(
                        None,
                        "metadata `tokenizer.ggml.token_type` is not one integer per token",
                    )
                })?,
        };
        let id = |key: &str| -> Result<Option<i64>> {
            match file.get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_i64()
                    .filter(|&id| (0..tokens.len() as i64).contains(&id))
                    .map(Some)
                    .ok_or_else(|| {
                        file.invalid(None, format!("metadata `{key}` is not a token id"))
                    }),
            }
        };
        let pre = file
            .get("tokenizer.ggml.pre")
            .and_then(GgufValue::as_str)
            .unwrap_or("default")
            .to_owned();
        Ok(Self {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            eot: id("tokenizer.ggml.eot_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            add_bos: file.get("tokenizer.ggml.add_bos_token").and_then(GgufValue::as_bool)
                == Some(true),
            tokens,
            types,
            merges,
            pre,
        })
    }

    fn token(&self, id: Option<i64>) -> Value {
        id.map_or(Value::Null, |id| Value::String(self.tokens[id as usize].clone()))
    }

    /// The text-splitting step the vocabulary's merges were learned with,
    /// by llama.cpp's pre-tokenizer name.
    fn pre_tokenizer(&self, file: &GgufFile) -> Result<Value> {
        let byte_level = |use_regex: bool| json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex });
        let split = |pattern: &str| {
            json!({ "type": "Sequence", "pretokenizers": [
                { "type": "Split", "pattern": { "Regex": pattern }, "behavior": "Isolated", "invert": false },
                byte_level(false),
            ]})
        };
        Ok(match self.pre.as_str() {
            "default" | "gpt2" | "gpt-2" | "olmo" | "jais" => byte_level(true),
            // llama.cpp splits single digits first, then GPT-2's regex; as
            // these models' own tokenizer.json do.
            "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone"
            | "minerva-7b" => json!({ "type": "Sequence", "pretokenizers": [
                { "type": "Digits", "individual_digits": true },
                byte_level(true),
            ]}),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" | "pixtral" => {
                split(LLAMA3_SPLIT)
            }
            "qwen2" | "deepseek-r1-qwen" | "megrez" => split(QWEN2_SPLIT),
            other => {
                return Err(
                    file.unsupported(None, format!("pre-tokenizer `{other}` (tokenizer.ggml.pre)"))
                );
            }
        })
    }

    fn tokenizer_json(&self, file: &GgufFile) -> Result<Value> {
        let alphabet = byte_alphabet();
        // Tokens are spelled in the byte alphabet; a token with any other
        // character is respelled byte by byte (as transformers does).
        let spelled: Vec<String> = self
            .tokens
            .iter()
            .map(|t| {
                if t.chars().all(|c| alphabet.contains(&c)) {
                    t.clone()
                } else {
                    t.bytes().map(|b| alphabet[b as usize]).collect()
                }
            })
            .collect();
        let vocab: serde_json::Map<String, Value> =
            spelled.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
        let merges: Vec<Value> = self
            .merges
            .iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => json!([a, b]),
                None => json!([m, ""]),
            })
            .collect();
        let added: Vec<Value> = self
            .tokens
            .iter()
            .zip(&self.types)
            .enumerate()
            .filter(|(_, (t, ty))| {
                (**ty == CONTROL && t.chars().all(|c| alphabet.contains(&c)))
                    || **ty == USER_DEFINED
            })
            .map(|(id, (t, ty))| {
                json!({ "id": id, "content": t, "single_word": false, "lstrip": false,
                        "rstrip": false, "normalized": false, "special": *ty == CONTROL })
            })
            .collect();
        let post_processor = match (self.add_bos, self.bos) {
            (true, Some(bos)) => {
                let bos_token = &self.tokens[bos as usize];
                json!({
                    "type": "TemplateProcessing",
                    "single": [{ "SpecialToken": { "id": bos_token, "type_id": 0 } },
                               { "Sequence": { "id": "A", "type_id": 0 } }],
                    "pair": [{ "SpecialToken": { "id": bos_token, "type_id": 0 } },
                             { "Sequence": { "id": "A", "type_id": 0 } },
                             { "SpecialToken": { "id": bos_token, "type_id": 1 } },
                             { "Sequence": { "id": "B", "type_id": 1 } }],
                    "special_tokens": { bos_token: { "id": bos_token, "ids": [bos], "tokens": [bos_token] } },
                })
            }
            _ => {
                json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false })
            }
        };
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": self.pre_tokenizer(file)?,
            "post_processor": post_processor,
            "decoder": { "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true },
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            },
        }))
    }

    fn tokenizer_config(&self, chat_template: Option<&str>, context_length: i64) -> Value {
        json!({
            "add_bos_token": self.add_bos,
            "add_eos_token": false,
            "bos_token": self.token(self.bos),
            "eos_token": self.token(self.eos),
            "unk_token": self.token(self.unk),
            "pad_token": self.token(self.pad),
            "chat_template": chat_template,
            "model_max_length": context_length,
            "clean_up_tokenization_spaces": false,
            "tokenizer_class": "PreTrainedTokenizerFast",
        })
    }

    fn generation_config(&self) -> Value {
        let mut eos: Vec<i64> = self.eos.into_iter().collect();
        eos.extend(self.eot.filter(|t| Some(*t) != self.eos));
        json!({
            "bos_token_id": self.bos,
            "eos_token_id": if eos.len() == 1 { json!(eos[0]) } else { json!(eos) },
            "pad_token_id": self.pad,
        })
    }
}

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's byte-to-character table: printable Latin-1 bytes stand for
/// themselves, the rest map to U+0100 onwards.
fn byte_alphabet() -> Vec<char> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut next = 256u32;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                let c = char::from_u32(next).unwrap_or('?');
                next += 1;
                c
            }
        })
        .collect()
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| LocalError::InvalidArgument(format!("{}: {e}", path.display())))?;
    fs::write(path, text + "\n").map_err(|e| LocalError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_alphabet_is_gpt2s() {
        let a = byte_alphabet();
        assert_eq!(a[b' ' as usize], 'Ġ');
        assert_eq!(a[b'\n' as usize], 'Ċ');
        assert_eq!(a[b'A' as usize], 'A');
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn unpermuting_restores_rotary_halves() {
        // One head of width 4, rows of one value: llama.cpp stores HF rows
        // [0, 1, 2, 3] as [0, 2, 1, 3].
        assert_eq!(unpermute_rows(&[0.0, 2.0, 1.0, 3.0], 1, 4, 1), vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(
            hf_name("blk.12.ffn_down.weight").as_deref(),
            Some("model.layers.12.mlp.down_proj.weight")
        );
        assert_eq!(hf_name("blk.x.ffn_down.weight"), None);
    }
}
