//! The trainer: accumulation normalised by trained tokens, packing giving
//! the padded result, exact resume (including after a kill during a
//! checkpoint write), evaluation and early stopping, cancel, and learning.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use finetune_local::lora::LoraConfig;
use finetune_local::sft::{
    Example, PromptFormat, TokenizeOptions, TokenizedExample, Truncation, tokenize_all,
};
use finetune_local::tch::Tensor;
use finetune_local::train::{
    Checkpointing, Method, MetricsLine, Schedule, StopReason, TrainConfig, TrainEvent, Trainer,
    read_metrics,
};
use finetune_local::{CausalLm, LoadOptions, Tokenizer};

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name)
}

/// libtorch's random generator is one per process; tests that compare runs
/// take turns with it.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn model() -> CausalLm {
    CausalLm::load(&dir("llama"), &LoadOptions::default()).unwrap()
}

/// Examples whose completions differ in length, so a mean per micro-batch
/// differs from the mean over the step.
fn data(n: usize, completion: impl Fn(usize) -> String) -> Vec<TokenizedExample> {
    let tok = Tokenizer::from_dir(&dir("llama")).unwrap();
    let examples: Vec<Example> = (0..n)
        .map(|i| Example { system: None, prompt: format!("Item {i}:"), completion: completion(i) })
        .collect();
    let options = TokenizeOptions {
        format: PromptFormat::Base,
        max_length: 64,
        truncation: Truncation::KeepStart,
    };
    tokenize_all(&tok, &examples, &options).unwrap().0
}

fn words(i: usize) -> String {
    " the cat sat on a mat".split(' ').take(2 + i % 5).collect::<Vec<_>>().join(" ")
}

fn lora(dropout: f64) -> Method {
    Method::Lora(LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout,
        target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        use_rslora: false,
    })
}

fn config() -> TrainConfig {
    TrainConfig {
        method: lora(0.0),
        epochs: 1,
        batch_size: 4,
        micro_batch_size: 4,
        learning_rate: 1e-2,
        schedule: Schedule::Constant,
        max_length: 64,
        ..TrainConfig::default()
    }
}

fn adapters(model: &CausalLm) -> Vec<(String, Tensor)> {
    model.peft_state()
}

fn max_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

fn losses(events: &[TrainEvent]) -> Vec<(usize, f64)> {
    events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step(r) => Some((r.step, r.loss)),
            _ => None,
        })
        .collect()
}

/// Each step's gradient norm (before clipping).
fn grad_norms(events: &[TrainEvent]) -> Vec<f64> {
    events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step(r) => Some(r.grad_norm),
            _ => None,
        })
        .collect()
}

fn train(config: TrainConfig, data: &[TokenizedExample]) -> (CausalLm, Vec<TrainEvent>) {
    let mut model = model();
    let mut events = Vec::new();
    Trainer::new(&mut model, config)
        .unwrap()
        .on_event(|e| events.push(e.clone()))
        .fit(data, &[])
        .unwrap();
    (model, events)
}

