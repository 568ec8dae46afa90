//! The trainer: LoRA or full fine-tuning of a [`CausalLm`] on tokenized
//! examples, with completion-only loss, padded or packed micro-batches,
//! gradient accumulation, AdamW, schedules, clipping, evaluation, early
//! stopping, metrics, checkpoints and exact resume.
//!
//! One optimizer step consumes `batch_size` examples, taken in a seeded
//! per-epoch order and run as micro-batches (`micro_batch_size` examples, or
//! in packed mode that many rows of packed examples). Every micro-batch's
//! summed loss is divided by the count of trained tokens of the **whole**
//! step before its backward pass, so the accumulated gradient is the
//! gradient of the step's mean token loss, however it is split.
//!
//! Determinism: the data order of epoch `e` depends only on the seed and
//! `e`, and libtorch's generator is seeded from the seed before the LoRA
//! init and re-seeded from the seed and the step before each step (LoRA
//! dropout). A checkpoint therefore needs only the weights, the optimizer's
//! moments and a few counters for a resumed run to compute exactly what an
//! uninterrupted one computes. libtorch's generator is one per process:
//! runs are reproducible when one training at a time draws from it.

mod checkpoint;
mod config;
mod device_memory;
mod host_cache;
mod memory;
mod metrics;
pub mod optim;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use finetune_core::LossCurve;
use tch::{Kind, Tensor};

pub use crate::models::Checkpointing;
pub use config::{Method, TrainConfig};
pub use device_memory::DeviceMemory;
pub use host_cache::{HostCache, HostCacheStats};
pub use memory::{MemoryPlan, ResidentMemory};
use metrics::rewrite_metrics;
pub use metrics::{EvalRecord, MetricsLine, StepRecord, read_metrics, save_loss_graph};
pub use optim::{AdamWConfig, Schedule};

use crate::error::{LocalError, Result};
use crate::generate::SplitMix64;
use crate::models::{CausalLm, ForwardInput};
use crate::sft::{self, Batch, IGNORE, TokenizedExample};

/// What the trainer reports as it goes.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TrainEvent {
    /// Training begins (or resumes).
    Started {
        /// Optimizer steps in all.
        total_steps: usize,
        /// Steps per epoch.
        steps_per_epoch: usize,
        /// The step a resumed run continues after.
        resumed_from: Option<usize>,
    },
    /// A step is done.
    Step(StepRecord),
    /// An evaluation is done.
    Eval(EvalRecord),
    /// The memory plan, before the first step.
    Planned(MemoryPlan),
    /// A step ran out of memory and is run again with half the
    /// micro-batch (the step's gradient is the same); later steps keep it.
    MicroBatchHalved {
        /// The step (1-based).
        step: usize,
        /// The micro-batch size from now on.
        micro_batch_size: usize,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// The step it holds.
        step: usize,
        /// Its folder.
        path: PathBuf,
    },
}

/// Why training stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Every planned step ran.
    Completed,
    /// The validation loss stopped improving.
    EarlyStopped,
    /// The cancel flag was raised.
    Cancelled,
}

/// The result of [`Trainer::fit`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    /// Why it stopped.
    pub stop: StopReason,
    /// Steps done (including those before a resume).
    pub steps: usize,
    /// Steps planned.
    pub total_steps: usize,
    /// The step with the lowest validation loss, and that loss.
    pub best: Option<(usize, f64)>,
    /// Training and validation loss by step (including before a resume).
    pub curve: LossCurve,
}

type Callback<'a> = Box<dyn FnMut(&TrainEvent) + 'a>;

/// What data-parallel training needs from the group of training processes
/// (implemented over c10d's Gloo by `distributed::ProcessGroup`, feature
/// `distributed`). Every rank makes the same calls in the same order.
pub trait Collective {
    /// This process's rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// Processes in the group.
    fn world_size(&self) -> usize;
    /// Sums `tensor` (contiguous, the same shape and kind on every rank)
    /// over every rank, in place.
    fn all_reduce_sum(&mut self, tensor: &mut Tensor) -> Result<()>;
    /// Overwrites `tensor` on every rank with rank `root`'s.
    fn broadcast(&mut self, tensor: &mut Tensor, root: usize) -> Result<()>;
}

/// Gradients are summed across ranks in buckets of at most this many
/// elements (100 MB of f32), one collective each.
const GRADIENT_BUCKET: i64 = 25 << 20;

