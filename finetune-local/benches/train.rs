//! LoRA fine-tuning throughput and peak memory of our trainer next to
//! transformers + PEFT (`train_peer.py`, a plain PyTorch loop), in one run:
//! the same random Llama model, the same token data, LoRA r=16 on q/k/v/o,
//! AdamW, batch 8, the same threads, fp32 on CPU. Two datasets:
//!
//! * **fixed**: every example `BENCH_SEQ` tokens (half prompt, half
//!   completion); both sides pad nothing.
//! * **variable**: prompts of 8–320 and completions of 8–192 tokens
//!   (log-uniform), as real instruction data is long-tailed; we pack into
//!   rows of 512; HF pads each batch to its longest example (TRL's
//!   default: `variable/padded`) or groups examples of similar length as
//!   `group_by_length` does (`variable/grouped`). The examples are batches
//!   as that grouping forms them from a real data set: evenly spaced
//!   batches of a sorted 400-example megabatch, shuffled.
//!
//! Each side runs in its own process, so peak RSS is its own. Each trains
//! two passes over the data: the first warms up, the second is timed, so
//! both sides time the same rows once each (a warm-up of a few steps would
//! leave out different rows on each side: HF's length grouping puts its
//! longest batch first). Tokens/s counts real (non-padding) tokens.
//!
//! ```text
//! scripts/setup --bench && cargo bench -p finetune-local --bench train
//! ```
//! `BENCH_THREADS` (all cores), `BENCH_STEPS` (steps per pass: 12),
//! `BENCH_SEQ` (256),
//! `BENCH_CASES` (`fixed,variable`). A side that runs out of memory shows
//! as a dash, with the reason below the table.
//!
//! `BENCH_MODEL=smollm2` runs the same comparison on a real pretrained
//! model, SmolLM2-135M-Instruct (imported from the GGUF file `scripts/setup`
//! fetches; both sides load the imported folder), with LoRA r=16 on
//! every linear layer (q, k, v, o, gate, up, down) and 4 steps per pass
//! unless `BENCH_STEPS` says otherwise. `BENCH_MODEL=qwen2.5-0.5b` does the
//! same on a random model of Qwen2.5-0.5B's shape (494M parameters, vocab
//! 151936; the peer script creates it once in `target/bench-train`), 3
//! steps per pass by default.
//! `BENCH_CHECKPOINTING=full` (or `1`) turns on activation checkpointing on
//! both sides (HF's `gradient_checkpointing_enable`, which recomputes whole
//! layers, as our `full` does); `selective` runs ours keeping the frozen
//! projections' outputs ([`Checkpointing::Selective`]) against the same
//! HF runs. `BENCH_DTYPE=bf16` computes in
//! bfloat16: ours holds the base model in bf16 with f32 LoRA adapters and
//! optimizer state; HF keeps f32 weights and runs the forward under
//! `torch.autocast` bf16, as `TrainingArguments(bf16=True)` does on CPU.
//!
//! Each of `BENCH_MODEL`, `BENCH_DTYPE` and `BENCH_CHECKPOINTING` takes a
//! comma-separated list, and the run covers every combination in one
//! table, each HF run once; `BENCH_MATRIX=1` means `smollm2,qwen2.5-0.5b` ×
//! `fp32,bf16` × `off,full,selective` (each list can still be narrowed).
//! Under the table: our peak RSS with checkpointing against HF's without
//! it, per model, dtype and data.
//!
//! `BENCH_DEVICE=cuda` runs both sides on `cuda:0` (HF with SDPA attention
//! under `torch.autocast` on CUDA); the memory columns are then each
//! side's peak of libtorch's caching allocator (`max_memory_allocated`,
//! ours through [`DeviceMemory`]). The MFU columns divide each side's
//! model FLOPs a second (the same count for both: see
//! [`lora_flops_per_token`]) by `BENCH_PEAK_TFLOPS` when set (a device's
//! nominal dense peak, as `scripts/gpu-check` sets it for the GPU it
//! finds), otherwise by the rate this machine measures for one large
//! matmul in the row's dtype. `BENCH_ROOT` (the repository, default the
//! one this was built in) and `BENCH_HF_PYTHON` (transformers and PEFT,
//! default `.tools/hf-python`) let carried binaries run elsewhere.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

