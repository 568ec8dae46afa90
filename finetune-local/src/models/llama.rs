//! Llama (`LlamaForCausalLM`): pre-norm decoder with RMSNorm, rotary
//! embeddings (incl. Llama 3 scaling), grouped-query attention and a SwiGLU
//! MLP. Mistral, Qwen2 and Qwen3 are this decoder with a few switches, as in
//! transformers' own modular definitions.

use std::path::Path;

use serde::Deserialize;
use tch::{Kind, Tensor};

use super::layers::{self, Linear, Loader, Mask, RmsNorm};
use super::{Checkpointing, ForwardInput, KvCache};
use crate::config::{Architecture, ModelConfig, Rope, RopeScaling, field, saved_dtype};
use crate::error::{LocalError, Result};

/// Llama's `config.json`, field for field (with transformers' defaults);
/// Mistral's, Qwen2's and Qwen3's add to it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size (rows of the embedding).
    #[serde(deserialize_with = "field::positive")]
    pub vocab_size: i64,
    /// Width of the residual stream.
    #[serde(deserialize_with = "field::positive")]
    pub hidden_size: i64,
    /// Width of the MLP.
    #[serde(deserialize_with = "field::positive")]
    pub intermediate_size: i64,
    /// Decoder layers.
    #[serde(deserialize_with = "field::positive")]
    pub num_hidden_layers: i64,
    /// Query heads.
    #[serde(deserialize_with = "field::positive")]
    pub num_attention_heads: i64,
    /// Key/value heads; `num_attention_heads` when absent.
    #[serde(default, deserialize_with = "field::int")]
    pub num_key_value_heads: Option<i64>,
    /// Width of one head; `hidden_size / num_attention_heads` when absent.
    #[serde(default, deserialize_with = "field::int")]
    pub head_dim: Option<i64>,
    /// RMSNorm epsilon; 1e-6 when absent.
    #[serde(default, deserialize_with = "field::float")]
    pub rms_norm_eps: Option<f64>,
    /// The MLP activation; `silu` when absent.
    #[serde(default, deserialize_with = "field::string")]
    pub hidden_act: Option<String>,
    /// Whether the LM head shares the embedding; false when absent.
    #[serde(default, deserialize_with = "field::boolean")]
    pub tie_word_embeddings: Option<bool>,
    /// Bias on the attention projections.
    #[serde(default, deserialize_with = "field::boolean")]
    pub attention_bias: Option<bool>,
    /// Bias on the MLP projections.
    #[serde(default, deserialize_with = "field::boolean")]
    pub mlp_bias: Option<bool>,
    /// RoPE base (classic form); 10,000 when absent.
    #[serde(default, deserialize_with = "field::float")]
    pub rope_theta: Option<f64>,
    /// RoPE scaling (classic form).
    #[serde(default, deserialize_with = "field::object")]
    pub rope_scaling: Option<serde_json::Map<String, serde_json::Value>>,
    /// RoPE base and scaling (transformers ≥ 5).
    #[serde(default, deserialize_with = "field::object")]
    pub rope_parameters: Option<serde_json::Map<String, serde_json::Value>>,
    /// The longest sequence; 2048 when absent.
    #[serde(default, deserialize_with = "field::int")]
    pub max_position_embeddings: Option<i64>,
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

/// Qwen2's and Qwen3's `use_sliding_window` (windows on some layers only)
/// is not implemented: refused when true.
pub(crate) fn refuse_per_layer_windows(
    use_sliding_window: Option<bool>,
    path: &Path,
) -> Result<()> {
    if use_sliding_window.unwrap_or(false) {
        return Err(LocalError::invalid(
            path,
            Some("use_sliding_window"),
            "per-layer sliding windows (max_window_layers) are not implemented",
        ));
    }
    Ok(())
}

/// The rope fields of a `rope_scaling` or `rope_parameters` object.
#[derive(Debug, Deserialize)]
struct RopeSpec {
    #[serde(default, deserialize_with = "field::float")]
    rope_theta: Option<f64>,
    #[serde(default, deserialize_with = "field::string")]
    rope_type: Option<String>,
    #[serde(default, rename = "type", deserialize_with = "field::string")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "field::float")]
    factor: Option<f64>,
    #[serde(default, deserialize_with = "field::float")]
    low_freq_factor: Option<f64>,
    #[serde(default, deserialize_with = "field::float")]
    high_freq_factor: Option<f64>,
    #[serde(default, deserialize_with = "field::float")]
    original_max_position_embeddings: Option<f64>,
}

