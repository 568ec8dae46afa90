//! Causal language models on libtorch, one module per HF architecture.
//!
//! Weights live in a [`VarStore`] under their HF names
//! (`model.layers.0.self_attn.q_proj.weight`, …), so checkpoints load and
//! save without a renaming table and adapters can address modules by the
//! names PEFT uses.

pub mod gpt2;
pub(crate) mod layers;
pub mod llama;
pub mod mistral;
pub mod qwen2;
pub mod qwen3;
#[cfg(finetune_shims)]
pub mod varlen;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::config::{Architecture, ModelConfig};
use crate::error::{LocalError, Result};
use crate::lora::{Lora, LoraConfig};
use crate::weights::SafetensorsFiles;

/// Activation checkpointing: what the forward pass keeps of each decoder
/// layer for backward; the rest is recomputed there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checkpointing {
    /// Keep every activation (the fastest, the most memory).
    #[default]
    Off,
    /// Keep each layer's input only and recompute the whole layer in
    /// backward (bar the last projection of each half when frozen): the
    /// least memory, for about a third more compute (transformers'
    /// `gradient_checkpointing`).
    Full,
    /// Keep each layer's input, the outputs of its frozen q, k, v, gate and
    /// up projections and the residual stream between attention and MLP;
    /// backward recomputes norms, rotary, attention, activation and
    /// adapters but no projection. For SmolLM2-135M that is 9× what `Full`
    /// keeps per token; in the training benchmark (fp32, batch 8, LoRA on
    /// every projection) peak RSS was 2.8 GB against 2.2 (`Full`) and 5.3
    /// (`Off`), and throughput 256 tok/s against 231 and 298. Applies where
    /// every projection is frozen (LoRA); full fine-tuning recomputes as
    /// `Full`.
    Selective,
}

impl std::str::FromStr for Checkpointing {
    type Err = LocalError;

    /// `false`/`off`, `true`/`full`, `selective`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "false" | "off" => Ok(Self::Off),
            "true" | "full" => Ok(Self::Full),
            "selective" => Ok(Self::Selective),
            other => Err(LocalError::InvalidArgument(format!(
                "activation checkpointing `{other}`: expected off, full or selective \
                 (false and true mean off and full)"
            ))),
        }
    }
}

/// What the model reads for one forward pass.
#[derive(Debug, Clone, Copy)]
pub struct ForwardInput<'a> {
    /// Token ids, `[batch, seq]`, int64.
    pub input_ids: &'a Tensor,
    /// Positions of those tokens, `[batch, seq]`; by default they continue
    /// from the cache's length.
    pub position_ids: Option<&'a Tensor>,
    /// Which keys may be attended to, `[batch, past + seq]`, 1 for real
    /// tokens and 0 for padding (transformers' `attention_mask`).
    pub attention_mask: Option<&'a Tensor>,
    /// For packed rows, `[batch, seq]`: the example each token belongs to;
    /// a token attends only to earlier tokens of its own example. Not
    /// combinable with a cache.
    pub sequence_ids: Option<&'a Tensor>,
}

impl<'a> ForwardInput<'a> {
    /// Just the ids: positions `0..seq` (after the cache), causal attention.
    pub fn new(input_ids: &'a Tensor) -> Self {
        Self { input_ids, position_ids: None, attention_mask: None, sequence_ids: None }
    }
}

/// Keys and values of the tokens seen so far, per layer.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: i64,
}

impl KvCache {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self { layers: (0..num_layers).map(|_| None).collect(), len: 0 }
    }

    /// How many positions are cached.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a layer's new keys/values (`[batch, heads, seq, dim]`) and
    /// returns all of them.
    pub(crate) fn update(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| LocalError::InvalidArgument(format!("cache has no layer {layer}")))?;
        let (k, v) = match slot.take() {
            Some((pk, pv)) => (Tensor::f_cat(&[pk, k], 2)?, Tensor::f_cat(&[pv, v], 2)?),
            None => (k, v),
        };
        *slot = Some((k.shallow_clone(), v.shallow_clone()));
        Ok((k, v))
    }

    pub(crate) fn advance(&mut self, by: i64) {
        self.len += by;
    }
}