use finetune_local::lora::LoraConfig;
use finetune_local::sft::{IGNORE, TokenizedExample};
use finetune_local::tch::{Device, Kind, Tensor};
use finetune_local::train::{
    Checkpointing, DeviceMemory, Method, ResidentMemory, Schedule, TrainConfig, TrainEvent, Trainer,
};
use finetune_local::{CausalLm, LoadOptions, ModelConfig};

const BATCH: usize = 8;
/// Passes over the data on each side; the last is timed.
const PASSES: usize = 2;
const PACK_LEN: usize = 512;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One example as both sides read it.
#[derive(Clone)]
struct Row {
    ids: Vec<i64>,
    prompt_len: usize,
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn log_uniform(&mut self, lo: f64, hi: f64) -> usize {
        (lo.ln() + self.next() * (hi.ln() - lo.ln())).exp().round() as usize
    }
}

fn dataset(case: &str, n: usize, seq: usize, vocab: i64) -> Vec<Row> {
    let mut rng = Lcg(7);
    let lengths = match case {
        "fixed" => vec![(seq / 2, seq - seq / 2); n],
        _ => long_tailed(&mut rng, n),
    };
    lengths
        .into_iter()
        .map(|(p, c)| {
            let ids = (0..p + c).map(|_| 3 + (rng.next() * (vocab - 3) as f64) as i64).collect();
            Row { ids, prompt_len: p }
        })
        .collect()
}

/// Batches in transformers' LengthGroupedSampler's megabatch.
const MEGABATCH: usize = 50;

/// `n` (prompt, completion) lengths of long-tailed data, in batches as
/// `group_by_length` forms them from a real data set: a megabatch of
/// examples sorted by length and cut into batches, of which `n / BATCH`
/// evenly spaced ones are kept (a few dozen examples sorted alone would
/// group far more loosely than a real set does). Shuffled, as TRL's
/// default (padded) order sees them; grouping them again gives back the
/// same batches.
fn long_tailed(rng: &mut Lcg, n: usize) -> Vec<(usize, usize)> {
    let batches = n.div_ceil(BATCH);
    let pool = MEGABATCH.max(batches);
    let mut all: Vec<(usize, usize)> = (0..pool * BATCH)
        .map(|_| (rng.log_uniform(8.0, 320.0), rng.log_uniform(8.0, 192.0)))
        .collect();
    all.sort_by_key(|&(p, c)| std::cmp::Reverse(p + c));
    let mut rows: Vec<(usize, usize)> = (0..batches)
        .flat_map(|j| {
            let b = (2 * j + 1) * pool / (2 * batches);
            all[b * BATCH..(b + 1) * BATCH].to_vec()
        })
        .take(n)
        .collect();
    for i in (1..rows.len()).rev() {
        let j = ((rng.next() * (i + 1) as f64) as usize).min(i);
        rows.swap(i, j);
    }
    rows
}

fn write_json(rows: &[Row], path: &Path) {
    let v: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::json!({ "input_ids": r.ids, "prompt_len": r.prompt_len }))
        .collect();
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

fn read_json(path: &Path) -> Vec<TokenizedExample> {
    let v: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v.iter()
        .map(|r| {
            let ids: Vec<i64> = serde_json::from_value(r["input_ids"].clone()).unwrap();
            let p = r["prompt_len"].as_u64().unwrap() as usize;
            let targets = (0..ids.len())
                .map(|i| if i + 1 < ids.len() && i + 1 >= p { ids[i + 1] } else { IGNORE })
                .collect();
            TokenizedExample { input_ids: ids, targets }
        })
        .collect()
}

const MIB: f64 = 1024.0 * 1024.0;

fn peak_rss_mib() -> f64 {
    ResidentMemory::of_this_process().map_or(f64::NAN, |m| m.peak as f64 / MIB)
}

/// The child process's arguments, after `--child`: model folder, data
/// file, case, threads, LoRA targets, checkpointing, `bf16`/`fp32`,
/// `cuda`/`cpu`.
struct Child<'a> {
    model: &'a Path,
    data: &'a Path,
    case: &'a str,
    threads: usize,
    targets: &'a str,
    checkpointing: Checkpointing,
    bf16: bool,
    device: Device,
}