/// This rank's share of `items`: a contiguous slice, the ranks' shares in
/// rank order making up the whole (the last ones may be shorter or empty).
fn rank_share<'s, T>(items: &'s [T], group: &dyn Collective) -> &'s [T] {
    let share = items.len().div_ceil(group.world_size());
    let from = (group.rank() * share).min(items.len());
    let to = (from + share).min(items.len());
    &items[from..to]
}

/// Trains a model in place. Build it with [`Trainer::new`], set the output
/// folder and hooks, then call [`Trainer::fit`].
pub struct Trainer<'a> {
    model: &'a mut CausalLm,
    config: TrainConfig,
    output_dir: Option<PathBuf>,
    resume: bool,
    cancel: Arc<AtomicBool>,
    on_event: Option<Callback<'a>>,
    /// The micro-batch size in use: the configured one until a step runs
    /// out of memory.
    micro_batch_size: usize,
    /// Test hook: the step whose first micro-batch reports running out of
    /// memory, once.
    inject_oom: Option<usize>,
    /// The other ranks of a data-parallel run.
    collective: Option<&'a mut dyn Collective>,
}

impl std::fmt::Debug for Trainer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("output_dir", &self.output_dir)
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

impl<'a> Trainer<'a> {
    /// Prepares `model` for `config.method`: adds fresh LoRA adapters (the
    /// model must have none) or unfreezes every weight.
    pub fn new(model: &'a mut CausalLm, config: TrainConfig) -> Result<Self> {
        config.check()?;
        match &config.method {
            Method::Lora(lora) => {
                // The adapters' random init comes from the seed too.
                tch::manual_seed(init_seed(config.seed));
                model.add_lora(lora)?;
            }
            Method::Full => {
                if model.adapter_store().is_some() {
                    return Err(LocalError::InvalidArgument(
                        "full fine-tuning of a model with LoRA adapters: merge them first".into(),
                    ));
                }
                model.var_store_mut().unfreeze();
            }
        }
        Ok(Self {
            model,
            micro_batch_size: config.micro_batch_size,
            config,
            output_dir: None,
            resume: false,
            cancel: Arc::new(AtomicBool::new(false)),
            on_event: None,
            inject_oom: None,
            collective: None,
        })
    }

    /// Trains as one rank of a data-parallel run: the trained weights start
    /// as rank 0's; each rank runs its share of every step's examples (the
    /// step's `batch_size` is the global batch); the loss is normalised by
    /// the step's trained tokens summed over all ranks and the gradients
    /// are summed across ranks, so every rank takes the step one process
    /// would take on the whole batch (clipping on that global norm). Only
    /// rank 0 writes metrics, checkpoints and the loss graph; every rank
    /// reads the checkpoint it resumes from. Every rank stops together on a
    /// cancel. A step that runs out of memory fails the run rather than
    /// halving the micro-batch on one rank.
    pub fn data_parallel(mut self, collective: &'a mut dyn Collective) -> Self {
        self.collective = Some(collective);
        self
    }

    /// Whether this process writes the run's files (rank 0, or alone).
    fn is_main(&self) -> bool {
        self.collective.as_ref().is_none_or(|c| c.rank() == 0)
    }

    /// Test hook: the first micro-batch of step `step` (1-based) fails as
    /// if memory ran out, once.
    #[doc(hidden)]
    pub fn inject_out_of_memory(mut self, step: usize) -> Self {
        self.inject_oom = Some(step);
        self
    }