#[test]
fn accumulation_and_packing_give_the_full_batch_result() {
    let _rng = rng();
    let data = data(8, words);
    let (whole, whole_events) = train(config(), &data);
    // One example per forward pass: four passes per step.
    let (micro, micro_events) = train(TrainConfig { micro_batch_size: 1, ..config() }, &data);
    // Packed rows, one per forward pass.
    let (packed, _) = train(TrainConfig { packing: true, micro_batch_size: 1, ..config() }, &data);
    let reference = adapters(&whole);
    assert!(max_diff(&reference, &adapters(&micro)) < 1e-5);
    assert!(max_diff(&reference, &adapters(&packed)) < 1e-5);
    for ((_, a), (_, b)) in losses(&whole_events).iter().zip(losses(&micro_events)) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

/// Trains with `plain` and with `other` applied to the same settings,
/// LoRA and full fine-tuning, and checks the runs compute the same thing:
/// the gradient norm before any update and the step losses to 1e-6 (relative
/// for the norm), the weights after two steps within a tenth of the
/// learning rate. AdamW moves every weight by about the learning rate
/// whatever its gradient's size, so rounding differences in near-zero
/// gradients show at that scale (this file's runs: 3% of it at most); a
/// wrong gradient moves weights by the whole of it. Full fine-tuning, with
/// many such weights, runs at a small learning rate.
fn assert_same_training(
    what: &str,
    plain: impl Fn(TrainConfig) -> TrainConfig,
    other: impl Fn(TrainConfig) -> TrainConfig,
) {
    let data = data(8, words);
    let weights = |m: &CausalLm| -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = m.var_store().variables().into_iter().collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    for (name, method, lr) in [("lora", lora(0.0), 1e-2), ("full", Method::Full, 1e-5)] {
        let base = TrainConfig { method, max_steps: Some(2), learning_rate: lr, ..config() };
        let (a, a_events) = train(plain(base.clone()), &data);
        let (b, b_events) = train(other(base), &data);
        let (na, nb) = (grad_norms(&a_events), grad_norms(&b_events));
        assert!((na[0] - nb[0]).abs() < 1e-6 * na[0].max(1.0), "{what} {name}: {na:?} vs {nb:?}");
        let (la, lb) = (losses(&a_events), losses(&b_events));
        assert_eq!(la.len(), 2);
        for ((_, x), (_, y)) in la.iter().zip(&lb) {
            assert!((x - y).abs() < 1e-6, "{what} {name}: loss {x} vs {y}");
        }
        let diff = max_diff(&weights(&a), &weights(&b));
        assert!(diff < lr * 0.1, "{what} {name}: weights differ by {diff}");
        // The run moved the weights: the comparison is not of two no-ops.
        let moved = if name == "lora" {
            // B starts at zero.
            adapters(&a)
                .iter()
                .filter(|(n, _)| n.contains("lora_B"))
                .fold(0.0, |m, (_, t)| f64::max(m, t.abs().max().double_value(&[])))
        } else {
            max_diff(&weights(&a), &weights(&model()))
        };
        assert!(moved > lr / 2.0, "{what} {name}: {moved}");
    }
}

#[test]
fn a_chunked_lm_head_and_loss_give_the_unchunked_gradients() {
    let _rng = rng();
    // Chunks of 3 positions: every micro-batch spans several.
    assert_same_training(
        "chunked loss",
        |c| TrainConfig { loss_chunk_tokens: None, ..c },
        |c| TrainConfig { loss_chunk_tokens: Some(3), ..c },
    );
}

#[test]
fn activation_checkpointing_gives_the_same_gradients() {
    let _rng = rng();
    for policy in [Checkpointing::Full, Checkpointing::Selective] {
        let what = format!("{policy:?} checkpointing");
        assert_same_training(&what, |c| c, |c| TrainConfig { gradient_checkpointing: policy, ..c });
        // With packed rows, micro-batches and a chunked loss too.
        let packed = |c: TrainConfig| TrainConfig {
            packing: true,
            micro_batch_size: 1,
            loss_chunk_tokens: Some(5),
            ..c
        };
        assert_same_training(&format!("packed {what}"), packed, |c| TrainConfig {
            gradient_checkpointing: policy,
            ..packed(c)
        });
    }
}

/// Dropout makes the two policies' recomputations draw their masks again:
/// the selective one draws each half's masks apart from the other's and
/// in a different order of operations, so a mask drawn out of turn gives
/// other gradients than the full recomputation's.
#[test]
fn selective_checkpointing_draws_the_dropout_of_full_checkpointing() {
    let _rng = rng();
    let data = data(8, words);
    let run = |policy| {
        let method = Method::Lora(LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.3,
            target_modules: vec!["all-linear".into()],
            use_rslora: false,
        });
        let config =
            TrainConfig { method, max_steps: Some(2), gradient_checkpointing: policy, ..config() };
        train(config, &data)
    };
    let (full, full_events) = run(Checkpointing::Full);
    let (selective, selective_events) = run(Checkpointing::Selective);
    let (a, b) = (losses(&full_events), losses(&selective_events));
    assert_eq!(a.len(), 2);
    for ((_, la), (_, lb)) in a.iter().zip(&b) {
        assert!((la - lb).abs() < 1e-6, "loss {la} vs {lb}");
    }
    let (na, nb) = (grad_norms(&full_events)[0], grad_norms(&selective_events)[0]);
    assert!((na - nb).abs() < 1e-6 * na.max(1.0), "gradient norm {na} vs {nb}");
    assert!(max_diff(&adapters(&full), &adapters(&selective)) < 1e-3);
    // The masks matter: a plain run, drawing them from one stream, gets
    // another gradient.
    let (_, plain_events) = run(Checkpointing::Off);
    let plain = grad_norms(&plain_events)[0];
    assert!((plain - na).abs() > 1e-4 * na, "{plain} vs {na}");
}