impl<'a> Child<'a> {
    fn from_args(a: &'a [String]) -> Self {
        Self {
            model: Path::new(&a[0]),
            data: Path::new(&a[1]),
            case: &a[2],
            threads: a[3].parse().unwrap(),
            targets: &a[4],
            checkpointing: match a[5].as_str() {
                "0" => Checkpointing::Off,
                "1" => Checkpointing::Full,
                other => other.parse().unwrap(),
            },
            bf16: a[6] == "bf16",
            device: if a[7] == "cuda" { Device::Cuda(0) } else { Device::Cpu },
        }
    }
}

/// The child process: trains and prints one JSON line.
fn ours(child: &Child<'_>) {
    let Child { model, data, case, threads, targets, checkpointing, bf16, device } = *child;
    finetune_local::tch::set_num_threads(threads as i32);
    let examples = read_json(data);
    let dtype = Some(if bf16 { Kind::BFloat16 } else { Kind::Float });
    let mut model = CausalLm::load(model, &LoadOptions { dtype, device }).unwrap();
    let packing = case == "variable";
    let config = TrainConfig {
        method: Method::Lora(LoraConfig {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            target_modules: targets.split(',').map(String::from).collect(),
            use_rslora: false,
        }),
        epochs: PASSES,
        batch_size: BATCH,
        micro_batch_size: BATCH,
        learning_rate: 2e-4,
        schedule: Schedule::Constant,
        packing,
        max_length: PACK_LEN,
        gradient_checkpointing: checkpointing,
        ..TrainConfig::default()
    };
    let mut steps = Vec::new();
    let mut plan = None;
    // The peak so far (loading), then the peak of training alone: Linux
    // resets VmHWM to the current RSS on "5" to clear_refs.
    let load_peak = peak_rss_mib();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    Trainer::new(&mut model, config)
        .unwrap()
        .on_event(|e| match e {
            TrainEvent::Step(r) => steps.push(*r),
            TrainEvent::Planned(p) => plan = Some(*p),
            _ => {}
        })
        .fit(&examples, &[])
        .unwrap();
    let train_peak = peak_rss_mib();
    // The whole child's GPU peak, weights included, as HF's side reports it.
    let gpu = match device {
        Device::Cuda(i) => DeviceMemory::of_cuda(i).unwrap().peak_allocated as f64 / MIB,
        _ => f64::NAN,
    };
    let warmup = steps.len() - steps.len() / PASSES;
    let timed = &steps[warmup..];
    let tokens: u64 = timed.iter().map(|r| r.tokens).sum();
    let seconds = steps.last().unwrap().elapsed_seconds - steps[warmup - 1].elapsed_seconds;
    println!(
        "{}",
        serde_json::json!({
            "tokens_per_s": tokens as f64 / seconds,
            "timed_tokens": tokens,
            "peak_rss_mib": load_peak.max(train_peak),
            "train_peak_rss_mib": train_peak,
            "peak_gpu_mib": gpu,
            "first_loss": steps[0].loss,
            "last_loss": steps.last().unwrap().loss,
            "steps": steps.len(),
            "plan_mib": plan.map_or(f64::NAN, |p| p.total() as f64 / (1024.0 * 1024.0)),
        })
    );
}

/// Which model the benchmark trains.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The forward benchmark's random llama-small (hidden 256, 4 layers).
    LlamaSmall,
    /// The real SmolLM2-135M-Instruct, imported from its GGUF file.
    SmolLm2,
    /// A random model of Qwen2.5-0.5B's shape (tied embeddings, q/k/v
    /// biases), made by the peer script.
    Qwen05b,
}

