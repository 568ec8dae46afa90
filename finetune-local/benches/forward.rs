//! Forward-pass throughput of our models next to transformers', in one run:
//! the same checkpoints, inputs (batch × seq random ids), fp32 on CPU, the
//! same thread count, median of the same number of timed runs.
//!
//! ```text
//! scripts/setup --bench && cargo bench -p finetune-local --bench forward
//! ```
//! `BENCH_THREADS` (default: all cores), `BENCH_BATCH` (4), `BENCH_SEQ` (128),
//! `BENCH_RUNS` (10).
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use finetune_local::tch::{self, Kind, Tensor};
use finetune_local::{CausalLm, ForwardInput, LoadOptions};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let threads =
        env_or("BENCH_THREADS", std::thread::available_parallelism().map_or(1, usize::from));
    let (batch, seq, runs, warmup) =
        (env_or("BENCH_BATCH", 4), env_or("BENCH_SEQ", 128), env_or("BENCH_RUNS", 10), 3);
    let models = root.join("target/bench-models");
    let fixture = root.join("finetune-local/tests/fixtures/models/llama");
    let hf_python = root.join(".tools/hf-python");
    if !hf_python.is_dir() {
        eprintln!("transformers is not installed: run `scripts/setup --bench` first");
        std::process::exit(2);
    }

    // The peer first: it also writes the random models both sides load.
    let out = Command::new("python3")
        .arg(root.join("finetune-local/benches/forward_peer.py"))
        .args(["--models", models.to_str().unwrap(), "--fixture", fixture.to_str().unwrap()])
        .args([
            "--threads",
            &threads.to_string(),
            "--batch",
            &batch.to_string(),
            "--seq",
            &seq.to_string(),
        ])
        .args(["--warmup", &warmup.to_string(), "--runs", &runs.to_string()])
        .env(
            "PYTHONPATH",
            format!("{}:{}", hf_python.display(), root.join(".libtorch/site").display()),
        )
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("python3");
    if !out.status.success() {
        eprintln!("transformers peer failed:\n{}", String::from_utf8_lossy(&out.stderr));
        std::process::exit(1);
    }
    let peer: Vec<(PathBuf, f64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (PathBuf::from(v["model"].as_str().unwrap()), v["tokens_per_s"].as_f64().unwrap())
        })
        .collect();

    tch::set_num_threads(threads as i32);
    println!(
        "forward pass, fp32 CPU, batch {batch} x seq {seq}, {threads} thread(s), median of {runs} runs"
    );
    println!("{:<14} {:>14} {:>16} {:>8}", "model", "ours tok/s", "transformers tok/s", "ratio");
    for (dir, theirs) in peer {
        let model = CausalLm::load(&dir, &LoadOptions::default()).unwrap();
        let vocab = model.config().vocab_size;
        tch::manual_seed(1);
        let ids =
            Tensor::randint(vocab, [batch as i64, seq as i64], (Kind::Int64, tch::Device::Cpu));
        let mut times = Vec::new();
        tch::no_grad(|| {
            for i in 0..warmup + runs {
                let start = Instant::now();
                let _ = model.forward(&ForwardInput::new(&ids), None).unwrap();
                if i >= warmup {
                    times.push(start.elapsed().as_secs_f64());
                }
            }
        });
        times.sort_by(f64::total_cmp);
        let ours = (batch * seq) as f64 / times[times.len() / 2];
        let name = dir.file_name().unwrap().to_string_lossy();
        println!("{name:<14} {ours:>14.0} {theirs:>16.0} {:>7.2}x", ours / theirs);
    }
}
