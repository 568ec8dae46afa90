//! Fine-tunes a local HuggingFace model (LoRA or full) on a dataset and
//! writes the adapter and/or merged model, `metrics.jsonl` and the loss
//! graph into the output folder.
//!
//! ```text
//! cargo run --release -p finetune-examples --example finetune_local -- \
//!     --model finetune-local/tests/fixtures/models/llama \
//!     --train examples/data/reverse-words.jsonl --epochs 2 --output /tmp/run
//! ```

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use finetune_examples::args::{Args, usage_error};
use finetune_examples::{MAPPING_FLAGS, dataset_source, localize_or_exit};
use finetune_local::data::examples_from;
use finetune_local::job::{parse_device, parse_dtype};
use finetune_local::lora::LoraConfig;
use finetune_local::sft::{PromptFormat, Truncation};
use finetune_local::train::{
    AdamWConfig, Checkpointing, DeviceMemory, Method, Schedule, TrainConfig, TrainEvent,
};
use finetune_local::{LocalJob, Outputs, Runtime};
use indicatif::{ProgressBar, ProgressStyle};

const USAGE: &str =
    "usage: finetune_local --model <DIR_OR_ID> --train <PATH_OR_URL> [--validation <PATH_OR_URL>]
       finetune_local --run-job <ID> --jobs <DIR> [--cache DIR] [--device D] [--dtype T] [--threads N]
                      [--method lora|full] [--epochs N] [--lr X] [--batch-size N] [--max-length N]
                      [--packing] [--checkpointing MODE] [--output DIR] [--resume] [mapping flags] [options]

  --run-job ID --jobs DIR  run a job recorded in DIR (LocalProvider::record) to its end,
                           resuming from its newest checkpoint when an earlier run was stopped:
                           a container's entry point. Exit 0: succeeded; 3: failed or cancelled
                           (retrying cannot help); 1: anything else.
  --model                  a model directory, or org/name[@revision] from the local HF cache
  --train, --validation    JSONL, CSV, Parquet or Arrow files, local or object-store URLs
  --method                 lora (default) or full
  --epochs N               passes over the training set (3)
  --lr X                   peak learning rate (2e-4 for LoRA, 2e-5 for full)
  --batch-size N           examples per optimizer step (8)
  --micro-batch-size N     examples (or packed rows) per forward pass (the batch size)
  --max-length N           tokens per example and per packed row (1024)
  --packing                pack examples into rows instead of padding each
  --gradient-checkpointing recompute each decoder layer in backward (less memory)
  --checkpointing MODE     off, full (as --gradient-checkpointing) or selective: keep the frozen
                           projections' outputs too and recompute none of them (LoRA; faster, more
                           memory than full)
  --loss-chunk-tokens N    positions per LM head + loss chunk (512; 0: all at once)
  --no-host-cache          on the CPU, hand freed tensors' memory straight back to malloc
  --output DIR             the job folder (finetune-output)
  --resume                 continue from the newest checkpoint in the job folder
  --merge                  also write the merged model after LoRA
  --lora-r N --lora-alpha X --lora-dropout X --target-modules a,b|all-linear --rslora
  --schedule constant|linear|cosine  --warmup-steps N  --weight-decay X  --max-grad-norm X
  --max-steps N  --eval-every N  --early-stopping-patience N
  --checkpoint-every N  --keep-checkpoints N  --seed N
  --chat | --base          the prompt format (default: the chat template when there is one)
  --device cpu|cuda[:N]  --dtype float32|bfloat16|float16  --threads N
  --version                the version and the features built in (distributed, kubernetes)

Under a launcher (torchrun's RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, Slurm's srun,
a Kubernetes Indexed Job) with more than one process, and built with the `distributed` feature,
each process trains its share of every step over c10d's Gloo (--batch-size is the global batch);
rank 0 alone writes the output folder. FINETUNE_DIST_TIMEOUT_SECS bounds each collective (300).

mapping flags: --format jsonl|csv|parquet|arrow, --prompt COL, --completion COL, --system COL";