impl Shape {
    /// Its folder under `target/bench-train`.
    fn dir(self) -> &'static str {
        match self {
            Shape::LlamaSmall => "llama-lora",
            Shape::SmolLm2 => "smollm2",
            Shape::Qwen05b => "qwen2.5-0.5b-shaped",
        }
    }

    /// Its name in the table.
    fn label(self) -> &'static str {
        match self {
            Shape::LlamaSmall => "llama-small",
            Shape::SmolLm2 => "SmolLM2-135M",
            Shape::Qwen05b => "Qwen2.5-0.5B*",
        }
    }

    /// Steps per pass when `BENCH_STEPS` does not say.
    fn default_steps(self) -> usize {
        match self {
            Shape::LlamaSmall => 12,
            Shape::SmolLm2 => 4,
            Shape::Qwen05b => 3,
        }
    }

    /// The modules LoRA adapts: all linear ones at real sizes.
    fn targets(self) -> &'static str {
        match self {
            Shape::LlamaSmall => "q_proj,k_proj,v_proj,o_proj",
            _ => "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        }
    }

    /// The table's heading.
    fn subject(self) -> &'static str {
        match self {
            Shape::LlamaSmall => {
                "LoRA r=16 (q,k,v,o) on a random Llama (hidden 256, 4 layers, vocab 4096)"
            }
            Shape::SmolLm2 => {
                "LoRA r=16 (all linear) on SmolLM2-135M-Instruct (hidden 576, 30 layers, vocab 49152)"
            }
            Shape::Qwen05b => {
                "LoRA r=16 (all linear) on a random Qwen2.5-0.5B-shaped model (hidden 896, 24 layers, vocab 151936)"
            }
        }
    }
}

