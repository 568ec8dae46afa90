//! Data-parallel training over c10d's Gloo on loopback (and NCCL where
//! there is a GPU), with real processes: each test re-runs this test binary as the ranks (torchrun's
//! variables set), so every rank is its own process with its own
//! libtorch, as under a launcher.
#![cfg(feature = "distributed")]
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use finetune_local::distributed::ProcessGroup;
use finetune_local::lora::LoraConfig;
use finetune_local::sft::{Example, PromptFormat, TokenizeOptions, TokenizedExample, Truncation};
use finetune_local::tch::Tensor;
use finetune_local::topology::Topology;
use finetune_local::train::{Method, Schedule, TrainConfig, TrainEvent, Trainer};
use finetune_local::{CausalLm, LoadOptions, LocalError, Tokenizer};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama")
}

fn data() -> Vec<TokenizedExample> {
    examples(0..24)
}

/// Five: the ranks' shares differ in size.
fn validation() -> Vec<TokenizedExample> {
    examples(100..105)
}

fn examples(range: std::ops::Range<usize>) -> Vec<TokenizedExample> {
    let tok = Tokenizer::from_dir(&fixture()).unwrap();
    // Completions of different lengths: a mean per rank differs from the
    // mean over the step.
    let examples: Vec<Example> = range
        .map(|i| Example {
            system: None,
            prompt: format!("Item {i}:"),
            completion: " the cat sat on a mat"
                .split(' ')
                .take(2 + i % 5)
                .collect::<Vec<_>>()
                .join(" "),
        })
        .collect();
    let options = TokenizeOptions {
        format: PromptFormat::Base,
        max_length: 64,
        truncation: Truncation::KeepStart,
    };
    finetune_local::sft::tokenize_all(&tok, &examples, &options).unwrap().0
}

/// Global batch 8; `micro` examples per micro-batch.
fn config(micro: usize) -> TrainConfig {
    TrainConfig {
        method: Method::Lora(LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
            use_rslora: false,
        }),
        epochs: 2,
        batch_size: 8,
        micro_batch_size: micro,
        learning_rate: 1e-2,
        schedule: Schedule::Constant,
        max_length: 64,
        max_grad_norm: Some(0.5),
        ..TrainConfig::default()
    }
}

/// What a run leaves: its adapters and its step losses.
struct Run {
    adapters: Vec<(String, Tensor)>,
    losses: Vec<f64>,
    validation_losses: Vec<f64>,
    tokens_per_second: f64,
    /// (step, micro-batch size from then on) of each halving.
    halved: Vec<(usize, usize)>,
}

/// How a run is set up beyond its micro-batch.
#[derive(Default)]
struct Setup<'a> {
    out: Option<&'a Path>,
    resume: bool,
    checkpoint_every: Option<usize>,
    cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// The step whose first micro-batch reports running out of memory.
    inject_oom: Option<usize>,
}

fn train(
    micro: usize,
    setup: Setup<'_>,
    group: Option<&mut ProcessGroup>,
    on_step: impl FnMut(usize),
) -> finetune_local::Result<Run> {
    let mut model = CausalLm::load(&fixture(), &LoadOptions::default()).unwrap();
    let mut losses = Vec::new();
    let mut validation_losses = Vec::new();
    let mut speed = Vec::new();
    let mut halved = Vec::new();
    let mut on_step = on_step;
    {
        let config = TrainConfig { checkpoint_every: setup.checkpoint_every, ..config(micro) };
        let mut trainer = Trainer::new(&mut model, config)?.resume(setup.resume).on_event(|e| {
            if let TrainEvent::Step(r) = e {
                losses.push(r.loss);
                speed.push(r.tokens_per_second);
                on_step(r.step);
            }
            if let TrainEvent::Eval(r) = e {
                validation_losses.push(r.validation_loss);
            }
            if let TrainEvent::MicroBatchHalved { step, micro_batch_size } = e {
                halved.push((*step, *micro_batch_size));
            }
        });
        if let Some(step) = setup.inject_oom {
            trainer = trainer.inject_out_of_memory(step);
        }
        if let Some(out) = setup.out {
            trainer = trainer.output_dir(out);
        }
        if let Some(cancel) = setup.cancel {
            trainer = trainer.cancel_flag(cancel);
        }
        if let Some(group) = group {
            trainer = trainer.data_parallel(group);
        }
        trainer.fit(&data(), &validation())?;
    }
    let tokens_per_second = speed.iter().sum::<f64>() / speed.len().max(1) as f64;
    Ok(Run { adapters: model.peft_state(), losses, validation_losses, tokens_per_second, halved })
}