/// Where and in what precision to load a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadOptions {
    /// The device.
    pub device: Device,
    /// The compute dtype; `None` chooses fp32 on CPU and bf16 on CUDA.
    pub dtype: Option<Kind>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { device: Device::Cpu, dtype: None }
    }
}

impl LoadOptions {
    /// The dtype that will be used.
    pub fn resolved_dtype(&self) -> Kind {
        self.dtype.unwrap_or(match self.device {
            Device::Cuda(_) => Kind::BFloat16,
            _ => Kind::Float,
        })
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| LocalError::InvalidArgument(format!("{}: {e}", path.display())))?;
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, text + "\n").map_err(|e| LocalError::io(&partial, e))?;
    std::fs::rename(&partial, path).map_err(|e| LocalError::io(path, e))
}

enum Body {
    Decoder(llama::LlamaForCausalLm),
    Gpt2(gpt2::Gpt2LmHeadModel),
}

/// A loaded causal language model of any supported architecture.
pub struct CausalLm {
    config: ModelConfig,
    vs: VarStore,
    body: Body,
    kind: Kind,
    adapters: Option<(VarStore, LoraConfig)>,
    training: Arc<AtomicBool>,
}

impl std::fmt::Debug for CausalLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CausalLm")
            .field("architecture", &self.config.architecture)
            .field("device", &self.vs.device())
            .field("dtype", &self.kind)
            .finish_non_exhaustive()
    }
}