/// The child's JSON line, or why there is none: a peer that runs out of
/// memory at real sizes is a result, not a reason to stop the benchmark.
fn run_json(cmd: &mut Command) -> Result<serde_json::Value, String> {
    use std::os::unix::process::ExitStatusExt;
    let out = cmd.output().expect("spawn");
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{cmd:?} failed ({}):\n{stderr}", out.status);
        return Err(match out.status.signal() {
            Some(9) => "killed (out of memory)".to_owned(),
            _ if stderr.contains("not enough memory") => "out of memory".to_owned(),
            _ => format!("failed ({})", out.status),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default()).map_err(|e| e.to_string())
}

/// One comma-separated list from the environment, each item parsed by
/// `parse` (or the whole default when unset).
fn env_list<T>(name: &str, default: &str, parse: impl Fn(&str) -> Option<T>) -> Vec<T> {
    let text = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    text.split(',')
        .map(|item| {
            parse(item.trim()).unwrap_or_else(|| {
                eprintln!("{name}={text}: `{item}` is not one of its values (see the bench's doc)");
                std::process::exit(2);
            })
        })
        .collect()
}

/// A finished child's figures, kept for the summary under the table.
struct Cell {
    shape: Shape,
    bf16: bool,
    checkpointing: Checkpointing,
    case: &'static str,
    ours: serde_json::Value,
    /// HF's runs that finished (padded and grouped for `variable`).
    peers: Vec<serde_json::Value>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        ours(&Child::from_args(&args[i + 1..]));
        return;
    }
    let root = std::env::var_os("BENCH_ROOT")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."), PathBuf::from);
    let threads =
        env_or("BENCH_THREADS", std::thread::available_parallelism().map_or(1, usize::from));
    // BENCH_MATRIX=1: both real sizes, both dtypes, with and without
    // checkpointing, in one run (each list can still be narrowed).
    let matrix = std::env::var("BENCH_MATRIX").is_ok_and(|v| v == "1");
    let (models, dtypes, checkpointings) = if matrix {
        ("smollm2,qwen2.5-0.5b", "fp32,bf16", "off,full,selective")
    } else {
        ("llama-small", "fp32", "off")
    };
    let shapes = env_list("BENCH_MODEL", models, |m| match m {
        "llama-small" => Some(Shape::LlamaSmall),
        "smollm2" => Some(Shape::SmolLm2),
        "qwen2.5-0.5b" => Some(Shape::Qwen05b),
        _ => None,
    });
    let dtypes = env_list("BENCH_DTYPE", dtypes, |d| match d {
        "fp32" | "float32" => Some(false),
        "bf16" | "bfloat16" => Some(true),
        _ => None,
    });
    let checkpointings = env_list("BENCH_CHECKPOINTING", checkpointings, |c| match c {
        "0" => Some(Checkpointing::Off),
        "1" => Some(Checkpointing::Full),
        other => other.parse().ok(),
    });
    let cuda = match std::env::var("BENCH_DEVICE").as_deref() {
        Ok("cuda") => true,
        Ok("cpu") | Err(_) => false,
        Ok(other) => {
            eprintln!("BENCH_DEVICE={other}: `cpu` or `cuda`");
            std::process::exit(2);
        }
    };
    if cuda && !finetune_local::tch::Cuda::is_available() {
        eprintln!("BENCH_DEVICE=cuda: libtorch sees no CUDA device");
        std::process::exit(2);
    }
    let hf_python = std::env::var_os("BENCH_HF_PYTHON")
        .map_or_else(|| root.join(".tools/hf-python"), PathBuf::from);
    if !hf_python.is_dir() {
        eprintln!(
            "transformers and peft are not installed in {}: run `scripts/setup --bench` first",
            hf_python.display()
        );
        std::process::exit(2);
    }
    let work: PathBuf = root.join("target/bench-train");
    std::fs::create_dir_all(&work).unwrap();
    let cases = std::env::var("BENCH_CASES").unwrap_or_else(|_| "fixed,variable".to_owned());
    println!(
        "LoRA r=16, batch {BATCH}, {}; bf16: ours a bf16 base under f32 adapters, HF f32 \
         weights under autocast; ckpt: activation checkpointing, HF's recomputing whole layers \
         (ours: full, or sel. for selective); memory: {}",
        if cuda { "cuda:0".to_owned() } else { format!("{threads} threads, CPU") },
        if cuda { "peak GPU memory allocated" } else { "peak RSS" }
    );
    let device = if cuda { Device::Cuda(0) } else { Device::Cpu };
    let peaks: Vec<(bool, f64)> = dtypes
        .iter()
        .map(|&bf16| {
            let (peak, source) = peak_flops(device, bf16, threads);
            println!(
                "MFU in {}: model FLOPs a second over {:.0} GFLOP/s, {source}",
                if bf16 { "bf16" } else { "fp32" },
                peak / 1e9
            );
            (bf16, peak)
        })
        .collect();
    println!();
    for shape in &shapes {
        let steps = env_or("BENCH_STEPS", shape.default_steps());
        println!("{}, {PASSES} passes of {steps} steps, the last timed", shape.subject());
    }
    let mem = if cuda { "GPU" } else { "RSS" };
    println!(
        "\n{:<13} {:<5} {:<5} {:<17} {:>10} {:>9} {:>7} {:>10} {:>10} {:>7} {:>8} {:>7}",
        "model",
        "dtype",
        "ckpt",
        "data",
        "ours tok/s",
        "HF tok/s",
        "speed",
        format!("ours {mem}"),
        format!("HF {mem}"),
        mem,
        "ours MFU",
        "HF MFU"
    );
    let mut cells = Vec::new();
    let mut peers = Peers::default();
    for &shape in &shapes {
        let model = prepare(&root, &work, &hf_python, shape);
        for &bf16 in &dtypes {
            for &checkpointing in &checkpointings {
                let peak = peaks.iter().find(|p| p.0 == bf16).map_or(f64::NAN, |p| p.1);
                let setting = Setting { shape, bf16, checkpointing, threads, cuda, peak };
                for case in ["fixed", "variable"] {
                    if cases.split(',').any(|c| c == case) {
                        cells.push(run_case(
                            &root, &work, &hf_python, &model, &setting, case, &mut peers,
                        ));
                    }
                }
            }
        }
    }
    // The memory target: our peak with checkpointing against HF's without.
    for with in cells.iter().filter(|c| c.checkpointing != Checkpointing::Off) {
        let without = cells.iter().find(|c| {
            c.checkpointing == Checkpointing::Off
                && c.shape == with.shape
                && c.bf16 == with.bf16
                && c.case == with.case
        });
        // HF's smallest peak without checkpointing (padded or grouped).
        let theirs = without
            .map_or(f64::NAN, |c| c.peers.iter().map(|p| memory(p, cuda)).fold(f64::NAN, f64::min));
        if theirs.is_finite() {
            let ours = memory(&with.ours, cuda);
            println!(
                "{} {} {}: our peak {mem} with {} checkpointing {ours:.0} MiB, HF's smallest \
                 without {theirs:.0} MiB ({:.2}×)",
                with.shape.label(),
                if with.bf16 { "bf16" } else { "fp32" },
                with.case,
                format!("{:?}", with.checkpointing).to_lowercase(),
                ours / theirs
            );
        }
    }
}

