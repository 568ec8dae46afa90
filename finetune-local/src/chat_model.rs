//! A local model behind [`ChatModel`]: loaded once and kept on its own
//! thread, which also generates (never the async executor's threads);
//! requests queue to it over a channel. Prompts are formatted as the
//! trainer formats examples: the tokenizer's chat template (system message
//! included) when it has one, else the base format (the last user message).
//!
//! What a folder holds decides how it loads: a merged model (or any HF
//! model) by its `config.json`; a PEFT LoRA adapter by its
//! `adapter_config.json`, over the base it names (a folder, or an id in the
//! model cache) with the adapter applied. A local [`FineTunedModel`] loads
//! from its artifacts folder, falling back to its `base_model` for an
//! adapter whose recorded base is no longer where it was.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use async_trait::async_trait;
use finetune_core::{
    ChatModel, ChatRequest, ChatResponse, Error, FineTunedModel, FinishReason, ModelArtifacts,
    Result, Usage,
};
use tokio::sync::oneshot;

use crate::generate::{GenerationOptions, generate};
use crate::hub::locate;
use crate::job::Runtime;
use crate::models::{CausalLm, LoadOptions};
use crate::tokenizer::Tokenizer;

/// Tokens generated when a request sets no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

/// End-of-turn tokens of common chat templates: generation also stops at
/// these when the tokenizer knows them (ChatML, Llama 3, Phi, Gemma, Mistral).
const END_OF_TURN: [&str; 5] = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>"];

struct Request {
    chat: ChatRequest,
    reply: oneshot::Sender<Result<ChatResponse>>,
}

/// A model on this machine answering chats.
pub struct LocalChatModel {
    target: String,
    requests: mpsc::Sender<Request>,
}

impl std::fmt::Debug for LocalChatModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalChatModel").field("target", &self.target).finish_non_exhaustive()
    }
}

/// What a folder holds.
pub(crate) enum Weights {
    /// A whole model.
    Model(PathBuf),
    /// A LoRA adapter over `base` (a folder or a cache id).
    Adapter { dir: PathBuf, base: String },
}

pub(crate) fn weights_in(
    dir: &Path,
    fallback_base: Option<&str>,
    runtime: &Runtime,
) -> Result<Weights> {
    let adapter_config = dir.join("adapter_config.json");
    if adapter_config.is_file() {
        let text =
            std::fs::read_to_string(&adapter_config).map_err(|e| Error::io(&adapter_config, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            Error::invalid_at(
                finetune_core::Location::file(adapter_config.display().to_string())
                    .with_line(e.line() as u64),
                e.to_string(),
            )
        })?;
        let recorded = v.get("base_model_name_or_path").and_then(|b| b.as_str());
        // The recorded base wins while it can be found; else the model's own
        // record of its base.
        let base = match (recorded, fallback_base) {
            (Some(r), _) if locate(r, &runtime.cache).is_ok() => r.to_owned(),
            (_, Some(f)) => f.to_owned(),
            (Some(r), None) => r.to_owned(),
            (None, None) => {
                return Err(Error::invalid_at(
                    finetune_core::Location::file(adapter_config.display().to_string())
                        .with_column("base_model_name_or_path"),
                    "the adapter names no base model",
                ));
            }
        };
        return Ok(Weights::Adapter { dir: dir.to_owned(), base });
    }
    if dir.join("config.json").is_file() {
        return Ok(Weights::Model(dir.to_owned()));
    }
    // A job folder: its merged model, else its adapter.
    for sub in ["merged", "adapter"] {
        if dir.join(sub).is_dir() {
            return weights_in(&dir.join(sub), fallback_base, runtime);
        }
    }
    Err(Error::NotFound {
        what: format!(
            "a model in {} (no config.json, adapter_config.json, merged/ or adapter/)",
            dir.display()
        ),
    })
}

pub(crate) fn load(weights: &Weights, runtime: &Runtime) -> crate::Result<(CausalLm, Tokenizer)> {
    runtime.apply_threads();
    let options = LoadOptions { device: runtime.resolved_device(), dtype: runtime.dtype };
    match weights {
        Weights::Model(dir) => Ok((CausalLm::load(dir, &options)?, Tokenizer::from_dir(dir)?)),
        Weights::Adapter { dir, base } => {
            let base_dir = locate(base, &runtime.cache)?;
            let mut model = CausalLm::load(&base_dir, &options)?;
            model.load_adapter(dir)?;
            // The adapter's folder may carry the tokenizer it trained with.
            let tokenizer = if dir.join("tokenizer.json").is_file() {
                Tokenizer::from_dir(dir)?
            } else {
                Tokenizer::from_dir(&base_dir)?
            };
            Ok((model, tokenizer))
        }
    }
}