fn assert_same_adapters(a: &[(String, Tensor)], b: &[(String, Tensor)], what: &str) {
    let sorted = |t: &[(String, Tensor)]| {
        let mut t: Vec<(String, Tensor)> =
            t.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let (a, b) = (sorted(a), sorted(b));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let diff = (ta - tb).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{what} {na}: {diff}");
    }
}

const ROLE: &str = "FINETUNE_TEST_RANK_OF";
const OUT: &str = "FINETUNE_TEST_OUT";

/// Starts `world` ranks of `test` (this binary, that test alone).
fn launch(test: &str, world: usize, out: &Path) -> Vec<Child> {
    launch_with(test, world, out, &[])
}

fn launch_with(test: &str, world: usize, out: &Path, env: &[(&str, &str)]) -> Vec<Child> {
    let port = finetune_core::testing::free_loopback_port().unwrap();
    (0..world)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .envs(env.iter().copied())
                .args(["--exact", test, "--nocapture", "--test-threads", "1"])
                .env(ROLE, test)
                .env(OUT, out)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("GLOO_SOCKET_IFNAME", "lo")
                .env("OMP_NUM_THREADS", "1")
                .spawn()
                .unwrap()
        })
        .collect()
}

/// The rank this process plays in `test`, when it is one.
fn as_rank(test: &str) -> Option<(Topology, PathBuf)> {
    (std::env::var(ROLE).ok()? == test)
        .then(|| (Topology::from_env().unwrap(), PathBuf::from(std::env::var(OUT).unwrap())))
}

fn wait(children: &mut [Child], within: Duration) -> Vec<i32> {
    let started = Instant::now();
    let mut codes = vec![None; children.len()];
    while codes.iter().any(Option::is_none) {
        for (child, code) in children.iter_mut().zip(&mut codes) {
            if code.is_none()
                && let Some(status) = child.try_wait().unwrap()
            {
                *code = Some(status.code().unwrap_or(-1));
            }
        }
        if started.elapsed() > within {
            for child in children.iter_mut() {
                let _ = child.kill();
            }
            panic!("the ranks did not end within {within:?}: {codes:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    codes.into_iter().map(Option::unwrap).collect()
}

#[test]
fn two_ranks_take_the_steps_one_process_takes_with_the_global_batch() {
    const TEST: &str = "two_ranks_take_the_steps_one_process_takes_with_the_global_batch";
    if let Some((topology, out)) = as_rank(TEST) {
        let mut group = ProcessGroup::gloo(&topology, Duration::from_secs(60)).unwrap();
        let rank_dir = out.join("run");
        let setup = Setup { out: Some(&rank_dir), ..Setup::default() };
        let run = train(4, setup, Some(&mut group), |_| {}).unwrap();
        let file = out.join(format!("rank{}.safetensors", topology.rank));
        Tensor::write_safetensors(&run.adapters, &file).unwrap();
        let summary = serde_json::json!({
            "losses": run.losses,
            "validation_losses": run.validation_losses,
            "tokens_per_second": run.tokens_per_second,
        });
        std::fs::write(out.join(format!("rank{}.json", topology.rank)), summary.to_string())
            .unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut ranks = launch(TEST, 2, dir.path());
    let started = Instant::now();
    assert_eq!(wait(&mut ranks, Duration::from_secs(600)), [0, 0]);
    let two = started.elapsed();
    // One process, the global batch of 8 in one micro-batch.
    let started = Instant::now();
    let one = train(8, Setup::default(), None, |_| {}).unwrap();
    let alone = started.elapsed();
    let summary = |rank: usize| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("rank{rank}.json"))).unwrap(),
        )
        .unwrap()
    };
    for rank in 0..2 {
        for (key, expected) in
            [("losses", &one.losses), ("validation_losses", &one.validation_losses)]
        {
            let losses: Vec<f64> = serde_json::from_value(summary(rank)[key].clone()).unwrap();
            assert_eq!(losses.len(), expected.len(), "{key}");
            assert!(!losses.is_empty(), "{key}");
            for (i, (a, b)) in losses.iter().zip(expected).enumerate() {
                assert!((a - b).abs() < 1e-5, "rank {rank} {key}[{i}]: {a} vs {b}");
            }
        }
        let adapters =
            Tensor::read_safetensors(dir.path().join(format!("rank{rank}.safetensors"))).unwrap();
        assert_same_adapters(&adapters, &one.adapters, &format!("rank {rank}"));
    }
    // Rank 0 alone wrote the run's files.
    let run = dir.path().join("run");
    assert!(run.join("metrics.jsonl").is_file() && run.join("loss.svg").is_file());
    let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().count();
    assert_eq!(
        lines,
        one.losses.len() + one.validation_losses.len(),
        "one metrics line per step and evaluation: one writer"
    );
    eprintln!(
        "scaling (CPU, 1 thread per process): 1 process {:.0} tok/s, 2 processes {:.0} tok/s \
         (rank 0's steps, global tokens); wall {:.1} s vs {:.1} s (2 processes include start-up)",
        one.tokens_per_second,
        summary(0)["tokens_per_second"].as_f64().unwrap(),
        alone.as_secs_f64(),
        two.as_secs_f64()
    );
}