/// A side's peak: resident memory on the CPU, the caching allocator's
/// allocated bytes on CUDA.
fn memory(v: &serde_json::Value, cuda: bool) -> f64 {
    v[if cuda { "peak_gpu_mib" } else { "peak_rss_mib" }].as_f64().unwrap_or(f64::NAN)
}

/// The FLOP/s MFU is measured against in `bf16` or fp32 on `device`, and
/// where the figure comes from: `BENCH_PEAK_TFLOPS`, or the best of a few
/// timed square matmuls (a rate this machine reaches, so an MFU near 1
/// means matmul-bound, not a vendor's peak).
fn peak_flops(device: Device, bf16: bool, threads: usize) -> (f64, &'static str) {
    if let Some(t) = std::env::var("BENCH_PEAK_TFLOPS").ok().and_then(|v| v.parse::<f64>().ok()) {
        return (t * 1e12, "BENCH_PEAK_TFLOPS");
    }
    finetune_local::tch::set_num_threads(threads as i32);
    let kind = if bf16 { Kind::BFloat16 } else { Kind::Float };
    let n: i64 = if device.is_cuda() { 8192 } else { 1024 };
    let a = Tensor::f_randn([n, n], (kind, device)).unwrap();
    let b = Tensor::f_randn([n, n], (kind, device)).unwrap();
    let mut best = f64::INFINITY;
    for _ in 0..6 {
        let start = std::time::Instant::now();
        let repeats = if device.is_cuda() { 20 } else { 2 };
        let mut c = a.f_matmul(&b).unwrap();
        for _ in 1..repeats {
            c = a.f_matmul(&b).unwrap();
        }
        // Reading a value waits for the device.
        let _ = f64::try_from(c.f_sum(Kind::Float).unwrap()).unwrap();
        best = best.min(start.elapsed().as_secs_f64() / repeats as f64);
    }
    (2.0 * (n as f64).powi(3) / best, "the best rate of a timed matmul here")
}

/// Model FLOPs of LoRA training over `rows`, per token: the frozen linear
/// layers' forward (2 a weight a token) and backward to their inputs (2
/// more: frozen weights get no gradient); each adapter's forward and
/// backward (6 a weight a token); attention's two matmuls over each
/// token's causal context within its example (forward 4 × query width ×
/// context a layer, backward twice that); the LM head (4 a weight) at the
/// trained positions only. Recomputation under checkpointing and work on
/// padding do not count, so both sides share one figure (PaLM's MFU).
fn lora_flops_per_token(c: &ModelConfig, targets: &str, r: f64, rows: &[Row]) -> f64 {
    let (h, inter) = (c.hidden_size as f64, c.intermediate_size as f64);
    let q = (c.num_heads * c.head_dim) as f64;
    let kv = (c.num_kv_heads * c.head_dim) as f64;
    let modules = [
        ("q_proj", h, q),
        ("k_proj", h, kv),
        ("v_proj", h, kv),
        ("o_proj", q, h),
        ("gate_proj", h, inter),
        ("up_proj", h, inter),
        ("down_proj", inter, h),
    ];
    let layers = c.num_layers as f64;
    let frozen: f64 = modules.iter().map(|(_, i, o)| i * o).sum();
    let adapters: f64 = modules
        .iter()
        .filter(|(name, _, _)| targets.split(',').any(|t| t == *name))
        .map(|(_, i, o)| r * (i + o))
        .sum();
    let tokens: f64 = rows.iter().map(|row| row.ids.len() as f64).sum();
    // Σ over an example's tokens of the keys each attends: n(n + 1)/2.
    let context: f64 =
        rows.iter().map(|row| (row.ids.len() * (row.ids.len() + 1)) as f64 / 2.0).sum();
    let trained: f64 = rows.iter().map(|row| (row.ids.len() - row.prompt_len) as f64).sum();
    let per_layer = tokens * (4.0 * frozen + 6.0 * adapters) + 12.0 * q * context;
    (layers * per_layer + trained * 4.0 * h * c.vocab_size as f64) / tokens
}

