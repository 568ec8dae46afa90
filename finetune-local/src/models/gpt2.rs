//! GPT-2 (`GPT2LMHeadModel`): learned absolute positions, LayerNorm, GELU
//! (tanh approximation), and `Conv1D` layers whose weights are stored
//! `[in, out]`, the transpose of `nn.Linear`. The LM head is tied to `wte`.

use std::path::Path;

use serde::Deserialize;
use tch::Tensor;

use super::layers::{self, Linear, Loader};
use super::{ForwardInput, KvCache};
use crate::config::{Architecture, ModelConfig, field, saved_dtype};
use crate::error::{LocalError, Result};

/// GPT-2's `config.json`, field for field (with transformers' defaults).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Gpt2Config {
    /// Vocabulary size.
    #[serde(deserialize_with = "field::positive")]
    pub vocab_size: i64,
    /// Width of the residual stream.
    #[serde(deserialize_with = "field::positive")]
    pub n_embd: i64,
    /// Attention heads.
    #[serde(deserialize_with = "field::positive")]
    pub n_head: i64,
    /// Layers.
    #[serde(deserialize_with = "field::positive")]
    pub n_layer: i64,
    /// Learned positions (the longest sequence).
    #[serde(deserialize_with = "field::positive")]
    pub n_positions: i64,
    /// Width of the MLP; `4 * n_embd` when absent.
    #[serde(default, deserialize_with = "field::int")]
    pub n_inner: Option<i64>,
    /// LayerNorm epsilon; 1e-5 when absent.
    #[serde(default, deserialize_with = "field::float")]
    pub layer_norm_epsilon: Option<f64>,
    /// The MLP activation; `gelu_new` when absent.
    #[serde(default, deserialize_with = "field::string")]
    pub activation_function: Option<String>,
    /// Whether the LM head shares `wte`; true when absent.
    #[serde(default, deserialize_with = "field::boolean")]
    pub tie_word_embeddings: Option<bool>,
    /// Must be true (the default).
    #[serde(default, deserialize_with = "field::boolean")]
    pub scale_attn_weights: Option<bool>,
    /// Not implemented: refused when true.
    #[serde(default, deserialize_with = "field::boolean")]
    pub scale_attn_by_inverse_layer_idx: Option<bool>,
    /// Not implemented: refused when true.
    #[serde(default, deserialize_with = "field::boolean")]
    pub reorder_and_upcast_attn: Option<bool>,
    /// Not implemented: refused when true.
    #[serde(default, deserialize_with = "field::boolean")]
    pub add_cross_attention: Option<bool>,
    /// The BOS token.
    #[serde(default, deserialize_with = "field::int")]
    pub bos_token_id: Option<i64>,
    /// The EOS token or tokens.
    #[serde(default, deserialize_with = "field::token_ids")]
    pub eos_token_id: Vec<i64>,
    /// The saved dtype (transformers ≥ 5).
    #[serde(default, deserialize_with = "field::string")]
    pub dtype: Option<String>,
    /// The saved dtype (transformers 4).
    #[serde(default, deserialize_with = "field::string")]
    pub torch_dtype: Option<String>,
}

impl Gpt2Config {
    /// The model's settings, refusing the variants not implemented.
    pub(crate) fn model_config(&self, path: &Path) -> Result<ModelConfig> {
        for (flag, set) in [
            ("scale_attn_by_inverse_layer_idx", self.scale_attn_by_inverse_layer_idx),
            ("reorder_and_upcast_attn", self.reorder_and_upcast_attn),
            ("add_cross_attention", self.add_cross_attention),
        ] {
            if set.unwrap_or(false) {
                return Err(LocalError::invalid(path, Some(flag), "is not implemented"));
            }
        }
        if !self.scale_attn_weights.unwrap_or(true) {
            return Err(LocalError::invalid(
                path,
                Some("scale_attn_weights"),
                "false is not implemented",
            ));
        }
        let hidden_size = self.n_embd;
        Ok(ModelConfig {
            architecture: Architecture::Gpt2,
            vocab_size: self.vocab_size,
            hidden_size,
            intermediate_size: self.n_inner.unwrap_or(4 * hidden_size),
            num_layers: self.n_layer,
            num_heads: self.n_head,
            num_kv_heads: self.n_head,
            head_dim: hidden_size / self.n_head,
            norm_eps: self.layer_norm_epsilon.unwrap_or(1e-5),
            hidden_act: self.activation_function.clone().unwrap_or_else(|| "gelu_new".into()),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(true),
            qkv_bias: true,
            o_bias: true,
            mlp_bias: true,
            qk_norm: false,
            rope: None,
            max_position_embeddings: self.n_positions,
            sliding_window: None,
            bos_token_id: self.bos_token_id,
            eos_token_ids: self.eos_token_id.clone(),
            torch_dtype: saved_dtype(&self.dtype, &self.torch_dtype),
            path: path.to_path_buf(),
        })
    }
}