#[test]
fn activation_checkpointing_says_where_it_is_not_implemented() {
    let mut gpt2 = CausalLm::load(&dir("gpt2"), &LoadOptions::default()).unwrap();
    let config = TrainConfig {
        method: Method::Full,
        gradient_checkpointing: Checkpointing::Full,
        max_steps: Some(1),
        ..config()
    };
    let tok = Tokenizer::from_dir(&dir("gpt2")).unwrap();
    let examples = [Example { system: None, prompt: "a".into(), completion: " b c".into() }];
    let options = TokenizeOptions {
        format: PromptFormat::Base,
        max_length: 16,
        truncation: Truncation::KeepStart,
    };
    let data = tokenize_all(&tok, &examples, &options).unwrap().0;
    let err = Trainer::new(&mut gpt2, config).unwrap().fit(&data, &[]).unwrap_err();
    assert!(err.to_string().contains("not GPT-2"), "{err}");
}

#[test]
fn the_gradient_is_the_mean_over_the_steps_tokens() {
    let _rng = rng();
    // A single step at lr → 0 with plain SGD would be ideal; instead compare
    // the reported step loss with the token-weighted mean of the per-example
    // losses computed by hand.
    let data = data(4, words);
    let (_, events) =
        train(TrainConfig { micro_batch_size: 1, max_steps: Some(1), ..config() }, &data);
    let step_loss = losses(&events)[0].1;
    let model = model();
    let (mut sum, mut tokens) = (0.0, 0usize);
    let mut per_example_means = Vec::new();
    for e in &data {
        let b =
            finetune_local::sft::padded_batch(&[e], 0, finetune_local::tch::Device::Cpu).unwrap();
        let logits = model.forward(&finetune_local::ForwardInput::new(&b.input_ids), None).unwrap();
        let l = finetune_local::sft::summed_loss(&logits, &b.targets).unwrap().double_value(&[]);
        sum += l;
        tokens += e.trained_tokens();
        per_example_means.push(l / e.trained_tokens() as f64);
    }
    let token_mean = sum / tokens as f64;
    let example_mean = per_example_means.iter().sum::<f64>() / per_example_means.len() as f64;
    assert!((step_loss - token_mean).abs() < 1e-5, "{step_loss} vs {token_mean}");
    assert!((example_mean - token_mean).abs() > 1e-4, "the test data cannot tell them apart");
}