fn main() {
    let mut with_value = vec![
        "model",
        "train",
        "validation",
        "method",
        "epochs",
        "lr",
        "batch-size",
        "micro-batch-size",
        "max-length",
        "loss-chunk-tokens",
        "run-job",
        "jobs",
        "cache",
        "output",
        "lora-r",
        "lora-alpha",
        "lora-dropout",
        "target-modules",
        "schedule",
        "warmup-steps",
        "weight-decay",
        "max-grad-norm",
        "max-steps",
        "eval-every",
        "early-stopping-patience",
        "checkpoint-every",
        "keep-checkpoints",
        "checkpointing",
        "seed",
        "device",
        "dtype",
        "threads",
    ];
    with_value.extend(MAPPING_FLAGS);
    let args = Args::parse(
        USAGE,
        &with_value,
        &[
            "packing",
            "gradient-checkpointing",
            "no-host-cache",
            "resume",
            "merge",
            "rslora",
            "chat",
            "base",
        ],
    );
    if let Some(id) = args.value("run-job") {
        std::process::exit(run_recorded(&args, id));
    }
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Runs a recorded job to its end; the exit code says how it ended.
fn run_recorded(args: &Args, id: &str) -> i32 {
    let jobs = args.value("jobs").unwrap_or_else(|| usage_error(USAGE, "--run-job needs --jobs"));
    logs_to_stderr();
    let runtime = runtime(args).map(|mut runtime| {
        runtime.output_root = jobs.into();
        if let Some(c) = args.value("cache") {
            runtime.cache = finetune_local::ModelCache::at(c);
        }
        runtime
    });
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    // On CUDA each rank trains on its local rank's GPU.
    let (group, runtime) = match group(&runtime) {
        Ok(joined) => joined,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let provider = finetune_local::LocalProvider::new(runtime);
    let id = finetune_core::JobId::new(id);
    match finetune_examples::block_on(provider.run_recorded_with(&id, group)) {
        Ok(job) => {
            println!("{}", serde_json::to_string(&job).unwrap_or_default());
            match job.state {
                finetune_core::JobState::Succeeded { .. } => 0,
                _ => 3,
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// The runtime of the environment (`FINETUNE_*`) and the command line.
fn runtime(args: &Args) -> Result<Runtime, Box<dyn std::error::Error>> {
    let mut runtime = Runtime::from_env()?;
    if let Some(d) = args.value("device") {
        runtime.device = Some(parse_device(d)?);
    }
    if let Some(d) = args.value("dtype") {
        runtime.dtype = Some(parse_dtype(d)?);
    }
    if let Some(n) = args.parsed(USAGE, "threads") {
        runtime.threads = Some(n);
    }
    Ok(runtime)
}

/// Logs go to stderr (plain, no colours) unless it is a terminal.
fn logs_to_stderr() {
    if !std::io::stderr().is_terminal() {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
    }
}

fn config(args: &Args) -> TrainConfig {
    let full = match args.value("method").unwrap_or("lora") {
        "lora" => false,
        "full" => true,
        other => usage_error(USAGE, &format!("--method {other}: lora or full")),
    };
    let method = if full {
        Method::Full
    } else {
        let d = LoraConfig::default();
        Method::Lora(LoraConfig {
            r: args.parsed(USAGE, "lora-r").unwrap_or(d.r),
            alpha: args.parsed(USAGE, "lora-alpha").unwrap_or(d.alpha),
            dropout: args.parsed(USAGE, "lora-dropout").unwrap_or(d.dropout),
            target_modules: args
                .value("target-modules")
                .map(|v| v.split(',').map(str::to_owned).collect())
                .unwrap_or(d.target_modules),
            use_rslora: args.switch("rslora"),
        })
    };
    let d = TrainConfig::default();
    let batch_size = args.parsed(USAGE, "batch-size").unwrap_or(d.batch_size);
    TrainConfig {
        method,
        epochs: args.parsed(USAGE, "epochs").unwrap_or(d.epochs),
        batch_size,
        micro_batch_size: args.parsed(USAGE, "micro-batch-size").unwrap_or(batch_size),
        learning_rate: args.parsed(USAGE, "lr").unwrap_or(if full { 2e-5 } else { 2e-4 }),
        optimizer: AdamWConfig {
            weight_decay: args.parsed(USAGE, "weight-decay").unwrap_or(0.0),
            ..AdamWConfig::default()
        },
        schedule: args.parsed::<Schedule>(USAGE, "schedule").unwrap_or(d.schedule),
        warmup_steps: args.parsed(USAGE, "warmup-steps").unwrap_or(0),
        max_grad_norm: Some(args.parsed(USAGE, "max-grad-norm").unwrap_or(1.0)),
        max_steps: args.parsed(USAGE, "max-steps"),
        packing: args.switch("packing"),
        gradient_checkpointing: match args.parsed(USAGE, "checkpointing") {
            Some(mode) => mode,
            None if args.switch("gradient-checkpointing") => Checkpointing::Full,
            None => Checkpointing::Off,
        },
        loss_chunk_tokens: match args.parsed::<usize>(USAGE, "loss-chunk-tokens") {
            Some(0) => None,
            Some(n) => Some(n),
            None => d.loss_chunk_tokens,
        },
        max_length: args.parsed(USAGE, "max-length").unwrap_or(d.max_length),
        seed: args.parsed(USAGE, "seed").unwrap_or(d.seed),
        eval_every: args.parsed(USAGE, "eval-every"),
        early_stopping_patience: args.parsed(USAGE, "early-stopping-patience"),
        checkpoint_every: args.parsed(USAGE, "checkpoint-every"),
        keep_checkpoints: args.parsed(USAGE, "keep-checkpoints").unwrap_or(d.keep_checkpoints),
        cache_host_memory: !args.switch("no-host-cache"),
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let model = args.value("model").unwrap_or_else(|| usage_error(USAGE, "--model is required"));
    let train = args.value("train").unwrap_or_else(|| usage_error(USAGE, "--train is required"));
    let terminal = std::io::stderr().is_terminal();
    logs_to_stderr();
    let runtime = runtime(args)?;
    let read = |location: &str| -> Result<_, Box<dyn std::error::Error>> {
        let local = localize_or_exit(&dataset_source(USAGE, location, args));
        Ok(examples_from(local.open()?)?)
    };
    let train = read(train)?;
    let validation = match args.value("validation") {
        Some(v) => read(v)?,
        None => Vec::new(),
    };
    let config = config(args);
    let job = LocalJob {
        model: model.to_owned(),
        train,
        validation,
        outputs: Outputs {
            adapter: matches!(config.method, Method::Lora(_)),
            merged: args.switch("merge") || matches!(config.method, Method::Full),
        },
        config,
        format: match (args.switch("chat"), args.switch("base")) {
            (true, true) => usage_error(USAGE, "--chat and --base exclude each other"),
            (true, false) => Some(PromptFormat::Chat),
            (false, true) => Some(PromptFormat::Base),
            (false, false) => None,
        },
        truncation: Truncation::KeepEnd,
        output_dir: args.value("output").unwrap_or("finetune-output").into(),
        resume: args.switch("resume"),
    };

    let cancel = Arc::new(AtomicBool::new(false));
    let bar = ProgressBar::hidden();
    let on_event = |event: &TrainEvent| match event {
        TrainEvent::Started { total_steps, resumed_from, .. } if terminal => {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_length(*total_steps as u64);
            bar.set_position(resumed_from.unwrap_or(0) as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.reset_eta();
        }
        TrainEvent::Step(r) => {
            if terminal {
                bar.set_position(r.step as u64);
                bar.set_message(format!(
                    "loss {:.4} lr {:.2e} |g| {:.2} {:.0} tok/s",
                    r.loss, r.learning_rate, r.grad_norm, r.tokens_per_second
                ));
            } else {
                tracing::info!(
                    step = r.step,
                    epoch = format!("{:.2}", r.epoch),
                    loss = r.loss,
                    lr = r.learning_rate,
                    grad_norm = r.grad_norm,
                    tokens_per_second = r.tokens_per_second.round(),
                    "train"
                );
            }
        }
        TrainEvent::Eval(r) => {
            let line = format!(
                "step {}: validation loss {:.4}, token accuracy {:.1}%",
                r.step,
                r.validation_loss,
                100.0 * r.validation_token_accuracy
            );
            if terminal {
                bar.println(line);
            } else {
                tracing::info!("{line}");
            }
        }
        TrainEvent::Checkpoint { path, .. } => {
            tracing::info!("checkpoint {}", path.display());
        }
        // The trainer logs its plan; a terminal also shows it above the bar.
        TrainEvent::Planned(plan) if terminal => bar.println(format!("memory plan: {plan}")),
        TrainEvent::MicroBatchHalved { step, micro_batch_size } => {
            let line = format!(
                "step {step} ran out of memory: running it again with micro-batch {micro_batch_size}"
            );
            if terminal { bar.println(line) } else { tracing::warn!("{line}") }
        }
        _ => {}
    };
    let (report, _) = train_job(&job, &runtime, Arc::clone(&cancel), on_event)?;
    bar.finish_and_clear();
    if cancel.load(Ordering::Relaxed) {
        eprintln!("cancelled");
    }
    // On CUDA, what the run held at its peak, to set against the plan.
    let mib = |n: u64| n as f64 / (1024.0 * 1024.0);
    for i in 0..usize::try_from(finetune_local::tch::Cuda::device_count()).unwrap_or(0) {
        if let Ok(m) = DeviceMemory::of_cuda(i)
            && m.peak_allocated > 0
        {
            eprintln!(
                "cuda:{i} peak memory: {:.0} MiB allocated, {:.0} MiB reserved",
                mib(m.peak_allocated),
                mib(m.peak_reserved)
            );
        }
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Runs the job alone, or as one rank of the run the launcher describes.
fn train_job(
    job: &LocalJob,
    runtime: &Runtime,
    cancel: Arc<AtomicBool>,
    on_event: impl FnMut(&TrainEvent),
) -> finetune_local::Result<(finetune_local::JobReport, finetune_local::train::TrainOutcome)> {
    let (mut group, runtime) = group(runtime)?;
    let group = group.as_deref_mut().map(|g| g as &mut dyn finetune_local::train::Collective);
    finetune_local::run_job_on(job, &runtime, cancel, on_event, group)
}

/// The process group of the run the launcher describes, when it started
/// more than one process, and the runtime this rank trains with: on CUDA
/// each rank takes the GPU of its local rank and the ranks talk over NCCL,
/// on CPU over Gloo.
#[cfg(feature = "distributed")]
fn group(
    runtime: &Runtime,
) -> finetune_local::Result<(Option<finetune_local::provider::Group>, Runtime)> {
    let topology = finetune_local::topology::Topology::from_env()?;
    if topology.world_size < 2 {
        return Ok((None, runtime.clone()));
    }
    let timeout = finetune_local::topology::timeout_from_vars(|name| std::env::var(name).ok())?;
    let device = finetune_local::distributed::rank_device(runtime.device, &topology)?;
    let group = finetune_local::distributed::ProcessGroup::for_device(&topology, timeout, device)?;
    Ok((Some(Box::new(group)), Runtime { device: Some(device), ..runtime.clone() }))
}

/// Built without the `distributed` feature: one process, or an error.
#[cfg(not(feature = "distributed"))]
fn group(
    runtime: &Runtime,
) -> finetune_local::Result<(Option<finetune_local::provider::Group>, Runtime)> {
    let topology = finetune_local::topology::Topology::from_env()?;
    if topology.world_size > 1 {
        return Err(finetune_local::LocalError::InvalidArgument(format!(
            "the launcher started {} processes, but this binary was built without the \
             `distributed` feature: each would train alone",
            topology.world_size
        )));
    }
    Ok((None, runtime.clone()))
}