    /// The memory a step needs with these settings (see [`MemoryPlan`]).
    pub fn memory_plan(&self, train: &[TokenizedExample]) -> MemoryPlan {
        let numel =
            |ts: Vec<(String, Tensor)>| -> u64 { ts.iter().map(|(_, t)| t.numel() as u64).sum() };
        let mut parameters = numel(self.model.var_store().variables().into_iter().collect());
        if let Some((adapters, _)) = self.model.adapter_store() {
            parameters += numel(adapters.variables().into_iter().collect());
        }
        let micro = self.micro_batch_size as u64;
        let (rows, row_tokens) = if self.config.packing {
            // A step of the set's longest examples, packed into rows of
            // max_length, at most `micro` rows of which make one row of a
            // micro-batch: the most tokens one can hold.
            let max_length = self.config.max_length as u64;
            let mut lengths: Vec<u64> =
                train.iter().map(|e| (e.input_ids.len() as u64).min(max_length)).collect();
            lengths.sort_unstable_by(|a, b| b.cmp(a));
            let tokens: u64 = lengths.iter().take(self.config.batch_size).sum();
            (1, tokens.min(micro * max_length))
        } else {
            (micro, train.iter().map(|e| e.input_ids.len()).max().unwrap_or(0) as u64)
        };
        let (mut adapter_inputs, mut adapter_ranks) = (0, 0);
        if let Some((adapters, _)) = self.model.adapter_store() {
            for (name, t) in adapters.variables() {
                if let (true, &[r, input]) = (name.ends_with("lora_A.weight"), &t.size()[..]) {
                    adapter_inputs += input.max(0) as u64;
                    adapter_ranks += r.max(0) as u64;
                }
            }
        }
        let adapter_dropout = matches!(&self.config.method, Method::Lora(l) if l.dropout > 0.0);
        let dtype_bytes = self
            .model
            .var_store()
            .variables()
            .values()
            .next()
            .map_or(4, |t| t.kind().elt_size_in_bytes() as u64);
        let trainable = self.trainable();
        let trained_bytes =
            trainable.first().map_or(dtype_bytes, |(_, t)| t.kind().elt_size_in_bytes() as u64);
        memory::plan(&memory::PlanInputs {
            config: self.model.config(),
            parameters,
            dtype_bytes,
            trained: numel(trainable),
            trained_bytes,
            resident: if self.model.device() == tch::Device::Cpu {
                ResidentMemory::of_this_process().map(|m| m.now)
            } else {
                None
            },
            rows,
            row_tokens,
            loss_chunk: self.config.loss_chunk_tokens.map(|n| n as u64),
            // Full fine-tuning trains the projections: nothing of theirs is
            // kept, as under full checkpointing.
            checkpointing: match (self.config.gradient_checkpointing, &self.config.method) {
                (Checkpointing::Selective, Method::Full) => Checkpointing::Full,
                (c, _) => c,
            },
            packed: self.config.packing,
            adapter_inputs,
            adapter_ranks,
            adapter_dropout,
        })
    }

