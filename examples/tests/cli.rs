//! The dataset tools as a user runs them: exit codes, the JSON report's
//! shape, and conversion.

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

mod support;

use std::path::Path;
use std::process::{Command, Output};

/// Runs an example's binary (built once per test process, with this
/// test's features).
fn example(name: &str, args: &[&str]) -> Output {
    example_env(name, args, &[])
}

/// [`example`] with environment variables set.
fn example_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(support::example_binary(name))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn sample() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/reverse-words.jsonl").display().to_string()
}

#[test]
fn validate_dataset_exit_codes_and_json() {
    let ok = example("validate_dataset", &[&sample(), "--min-rows", "10", "--json"]);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["rows"], 30);
    assert!(v["errors"].as_array().unwrap().is_empty());

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "question,answer\nq1,a1\nq2\n").unwrap();
    let out = example(
        "validate_dataset",
        &[bad.to_str().unwrap(), "--prompt", "question", "--completion", "answer", "--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let e = &v["errors"][0];
    assert_eq!(
        (e["kind"].as_str(), e["row"].as_u64(), e["line"].as_u64()),
        (Some("unreadable"), Some(2), Some(3))
    );
    for key in ["kind", "row", "line", "column", "message"] {
        assert!(e.get(key).is_some(), "error items carry `{key}`");
    }
    assert!(v["warnings"].is_array());

    assert_eq!(example("validate_dataset", &[]).status.code(), Some(2));
    assert_eq!(
        example("validate_dataset", &[&sample(), "--min-rows", "many"]).status.code(),
        Some(2)
    );
}

#[test]
fn validate_dataset_applies_a_providers_rules_and_prices_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let nine = dir.path().join("nine.jsonl");
    let rows: String = (1..=9)
        .map(|i| format!("{{\"prompt\":\"Question {i}?\",\"completion\":\"Bot: answer {i}.\"}}\n"))
        .collect();
    std::fs::write(&nine, rows).unwrap();
    let prices = dir.path().join("prices.json");
    std::fs::write(
        &prices,
        r#"{"currency":"EUR","per_million_training_tokens":{"gpt-4o-mini":2.0}}"#,
    )
    .unwrap();
    let file = nine.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = example("validate_dataset", args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), v)
    };
    let kinds = |v: &serde_json::Value| -> Vec<String> {
        v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    // OpenAI: nine examples are one short; the tokens are o200k's.
    let (code, v) = run(&[
        file,
        "--provider",
        "openai",
        "--base-model",
        "gpt-4o-mini-2024-07-18",
        "--prices",
        prices.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, Some(1));
    assert_eq!(kinds(&v), ["too_few_rows"]);
    assert_eq!(v["rules"]["tokenizer"], "o200k_base");
    // "auto": 100 / 9 = 11 epochs over the billed tokens, priced.
    let e = &v["estimate"];
    assert_eq!(
        (e["epochs"].as_u64(), e["epochs_from"].as_str()),
        (Some(11), Some("provider_default"))
    );
    let billed = e["billed_tokens"].as_f64().unwrap();
    assert_eq!(billed, e["tokens_per_epoch"].as_f64().unwrap() * 11.0);
    assert!((e["cost"].as_f64().unwrap() - billed / 1e6 * 2.0).abs() < 1e-12);
    assert_eq!(e["currency"], "EUR");
    // Nova: eight records are enough, `Bot:` is not.
    let (code, v) =
        run(&[file, "--provider", "bedrock", "--base-model", "amazon.nova-lite-v1:0", "--json"]);
    assert_eq!(code, Some(1));
    assert!(kinds(&v).iter().all(|k| k == "reserved_text") && kinds(&v).len() == 9, "{v}");
    assert_eq!(v["errors"][0]["column"], "completion");
    assert_eq!(v["estimate"]["epochs"], 2);
    // Without a provider nothing of this applies.
    let (code, _) = run(&[file, "--json"]);
    assert_eq!(code, Some(0));
}

#[test]
fn convert_dataset_writes_provider_formats() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("train.jsonl");
    let run = example(
        "convert_dataset",
        &[&sample(), "--to", "bedrock-conversation", "--out", out.to_str().unwrap()],
    );
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 30);
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["schemaVersion"], "bedrock-conversation-2024");
    assert_eq!(first["messages"][1]["content"][0]["text"], "elppa");
    assert_eq!(
        example("convert_dataset", &[&sample(), "--to", "xml", "--out", "x"]).status.code(),
        Some(2)
    );
}