/// The model folder both sides load for `shape`, made on first use.
fn prepare(root: &Path, work: &Path, hf_python: &Path, shape: Shape) -> PathBuf {
    let model = work.join(shape.dir());
    if shape == Shape::SmolLm2 && !model.join("config.json").is_file() {
        let gguf = root.join(".tools/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        if !gguf.is_file() {
            eprintln!("{} is missing: run `scripts/setup` first", gguf.display());
            std::process::exit(2);
        }
        finetune_local::gguf::import_gguf(&gguf, &model).unwrap();
    }
    let setting = Setting {
        shape,
        bf16: false,
        checkpointing: Checkpointing::Off,
        threads: 1,
        cuda: false,
        peak: f64::NAN,
    };
    // The peer writes the random models both sides load.
    assert!(
        peer_command(root, hf_python, &model, &setting).status().expect("python3").success(),
        "creating the model failed"
    );
    model
}

/// One cell of the matrix, but the data.
struct Setting {
    shape: Shape,
    bf16: bool,
    checkpointing: Checkpointing,
    threads: usize,
    /// Both sides on `cuda:0`.
    cuda: bool,
    /// The FLOP/s MFU divides by.
    peak: f64,
}

/// HF's figures (or why there are none) by setting, data and grouping:
/// our checkpointing policies share HF's one checkpointed run.
type Peers = std::collections::HashMap<String, Result<serde_json::Value, String>>;

fn ckpt_label(c: Checkpointing) -> &'static str {
    match c {
        Checkpointing::Off => "no",
        Checkpointing::Full => "full",
        Checkpointing::Selective => "sel.",
    }
}

fn peer_command(root: &Path, hf_python: &Path, model: &Path, s: &Setting) -> Command {
    let mut c = Command::new("python3");
    c.arg(root.join("finetune-local/benches/train_peer.py"))
        .args(["--model", model.to_str().unwrap(), "--targets", s.shape.targets()])
        .args(["--shape", if s.shape == Shape::Qwen05b { "qwen2.5-0.5b" } else { "llama-small" }])
        .args((s.checkpointing != Checkpointing::Off).then_some("--checkpointing"))
        .args(s.bf16.then_some("--bf16"))
        .args(s.cuda.then_some(["--device", "cuda"]).into_iter().flatten())
        .env(
            "PYTHONPATH",
            format!("{}:{}", hf_python.display(), root.join(".libtorch/site").display()),
        )
        .env("HF_HUB_OFFLINE", "1");
    c
}

/// Both sides on one dataset; prints its rows.
fn run_case(
    root: &Path,
    work: &Path,
    hf_python: &Path,
    model: &Path,
    s: &Setting,
    case: &'static str,
    peers: &mut Peers,
) -> Cell {
    let steps = env_or("BENCH_STEPS", s.shape.default_steps());
    let seq = env_or("BENCH_SEQ", 256);
    // The token ids are drawn from the vocabulary the model declares.
    let config = ModelConfig::from_dir(model).unwrap();
    let data = work.join(format!("{case}.json"));
    let rows = dataset(case, steps * BATCH, seq, config.vocab_size);
    write_json(&rows, &data);
    let flops = lora_flops_per_token(&config, s.shape.targets(), 16.0, &rows);
    let threads = s.threads.to_string();
    let mut peer = |extra: &[&str]| {
        let key = format!(
            "{} {} {} {} {case} {extra:?}",
            s.cuda,
            s.shape.dir(),
            s.bf16,
            s.checkpointing != Checkpointing::Off
        );
        peers
            .entry(key)
            .or_insert_with(|| {
                let mut cmd = peer_command(root, hf_python, model, s);
                cmd.args(["--data", data.to_str().unwrap(), "--threads", &threads])
                    .args(["--batch", &BATCH.to_string(), "--epochs", &PASSES.to_string()])
                    .args(extra);
                run_json(&mut cmd)
            })
            .clone()
    };
    let ours = run_json(
        Command::new(std::env::current_exe().unwrap())
            .arg("--child")
            .arg(model)
            .arg(&data)
            .arg(case)
            .arg(&threads)
            .arg(s.shape.targets())
            .arg(format!("{:?}", s.checkpointing).to_lowercase())
            .arg(if s.bf16 { "bf16" } else { "fp32" })
            .arg(if s.cuda { "cuda" } else { "cpu" }),
    )
    .unwrap_or_else(|why| {
        eprintln!("our side: {why}");
        std::process::exit(1)
    });
    let prefix = format!(
        "{:<13} {:<5} {:<5}",
        s.shape.label(),
        if s.bf16 { "bf16" } else { "fp32" },
        ckpt_label(s.checkpointing)
    );
    let line = Line { prefix: &prefix, cuda: s.cuda, mfu: flops / s.peak };
    let peers = if case == "fixed" {
        vec![line.print("fixed", &ours, peer(&[]))]
    } else {
        // HF pads each batch to its longest example (TRL's default), or
        // groups examples of similar length (`group_by_length`).
        vec![
            line.print("variable/padded", &ours, peer(&[])),
            line.print("variable/grouped", &ours, peer(&["--group-by-length"])),
        ]
    };
    Cell {
        shape: s.shape,
        bf16: s.bf16,
        checkpointing: s.checkpointing,
        case,
        ours,
        peers: peers.into_iter().flatten().collect(),
    }
}