#[test]
fn resume_continues_exactly_even_after_a_kill_during_a_checkpoint_write() {
    let _rng = rng();
    let data = data(12, words);
    let out = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        method: lora(0.1), // dropout: the RNG must be restored too
        epochs: 3,
        batch_size: 3,
        micro_batch_size: 2,
        schedule: Schedule::Cosine,
        warmup_steps: 2,
        optimizer: finetune_local::train::AdamWConfig { weight_decay: 0.01, ..Default::default() },
        checkpoint_every: Some(2),
        keep_checkpoints: 2,
        ..config()
    };
    let (reference_model, reference) = train(config.clone(), &data);
    let reference = losses(&reference);
    assert_eq!(reference.len(), 12);

    // Run until step 5 is done (checkpoints at 2 and 4), then stop, as a
    // kill after step 5 would: step 5 is in the metrics but in no checkpoint.
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let mut m = model();
        let flag = Arc::clone(&cancel);
        let outcome = Trainer::new(&mut m, config.clone())
            .unwrap()
            .output_dir(out.path())
            .cancel_flag(Arc::clone(&cancel))
            .on_event(move |e| {
                if matches!(e, TrainEvent::Step(r) if r.step == 5) {
                    flag.store(true, Ordering::Relaxed);
                }
            })
            .fit(&data, &[])
            .unwrap();
        assert_eq!(outcome.stop, StopReason::Cancelled);
        assert_eq!(outcome.steps, 5);
    }
    // A kill while step 6's checkpoint was being written leaves a partial
    // folder with a torn file.
    let torn = out.path().join("checkpoints/step-00000006.partial");
    std::fs::create_dir_all(&torn).unwrap();
    std::fs::write(torn.join("trainable.safetensors"), b"\x10\x00\x00").unwrap();
    std::fs::write(torn.join("trainer_state.json"), b"{\"step\": 6").unwrap();

    let mut m = model();
    let mut events = Vec::new();
    let outcome = Trainer::new(&mut m, config.clone())
        .unwrap()
        .output_dir(out.path())
        .resume(true)
        .on_event(|e| events.push(e.clone()))
        .fit(&data, &[])
        .unwrap();
    assert_eq!(outcome.stop, StopReason::Completed);
    let started = events.iter().find(|e| matches!(e, TrainEvent::Started { .. }));
    assert!(
        matches!(started, Some(TrainEvent::Started { resumed_from: Some(4), .. })),
        "{started:?}"
    );
    assert!(!torn.exists(), "the partial checkpoint is removed");
    let resumed = losses(&events);
    assert_eq!(resumed.iter().map(|r| r.0).collect::<Vec<_>>(), (5..=12).collect::<Vec<_>>());
    for ((s, a), (_, b)) in resumed.iter().zip(&reference[4..]) {
        assert!((a - b).abs() < 1e-6, "step {s}: resumed {a} vs uninterrupted {b}");
    }
    assert!(max_diff(&adapters(&reference_model), &adapters(&m)) < 1e-6);

    // The metrics file holds each step once, in order, and the graph exists.
    let steps: Vec<usize> = read_metrics(&out.path().join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|l| match l {
            MetricsLine::Train(r) => Some(r.step),
            MetricsLine::Eval(_) => None,
        })
        .collect();
    assert_eq!(steps, (1..=12).collect::<Vec<_>>());
    assert!(out.path().join("loss.svg").is_file() && out.path().join("loss.png").is_file());
    // Only the newest two checkpoints are kept.
    let mut kept: Vec<String> = std::fs::read_dir(out.path().join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    kept.sort();
    assert_eq!(kept, ["step-00000010", "step-00000012"]);

    // Other settings cannot resume these checkpoints.
    let mut m = model();
    let err = Trainer::new(&mut m, TrainConfig { learning_rate: 5e-3, ..config })
        .unwrap()
        .output_dir(out.path())
        .resume(true)
        .fit(&data, &[])
        .unwrap_err();
    assert!(err.to_string().contains("other settings"), "{err}");
}

#[test]
fn evaluation_tracks_the_best_step_and_stops_early() {
    let _rng = rng();
    // Train towards one answer, validate against another: the validation
    // loss rises once the model commits, and patience 2 stops the run.
    let train_data = data(8, |_| " yes yes yes".into());
    let validation = data(4, |_| " no no no".into());
    let mut m = model();
    let mut evals = Vec::new();
    let outcome = Trainer::new(
        &mut m,
        TrainConfig {
            epochs: 20,
            eval_every: Some(1),
            early_stopping_patience: Some(2),
            learning_rate: 3e-2,
            ..config()
        },
    )
    .unwrap()
    .on_event(|e| {
        if let TrainEvent::Eval(r) = e {
            evals.push(*r);
        }
    })
    .fit(&train_data, &validation)
    .unwrap();
    assert_eq!(outcome.stop, StopReason::EarlyStopped);
    assert!(outcome.steps < outcome.total_steps);
    let (best_step, best_loss) = outcome.best.unwrap();
    let min = evals.iter().map(|r| r.validation_loss).fold(f64::INFINITY, f64::min);
    assert_eq!(best_loss, min);
    assert_eq!(evals.last().unwrap().step, best_step + 2);
    assert!(evals.iter().all(|r| (0.0..=1.0).contains(&r.validation_token_accuracy)));
    assert!(outcome.curve.has_validation());
}