    /// Writes `metrics.jsonl`, the loss graph (`loss.svg`, `loss.png`) and
    /// the checkpoints (`checkpoints/step-NNNNNNNN`) under `dir`.
    pub fn output_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.output_dir = Some(dir.into());
        self
    }

    /// Continues from the newest complete checkpoint in the output folder,
    /// if there is one.
    pub fn resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }

    /// Stops before the next step once `flag` is raised.
    pub fn cancel_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = flag;
        self
    }

    /// Calls `f` with every event.
    pub fn on_event(mut self, f: impl FnMut(&TrainEvent) + 'a) -> Self {
        self.on_event = Some(Box::new(f));
        self
    }

    /// The named tensors being trained.
    fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut params: Vec<(String, Tensor)> = match &self.config.method {
            Method::Lora(_) => self
                .model
                .adapter_store()
                .map(|(vs, _)| vs.variables().into_iter().collect())
                .unwrap_or_default(),
            Method::Full => self.model.var_store().variables().into_iter().collect(),
        };
        params.sort_by(|a, b| a.0.cmp(&b.0));
        params
    }

    fn emit(&mut self, event: TrainEvent) {
        if let Some(f) = &mut self.on_event {
            f(&event);
        }
    }

    /// Steps per epoch and in all.
    fn plan(&self, examples: usize) -> (usize, usize) {
        let per_epoch = examples.div_ceil(self.config.batch_size);
        let mut total = per_epoch * self.config.epochs;
        if let Some(max) = self.config.max_steps {
            total = total.min(max);
        }
        (per_epoch, total)
    }

    /// Trains on `train`, evaluating on `validation` (may be empty).
    pub fn fit(
        mut self,
        train: &[TokenizedExample],
        validation: &[TokenizedExample],
    ) -> Result<TrainOutcome> {
        if train.is_empty() {
            return Err(LocalError::InvalidArgument("no training examples".into()));
        }
        let longest = train.iter().chain(validation).map(|e| e.input_ids.len()).max();
        if self.config.packing && longest.is_some_and(|l| l > self.config.max_length) {
            return Err(LocalError::InvalidArgument(format!(
                "an example of {} tokens is longer than max_length {}",
                longest.unwrap_or(0),
                self.config.max_length
            )));
        }
        let (per_epoch, total) = self.plan(train.len());
        let fingerprint = fingerprint(&self.config, train);
        let params = self.trainable();
        if let Some(c) = self.collective.as_deref_mut() {
            // Every rank starts from rank 0's weights.
            tch::no_grad(|| params.iter().try_for_each(|(_, p)| c.broadcast(&mut p.detach(), 0)))?;
        }
        let main = self.is_main();
        let mut optimizer = optim::AdamW::new(self.trainable(), self.config.optimizer)?;
        let mut state = checkpoint::TrainerState::new(fingerprint.clone());
        let mut curve = LossCurve::new();
        let mut metrics = None;
        if let Some(dir) = &self.output_dir {
            if main {
                std::fs::create_dir_all(dir).map_err(|e| LocalError::io(dir, e))?;
            }
            let mut resumed = None;
            if self.resume {
                if main {
                    checkpoint::remove_partials(dir)?;
                }
                if let Some(path) = checkpoint::latest(dir)? {
                    state = checkpoint::load(&path, &mut optimizer)?;
                    if state.fingerprint != fingerprint {
                        return Err(LocalError::Resume {
                            path,
                            message: "it was written by a run with other settings or data".into(),
                        });
                    }
                    resumed = Some(state.step);
                }
            }
            let path = dir.join("metrics.jsonl");
            if main {
                let kept = rewrite_metrics(&path, resumed.unwrap_or(0))?;
                for line in &kept {
                    curve.upsert(line.point());
                }
                metrics = Some(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(|e| LocalError::io(&path, e))?,
                );
            }
        }
        let resumed_from = (state.step > 0).then_some(state.step);
        let memory = self.memory_plan(train);
        tracing::info!("memory plan: {memory}");
        self.emit(TrainEvent::Planned(memory));
        self.emit(TrainEvent::Started {
            total_steps: total,
            steps_per_epoch: per_epoch,
            resumed_from,
        });
        tracing::info!(total, per_epoch, resumed_from, "training");

        let pad = 0;
        let device = self.model.device();
        let host_cache = (device == tch::Device::Cpu && self.config.cache_host_memory)
            .then(HostCache::install)
            .flatten();
        let clock = Instant::now();
        let elapsed_before = state.elapsed_seconds;
        let mut order: Option<(usize, Vec<usize>)> = None;
        let mut stop = StopReason::Completed;
        self.model.set_training(true);
        while state.step < total {
            let mut cancelled = self.cancel.load(Ordering::Relaxed);
            if let Some(c) = self.collective.as_deref_mut() {
                // Every rank stops together.
                cancelled = sum_across(c, [f64::from(u8::from(cancelled))])?[0] > 0.0;
            }
            if cancelled {
                stop = StopReason::Cancelled;
                break;
            }
            let s = state.step;
            let epoch = s / per_epoch;
            if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                order = Some((epoch, epoch_order(self.config.seed, epoch, train.len())));
            }
            let indices = order.as_ref().map(|(_, o)| o.as_slice()).unwrap_or_default();
            let within = s % per_epoch;
            let end = ((within + 1) * self.config.batch_size).min(train.len());
            let mut examples: Vec<&TokenizedExample> =
                indices[within * self.config.batch_size..end].iter().map(|&i| &train[i]).collect();
            if let Some(c) = &self.collective {
                examples = rank_share(&examples, &**c).to_vec();
            }

            let started = Instant::now();
            let (trained, real, loss_sum) = loop {
                tch::manual_seed(step_seed(self.config.seed, s));
                let attempt = self.accumulate(&examples, s, pad, device);
                let mine = matches!(&attempt, Err(e) if e.is_out_of_memory());
                // Under data parallelism every rank learns whether any ran
                // out of memory, so that all run the step again together
                // (at the same micro-batch size) or none does.
                let anyone = match self.collective.as_deref_mut() {
                    Some(c) => sum_across(c, [f64::from(u8::from(mine))])?[0] > 0.0,
                    None => mine,
                };
                match attempt {
                    Ok(done) if !anyone => break done,
                    Err(e) if !e.is_out_of_memory() => return Err(e),
                    Err(e) if self.micro_batch_size == 1 => return Err(e),
                    Ok(_) if self.micro_batch_size == 1 => {
                        return Err(LocalError::Distributed {
                            lost_rank: None,
                            message: format!(
                                "another rank ran out of memory at step {} with a micro-batch of 1",
                                s + 1
                            ),
                        });
                    }
                    attempt => {
                        // Nothing of the failed attempt may count.
                        optimizer.zero_grad();
                        self.micro_batch_size /= 2;
                        let why = match attempt {
                            Err(e) => e.to_string(),
                            Ok(_) => "another rank ran out of memory".to_owned(),
                        };
                        tracing::warn!(
                            step = s + 1,
                            micro_batch_size = self.micro_batch_size,
                            "out of memory: running the step again with half the micro-batch ({why})"
                        );
                        self.emit(TrainEvent::MicroBatchHalved {
                            step: s + 1,
                            micro_batch_size: self.micro_batch_size,
                        });
                    }
                }
            };
            let mut loss_sum = loss_sum;
            if let Some(c) = self.collective.as_deref_mut() {
                all_reduce_gradients(c, &params)?;
                [loss_sum] = sum_across(c, [loss_sum])?;
            }
            let grad_norm = optimizer.grad_norm()?;
            if let Some(max) = self.config.max_grad_norm {
                optimizer.clip(grad_norm, max)?;
            }
            let lr = self.config.learning_rate
                * self.config.schedule.factor(s, self.config.warmup_steps, total);
            optimizer.step(lr)?;
            optimizer.zero_grad();
            if let Some(cache) = &host_cache {
                cache.tick();
            }
            state.step += 1;
            let loss = loss_sum / trained as f64;
            if !loss.is_finite() {
                return Err(LocalError::InvalidArgument(format!(
                    "the training loss became {loss} at step {}; lower the learning rate",
                    state.step
                )));
            }
            let record = StepRecord {
                step: state.step,
                epoch: state.step as f64 / per_epoch as f64,
                loss,
                learning_rate: lr,
                grad_norm,
                trained_tokens: trained as u64,
                tokens: real as u64,
                tokens_per_second: real as f64 / started.elapsed().as_secs_f64().max(1e-9),
                elapsed_seconds: elapsed_before + clock.elapsed().as_secs_f64(),
            };
            self.record(&mut metrics, &mut curve, MetricsLine::Train(record))?;
            self.emit(TrainEvent::Step(record));

            let epoch_end = state.step.is_multiple_of(per_epoch) || state.step == total;
            let due = self.config.eval_every.is_some_and(|n| state.step.is_multiple_of(n));
            if !validation.is_empty() && (epoch_end || due) {
                let (validation_loss, accuracy, tokens) = self.evaluate(validation, pad)?;
                self.model.set_training(true);
                let eval = EvalRecord {
                    step: state.step,
                    epoch: record.epoch,
                    validation_loss,
                    validation_token_accuracy: accuracy,
                    validation_tokens: tokens,
                };
                self.record(&mut metrics, &mut curve, MetricsLine::Eval(eval))?;
                self.emit(TrainEvent::Eval(eval));
                if state.best_loss.is_none_or(|b| validation_loss < b) {
                    state.best_loss = Some(validation_loss);
                    state.best_step = Some(state.step);
                    state.bad_evals = 0;
                } else {
                    state.bad_evals += 1;
                }
                if self.config.early_stopping_patience.is_some_and(|p| state.bad_evals >= p) {
                    stop = StopReason::EarlyStopped;
                }
            }
            if let (Some(dir), Some(every)) = (&self.output_dir, self.config.checkpoint_every)
                && state.step.is_multiple_of(every)
                && main
            {
                state.elapsed_seconds = elapsed_before + clock.elapsed().as_secs_f64();
                let path = checkpoint::save(dir, &optimizer, &state, self.config.keep_checkpoints)?;
                self.emit(TrainEvent::Checkpoint { step: state.step, path });
            }
            if stop == StopReason::EarlyStopped {
                break;
            }
        }
        self.model.set_training(false);
        if let Some(dir) = &self.output_dir
            && !curve.is_empty()
            && main
        {
            save_loss_graph(&curve, dir)?;
        }
        Ok(TrainOutcome {
            stop,
            steps: state.step,
            total_steps: total,
            best: state.best_step.zip(state.best_loss),
            curve,
        })
    }

    fn record(
        &self,
        file: &mut Option<File>,
        curve: &mut LossCurve,
        line: MetricsLine,
    ) -> Result<()> {
        curve.upsert(line.point());
        if let (Some(file), Some(dir)) = (file, &self.output_dir) {
            let path = dir.join("metrics.jsonl");
            let text = serde_json::to_string(&line)
                .map_err(|e| LocalError::InvalidArgument(format!("metrics: {e}")))?;
            writeln!(file, "{text}").map_err(|e| LocalError::io(&path, e))?;
            file.flush().map_err(|e| LocalError::io(&path, e))?;
        }
        Ok(())
    }

    /// The forward and backward passes of step `s` over `examples`, in
    /// micro-batches; returns the trained and real tokens and the summed
    /// loss. The loss is normalised by the step's trained tokens, so the
    /// gradient does not depend on the micro-batch size.
    fn accumulate(
        &mut self,
        examples: &[&TokenizedExample],
        s: usize,
        pad: i64,
        device: tch::Device,
    ) -> Result<(i64, i64, f64)> {
        let batches = self.micro_batches(examples, pad, device)?;
        let mut trained: i64 = batches.iter().map(|b| b.trained_tokens).sum();
        let mut real: i64 = batches.iter().map(|b| b.real_tokens).sum();
        if let Some(c) = self.collective.as_deref_mut() {
            // The whole step's counts: every rank divides by the same.
            let [all_trained, all_real] = sum_across(c, [trained as f64, real as f64])?;
            (trained, real) = (all_trained as i64, all_real as i64);
            if batches.is_empty() {
                // No share this step: zero gradients, defined, to sum.
                let params = self.trainable();
                let zero = params
                    .iter()
                    .map(|(_, p)| p.f_sum(Kind::Float))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Tensor::f_stack(&zero, 0)?.f_sum(Kind::Float)?.f_mul_scalar(0.0)?.f_backward()?;
            }
        }
        let mut loss_sum = 0.0;
        for (i, batch) in batches.iter().enumerate() {
            if i == 0 && self.inject_oom == Some(s + 1) {
                self.inject_oom = None;
                return Err(LocalError::Torch(tch::TchError::Torch(
                    "DefaultCPUAllocator: not enough memory: you tried to allocate (injected \
                     out of memory)"
                        .into(),
                )));
            }
            let seed = step_seed(self.config.seed, s).wrapping_add(1_000_003 * i as i64);
            loss_sum += self.micro_step(batch, trained as f64, seed)?;
        }
        Ok((trained, real, loss_sum))
    }

    fn micro_batches(
        &self,
        examples: &[&TokenizedExample],
        pad: i64,
        device: tch::Device,
    ) -> Result<Vec<Batch>> {
        let m = self.micro_batch_size;
        if self.config.packing {
            // A micro-batch's rows side by side in one row: attention runs
            // example by example, so nothing pads the shorter rows.
            let rows = sft::pack_rows(examples, self.config.max_length)?;
            rows.chunks(m).map(|rows| sft::packed_batch(&[rows.concat()], pad, device)).collect()
        } else {
            examples.chunks(m).map(|chunk| sft::padded_batch(chunk, pad, device)).collect()
        }
    }

    /// Hidden states and targets of the positions that take a loss only:
    /// the LM head (and the loss over the vocabulary) skips prompt and
    /// padding.
    fn trained_hidden(&self, batch: &Batch) -> Result<(Tensor, Tensor)> {
        let hidden = self.model.forward_hidden(&forward_input(batch), None)?;
        select_trained(&hidden, batch)
    }

    /// One micro-batch's forward and backward; returns its summed loss.
    fn micro_step(&self, batch: &Batch, trained: f64, seed: i64) -> Result<f64> {
        let checkpointing = self.config.gradient_checkpointing;
        if checkpointing != Checkpointing::Off {
            let input = forward_input(batch);
            return self.model.checkpointed_backward(&input, seed, checkpointing, |hidden| {
                let (hidden, targets) = select_trained(hidden, batch)?;
                self.backward_loss(&hidden, &targets, trained)
            });
        }
        let (hidden, targets) = self.trained_hidden(batch)?;
        self.backward_loss(&hidden, &targets, trained)
    }

    /// The `(start, length)` chunks the LM head runs over for `n` trained
    /// positions.
    fn loss_chunks(&self, n: i64) -> Vec<(i64, i64)> {
        let size = self.config.loss_chunk_tokens.map_or(n, |c| c as i64).max(1);
        (0..n).step_by(size as usize).map(|start| (start, size.min(n - start))).collect()
    }

    /// The summed loss of the trained positions; its gradient, divided by
    /// `scale`, is accumulated into the trainable weights. With more than
    /// one chunk, the LM head and loss run per chunk on a detached copy of
    /// the hidden states (each chunk's logits freed after its backward),
    /// and the gathered gradient of the hidden states then flows back
    /// through the model in one pass.
    fn backward_loss(&self, hidden: &Tensor, targets: &Tensor, scale: f64) -> Result<f64> {
        let chunks = self.loss_chunks(hidden.size()[0]);
        if chunks.len() <= 1 {
            let loss = sft::summed_loss(&self.model.lm_head(hidden)?, targets)?;
            let value = loss.f_double_value(&[])?;
            loss.f_div_scalar(scale)?.f_backward()?;
            return Ok(value);
        }
        let leaf = hidden.f_detach()?.set_requires_grad(true);
        let mut total = 0.0;
        for (start, len) in chunks {
            let logits = self.model.lm_head(&leaf.f_narrow(0, start, len)?)?;
            let loss = sft::summed_loss(&logits, &targets.f_narrow(0, start, len)?)?;
            total += loss.f_double_value(&[])?;
            loss.f_div_scalar(scale)?.f_backward()?;
        }
        if hidden.requires_grad() {
            // d/dθ Σ hidden ⊙ g is the vector-Jacobian product with g.
            hidden.f_mul(&leaf.grad())?.f_sum(Kind::Float)?.f_backward()?;
        }
        Ok(total)
    }

    /// Mean loss, token accuracy and token count over the completion tokens
    /// of `examples`, without dropout or gradients; in a data-parallel run
    /// each rank evaluates its share and the sums are added across ranks.
    fn evaluate(&mut self, examples: &[TokenizedExample], pad: i64) -> Result<(f64, f64, u64)> {
        self.model.set_training(false);
        let mut refs: Vec<&TokenizedExample> = examples.iter().collect();
        if let Some(c) = &self.collective {
            refs = rank_share(&refs, &**c).to_vec();
        }
        let batches = self.micro_batches(&refs, pad, self.model.device())?;
        let (mut loss, mut correct, mut tokens) = (0.0, 0i64, 0i64);
        tch::no_grad(|| -> Result<()> {
            for batch in &batches {
                let (hidden, targets) = self.trained_hidden(batch)?;
                for (start, len) in self.loss_chunks(hidden.size()[0]) {
                    let logits = self.model.lm_head(&hidden.f_narrow(0, start, len)?)?;
                    let targets = targets.f_narrow(0, start, len)?;
                    loss += sft::summed_loss(&logits, &targets)?.f_double_value(&[])?;
                    correct += logits
                        .f_argmax(-1, false)?
                        .f_eq_tensor(&targets)?
                        .f_sum(Kind::Int64)?
                        .f_int64_value(&[])?;
                }
                tokens += batch.trained_tokens;
            }
            Ok(())
        })?;
        if let Some(c) = self.collective.as_deref_mut() {
            let [all_loss, all_correct, all_tokens] =
                sum_across(c, [loss, correct as f64, tokens as f64])?;
            (loss, correct, tokens) = (all_loss, all_correct as i64, all_tokens as i64);
        }
        let n = tokens.max(1) as f64;
        Ok((loss / n, correct as f64 / n, tokens as u64))
    }
}