fn fixture_model(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../finetune-local/tests/fixtures/models").join(name)
}

fn fixture_reference(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../finetune-local/tests/fixtures/references")
        .join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn generate_json_greedy_reproduces_transformers_tokens() {
    for name in ["llama", "gpt2"] {
        let reference = fixture_reference(name);
        let case = &reference["cases"][1];
        let out = example(
            "generate",
            &[
                "--model",
                fixture_model(name).to_str().unwrap(),
                "--prompt",
                case["text"].as_str().unwrap(),
                "--temperature",
                "0",
                "--max-new-tokens",
                &reference["max_new_tokens"].to_string(),
                "--device",
                "cpu",
                "--json",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["prompt_tokens"], case["input_ids"], "{name}");
        assert_eq!(v["generated_tokens"], case["greedy"], "{name}");
        assert!(v["text"].is_string());
    }
}

#[test]
fn generate_chat_sampling_and_errors() {
    let model = fixture_model("qwen2");
    let run = |extra: &[&str]| {
        let mut args = vec!["--model", model.to_str().unwrap(), "--prompt", "hi", "--json"];
        args.extend_from_slice(extra);
        example("generate", &args)
    };
    let sampled = [
        "--chat",
        "--system",
        "Be brief.",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
        "--seed",
        "3",
    ];
    let a = run(&sampled);
    assert_eq!(a.status.code(), Some(0), "{}", String::from_utf8_lossy(&a.stderr));
    let b = run(&sampled);
    let (a, b): (serde_json::Value, serde_json::Value) =
        (serde_json::from_slice(&a.stdout).unwrap(), serde_json::from_slice(&b.stdout).unwrap());
    assert_eq!(a["generated_tokens"], b["generated_tokens"], "same seed, same tokens");
    // The chat template's system turn is in the prompt.
    let plain = run(&[]);
    let plain: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    assert!(
        a["prompt_tokens"].as_array().unwrap().len()
            > plain["prompt_tokens"].as_array().unwrap().len() + 5
    );

    let missing = example("generate", &["--model", "nobody/nothing", "--prompt", "x"]);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("not found offline") && stderr.contains("models--nobody--nothing"),
        "{stderr}"
    );
    assert_eq!(example("generate", &["--prompt", "x"]).status.code(), Some(2));
}

#[test]
fn finetune_local_trains_resumes_and_reports_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let model = fixture_model("llama").display().to_string();
    let common = [
        "--model",
        &model,
        "--train",
        &sample(),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--packing",
        "--max-length",
        "128",
        "--checkpoint-every",
        "4",
        "--lora-dropout",
        "0",
    ];
    let first =
        example("finetune_local", &[&common[..], &["--output", out.to_str().unwrap()]].concat());
    assert_eq!(first.status.code(), Some(0), "{}", String::from_utf8_lossy(&first.stderr));
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!((report["steps"].as_u64(), report["stop"].as_str()), (Some(16), Some("completed")));
    for file in [
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "metrics.jsonl",
        "loss.svg",
        "loss.png",
        "summary.json",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
    // Logs, not a progress bar, when stderr is not a terminal.
    assert!(String::from_utf8_lossy(&first.stderr).contains("step=16"));

    // Resuming a finished run continues after its last checkpoint: nothing
    // is left to do, and the adapter is written again, identical.
    let adapter = std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap();
    let again = example(
        "finetune_local",
        &[&common[..], &["--output", out.to_str().unwrap(), "--resume"]].concat(),
    );
    assert_eq!(again.status.code(), Some(0), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(), adapter);

    // A row without its completion: exit 1, naming the file, row and column.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\":\"a\",\"completion\":\"b\"}\n{\"prompt\":\"c\"}\n").unwrap();
    let failed = example(
        "finetune_local",
        &["--model", &model, "--train", bad.to_str().unwrap(), "--output", out.to_str().unwrap()],
    );
    assert_eq!(failed.status.code(), Some(1));
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(
        err.contains("bad.jsonl") && err.contains("row 2") && err.contains("completion"),
        "{err}"
    );

    let usage = example("finetune_local", &["--train", &sample()]);
    assert_eq!(usage.status.code(), Some(2));
}

/// `(exact, ended their turn)` from each `exact: 3/12; ended their turn:
/// 12/12` line the recipe example prints, in order.
fn asked(stdout: &str) -> Vec<(usize, usize, usize)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("exact: "))
        .map(|l| {
            let nums: Vec<usize> = l
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            assert_eq!(nums.len(), 4, "{l}");
            assert_eq!(nums[1], nums[3], "{l}");
            (nums[0], nums[2], nums[1])
        })
        .collect()
}