/// HF's `Conv1D`: `y = x W + b` with `W` of `[in, out]`.
fn conv1d(l: &mut Loader<'_>, p: &str, in_dim: i64, out_dim: i64) -> Result<Linear> {
    Ok(Linear {
        name: p.to_owned(),
        weight: get(l, &format!("{p}.weight"), &[in_dim, out_dim])?,
        bias: Some(get(l, &format!("{p}.bias"), &[out_dim])?),
        in_dim,
        out_dim,
        transposed: true,
        lora: None,
    })
}

#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(l: &mut Loader<'_>, p: &str, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: get(l, &format!("{p}.weight"), &[dim])?,
            bias: get(l, &format!("{p}.bias"), &[dim])?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dim = self.weight.size();
        Ok(x.f_layer_norm(&dim, Some(&self.weight), Some(&self.bias), self.eps, false)?)
    }
}

/// Loads `transformer.{rest}`, falling back to `{rest}` for the original
/// OpenAI checkpoints, which lack the `transformer.` prefix.
fn get(l: &mut Loader<'_>, name: &str, shape: &[i64]) -> Result<Tensor> {
    let bare = name.strip_prefix("transformer.").unwrap_or(name);
    if !l.contains(name) && l.contains(bare) {
        return l.get_as(name, bare, shape);
    }
    l.get(name, shape)
}

#[derive(Debug)]
struct Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    attn_c_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_c_proj: Linear,
}

/// `GPT2LMHeadModel`.
#[derive(Debug)]
pub struct Gpt2LmHeadModel {
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    num_heads: i64,
    head_dim: i64,
    act: String,
}

impl Gpt2LmHeadModel {
    pub(crate) fn load(c: &ModelConfig, l: &mut Loader<'_>) -> Result<Self> {
        layers::check_activation(&c.hidden_act, &c.path)?;
        let h = c.hidden_size;
        let wte = get(l, "transformer.wte.weight", &[c.vocab_size, h])?;
        let wpe = get(l, "transformer.wpe.weight", &[c.max_position_embeddings, h])?;
        let mut blocks = Vec::new();
        for i in 0..c.num_layers {
            let p = format!("transformer.h.{i}");
            blocks.push(Block {
                ln_1: LayerNorm::load(l, &format!("{p}.ln_1"), h, c.norm_eps)?,
                c_attn: conv1d(l, &format!("{p}.attn.c_attn"), h, 3 * h)?,
                attn_c_proj: conv1d(l, &format!("{p}.attn.c_proj"), h, h)?,
                ln_2: LayerNorm::load(l, &format!("{p}.ln_2"), h, c.norm_eps)?,
                c_fc: conv1d(l, &format!("{p}.mlp.c_fc"), h, c.intermediate_size)?,
                mlp_c_proj: conv1d(l, &format!("{p}.mlp.c_proj"), c.intermediate_size, h)?,
            });
        }
        let ln_f = LayerNorm::load(l, "transformer.ln_f", h, c.norm_eps)?;
        Ok(Self {
            wte,
            wpe,
            blocks,
            ln_f,
            num_heads: c.num_heads,
            head_dim: c.head_dim,
            act: c.hidden_act.clone(),
        })
    }

    pub(crate) fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.blocks
            .iter_mut()
            .flat_map(|b| [&mut b.c_attn, &mut b.attn_c_proj, &mut b.c_fc, &mut b.mlp_c_proj])
            .collect()
    }

    pub(crate) fn lm_head(&self) -> &Tensor {
        &self.wte
    }

    /// The final normed hidden states, `[batch, seq, hidden]`.
    pub(crate) fn hidden(
        &self,
        input: &ForwardInput<'_>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let past = layers::past_len(&cache);
        let ids = input.input_ids;
        let s = ids.size();
        let (b, t) = (s[0], s[1]);
        let kind = self.wte.kind();
        let mask = layers::attention_mask(input, past, None, kind, self.wte.device())?;
        let positions = layers::positions(input, past)?;
        let mut h = Tensor::f_embedding(&self.wte, ids, -1, false, false)?
            .f_add(&Tensor::f_embedding(&self.wpe, &positions, -1, false, false)?)?;
        let hidden = self.num_heads * self.head_dim;
        for (i, block) in self.blocks.iter().enumerate() {
            let x = block.ln_1.forward(&h)?;
            let qkv = block.c_attn.forward(&x)?;
            let split = |j: i64| -> Result<Tensor> {
                Ok(qkv
                    .f_narrow(2, j * hidden, hidden)?
                    .f_view([b, t, self.num_heads, self.head_dim])?
                    .f_transpose(1, 2)?)
            };
            let (q, k, v) = (split(0)?, split(1)?, split(2)?);
            let (k, v) = match cache.as_deref_mut() {
                Some(cache) => cache.update(i, k, v)?,
                None => (k, v),
            };
            let a = layers::attend(&q, &k, &v, &mask, None)?;
            let a = a.f_transpose(1, 2)?.f_reshape([b, t, hidden])?;
            h = h.f_add(&block.attn_c_proj.forward(&a)?)?;
            let x = block.ln_2.forward(&h)?;
            let m = layers::activation(&self.act, &block.c_fc.forward(&x)?)?;
            h = h.f_add(&block.mlp_c_proj.forward(&m)?)?;
        }
        if let Some(cache) = cache {
            cache.advance(t);
        }
        self.ln_f.forward(&h)
    }
}