/// `values` summed over every rank, in one collective.
fn sum_across<const N: usize>(c: &mut dyn Collective, values: [f64; N]) -> Result<[f64; N]> {
    let mut sums = Tensor::from_slice(&values);
    c.all_reduce_sum(&mut sums)?;
    let mut out = [0.0; N];
    for (i, v) in out.iter_mut().enumerate() {
        *v = sums.f_double_value(&[i as i64])?;
    }
    Ok(out)
}

/// Sums every trained tensor's gradient across the ranks, in buckets of
/// [`GRADIENT_BUCKET`] elements flattened into one buffer each.
fn all_reduce_gradients(c: &mut dyn Collective, params: &[(String, Tensor)]) -> Result<()> {
    tch::no_grad(|| {
        let mut start = 0;
        while start < params.len() {
            let (mut end, mut numel) = (start, 0);
            while end < params.len()
                && (end == start || numel + params[end].1.numel() as i64 <= GRADIENT_BUCKET)
            {
                numel += params[end].1.numel() as i64;
                end += 1;
            }
            let grads: Vec<Tensor> = params[start..end].iter().map(|(_, p)| p.grad()).collect();
            if let Some((name, _)) =
                params[start..end].iter().zip(&grads).find(|(_, g)| !g.defined()).map(|(p, _)| p)
            {
                return Err(LocalError::InvalidArgument(format!(
                    "`{name}` has no gradient to sum"
                )));
            }
            let flat = grads
                .iter()
                .map(|g| g.f_reshape([-1]))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let mut flat = Tensor::f_cat(&flat, 0)?;
            c.all_reduce_sum(&mut flat)?;
            let mut offset = 0;
            for grad in &grads {
                let n = grad.numel() as i64;
                grad.shallow_clone().f_copy_(&flat.f_narrow(0, offset, n)?.f_view_as(grad)?)?;
                offset += n;
            }
            start = end;
        }
        Ok(())
    })
}