impl LlamaConfig {
    /// The shared decoder's settings for `architecture`, with Llama's
    /// attention biases; the other architectures adjust what differs.
    pub(crate) fn model_config(
        &self,
        architecture: Architecture,
        path: &Path,
    ) -> Result<ModelConfig> {
        let num_heads = self.num_attention_heads;
        let num_kv_heads = self.num_key_value_heads.unwrap_or(num_heads);
        if num_kv_heads <= 0 || num_heads % num_kv_heads != 0 {
            return Err(LocalError::invalid(
                path,
                Some("num_key_value_heads"),
                format!("{num_kv_heads} key/value heads do not divide {num_heads} heads"),
            ));
        }
        let attention_bias = self.attention_bias.unwrap_or(false);
        Ok(ModelConfig {
            architecture,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads,
            num_kv_heads,
            head_dim: self.head_dim.unwrap_or(self.hidden_size / num_heads),
            norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            hidden_act: self.hidden_act.clone().unwrap_or_else(|| "silu".into()),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            qkv_bias: attention_bias,
            o_bias: attention_bias,
            mlp_bias: self.mlp_bias.unwrap_or(false),
            qk_norm: false,
            rope: Some(self.rope(path)?),
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            sliding_window: None,
            bos_token_id: self.bos_token_id,
            eos_token_ids: self.eos_token_id.clone(),
            torch_dtype: saved_dtype(&self.dtype, &self.torch_dtype),
            path: path.to_path_buf(),
        })
    }