/// What every row of one setting shares.
struct Line<'a> {
    prefix: &'a str,
    /// Memory columns from the GPU's allocator instead of RSS.
    cuda: bool,
    /// Model FLOPs a token over the peak FLOP/s: tokens/s × this is MFU.
    mfu: f64,
}

impl Line<'_> {
    /// Prints one row; returns HF's figures when it finished.
    fn print(
        &self,
        label: &str,
        me: &serde_json::Value,
        peer: Result<serde_json::Value, String>,
    ) -> Option<serde_json::Value> {
        let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let prefix = self.prefix;
        let ours_mem = memory(me, self.cuda);
        let ours_mfu = f(me, "tokens_per_s") * self.mfu;
        let peer = match peer {
            Ok(peer) => peer,
            Err(why) => {
                println!(
                    "{prefix} {:<17} {:>10.0} {:>9} {:>7} {:>6.0} MiB {:>10} {:>7} {:>7.1}% {:>7}",
                    label,
                    f(me, "tokens_per_s"),
                    "—",
                    "—",
                    ours_mem,
                    "—",
                    "—",
                    100.0 * ours_mfu,
                    "—"
                );
                eprintln!(
                    "  [{prefix} {label}] HF: {why}; our memory plan {:.0} MiB, our training's \
                     peak RSS {:.0} MiB",
                    f(me, "plan_mib"),
                    f(me, "train_peak_rss_mib")
                );
                return None;
            }
        };
        // Tokens/s compares like with like only over the same rows.
        assert_eq!(
            me["timed_tokens"].as_u64(),
            peer["timed_tokens"].as_u64(),
            "[{prefix} {label}] the two sides timed different rows"
        );
        let peer_mem = memory(&peer, self.cuda);
        println!(
            "{prefix} {:<17} {:>10.0} {:>9.0} {:>6.2}× {:>6.0} MiB {:>6.0} MiB {:>6.2}× {:>7.1}% \
             {:>6.1}%",
            label,
            f(me, "tokens_per_s"),
            f(&peer, "tokens_per_s"),
            f(me, "tokens_per_s") / f(&peer, "tokens_per_s"),
            ours_mem,
            peer_mem,
            ours_mem / peer_mem,
            100.0 * ours_mfu,
            100.0 * f(&peer, "tokens_per_s") * self.mfu,
        );
        eprintln!(
            "  [{prefix} {label}] loss ours {:.3} → {:.3}, HF {:.3} → {:.3}; our memory plan \
             {:.0} MiB, our training's peak RSS {:.0} MiB",
            f(me, "first_loss"),
            f(me, "last_loss"),
            f(&peer, "first_loss"),
            f(&peer, "last_loss"),
            f(me, "plan_mib"),
            f(me, "train_peak_rss_mib")
        );
        Some(peer)
    }
}
