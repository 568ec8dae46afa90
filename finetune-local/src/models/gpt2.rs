//! GPT-2 (`GPT2LMHeadModel`): learned absolute positions, LayerNorm, GELU
//! (tanh approximation), and `Conv1D` layers whose weights are stored
//! `[in, out]`, the transpose of `nn.Linear`. The LM head is tied to `wte`.

use tch::Tensor;

use super::layers::{self, Linear, Loader};
use super::{ForwardInput, KvCache};
use crate::config::ModelConfig;
use crate::error::Result;

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