/// The model input of a batch. Padding is on the right: under the causal
/// mask no real token attends to it, and its own positions take no loss, so
/// the plain causal path (no key-padding bias) computes the same loss,
/// faster.
fn forward_input(batch: &Batch) -> ForwardInput<'_> {
    ForwardInput {
        input_ids: &batch.input_ids,
        position_ids: Some(&batch.position_ids),
        attention_mask: None,
        sequence_ids: batch.sequence_ids.as_ref(),
    }
}

/// The rows of `hidden` (`[batch, seq, width]`) at positions that take a
/// loss, and their targets.
fn select_trained(hidden: &Tensor, batch: &Batch) -> Result<(Tensor, Tensor)> {
    let width = hidden.size().last().copied().unwrap_or(0);
    let targets = batch.targets.f_reshape([-1])?;
    let keep = targets.f_ne(IGNORE)?.f_nonzero()?.f_squeeze_dim(1)?;
    let hidden = hidden.f_reshape([-1, width])?.f_index_select(0, &keep)?;
    Ok((hidden, targets.f_index_select(0, &keep)?))
}

/// The example order of `epoch`: a Fisher–Yates shuffle seeded by the seed
/// and the epoch alone.
fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// libtorch's seed for the adapters' init.
fn init_seed(seed: u64) -> i64 {
    (SplitMix64::new(seed).next_u64() >> 1) as i64
}

