//! What `openai_finetune` and `azure_finetune` share: the flags, the spec,
//! submitting, and following a job to its end with the loss graph saved.

use std::path::PathBuf;
use std::time::Duration;

use finetune_core::{
    FineTuneProvider, Hyperparameters, JobSpec, JobState, LearningRate, PlotOptions, PollPolicy,
    Setting, wait_for_job,
};

use crate::args::{Args, usage_error};
use crate::{MAPPING_FLAGS, dataset_source};

/// The flags taking a value.
pub const FLAGS: [&str; 10] = [
    "train",
    "validation",
    "model",
    "epochs",
    "batch-size",
    "lr-multiplier",
    "suffix",
    "seed",
    "output",
    "poll-interval",
];

/// The usage text after the program's name.
pub const OPTIONS: &str = "--train <PATH_OR_URL> [--validation <PATH_OR_URL>] --model <BASE>
          [--epochs N] [--batch-size N] [--lr-multiplier X] [--suffix S] [--seed N]
          [--wait] [--poll-interval SECS] [--output DIR] [mapping flags]

  --train, --validation  JSONL, CSV, Parquet or Arrow, local or object-store URLs; validated
                         and written as chat JSONL, uploaded once (identical files are reused)
  --model                the base model to fine-tune
  --wait                 follow the job to its end, printing progress, and save the loss
                         graph as DIR/<job id>-loss.svg (DIR: --output, default finetune-output)
  --poll-interval SECS   how often --wait looks (default: from 5 s up to 60 s)

mapping flags: --format jsonl|csv|parquet|arrow, --prompt COL, --completion COL, --system COL";

/// Parses the command line.
pub fn parse(usage: &str) -> Args {
    parse_with(usage, &[])
}

/// Parses the command line, with a provider's own flags taking a value.
pub fn parse_with(usage: &str, extra: &[&str]) -> Args {
    let with_value: Vec<&str> =
        FLAGS.iter().chain(MAPPING_FLAGS.iter()).chain(extra.iter()).copied().collect();
    Args::parse(usage, &with_value, &["wait"])
}

/// The job spec the flags describe.
pub fn spec(usage: &str, args: &Args) -> JobSpec {
    let model = args
        .value("model")
        .or_else(|| args.value("base-model"))
        .unwrap_or_else(|| usage_error(usage, "--model is required"));
    let train = args.value("train").unwrap_or_else(|| usage_error(usage, "--train is required"));
    let mut spec = JobSpec::new(model, dataset_source(usage, train, args)).with_hyperparameters(
        Hyperparameters {
            epochs: args.parsed(usage, "epochs").map_or(Setting::Auto, Setting::Value),
            batch_size: args.parsed(usage, "batch-size").map_or(Setting::Auto, Setting::Value),
            learning_rate: match (
                args.parsed(usage, "lr-multiplier"),
                args.parsed(usage, "learning-rate"),
            ) {
                (Some(_), Some(_)) => {
                    usage_error(usage, "give --lr-multiplier or --learning-rate, not both")
                }
                (Some(x), None) => Setting::Value(LearningRate::Multiplier(x)),
                (None, Some(x)) => Setting::Value(LearningRate::Absolute(x)),
                (None, None) => Setting::Auto,
            },
        },
    );
    if let Some(steps) = args.parsed::<u64>(usage, "warmup-steps") {
        spec.extras.insert("learningRateWarmupSteps".into(), steps.into());
    }
    if let Some(v) = args.value("validation") {
        spec = spec.with_validation(dataset_source(usage, v, args));
    }
    if let Some(s) = args.value("suffix") {
        spec = spec.with_suffix(s);
    }
    if let Some(seed) = args.parsed(usage, "seed") {
        spec = spec.with_seed(seed);
    }
    spec
}

/// Submits the job and, with `--wait`, follows it. Returns the exit code:
/// 0 when submitted (or, waiting, succeeded), 1 otherwise.
pub async fn run(provider: &dyn FineTuneProvider, usage: &str, args: &Args) -> i32 {
    let spec = spec(usage, args);
    let job = match provider.submit(&spec).await {
        Ok(job) => job,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    println!("job {} {}", job.id, job.state);
    if !args.switch("wait") {
        return 0;
    }
    let policy = match args.parsed::<f64>(usage, "poll-interval") {
        Some(secs) if secs > 0.0 => {
            let every = Duration::from_secs_f64(secs);
            PollPolicy { initial_interval: every, max_interval: every, ..PollPolicy::default() }
        }
        Some(_) => usage_error(usage, "--poll-interval must be positive"),
        None => PollPolicy::default(),
    };
    let done = match wait_for_job(provider, &job.id, &policy, |s| println!("  {s}")).await {
        Ok(done) => done,
        Err(e) => {
            eprintln!("error: following job {}: {e}", job.id);
            return 1;
        }
    };
    let curve = match provider.metrics(&job.id).await {
        Ok(curve) => curve,
        Err(e) => {
            eprintln!("error: reading the metrics of job {}: {e}", job.id);
            return 1;
        }
    };
    if !curve.is_empty() {
        let dir = PathBuf::from(args.value("output").unwrap_or("finetune-output"));
        // Job ids may be ARNs: keep the file name to safe characters.
        let file: String = job
            .id
            .as_str()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .chars()
            .map(
                |c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' },
            )
            .collect();
        let path = dir.join(format!("{file}-loss.svg"));
        let title = format!("{} {} on {}", provider.name(), job.id, spec.base_model);
        let saved = std::fs::create_dir_all(&dir)
            .map_err(|e| finetune_core::Error::io(&dir, e))
            .and_then(|()| curve.save_plot(&path, &PlotOptions::titled(title)));
        match saved {
            Ok(()) => println!("loss graph: {}", path.display()),
            Err(e) => eprintln!("warning: the loss graph was not saved: {e}"),
        }
        print_curve(&curve);
        if let Some(loss) = curve.last_train_loss() {
            print!("final training loss {loss:.4}");
            match curve.best_validation() {
                Some((step, v)) => println!(", best validation loss {v:.4} at step {step}"),
                None => println!(),
            }
        }
    }
    match &done.state {
        JobState::Succeeded { model } => {
            println!("model {}", model.model_id);
            if model.requires_deployment {
                println!("deploy it before use: deployments are billed whether used or not");
            }
            0
        }
        other => {
            eprintln!("job {} ended {other}", job.id);
            1
        }
    }
}

/// The loss curve as a table, at most 20 rows (evenly spaced, the last
/// always shown).
pub fn print_curve(curve: &finetune_core::LossCurve) {
    let points = curve.points();
    if points.is_empty() {
        return;
    }
    let every = points.len().div_ceil(20);
    println!("{:>8}  {:>12}  {:>12}", "step", "train loss", "valid loss");
    let cell = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
    for (i, p) in points.iter().enumerate() {
        if i % every == 0 || i + 1 == points.len() || p.validation_loss.is_some() {
            println!("{:>8}  {:>12}  {:>12}", p.step, cell(p.train_loss), cell(p.validation_loss));
        }
    }
}