#[test]
fn an_out_of_memory_step_on_one_rank_halves_every_ranks_micro_batch() {
    const TEST: &str = "an_out_of_memory_step_on_one_rank_halves_every_ranks_micro_batch";
    if let Some((topology, out)) = as_rank(TEST) {
        let mut group = ProcessGroup::gloo(&topology, Duration::from_secs(60)).unwrap();
        // Rank 1 alone runs out of memory, at step 2.
        let setup = Setup { inject_oom: (topology.rank == 1).then_some(2), ..Setup::default() };
        let run = train(4, setup, Some(&mut group), |_| {}).unwrap();
        let file = out.join(format!("rank{}.safetensors", topology.rank));
        Tensor::write_safetensors(&run.adapters, &file).unwrap();
        let halved = serde_json::json!(run.halved);
        std::fs::write(out.join(format!("rank{}.json", topology.rank)), halved.to_string())
            .unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut ranks = launch(TEST, 2, dir.path());
    assert_eq!(wait(&mut ranks, Duration::from_secs(600)), [0, 0]);
    // Both ranks ran step 2 again with micro-batches of 2, and trained what
    // one process with the global batch trains.
    let one = train(8, Setup::default(), None, |_| {}).unwrap();
    for rank in 0..2 {
        let halved: Vec<(usize, usize)> = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("rank{rank}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(halved, [(2, 2)], "rank {rank}");
        let adapters =
            Tensor::read_safetensors(dir.path().join(format!("rank{rank}.safetensors"))).unwrap();
        assert_same_adapters(&adapters, &one.adapters, &format!("rank {rank}"));
    }
}

#[test]
fn a_killed_rank_fails_the_other_with_its_rank_named() {
    const TEST: &str = "a_killed_rank_fails_the_other_with_its_rank_named";
    if let Some((topology, out)) = as_rank(TEST) {
        let mut group = ProcessGroup::gloo(&topology, Duration::from_secs(30)).unwrap();
        let rank = topology.rank;
        let result = train(4, Setup::default(), Some(&mut group), |step| {
            if rank == 1 && step == 2 {
                // Tell the parent to kill us, and wait for it.
                std::fs::write(out.join("rank1-at-step-2"), "").unwrap();
                std::thread::sleep(Duration::from_secs(60));
            }
        });
        let text = match result {
            Ok(_) => "finished".to_owned(),
            Err(e @ LocalError::Distributed { .. }) => format!("distributed: {e}"),
            Err(e) => format!("other: {e}"),
        };
        std::fs::write(out.join(format!("rank{rank}.txt")), text).unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut ranks = launch(TEST, 2, dir.path());
    let started = Instant::now();
    while !dir.path().join("rank1-at-step-2").exists() {
        assert!(started.elapsed() < Duration::from_secs(300), "rank 1 never reached step 2");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill").args(["-9", &ranks[1].id().to_string()]).status().unwrap();
    let killed = Instant::now();
    let mut rank0 = vec![ranks.remove(0)];
    assert_eq!(wait(&mut rank0, Duration::from_secs(60)), [0]);
    let _ = ranks[0].wait();
    let text = std::fs::read_to_string(dir.path().join("rank0.txt")).unwrap();
    assert!(text.starts_with("distributed: data-parallel training: rank 1 was lost"), "{text}");
    eprintln!(
        "rank 0 failed {:.1} s after rank 1 was killed: {text}",
        killed.elapsed().as_secs_f64()
    );
    assert!(killed.elapsed() < Duration::from_secs(30), "within the 30 s timeout");
}

#[test]
fn a_cancel_on_one_rank_stops_both_and_the_run_resumes_to_the_uninterrupted_adapters() {
    const TEST: &str =
        "a_cancel_on_one_rank_stops_both_and_the_run_resumes_to_the_uninterrupted_adapters";
    if let Some((topology, out)) = as_rank(TEST) {
        let resume = std::env::var("FINETUNE_TEST_PHASE").unwrap() == "resume";
        let mut group = ProcessGroup::gloo(&topology, Duration::from_secs(60)).unwrap();
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&cancel);
        let rank = topology.rank;
        let setup = Setup {
            out: Some(&out.join("run")),
            resume,
            checkpoint_every: Some(1),
            cancel: Some(cancel),
            ..Setup::default()
        };
        let run = train(4, setup, Some(&mut group), |step| {
            // Rank 1 alone is cancelled, after step 3.
            if rank == 1 && step == 3 && !resume {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .unwrap();
        let phase = if resume { "resume" } else { "first" };
        let file = out.join(format!("{phase}-rank{rank}.safetensors"));
        Tensor::write_safetensors(&run.adapters, &file).unwrap();
        std::fs::write(out.join(format!("{phase}-rank{rank}.steps")), run.losses.len().to_string())
            .unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for phase in ["first", "resume"] {
        let mut ranks = launch_with(TEST, 2, dir.path(), &[("FINETUNE_TEST_PHASE", phase)]);
        assert_eq!(wait(&mut ranks, Duration::from_secs(600)), [0, 0], "{phase}");
    }
    let steps = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    // Both ranks stopped after step 3 of 6; the resumed run did the rest.
    for rank in 0..2 {
        assert_eq!(steps(&format!("first-rank{rank}.steps")), "3");
        assert_eq!(steps(&format!("resume-rank{rank}.steps")), "3");
    }
    let one = train(8, Setup::default(), None, |_| {}).unwrap();
    for rank in 0..2 {
        let adapters =
            Tensor::read_safetensors(dir.path().join(format!("resume-rank{rank}.safetensors")))
                .unwrap();
        assert_same_adapters(&adapters, &one.adapters, &format!("resumed rank {rank}"));
    }
}

/// The NCCL a CUDA run uses is the libnccl.so.2 libtorch_cuda brought in:
/// its version is the one in the wheel's nccl.h (opening it needs no GPU).
#[test]
fn nccl_is_the_wheels_library() {
    let header =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.libtorch/site/nvidia/nccl/include/nccl.h");
    let version = finetune_local::distributed::nccl_version();
    let Ok(text) = std::fs::read_to_string(&header) else {
        // A libtorch from elsewhere (a GPU machine's own wheel, or a
        // CPU-only build, which has no NCCL).
        match version {
            Ok((major, _, _)) => assert_eq!(major, 2),
            Err(e) => assert!(e.to_string().contains("NCCL is not available"), "{e}"),
        }
        return;
    };
    let define = |name: &str| -> u32 {
        let line = text.lines().find(|l| l.starts_with(&format!("#define {name} "))).unwrap();
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    let expected = (define("NCCL_MAJOR"), define("NCCL_MINOR"), define("NCCL_PATCH"));
    assert_eq!(version.unwrap(), expected);
}

/// Each rank of a GPU run takes its local rank's GPU; CPU stays CPU; a
/// node with fewer GPUs than processes is refused by name. On a machine
/// without CUDA, joining over NCCL fails with a typed error (not a hang).
#[test]
fn a_rank_takes_its_local_gpu_and_nccl_without_one_is_an_error() {
    use finetune_local::distributed::rank_device;
    use finetune_local::tch::{Cuda, Device};
    let mut topology = Topology::single();
    topology.world_size = 2;
    topology.rank = 1;
    topology.local_rank = 1;
    assert_eq!(rank_device(Some(Device::Cpu), &topology).unwrap(), Device::Cpu);
    let gpus = Cuda::device_count() as usize;
    if gpus >= 2 {
        assert_eq!(rank_device(Some(Device::Cuda(0)), &topology).unwrap(), Device::Cuda(1));
        assert_eq!(rank_device(None, &topology).unwrap(), Device::Cuda(1));
    } else {
        let error = rank_device(Some(Device::Cuda(0)), &topology).unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&format!("local rank 1 needs GPU 1 of this node, which has {gpus}")),
            "{error}"
        );
    }
    if gpus == 0 {
        assert_eq!(rank_device(None, &topology).unwrap(), Device::Cpu);
        let mut alone = Topology::single();
        alone.master_port = finetune_core::testing::free_loopback_port().unwrap();
        let started = Instant::now();
        let error = ProcessGroup::nccl(&alone, Duration::from_secs(20), 0).unwrap_err();
        // libtorch's own words, e.g. "CUDA error: CUDA driver version is
        // insufficient for CUDA runtime version" on a machine without a driver.
        assert!(
            matches!(&error, LocalError::Distributed { message, .. } if message.contains("CUDA")),
            "{error:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    }
}

/// NCCL on the GPUs this machine has (two ranks, each on its own GPU, when
/// there are two; one rank otherwise: NCCL refuses two ranks on one GPU):
/// all-reduce in fp32 and bf16 (and of CPU counters, as the trainer sums
/// them), broadcast from rank 0, and a barrier, on CUDA tensors.
/// `scripts/gpu-check` runs it where a GPU is lent; without one there is
/// nothing to run NCCL on, and it says so.
#[test]
fn nccl_collectives_on_the_gpus() {
    use finetune_local::distributed::rank_device;
    use finetune_local::tch::{Cuda, Device, Kind};
    use finetune_local::train::Collective;
    const TEST: &str = "nccl_collectives_on_the_gpus";
    if let Some((topology, _)) = as_rank(TEST) {
        let device = rank_device(None, &topology).unwrap();
        let mut group =
            ProcessGroup::for_device(&topology, Duration::from_secs(60), device).unwrap();
        let (rank, world) = (topology.rank as f32, topology.world_size as f32);
        let sum = world * (world + 1.0) / 2.0;
        for kind in [Kind::Float, Kind::BFloat16] {
            let mut t = Tensor::from_slice(&[rank + 1.0, 10.0 * (rank + 1.0)])
                .to_device(device)
                .to_kind(kind);
            group.all_reduce_sum(&mut t).unwrap();
            let got = Vec::<f32>::try_from(t.to_kind(Kind::Float).to_device(Device::Cpu)).unwrap();
            assert_eq!(got, [sum, 10.0 * sum], "{kind:?} on rank {rank}");
        }
        // The trainer's counters stay on the CPU: they go through the GPU.
        let mut counters = Tensor::from_slice(&[1.0f64, f64::from(rank)]);
        group.all_reduce_sum(&mut counters).unwrap();
        assert_eq!(counters.device(), Device::Cpu);
        let expected = [f64::from(world), f64::from(world * (world - 1.0) / 2.0)];
        assert_eq!(Vec::<f64>::try_from(counters).unwrap(), expected);
        let mut b = Tensor::from_slice(&[7.0 * rank + 1.0; 3]).to_device(device);
        group.broadcast(&mut b, 0).unwrap();
        assert_eq!(Vec::<f32>::try_from(b.to_device(Device::Cpu)).unwrap(), [1.0; 3]);
        group.barrier().unwrap();
        eprintln!("rank {rank} of {world}: NCCL all-reduce, broadcast and barrier on {device:?}");
        return;
    }
    let gpus = usize::try_from(Cuda::device_count()).unwrap_or(0);
    if gpus == 0 {
        eprintln!("no CUDA device here: nothing to run NCCL on (scripts/gpu-check runs this)");
        return;
    }
    let world = gpus.min(2);
    let dir = tempfile::tempdir().unwrap();
    let mut ranks = launch_with(TEST, world, dir.path(), &[("NCCL_SOCKET_IFNAME", "lo")]);
    assert!(wait(&mut ranks, Duration::from_secs(120)).iter().all(|&c| c == 0));
}