    /// RoPE from either the classic `rope_theta` + `rope_scaling` fields or
    /// the newer `rope_parameters` object (transformers ≥ 5).
    fn rope(&self, path: &Path) -> Result<Rope> {
        let (spec, field) = match (&self.rope_parameters, &self.rope_scaling) {
            (Some(p), _) => (Some(p), "rope_parameters"),
            (None, s) => (s.as_ref(), "rope_scaling"),
        };
        let spec: Option<RopeSpec> = match spec {
            Some(map) => Some(
                serde_path_to_error::deserialize(serde_json::Value::Object(map.clone())).map_err(
                    |e| {
                        let at = format!("{field}.{}", e.path());
                        LocalError::invalid(path, Some(&at), e.into_inner().to_string())
                    },
                )?,
            ),
            None => None,
        };
        let theta = spec
            .as_ref()
            .filter(|_| field == "rope_parameters")
            .and_then(|s| s.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0);
        let Some(spec) = spec else { return Ok(Rope { theta, scaling: RopeScaling::Default }) };
        let need = |v: Option<f64>, name: &str| {
            v.ok_or_else(|| LocalError::invalid(path, Some(name), "is missing"))
        };
        let kind = spec.rope_type.clone().or(spec.kind.clone()).unwrap_or_else(|| "default".into());
        let scaling = match kind.as_str() {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: need(spec.factor, "factor")? },
            "llama3" => RopeScaling::Llama3 {
                factor: need(spec.factor, "factor")?,
                low_freq_factor: need(spec.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: need(spec.high_freq_factor, "high_freq_factor")?,
                original_max_position_embeddings: need(
                    spec.original_max_position_embeddings,
                    "original_max_position_embeddings",
                )?,
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
}

/// `LlamaAttention` (with Qwen2's q/k/v bias and Qwen3's q/k norm when the
/// config asks for them).
#[derive(Debug)]
pub struct LlamaAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
}

impl LlamaAttention {
    fn load(c: &ModelConfig, l: &mut Loader<'_>, p: &str) -> Result<Self> {
        let (h, d) = (c.hidden_size, c.head_dim);
        let (qk_norm_q, qk_norm_k) = if c.qk_norm {
            (
                Some(RmsNorm::load(l, &format!("{p}.q_norm"), d, c.norm_eps)?),
                Some(RmsNorm::load(l, &format!("{p}.k_norm"), d, c.norm_eps)?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            q_proj: Linear::load(l, &format!("{p}.q_proj"), h, c.num_heads * d, c.qkv_bias)?,
            k_proj: Linear::load(l, &format!("{p}.k_proj"), h, c.num_kv_heads * d, c.qkv_bias)?,
            v_proj: Linear::load(l, &format!("{p}.v_proj"), h, c.num_kv_heads * d, c.qkv_bias)?,
            o_proj: Linear::load(l, &format!("{p}.o_proj"), c.num_heads * d, h, c.o_bias)?,
            q_norm: qk_norm_q,
            k_norm: qk_norm_k,
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: d,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        inputs: &AttentionInputs,
        layer: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let [q, k, v] = self.project(x)?;
        self.o_proj.forward(&self.attend(&q, &k, &v, inputs, layer, cache)?)
    }

    /// The q, k and v projections of `x` (`[batch, seq, heads × dim]`).
    fn project(&self, x: &Tensor) -> Result<[Tensor; 3]> {
        Ok([self.q_proj.forward(x)?, self.k_proj.forward(x)?, self.v_proj.forward(x)?])
    }

    /// Attention over projected q, k and v (q/k norms, rotary, the cache):
    /// the input of `o_proj`, `[batch, seq, heads × dim]`.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        inputs: &AttentionInputs,
        layer: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let s = q.size();
        let (b, t) = (s[0], s[1]);
        let heads = |y: &Tensor, n: i64, norm: &Option<RmsNorm>| -> Result<Tensor> {
            let y = y.f_view([b, t, n, self.head_dim])?;
            let y = match norm {
                Some(norm) => norm.forward(&y)?,
                None => y,
            };
            Ok(y.f_transpose(1, 2)?)
        };
        let q =
            layers::apply_rope(&heads(q, self.num_heads, &self.q_norm)?, &inputs.cos, &inputs.sin)?;
        let k = layers::apply_rope(
            &heads(k, self.num_kv_heads, &self.k_norm)?,
            &inputs.cos,
            &inputs.sin,
        )?;
        let v = heads(v, self.num_kv_heads, &None)?;
        let (k, v) = match cache {
            Some(cache) => cache.update(layer, k, v)?,
            None => (k, v),
        };
        let out = layers::attend(&q, &k, &v, &inputs.mask, None)?;
        Ok(out.f_transpose(1, 2)?.f_reshape([b, t, self.num_heads * self.head_dim])?)
    }

    fn projections(&self) -> [&Linear; 4] {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj]
    }
}

/// `LlamaMLP`: `down(act(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct LlamaMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: String,
}

impl LlamaMlp {
    fn load(c: &ModelConfig, l: &mut Loader<'_>, p: &str) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        Ok(Self {
            gate_proj: Linear::load(l, &format!("{p}.gate_proj"), h, i, c.mlp_bias)?,
            up_proj: Linear::load(l, &format!("{p}.up_proj"), h, i, c.mlp_bias)?,
            down_proj: Linear::load(l, &format!("{p}.down_proj"), i, h, c.mlp_bias)?,
            act: c.hidden_act.clone(),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [gate, up] = self.project(x)?;
        self.down_proj.forward(&self.hidden(&gate, &up)?)
    }

    /// The gate and up projections of `x`.
    fn project(&self, x: &Tensor) -> Result<[Tensor; 2]> {
        Ok([self.gate_proj.forward(x)?, self.up_proj.forward(x)?])
    }

    /// `act(gate) * up`, the input of `down`.
    fn hidden(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        Ok(layers::activation(&self.act, gate)?.f_mul(up)?)
    }

    /// A scalar whose gradient is that of `⟨self.forward(x), g⟩`; with a
    /// frozen `down`, its forward GEMM is skipped (see
    /// [`Linear::backward_surrogate`]).
    fn backward_surrogate(&self, x: &Tensor, g: &Tensor) -> Result<Tensor> {
        let [gate, up] = self.project(x)?;
        let hidden = self.hidden(&gate, &up)?;
        match self.down_proj.backward_surrogate(&hidden, g)? {
            Some(s) => Ok(s),
            None => Ok(self.down_proj.forward(&hidden)?.f_mul(g)?.f_sum(Kind::Float)?),
        }
    }

    fn projections(&self) -> [&Linear; 3] {
        [&self.gate_proj, &self.up_proj, &self.down_proj]
    }
}

/// `LlamaDecoderLayer`.
#[derive(Debug)]
pub struct LlamaDecoderLayer {
    self_attn: LlamaAttention,
    mlp: LlamaMlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

/// What every decoder layer's attention reads for one forward pass.
struct AttentionInputs {
    mask: Mask,
    /// The rotary tables (see [`layers::rope_cos_sin`]).
    cos: Tensor,
    sin: Tensor,
}

/// `LlamaForCausalLM` (and its Mistral/Qwen2/Qwen3 variants).
#[derive(Debug)]
pub struct LlamaForCausalLm {
    embed_tokens: Tensor,
    layers: Vec<LlamaDecoderLayer>,
    norm: RmsNorm,
    lm_head: Tensor,
    inv_freq: Tensor,
    sliding_window: Option<i64>,
}

impl LlamaForCausalLm {
    pub(crate) fn load(c: &ModelConfig, l: &mut Loader<'_>) -> Result<Self> {
        layers::check_activation(&c.hidden_act, &c.path)?;
        let rope = c.rope.as_ref().ok_or_else(|| {
            LocalError::invalid(
                &c.path,
                Some("rope_parameters"),
                "a rotary model needs RoPE settings",
            )
        })?;
        let embed_tokens = l.get("model.embed_tokens.weight", &[c.vocab_size, c.hidden_size])?;
        let mut decoder_layers = Vec::new();
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            decoder_layers.push(LlamaDecoderLayer {
                self_attn: LlamaAttention::load(c, l, &format!("{p}.self_attn"))?,
                mlp: LlamaMlp::load(c, l, &format!("{p}.mlp"))?,
                input_layernorm: RmsNorm::load(
                    l,
                    &format!("{p}.input_layernorm"),
                    c.hidden_size,
                    c.norm_eps,
                )?,
                post_attention_layernorm: RmsNorm::load(
                    l,
                    &format!("{p}.post_attention_layernorm"),
                    c.hidden_size,
                    c.norm_eps,
                )?,
            });
        }
        let norm = RmsNorm::load(l, "model.norm", c.hidden_size, c.norm_eps)?;
        // Tied checkpoints usually omit lm_head.weight; some store a copy.
        let lm_head = if c.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            l.get("lm_head.weight", &[c.vocab_size, c.hidden_size])?
        };
        let inv_freq = layers::rope_inv_freq(rope, c.head_dim)?.f_to_device(l.device())?;
        Ok(Self {
            embed_tokens,
            layers: decoder_layers,
            norm,
            lm_head,
            inv_freq,
            sliding_window: c.sliding_window,
        })
    }

    pub(crate) fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.layers
            .iter_mut()
            .flat_map(|l| {
                let a = &mut l.self_attn;
                let m = &mut l.mlp;
                [
                    &mut a.q_proj,
                    &mut a.k_proj,
                    &mut a.v_proj,
                    &mut a.o_proj,
                    &mut m.gate_proj,
                    &mut m.up_proj,
                    &mut m.down_proj,
                ]
            })
            .collect()
    }