impl LocalChatModel {
    /// Loads the model in `dir` (a model, an adapter or a job folder) with
    /// `runtime`'s device, dtype, threads and cache.
    pub async fn open(dir: &Path, runtime: &Runtime) -> Result<Self> {
        let weights = weights_in(dir, None, runtime)?;
        Self::start(dir.display().to_string(), weights, runtime.clone()).await
    }

    /// Loads a local fine-tuned model from what it records.
    pub async fn for_model(model: &FineTunedModel, runtime: &Runtime) -> Result<Self> {
        let ModelArtifacts::LocalDir { path } = &model.artifacts else {
            return Err(Error::invalid(format!(
                "model {} has no local weights (its artifacts are {:?})",
                model.model_id, model.artifacts
            )));
        };
        let weights = weights_in(path, Some(&model.base_model), runtime)?;
        Self::start(model.model_id.clone(), weights, runtime.clone()).await
    }

    async fn start(target: String, weights: Weights, runtime: Runtime) -> Result<Self> {
        let (requests, queue) = mpsc::channel::<Request>();
        let (ready, loaded) = oneshot::channel::<Result<()>>();
        let name = target.clone();
        std::thread::Builder::new()
            .name("finetune-chat".into())
            .spawn(move || {
                let (model, tokenizer) = match load(&weights, &runtime) {
                    Ok(loaded) => {
                        let _ = ready.send(Ok(()));
                        loaded
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e.into()));
                        return;
                    }
                };
                let stops = stop_ids(&tokenizer);
                // Serves until every handle is dropped.
                while let Ok(request) = queue.recv() {
                    let answer = answer(&model, &tokenizer, &stops, &name, &request.chat);
                    let _ = request.reply.send(answer);
                }
            })
            .map_err(|e| Error::other("starting the model's thread failed", e))?;
        loaded.await.map_err(|e| Error::other("the model's thread ended while loading", e))??;
        Ok(Self { target, requests })
    }
}

/// Token ids that end an answer: the tokenizer's EOS ids and the
/// end-of-turn tokens it knows.
fn stop_ids(tokenizer: &Tokenizer) -> Vec<i64> {
    let mut ids = tokenizer.eos_token_ids().to_vec();
    for t in END_OF_TURN {
        if let Some(id) = tokenizer.token_id(t)
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    ids
}

fn answer(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    stops: &[i64],
    name: &str,
    request: &ChatRequest,
) -> Result<ChatResponse> {
    request.check()?;
    // As the trainer formats examples (`sft::PromptFormat`): the chat
    // template with every message when the tokenizer has one; else the base
    // format, the last user message as it is.
    let prompt = if tokenizer.chat_template().is_some() {
        let text = tokenizer.apply_chat_template(&request.messages, true)?;
        tokenizer.encode(&text, false)?
    } else {
        let last = request.messages.iter().rev().find(|m| m.role == finetune_core::Role::User);
        tokenizer.encode(last.map_or("", |m| m.content.as_str()), true)?
    };
    let options = GenerationOptions {
        max_new_tokens: request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS) as usize,
        temperature: request.temperature.unwrap_or(0.0),
        top_p: request.top_p.unwrap_or(1.0),
        seed: request.seed.unwrap_or(0),
        eos_token_ids: stops.to_vec(),
        pad_token_id: tokenizer.pad_token_id(),
    };
    let out = generate(model, std::slice::from_ref(&prompt), &options)?;
    let generation = out.into_iter().next().ok_or_else(|| Error::invalid("nothing generated"))?;
    let mut text = tokenizer.decode(&generation.tokens, true)?;
    let mut finish_reason = match generation.finish_reason {
        crate::generate::FinishReason::Eos => FinishReason::Stop,
        crate::generate::FinishReason::Length => FinishReason::Length,
    };
    // Stop sequences end the answer before them, as the APIs do.
    if let Some(cut) = request.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        text.truncate(cut);
        finish_reason = FinishReason::Stop;
    }
    Ok(ChatResponse {
        text,
        finish_reason,
        usage: Usage {
            prompt_tokens: prompt.len() as u64,
            completion_tokens: generation.tokens.len() as u64,
        },
        model: name.to_owned(),
    })
}

#[async_trait]
impl ChatModel for LocalChatModel {
    fn target(&self) -> &str {
        &self.target
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse> {
        request.check()?;
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { chat: request.clone(), reply })
            .map_err(|_| Error::invalid(format!("model {} has stopped serving", self.target)))?;
        answer
            .await
            .map_err(|_| Error::invalid(format!("model {} stopped while answering", self.target)))?
    }
}