#[test]
fn training_learns_and_full_fine_tuning_moves_the_base_weights() {
    let _rng = rng();
    let data = data(8, words);
    let before = model();
    let base =
        |m: &CausalLm| m.var_store().variables()["model.layers.0.self_attn.q_proj.weight"].copy();

    let (lora_model, lora_events) = train(TrainConfig { epochs: 15, ..config() }, &data);
    let l = losses(&lora_events);
    assert!(l.last().unwrap().1 < 0.5 * l[0].1, "LoRA did not learn: {:?}", l);
    // LoRA leaves the base weights as they were.
    assert_eq!((base(&lora_model) - base(&before)).abs().max().double_value(&[]), 0.0);

    let (full_model, full_events) = train(
        TrainConfig { method: Method::Full, learning_rate: 3e-3, epochs: 15, ..config() },
        &data,
    );
    let l = losses(&full_events);
    assert!(l.last().unwrap().1 < 0.5 * l[0].1, "full fine-tuning did not learn: {:?}", l);
    assert!((base(&full_model) - base(&before)).abs().max().double_value(&[]) > 0.0);
    assert!(full_model.peft_state().is_empty());
}

#[test]
fn cancel_stops_before_the_next_step() {
    let _rng = rng();
    let data = data(8, words);
    let mut m = model();
    let flag = Arc::new(AtomicBool::new(false));
    let raise = Arc::clone(&flag);
    let outcome = Trainer::new(&mut m, TrainConfig { epochs: 5, ..config() })
        .unwrap()
        .cancel_flag(flag)
        .on_event(move |e| {
            if matches!(e, TrainEvent::Step(r) if r.step == 3) {
                raise.store(true, Ordering::Relaxed);
            }
        })
        .fit(&data, &[])
        .unwrap();
    assert_eq!((outcome.stop, outcome.steps, outcome.total_steps), (StopReason::Cancelled, 3, 10));
}

#[test]
fn an_out_of_memory_step_halves_the_micro_batch_and_trains_the_same() {
    let _rng = rng();
    let data = data(12, words);
    // Three steps of four examples; the second runs out of memory at
    // micro-batch 4 and is run again at 2, as is the third.
    let mut model_oom = model();
    let mut events = Vec::new();
    Trainer::new(&mut model_oom, config())
        .unwrap()
        .inject_out_of_memory(2)
        .on_event(|e| events.push(e.clone()))
        .fit(&data, &[])
        .unwrap();
    let halved: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::MicroBatchHalved { step, micro_batch_size } => {
                Some((*step, *micro_batch_size))
            }
            _ => None,
        })
        .collect();
    assert_eq!(halved, [(2, 2)]);
    assert_eq!(losses(&events).len(), 3);
    // The same as a run started at micro-batch 2.
    let (small, small_events) = train(TrainConfig { micro_batch_size: 2, ..config() }, &data);
    let diff = max_diff(&adapters(&model_oom), &adapters(&small));
    assert!(diff < 1e-6, "adapters differ by {diff}");
    for ((_, a), (_, b)) in losses(&events).iter().zip(losses(&small_events)) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    // And the run moved: B starts at zero.
    let moved = adapters(&small)
        .iter()
        .filter(|(n, _)| n.contains("lora_B"))
        .fold(0.0, |m, (_, t)| f64::max(m, t.abs().max().double_value(&[])));
    assert!(moved > 1e-3, "{moved}");
    // The plan was announced before the first step, with every part.
    let plan = events.iter().find_map(|e| match e {
        TrainEvent::Planned(p) => Some(*p),
        _ => None,
    });
    let plan = plan.unwrap();
    assert!(plan.weights > 0 && plan.activations > 0 && plan.logits > 0 && plan.optimizer > 0);
    assert!(matches!(events[0], TrainEvent::Planned(_)), "{:?}", events[0]);
}