impl CausalLm {
    /// Loads `dir` (config.json + safetensors) onto `options.device`.
    /// Weights come in frozen; unfreeze the [`VarStore`] to train them all.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        let mut checkpoint = SafetensorsFiles::open(dir)?;
        let kind = options.resolved_dtype();
        let mut vs = VarStore::new(options.device);
        let body = {
            let mut loader = layers::Loader::new(&mut checkpoint, &vs, kind);
            match config.architecture {
                Architecture::Llama => {
                    Body::Decoder(llama::LlamaForCausalLm::load(&config, &mut loader)?)
                }
                Architecture::Mistral => Body::Decoder(mistral::load(&config, &mut loader)?),
                Architecture::Qwen2 => Body::Decoder(qwen2::load(&config, &mut loader)?),
                Architecture::Qwen3 => Body::Decoder(qwen3::load(&config, &mut loader)?),
                Architecture::Gpt2 => {
                    Body::Gpt2(gpt2::Gpt2LmHeadModel::load(&config, &mut loader)?)
                }
            }
        };
        vs.freeze();
        Ok(Self {
            config,
            vs,
            body,
            kind,
            adapters: None,
            training: Arc::new(AtomicBool::new(false)),
        })
    }

    fn linears_mut(&mut self) -> Vec<&mut layers::Linear> {
        match &mut self.body {
            Body::Decoder(m) => m.linears_mut(),
            Body::Gpt2(m) => m.linears_mut(),
        }
    }

    /// Adds LoRA adapters (in fp32, on the model's device) to the targeted
    /// projections and returns how many modules got one. The base weights
    /// stay frozen; train [`CausalLm::adapter_store`].
    pub fn add_lora(&mut self, config: &LoraConfig) -> Result<usize> {
        config.validate()?;
        if self.adapters.is_some() {
            return Err(LocalError::InvalidArgument("the model already has LoRA adapters".into()));
        }
        let store = VarStore::new(self.vs.device());
        let training = Arc::clone(&self.training);
        let mut count = 0;
        for linear in self.linears_mut() {
            if config.targets(&linear.name) {
                let lora = Lora::new(
                    &store,
                    &linear.name,
                    linear.in_dim,
                    linear.out_dim,
                    config,
                    Arc::clone(&training),
                )?;
                linear.lora = Some(lora);
                count += 1;
            }
        }
        if count == 0 {
            return Err(LocalError::InvalidArgument(format!(
                "no module matches the LoRA target modules {:?}",
                config.target_modules
            )));
        }
        self.adapters = Some((store, config.clone()));
        Ok(count)
    }

    /// The LoRA adapters' var store (what an optimizer trains) and config.
    pub fn adapter_store(&self) -> Option<(&VarStore, &LoraConfig)> {
        self.adapters.as_ref().map(|(vs, c)| (vs, c))
    }

    /// The adapter tensors under PEFT's saved names
    /// (`base_model.model.{module}.lora_A.weight`, …).
    pub fn peft_state(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .adapters
            .iter()
            .flat_map(|(vs, _)| vs.variables())
            .map(|(name, t)| (format!("base_model.model.{name}"), t))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Folds every adapter into its base weight (`W += s·B·A`) and drops
    /// the adapters: the model computes the same function without them.
    pub fn merge_lora(&mut self) -> Result<()> {
        for linear in self.linears_mut() {
            linear.merge()?;
        }
        self.adapters = None;
        Ok(())
    }

    /// Writes the adapters as PEFT does: `adapter_model.safetensors` (PEFT's
    /// key names) and `adapter_config.json`, which `PeftModel.from_pretrained`
    /// loads onto the base model named `base_model_name_or_path`.
    pub fn save_adapter(&self, dir: &Path, base_model_name_or_path: &str) -> Result<()> {
        let (_, config) = self
            .adapters
            .as_ref()
            .ok_or_else(|| LocalError::InvalidArgument("the model has no LoRA adapters".into()))?;
        std::fs::create_dir_all(dir).map_err(|e| LocalError::io(dir, e))?;
        crate::weights::write_safetensors(
            &dir.join("adapter_model.safetensors"),
            &self.peft_state(),
        )?;
        let mut targets = config.target_modules.clone();
        targets.sort();
        let adapter_config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model_name_or_path,
            "r": config.r,
            "lora_alpha": config.alpha,
            "lora_dropout": config.dropout,
            "target_modules": if targets == ["all-linear"] { serde_json::json!("all-linear") } else { serde_json::json!(targets) },
            "use_rslora": config.use_rslora,
            "fan_in_fan_out": self.config.architecture == Architecture::Gpt2,
            "bias": "none",
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
        });
        write_json(&dir.join("adapter_config.json"), &adapter_config)
    }

    /// Adds the adapters saved in `dir` (by [`CausalLm::save_adapter`] or by
    /// PEFT) to this model.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| LocalError::io(&path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| LocalError::invalid(&path, None, format!("line {}: {e}", e.line())))?;
        let field =
            |k: &str| v.get(k).ok_or_else(|| LocalError::invalid(&path, Some(k), "is missing"));
        if field("peft_type")?.as_str() != Some("LORA") {
            return Err(LocalError::invalid(
                &path,
                Some("peft_type"),
                "only LORA adapters are supported",
            ));
        }
        let target_modules = match field("target_modules")? {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => {
                a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect()
            }
            _ => return Err(LocalError::invalid(&path, Some("target_modules"), "is not a list")),
        };
        let config = LoraConfig {
            r: field("r")?
                .as_i64()
                .ok_or_else(|| LocalError::invalid(&path, Some("r"), "is not an integer"))?,
            alpha: field("lora_alpha")?
                .as_f64()
                .ok_or_else(|| LocalError::invalid(&path, Some("lora_alpha"), "is not a number"))?,
            dropout: v.get("lora_dropout").and_then(serde_json::Value::as_f64).unwrap_or(0.0),
            target_modules,
            use_rslora: v.get("use_rslora").and_then(serde_json::Value::as_bool).unwrap_or(false),
        };
        self.add_lora(&config)?;
        let mut checkpoint = SafetensorsFiles::open_file(&dir.join("adapter_model.safetensors"))?;
        if let Some((store, _)) = &self.adapters {
            for (name, mut var) in store.variables() {
                let stored = format!("base_model.model.{name}");
                let t = checkpoint.load(&stored, &var.size(), var.kind(), var.device())?;
                tch::no_grad(|| var.f_copy_(&t))?;
            }
        }
        Ok(())
    }

    /// Writes the model in the HF layout (`config.json`, `model.safetensors`
    /// with HF names, and the tokenizer and generation files copied from
    /// `source_dir`), loadable by transformers and by [`CausalLm::load`].
    /// Adapters must be merged first ([`CausalLm::merge_lora`]).
    pub fn save_pretrained(&self, dir: &Path, source_dir: &Path) -> Result<()> {
        if self.adapters.is_some() {
            return Err(LocalError::InvalidArgument(
                "merge the LoRA adapters (merge_lora) or save them with save_adapter".into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| LocalError::io(dir, e))?;
        let tensors: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        crate::weights::write_safetensors(&dir.join("model.safetensors"), &tensors)?;
        for file in [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "chat_template.jinja",
        ] {
            let src = source_dir.join(file);
            if src.is_file() {
                std::fs::copy(&src, dir.join(file)).map_err(|e| LocalError::io(&src, e))?;
            }
        }
        // The weights are written in the compute dtype; say so.
        let config_path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| LocalError::io(&config_path, e))?;
        let mut config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| LocalError::invalid(&config_path, None, e.to_string()))?;
        if let Some(obj) = config.as_object_mut() {
            let dtype = match self.kind {
                Kind::BFloat16 => "bfloat16",
                Kind::Half => "float16",
                _ => "float32",
            };
            obj.insert("dtype".into(), dtype.into());
            obj.remove("torch_dtype");
        }
        write_json(&config_path, &config)
    }

    /// Training mode turns on LoRA dropout.
    pub fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The weights, under their HF names.
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// The weights, mutably (to unfreeze or move them).
    pub fn var_store_mut(&mut self) -> &mut VarStore {
        &mut self.vs
    }

    /// The device the weights are on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The compute dtype.
    pub fn dtype(&self) -> Kind {
        self.kind
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(usize::try_from(self.config.num_layers).unwrap_or(0))
    }

    /// Runs the model and returns logits `[batch, seq, vocab]` in the
    /// compute dtype. With a cache, the new keys/values are appended to it.
    pub fn forward(&self, input: &ForwardInput<'_>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let hidden = self.forward_hidden(input, cache)?;
        self.lm_head(&hidden)
    }

    /// Runs the model up to the LM head: the final normed hidden states,
    /// `[batch, seq, hidden]`. Training projects only the positions that
    /// take a loss through [`CausalLm::lm_head`].
    pub fn forward_hidden(
        &self,
        input: &ForwardInput<'_>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let ids = input.input_ids;
        if ids.dim() != 2 {
            return Err(LocalError::InvalidArgument(format!(
                "input_ids must be [batch, seq], got {:?}",
                ids.size()
            )));
        }
        if input.sequence_ids.is_some() && cache.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(LocalError::InvalidArgument(
                "packed sequences cannot continue a cache".into(),
            ));
        }
        match &self.body {
            Body::Decoder(m) => m.hidden(input, cache),
            Body::Gpt2(m) => m.hidden(input, cache),
        }
    }

    /// Activation checkpointing for training: runs the decoder layers
    /// keeping only part of their activations (see [`Checkpointing`]),
    /// calls `head` with the final normed hidden states — `head` computes
    /// the loss and runs its backward — then recomputes what each layer
    /// needs, last to first, sending the gradient back through it. The
    /// trainable weights end with the gradients a plain forward and backward
    /// gives (to float rounding; tested). Layer `i` draws its attention's
    /// dropout with the seed `seed + 2i` and its MLP's with `seed + 2i + 1`
    /// in both passes. `Checkpointing::Off` is taken as `Full`. The Llama
    /// family (Llama, Mistral, Qwen2, Qwen3) only.
    pub fn checkpointed_backward<T>(
        &self,
        input: &ForwardInput<'_>,
        seed: i64,
        checkpointing: Checkpointing,
        head: impl FnOnce(&Tensor) -> Result<T>,
    ) -> Result<T> {
        match &self.body {
            Body::Decoder(m) => m.checkpointed_backward(input, seed, checkpointing, head),
            Body::Gpt2(_) => Err(LocalError::InvalidArgument(
                "activation checkpointing is implemented for the Llama family, not GPT-2".into(),
            )),
        }
    }

    /// Projects hidden states (`[..., hidden]`) to logits (`[..., vocab]`).
    pub fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        let weight = match &self.body {
            Body::Decoder(m) => m.lm_head(),
            Body::Gpt2(m) => m.lm_head(),
        };
        Ok(hidden.f_linear::<Tensor>(weight, None)?)
    }
}