/// libtorch's seed for step `step` (dropout masks).
fn step_seed(seed: u64, step: usize) -> i64 {
    let mut rng =
        SplitMix64::new(seed.wrapping_add(step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    (rng.next_u64() >> 1) as i64
}

/// What a checkpoint must have been written with: the settings and the
/// training tokens.
fn fingerprint(config: &TrainConfig, train: &[TokenizedExample]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(config.fingerprint().as_bytes());
    for e in train {
        h.update((e.input_ids.len() as u64).to_le_bytes());
        for (&i, &t) in e.input_ids.iter().zip(&e.targets) {
            h.update(i.to_le_bytes());
            h.update(t.to_le_bytes());
        }
    }
    format!("{:x}", h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_orders_are_permutations_that_differ_by_epoch() {
        let a = epoch_order(7, 0, 50);
        let b = epoch_order(7, 1, 50);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(a, b);
        assert_eq!(a, epoch_order(7, 0, 50));
        assert_ne!(a, epoch_order(8, 0, 50));
    }

    /// A rank of a group that is never asked to communicate.
    struct Rank(usize, usize);

    impl Collective for Rank {
        fn rank(&self) -> usize {
            self.0
        }
        fn world_size(&self) -> usize {
            self.1
        }
        fn all_reduce_sum(&mut self, _: &mut Tensor) -> Result<()> {
            unreachable!("rank_share does not communicate")
        }
        fn broadcast(&mut self, _: &mut Tensor, _: usize) -> Result<()> {
            unreachable!("rank_share does not communicate")
        }
    }

    #[test]
    fn rank_shares_partition_the_items_in_rank_order() {
        for world in 1..=4 {
            for len in 0..=9 {
                let items: Vec<usize> = (0..len).collect();
                let shares: Vec<&[usize]> =
                    (0..world).map(|rank| rank_share(&items, &Rank(rank, world))).collect();
                assert_eq!(shares.concat(), items, "{len} items over {world} ranks");
                assert_eq!(shares[0].len(), len.div_ceil(world));
            }
        }
    }
}