#[test]
fn the_memory_plan_follows_the_settings() {
    let _rng = rng();
    let data = data(8, words);
    let plan = |config: TrainConfig| {
        let mut m = model();
        Trainer::new(&mut m, config).unwrap().memory_plan(&data)
    };
    let base = plan(config());
    let full_config = TrainConfig { method: Method::Full, ..config() };
    let full = plan(full_config.clone());
    let half = plan(TrainConfig { micro_batch_size: 2, ..config() });
    let checkpointed =
        plan(TrainConfig { gradient_checkpointing: Checkpointing::Full, ..config() });
    let unchunked = plan(TrainConfig { loss_chunk_tokens: None, ..config() });
    let chunked = plan(TrainConfig { loss_chunk_tokens: Some(8), ..config() });
    // Full fine-tuning trains every weight: gradients as large as them.
    assert_eq!(full.gradients, full.weights);
    assert!(base.gradients < base.weights / 10);
    assert_eq!(full.optimizer, 2 * full.gradients);
    // Half the micro-batch, half the activations.
    assert_eq!(half.activations * 2, base.activations);
    assert!(checkpointed.activations < base.activations);
    // Selective checkpointing keeps more than full and less than none; full
    // fine-tuning recomputes as under full checkpointing.
    let selective = |c: TrainConfig| {
        plan(TrainConfig { gradient_checkpointing: Checkpointing::Selective, ..c })
    };
    let kept = selective(config());
    assert!(checkpointed.activations < kept.activations, "{checkpointed:?} {kept:?}");
    assert!(kept.activations < base.activations, "{kept:?} {base:?}");
    let full_checkpointed =
        plan(TrainConfig { gradient_checkpointing: Checkpointing::Full, ..full_config });
    let full_selective = selective(TrainConfig { method: Method::Full, ..config() });
    assert_eq!(full_selective.activations, full_checkpointed.activations);
    assert!(chunked.logits < unchunked.logits);
    // LoRA dropout keeps a masked copy of each adapter's input.
    let dropped = plan(TrainConfig { method: lora(0.1), ..config() });
    assert!(dropped.activations > base.activations);
    // Packed, the examples (64 tokens at most) of a micro-batch of 4 or of
    // 2 fill one row of 256: the same activations either way.
    let packed = plan(TrainConfig { packing: true, max_length: 256, ..config() });
    let packed_half =
        plan(TrainConfig { packing: true, max_length: 256, micro_batch_size: 2, ..config() });
    assert_eq!(packed.activations, packed_half.activations);
    assert_eq!(
        base.total(),
        base.weights
            + base.gradients
            + base.optimizer
            + base.activations
            + base.logits
            + base.runtime
    );
    // On the CPU the process's other resident memory (here at least the
    // test binary and libtorch) is part of the plan.
    assert!(base.runtime > 50 << 20, "{base}");
}

#[test]
fn full_fine_tuning_in_bf16_resumes_exactly_from_its_f32_master_weights() {
    use finetune_local::tch::Kind;
    let _rng = rng();
    let data = data(8, words);
    let bf16 = || {
        CausalLm::load(
            &dir("llama"),
            &LoadOptions { dtype: Some(Kind::BFloat16), ..Default::default() },
        )
        .unwrap()
    };
    let config = TrainConfig {
        method: Method::Full,
        epochs: 2,
        learning_rate: 1e-4,
        checkpoint_every: Some(2),
        ..config()
    };
    let weights = |m: &CausalLm| -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = m.var_store().variables().into_iter().collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v.into_iter().map(|(n, t)| (n, t.to_kind(Kind::Float))).collect()
    };
    let mut whole = bf16();
    Trainer::new(&mut whole, config.clone()).unwrap().fit(&data, &[]).unwrap();
    // Stopped after the checkpoint at step 2, then resumed in a new model.
    let out = tempfile::tempdir().unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let mut m = bf16();
        let flag = Arc::clone(&cancel);
        Trainer::new(&mut m, config.clone())
            .unwrap()
            .output_dir(out.path())
            .cancel_flag(Arc::clone(&cancel))
            .on_event(move |e| {
                if matches!(e, TrainEvent::Checkpoint { step: 2, .. }) {
                    flag.store(true, Ordering::Relaxed);
                }
            })
            .fit(&data, &[])
            .unwrap();
    }
    let mut resumed = bf16();
    Trainer::new(&mut resumed, config)
        .unwrap()
        .output_dir(out.path())
        .resume(true)
        .fit(&data, &[])
        .unwrap();
    // With only the bf16 weights saved, the resumed run would restart its
    // master copy from rounded values and end elsewhere.
    assert_eq!(max_diff(&weights(&whole), &weights(&resumed)), 0.0);
    assert!(max_diff(&weights(&whole), &weights(&bf16())) > 0.0, "the run moved the weights");
}