    pub(crate) fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }

    /// The final normed hidden states, `[batch, seq, hidden]`.
    pub(crate) fn hidden(
        &self,
        input: &ForwardInput<'_>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let past = layers::past_len(&cache);
        let ids = input.input_ids;
        let inputs = self.attention_inputs(input, past)?;
        let mut h = Tensor::f_embedding(&self.embed_tokens, ids, -1, false, false)?;
        for i in 0..self.layers.len() {
            h = self.layer(i, &h, &inputs, cache.as_deref_mut())?;
        }
        if let Some(cache) = cache {
            cache.advance(ids.size()[1]);
        }
        self.norm.forward(&h)
    }

    /// The attention mask and rotary tables of `input` after `past` cached
    /// positions.
    fn attention_inputs(&self, input: &ForwardInput<'_>, past: i64) -> Result<AttentionInputs> {
        let kind = self.embed_tokens.kind();
        let device = self.embed_tokens.device();
        let mask = layers::attention_mask(input, past, self.sliding_window, kind, device)?;
        let positions = layers::positions(input, past)?;
        let (cos, sin) = layers::rope_cos_sin(&self.inv_freq, &positions, kind)?;
        Ok(AttentionInputs { mask, cos, sin })
    }

    /// Decoder layer `i` on the residual stream `h`.
    fn layer(
        &self,
        i: usize,
        h: &Tensor,
        inputs: &AttentionInputs,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.attention_block(i, h, inputs, cache)?;
        let layer = &self.layers[i];
        let mlp = layer.mlp.forward(&layer.post_attention_layernorm.forward(&h)?)?;
        Ok(h.f_add(&mlp)?)
    }

    /// Layer `i`'s residual stream after its attention.
    fn attention_block(
        &self,
        i: usize,
        h: &Tensor,
        inputs: &AttentionInputs,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let layer = &self.layers[i];
        let attn = layer.self_attn.forward(&layer.input_layernorm.forward(h)?, inputs, i, cache)?;
        Ok(h.f_add(&attn)?)
    }

    /// Whether every projection of every layer is frozen (LoRA), so
    /// recomputation can skip their forward GEMMs.
    fn projections_frozen(&self) -> bool {
        self.layers.iter().all(|l| {
            l.self_attn.projections().iter().all(|p| p.frozen())
                && l.mlp.projections().iter().all(|p| p.frozen())
        })
    }

    /// Decoder layer `i` on `h` without a graph, for activation
    /// checkpointing: the layer's output and what backward keeps of it.
    /// The attention half draws its dropout from `seeds.0`, the MLP half
    /// from `seeds.1`, so recomputing either half alone draws the same
    /// masks.
    fn layer_keeping(
        &self,
        i: usize,
        h: Tensor,
        inputs: &AttentionInputs,
        seeds: (i64, i64),
        keep_projections: bool,
    ) -> Result<(Tensor, Kept)> {
        let layer = &self.layers[i];
        tch::manual_seed(seeds.0);
        let [q, k, v] = layer.self_attn.project(&layer.input_layernorm.forward(&h)?)?;
        let attn = layer.self_attn.attend(&q, &k, &v, inputs, i, None)?;
        let mid = h.f_add(&layer.self_attn.o_proj.forward(&attn)?)?;
        tch::manual_seed(seeds.1);
        let [gate, up] = layer.mlp.project(&layer.post_attention_layernorm.forward(&mid)?)?;
        let out = mid.f_add(&layer.mlp.down_proj.forward(&layer.mlp.hidden(&gate, &up)?)?)?;
        let kept = if keep_projections {
            Kept::Projections(KeptProjections { input: h, q, k, v, mid, gate, up })
        } else {
            Kept::Input(h)
        };
        Ok((out, kept))
    }

    /// A scalar whose gradient is that of `⟨layer i (h), grad⟩`: recomputes
    /// the layer with a graph, but not its last projection's output, which
    /// backward does not use (see [`LlamaMlp::backward_surrogate`]). Each
    /// half draws its dropout as [`Self::layer_keeping`] did.
    fn layer_surrogate(
        &self,
        i: usize,
        h: &Tensor,
        grad: &Tensor,
        inputs: &AttentionInputs,
        seeds: (i64, i64),
    ) -> Result<Tensor> {
        tch::manual_seed(seeds.0);
        let h = self.attention_block(i, h, inputs, None)?;
        let layer = &self.layers[i];
        tch::manual_seed(seeds.1);
        let mlp =
            layer.mlp.backward_surrogate(&layer.post_attention_layernorm.forward(&h)?, grad)?;
        Ok(h.f_mul(grad)?.f_sum(Kind::Float)?.f_add(&mlp)?)
    }

    /// Sends `grad`, the gradient of layer `i`'s output, back through the
    /// layer from what [`Self::layer_keeping`] kept of its frozen
    /// projections: each half recomputes its norm, adapters and what lies
    /// between its projections (activation; q/k norms, rotary and
    /// attention) on the kept outputs, runs backward to their gradients,
    /// then sends those through the projections by
    /// [`layers::projections_surrogate`], so no projection's forward GEMM
    /// runs again. Returns the gradient of the layer's input.
    fn layer_backward_kept(
        &self,
        i: usize,
        kept: KeptProjections,
        grad: &Tensor,
        inputs: &AttentionInputs,
        seeds: (i64, i64),
    ) -> Result<Tensor> {
        let KeptProjections { input, q, k, v, mid, gate, up } = kept;
        let layer = &self.layers[i];
        let (attn, mlp) = (&layer.self_attn, &layer.mlp);
        let frozen = || LocalError::InvalidArgument("a kept projection is trained".into());
        // The MLP half, on the residual stream after attention.
        tch::manual_seed(seeds.1);
        let mid = mid.set_requires_grad(true);
        let x = layer.post_attention_layernorm.forward(&mid)?;
        let factors = [mlp.gate_proj.adapter_factors(&x)?, mlp.up_proj.adapter_factors(&x)?];
        let (gate, up) = (gate.set_requires_grad(true), up.set_requires_grad(true));
        let s = mlp.down_proj.backward_surrogate(&mlp.hidden(&gate, &up)?, grad)?;
        s.ok_or_else(frozen)?.f_backward()?;
        let [fg, fu] = factors;
        let (gg, gu) = (gate.grad(), up.grad());
        layers::projections_surrogate(&x, &[(&mlp.gate_proj, fg, &gg), (&mlp.up_proj, fu, &gu)])?
            .f_backward()?;
        let grad = grad.f_add(&mid.grad())?;
        // The attention half, on the layer's input.
        tch::manual_seed(seeds.0);
        let h = input.set_requires_grad(true);
        let x = layer.input_layernorm.forward(&h)?;
        let factors = [
            attn.q_proj.adapter_factors(&x)?,
            attn.k_proj.adapter_factors(&x)?,
            attn.v_proj.adapter_factors(&x)?,
        ];
        let (q, k, v) =
            (q.set_requires_grad(true), k.set_requires_grad(true), v.set_requires_grad(true));
        let a = attn.attend(&q, &k, &v, inputs, i, None)?;
        attn.o_proj.backward_surrogate(&a, &grad)?.ok_or_else(frozen)?.f_backward()?;
        let [fq, fk, fv] = factors;
        let (gq, gk, gv) = (q.grad(), k.grad(), v.grad());
        layers::projections_surrogate(
            &x,
            &[(&attn.q_proj, fq, &gq), (&attn.k_proj, fk, &gk), (&attn.v_proj, fv, &gv)],
        )?
        .f_backward()?;
        Ok(grad.f_add(&h.grad())?)
    }

    /// Training with activation checkpointing: see
    /// [`CausalLm::checkpointed_backward`].
    pub(crate) fn checkpointed_backward<T>(
        &self,
        input: &ForwardInput<'_>,
        seed: i64,
        checkpointing: Checkpointing,
        head: impl FnOnce(&Tensor) -> Result<T>,
    ) -> Result<T> {
        let inputs = self.attention_inputs(input, 0)?;
        let ids = input.input_ids;
        let keep_projections =
            checkpointing == Checkpointing::Selective && self.projections_frozen();
        // Each half of each layer draws its dropout from its own seed, so
        // the recomputation below draws the same masks.
        let seeds = |i: usize| {
            let i = 2 * i as i64;
            (seed.wrapping_add(i), seed.wrapping_add(i + 1))
        };
        // Forward without a graph, keeping each layer's input (and its
        // projections' outputs).
        let mut kept = Vec::with_capacity(self.layers.len());
        let last = tch::no_grad(|| -> Result<Tensor> {
            let mut h = Tensor::f_embedding(&self.embed_tokens, ids, -1, false, false)?;
            for i in 0..self.layers.len() {
                let (next, k) = self.layer_keeping(i, h, &inputs, seeds(i), keep_projections)?;
                kept.push(k);
                h = next;
            }
            Ok(h)
        })?;
        // The head (final norm, LM head, loss) with a graph, on a leaf.
        let leaf = last.set_requires_grad(true);
        let out = head(&self.norm.forward(&leaf)?)?;
        let mut grad = leaf.grad();
        if !grad.defined() {
            // Nothing before the head is trained.
            return Ok(out);
        }
        // Backwards, layer by layer.
        for i in (0..self.layers.len()).rev() {
            grad = match kept.pop() {
                Some(Kept::Projections(kept)) => {
                    self.layer_backward_kept(i, kept, &grad, &inputs, seeds(i))?
                }
                Some(Kept::Input(input)) => {
                    // Recompute with a graph and send the output's gradient
                    // through it (as the gradient of the inner product of
                    // the two).
                    let x = input.set_requires_grad(true);
                    self.layer_surrogate(i, &x, &grad, &inputs, seeds(i))?.f_backward()?;
                    x.grad()
                }
                None => return Ok(out),
            };
            if !grad.defined() {
                return Ok(out);
            }
        }
        if self.embed_tokens.requires_grad() {
            let h = Tensor::f_embedding(&self.embed_tokens, ids, -1, false, false)?;
            h.f_mul(&grad)?.f_sum(Kind::Float)?.f_backward()?;
        }
        Ok(out)
    }
}

/// What the checkpointed forward pass keeps of one decoder layer.
enum Kept {
    /// The layer's input.
    Input(Tensor),
    /// The layer's input and its projections' outputs.
    Projections(KeptProjections),
}

/// What selective checkpointing keeps of one decoder layer: its input, the
/// outputs of its q, k, v, gate and up projections, and the residual
/// stream between attention and MLP.
struct KeptProjections {
    input: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mid: Tensor,
    gate: Tensor,
    up: Tensor,
}