/// The README's main command: SmolLM2-135M-Instruct, imported from its GGUF
/// file, learns to route customer messages through the recipe. On held-out
/// phrasings it answers in sentences before (0 of 12 exact here) and with
/// the team after (9 of 12 here), every answer ending at `<|im_end|>`.
#[test]
fn the_main_job_fine_tunes_smollm2_to_route_messages() {
    let dir = tempfile::tempdir().unwrap();
    let out = example("recipe", &[dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("SmolLM2-135M-Instruct (pretrained"), "{stdout}");
    let asked = asked(&stdout);
    assert_eq!(asked.len(), 2, "{stdout}");
    let ((before, _, n), (after, ended, _)) = (asked[0], asked[1]);
    assert_eq!(n, 12);
    assert!(before * 2 < n, "the base model already routes well: {stdout}");
    assert!(after * 3 >= n * 2 && after > before, "{stdout}");
    assert_eq!(ended, n, "answers cut at the token limit: {stdout}");
    assert!(
        stdout.contains("ticket-router version 1")
            && stdout.contains("ticket-router version 2 (active)"),
        "{stdout}"
    );
    assert!(stdout.contains("active: version 2"), "{stdout}");
    assert!(dir.path().join("graphs/ticket-router-v1-loss.svg").is_file());
    // Version 1's validation loss fell while it trained.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let registry = finetune_deploy::Registry::local(dir.path().join("registry")).unwrap();
    let versions = rt.block_on(registry.versions("ticket-router")).unwrap();
    let valid = versions[0].model.loss_curve.validation_series();
    assert!(valid.len() >= 2 && valid.last().unwrap().1 < valid[0].1, "{valid:?}");
    let provenance = versions[0].provenance.as_ref().unwrap();
    assert_eq!(provenance.base_model, "HuggingFaceTB/SmolLM2-135M-Instruct");
}

#[test]
fn the_recipe_fine_tunes_the_built_in_model_visibly() {
    let dir = tempfile::tempdir().unwrap();
    let out = example("recipe", &[dir.path().to_str().unwrap(), "--model", "builtin"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let (before, after) = stdout.split_once("== after fine-tuning").unwrap();
    let before = before.split_once("== before fine-tuning").unwrap().1;
    let right = |s: &str| s.matches('✓').count();
    assert_eq!(right(before.split("== fine-tuning").next().unwrap()), 0, "{stdout}");
    let after = after.split("== fine-tuning version 2").next().unwrap();
    assert!(right(after) >= 3, "{stdout}");
    // Both datasets were validated and reported, each version summarized.
    assert!(stdout.contains("training set: ") && stdout.contains("validation set: "), "{stdout}");
    assert!(
        stdout.contains("numbers-to-words version 1")
            && stdout.contains("numbers-to-words version 2 (active)"),
        "{stdout}"
    );
    assert!(stdout.contains("active: version 2"), "{stdout}");
    for graph in [
        "numbers-to-words-v1-loss.png",
        "numbers-to-words-v1-loss.svg",
        "numbers-to-words-v2-loss.svg",
    ] {
        assert!(dir.path().join("graphs").join(graph).is_file(), "{graph}");
    }
    // The registry holds both versions with their provenance; the jobs
    // folder, one job each.
    let jobs = std::fs::read_dir(dir.path().join("jobs")).unwrap();
    assert_eq!(jobs.filter(|e| e.as_ref().unwrap().path().is_dir()).count(), 2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let registry = finetune_deploy::Registry::local(dir.path().join("registry")).unwrap();
    let versions = rt.block_on(registry.versions("numbers-to-words")).unwrap();
    assert_eq!(versions.len(), 2);
    let v1 = &versions[0];
    assert_eq!(v1.provenance.as_ref().unwrap().connection, "this-machine");
    assert!(v1.model.loss_curve.last_train_loss().unwrap() < 0.5, "{:?}", v1.model.loss_curve);
    assert!(v1.model.loss_curve.has_validation());
    // The summary and its loss graph come from the registry alone, in this
    // process, after the one that trained the versions has gone.
    let lifecycle = finetune_deploy::Lifecycle::new(
        registry,
        std::sync::Arc::new(finetune_deploy::NoDeployments),
    );
    let summary = rt
        .block_on(finetune_deploy::VersionSummary::of(&lifecycle, "numbers-to-words", 1))
        .unwrap();
    assert!(summary.to_string().contains("valid loss"), "{summary}");
    let (svg, png) = summary.save_loss_graph(&dir.path().join("redrawn")).unwrap().unwrap();
    assert!(std::fs::read_to_string(svg).unwrap().contains("validation"));
    assert!(std::fs::metadata(png).unwrap().len() > 1000);
}

/// The same recipe example through each cloud connection, against the
/// fakes (OpenAI's behind Prism), configured by the usual environment.
#[test]
fn the_recipe_runs_through_every_cloud_connection() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let rt = rt.unwrap();
    let peers = rt.block_on(support::Peers::start("recipe-cli"));
    let arm = peers.arm.url();
    let (openai, azure) = (peers.prism.url().to_owned(), peers.azure.url());
    let (bedrock, s3) = (peers.bedrock.url(), peers.moto.endpoint());
    let key = support::KEY;
    let runs: [(&str, Vec<(&str, &str)>); 3] = [
        ("openai", vec![("OPENAI_API_KEY", key), ("OPENAI_BASE_URL", &openai)]),
        (
            "azure",
            vec![
                ("AZURE_OPENAI_ENDPOINT", &azure),
                ("AZURE_OPENAI_TOKEN", key),
                ("AZURE_SUBSCRIPTION_ID", finetune_providers::testing::ARM_SUBSCRIPTION),
                ("AZURE_RESOURCE_GROUP", finetune_providers::testing::ARM_RESOURCE_GROUP),
                ("AZURE_OPENAI_ACCOUNT", finetune_providers::testing::ARM_ACCOUNT),
                ("AZURE_ARM_ENDPOINT", &arm),
            ],
        ),
        (
            "bedrock",
            vec![
                ("AWS_REGION", "us-east-1"),
                ("BEDROCK_ROLE_ARN", "arn:aws:iam::123456789012:role/ft"),
                ("BEDROCK_S3_PREFIX", "s3://recipe-cli/ft"),
                ("AWS_ENDPOINT_URL_BEDROCK", &bedrock),
                ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", &bedrock),
                ("AWS_ENDPOINT_URL_S3", s3),
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
            ],
        ),
    ];
    for (kind, env) in runs {
        let dir = tempfile::tempdir().unwrap();
        let out =
            example_env("recipe", &[dir.path().to_str().unwrap(), "--connection", kind], &env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{kind}: {}", text(&out));
        assert!(stdout.contains("numbers-to-words version 2 (active)"), "{kind}: {stdout}");
        assert!(stdout.contains("active: version 2"), "{kind}: {stdout}");
        let deployed = stdout.contains("served by deployment");
        assert_eq!(deployed, kind != "openai", "{kind}: {stdout}");
    }
    peers.assert_openai_spec_held();
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn openai_and_azure_examples_run_against_prism_with_no_request_rejected() {
    use finetune_providers::testing::Prism;
    let sample = sample();
    let openai = Prism::start(&Prism::spec("openai-openapi.yaml"));
    let out = example_env(
        "openai_finetune",
        &[
            "--train",
            &sample,
            "--validation",
            &sample,
            "--model",
            "gpt-4o-mini-2024-07-18",
            "--epochs",
            "2",
            "--suffix",
            "words",
        ],
        &[("OPENAI_API_KEY", "sk-example"), ("OPENAI_BASE_URL", openai.url())],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("job "), "{}", text(&out));
    let log = openai.log();
    assert!(log.contains("post /fine_tuning/jobs"), "{log}");
    assert!(log.matches("The request passed the validation rules").count() >= 3, "{log}");
    assert!(!log.contains("Violation: request") && !log.contains("UNPROCESSABLE_ENTITY"), "{log}");

    let azure = Prism::start(&Prism::spec(
        "azure-openai-authoring-2024-10-21.finetuning-excerpt.openai-prefixed.json",
    ));
    let out = example_env(
        "azure_finetune",
        &[
            "--train",
            &sample,
            "--model",
            "gpt-4o-mini-2024-07-18",
            "--epochs",
            "2",
            "--suffix",
            "words",
        ],
        &[("AZURE_OPENAI_ENDPOINT", azure.url()), ("AZURE_OPENAI_API_KEY", "az-example")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let log = azure.log();
    // Prism requires the api-version parameter: a request without it fails validation.
    assert!(log.contains("post /openai/fine_tuning/jobs"), "{log}");
    assert!(log.matches("The request passed the validation rules").count() >= 3, "{log}");
    assert!(!log.contains("Violation: request") && !log.contains("UNPROCESSABLE_ENTITY"), "{log}");

    // Without credentials the examples say what to set.
    let out = example_env(
        "openai_finetune",
        &["--train", &sample, "--model", "m"],
        &[("OPENAI_API_KEY", "")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("OPENAI_API_KEY"), "{}", text(&out));
}

#[test]
fn openai_example_waits_for_the_job_and_saves_the_loss_graph() {
    use finetune_providers::testing::{FakeFlavor, FakeOpenAi};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = runtime.block_on(FakeOpenAi::start(FakeFlavor::OpenAi, "sk-wait"));
    let dir = tempfile::tempdir().unwrap();
    let sample = sample();
    let out = example_env(
        "openai_finetune",
        &[
            "--train",
            &sample,
            "--validation",
            &sample,
            "--model",
            "gpt-4o-mini",
            "--wait",
            "--poll-interval",
            "0.01",
            "--output",
            dir.path().to_str().unwrap(),
        ],
        &[("OPENAI_API_KEY", "sk-wait"), ("OPENAI_BASE_URL", &fake.url())],
    );
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    for expected in [
        "running (step 1/4)",
        "running (step 4/4)",
        "succeeded",
        "loss graph:",
        "best validation loss",
        "model ft:gpt-4o-mini",
    ] {
        assert!(shown.contains(expected), "missing `{expected}` in:\n{shown}");
    }
    let svg = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    assert!(!shown.contains("sk-wait"));
    // A job that fails exits 1 with the reason.
    let out = example_env(
        "openai_finetune",
        &["--train", &sample, "--model", "base-will-fail", "--wait", "--poll-interval", "0.01"],
        &[("OPENAI_API_KEY", "sk-wait"), ("OPENAI_BASE_URL", &fake.url())],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("too few examples"), "{}", text(&out));
}

#[test]
fn deploy_lifecycle_runs_with_no_arguments_and_prints_each_transition() {
    let out = example("deploy_lifecycle", &[]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    let order = [
        "deploying version 1 as ft-support-bot-v1",
        "now served by ft-support-bot-v1",
        "deploying version 2 as ft-support-bot-v2",
        "now served by ft-support-bot-v2",
        "ft-support-bot-v1 deleted",
        "team-gpt-4o-mini attached to version 2",
        "0 orphaned deployment(s)",
    ];
    let positions: Vec<usize> = order.iter().map(|s| shown.find(s).unwrap_or(usize::MAX)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{shown}");
    assert!(!shown.contains("plan for"), "{shown}");
    let out = example("deploy_lifecycle", &["--plan", "--price", "Standard=2.5"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("create ft-support-bot-v2 (Standard x1, 2.50/h)"), "{shown}");
    assert!(shown.contains("delete ft-support-bot-v1"), "{shown}");
}

#[test]
fn bedrock_example_runs_end_to_end_against_moto_and_the_fake() {
    use finetune_providers::testing::{FakeBedrock, Moto};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start();
    let fake = runtime.block_on(async {
        moto.create_bucket("example-bedrock").await;
        FakeBedrock::start(moto.store("example-bedrock"), "example-bedrock").await
    });
    let dir = tempfile::tempdir().unwrap();
    let sample = sample();
    let missing = dir.path().join("no-such-aws-file");
    let missing = missing.to_str().unwrap();
    let env = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing-secret-0123"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", missing),
        ("AWS_SHARED_CREDENTIALS_FILE", missing),
        ("AWS_ENDPOINT_URL", moto.endpoint()),
        ("AWS_ENDPOINT_URL_BEDROCK", &fake.url()),
        ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", &fake.url()),
    ];
    let base = [
        "--train",
        &sample,
        "--validation",
        &sample,
        "--base-model",
        "amazon.titan-text-lite-v1:0:4k",
        "--role-arn",
        "arn:aws:iam::123456789012:role/bedrock-finetune",
        "--bucket",
        "s3://example-bedrock/ft",
        "--epochs",
        "2",
    ];
    let mut args = base.to_vec();
    let out_dir = dir.path().to_str().unwrap();
    args.extend(["--wait", "--poll-interval", "0.01", "--output", out_dir]);
    let out = example_env("bedrock_finetune", &args, &env);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    println!("{shown}");
    for expected in [
        "job arn:aws:bedrock:us-east-1:123456789012:model-customization-job/",
        "validating",
        "running",
        "succeeded",
        "train loss",
        "valid loss",
        "loss graph:",
        "best validation loss",
        "model arn:aws:bedrock:us-east-1:123456789012:custom-model/",
        "deploy it before use",
    ] {
        assert!(shown.contains(expected), "missing `{expected}` in:\n{shown}");
    }
    assert!(!shown.contains("testing-secret-0123"));
    let svg = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "svg"))
        .expect("a loss graph");
    assert!(std::fs::read_to_string(svg.path()).unwrap().contains("<svg"));
    assert_eq!(fake.job_count(), 1);

    // Hyperparameters out of the base model's range: refused before any
    // upload or call.
    // The role and the bucket from BEDROCK_ROLE_ARN and BEDROCK_S3_PREFIX.
    let mut args: Vec<&str> =
        base.iter().copied().filter(|a| !a.starts_with("arn:") && !a.starts_with("s3:")).collect();
    args.retain(|a| *a != "--role-arn" && *a != "--bucket");
    args.extend(["--learning-rate", "5"]);
    let mut env = env.to_vec();
    env.push(("BEDROCK_ROLE_ARN", "arn:aws:iam::123456789012:role/bedrock-finetune"));
    env.push(("BEDROCK_S3_PREFIX", "s3://example-bedrock/ft"));
    let before = fake.requests().len();
    let out = example_env("bedrock_finetune", &args, &env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("hyperparameters.learning_rate"), "{}", text(&out));
    assert_eq!(fake.requests().len(), before);
}

#[test]
fn deploy_lifecycle_runs_on_bedrock_with_the_usual_environment() {
    use finetune_core::{DatasetSource, FineTuneProvider, JobSpec, JobState, PollPolicy};
    use finetune_providers::testing::{FakeBedrock, Moto};
    use finetune_providers::{BedrockConfig, BedrockProvider};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let sample = sample();
    // Two custom models trained in the fake first.
    let (fake, models) = runtime.block_on(async {
        moto.create_bucket("example-deploy").await;
        let fake = FakeBedrock::start(moto.store("example-deploy"), "example-deploy").await;
        let config =
            BedrockConfig::new("arn:aws:iam::123456789012:role/ft", "s3://example-deploy/ft")
                .unwrap()
                .with_sdk_config(Moto::sdk_config())
                .with_endpoint_url(fake.url())
                .with_s3_endpoint_url(moto.endpoint());
        let provider = BedrockProvider::new(config).await.unwrap();
        let mut models = Vec::new();
        for _ in 0..2 {
            let spec = JobSpec::new(
                "amazon.titan-text-lite-v1:0:4k",
                DatasetSource::new(&sample).unwrap(),
            );
            let job = provider.submit(&spec).await.unwrap();
            let poll = PollPolicy::fixed(
                std::time::Duration::from_millis(2),
                std::time::Duration::from_secs(30),
            );
            match finetune_core::wait_for_job(&provider, &job.id, &poll, |_| {})
                .await
                .unwrap()
                .state
            {
                JobState::Succeeded { model } => models.push(model.model_id),
                other => panic!("{other:?}"),
            }
        }
        (fake, models)
    });
    let theirs = fake.preexisting_deployment("team-own", &models[0]);
    let missing = dir.path().join("no-such-aws-file");
    let missing = missing.to_str().unwrap();
    let out = example_env(
        "deploy_lifecycle",
        &[
            "--model-v1",
            &models[0],
            "--model-v2",
            &models[1],
            "--attach",
            &theirs,
            "--poll-interval",
            "0.01",
            "--plan",
        ],
        &[
            ("FINETUNE_DEPLOY_PLATFORM", "bedrock"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", missing),
            ("AWS_SHARED_CREDENTIALS_FILE", missing),
            ("AWS_ENDPOINT_URL_BEDROCK", &fake.url()),
        ],
    );
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    println!("{shown}");
    assert!(
        shown.contains(
            "now served by arn:aws:bedrock:us-east-1:123456789012:custom-model-deployment/"
        ),
        "{shown}"
    );
    // Version 1's deployment went when version 2 was served, and version
    // 2's when the user's own was attached to it: only theirs is left.
    assert!(shown.contains(&format!("served by {theirs}")), "{shown}");
    assert!(shown.contains("deployments created by this library still running: 0"), "{shown}");
    let live = fake.deployments();
    assert_eq!(live, vec![(theirs.clone(), "Active".to_owned())]);
    assert_eq!(fake.deleted_deployments(), 2);
}

#[test]
fn a_recorded_job_killed_mid_training_resumes_in_a_new_process_to_the_same_adapter() {
    use finetune_core::{DatasetSource, JobSpec};
    use finetune_local::{LocalProvider, Runtime};

    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs");
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../finetune-local/tests/fixtures/models/llama")
        .canonicalize()
        .unwrap();
    let spec = JobSpec::new(model.to_str().unwrap(), DatasetSource::new(&sample()).unwrap())
        .with_hyperparameters(finetune_core::Hyperparameters {
            epochs: finetune_core::Setting::Value(6),
            batch_size: finetune_core::Setting::Value(8),
            ..Default::default()
        })
        .with_extra("checkpoint_every", 2)
        .with_extra("lora_dropout", 0.1);
    let runtime = || Runtime { output_root: jobs.clone(), threads: Some(1), ..Runtime::default() };
    let provider = LocalProvider::new(runtime());
    let record = |spec: &JobSpec| finetune_examples::block_on(provider.record(spec)).unwrap().id;
    let (killed, whole) = (record(&spec), record(&spec));
    let binary = support::example_binary("finetune_local");
    let run = |id: &finetune_core::JobId| {
        Command::new(&binary)
            .args(["--run-job", id.as_str(), "--jobs", jobs.to_str().unwrap()])
            .args(["--device", "cpu", "--threads", "1"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The pod: killed (SIGKILL) once its second checkpoint is on disk.
    let mut child = run(&killed);
    let checkpoints = jobs.join(killed.as_str()).join("checkpoints");
    let started = std::time::Instant::now();
    while std::fs::read_dir(&checkpoints).map_or(0, |d| d.count()) < 2 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(started.elapsed().as_secs() < 300);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The restarted pod resumes; the other job runs uninterrupted.
    for id in [&killed, &whole] {
        let out = run(id).wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(job["state"]["state"], "succeeded", "{job}");
    }
    let adapter = |id: &finetune_core::JobId| {
        let path = jobs.join(id.as_str()).join("adapter/adapter_model.safetensors");
        let mut t = finetune_local::tch::Tensor::read_safetensors(&path).unwrap();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let (a, b) = (adapter(&killed), adapter(&whole));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let diff = (ta - tb).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{na}: {diff}");
    }
    // The killed job's record counts one more start than the other's.
    let starts = |id: &finetune_core::JobId| {
        let text = std::fs::read_to_string(jobs.join(id.as_str()).join("job.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["resumed"].as_u64().unwrap()
    };
    assert_eq!(starts(&killed), starts(&whole) + 1);
}
