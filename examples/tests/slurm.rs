//! `finetune_local` under Slurm: `srun -n2` on a one-node cluster the test
//! starts on 127.0.0.1 (scripts/slurm-cluster; Debian's slurmctld, slurmd
//! and munge, installed by `scripts/setup --test`) trains as two ranks over
//! c10d's Gloo; rank 0 alone writes the job folder, and the adapter equals
//! one process's with the same global batch.
#![cfg(feature = "distributed")]
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use finetune_local::tch::Tensor;

struct Cluster {
    dir: PathBuf,
    conf: String,
}

impl Cluster {
    fn start(dir: &Path) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-cluster");
        let out = Command::new(&script).arg("start").arg(dir).output().unwrap();
        assert!(
            out.status.success(),
            "the Slurm cluster did not start (scripts/setup --test installs Slurm): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Self { dir: dir.to_owned(), conf }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-cluster");
        let _ = Command::new(script).arg("stop").arg(&self.dir).status();
    }
}

fn adapter(dir: &Path) -> Vec<(String, Tensor)> {
    let mut t = Tensor::read_safetensors(dir.join("adapter/adapter_model.safetensors")).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn srun_trains_on_two_ranks_and_rank_0_alone_writes_the_job_folder() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&dir.path().join("slurm"));
    let binary = support::example_binary("finetune_local");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let args = |output: &Path| -> Vec<String> {
        [
            "--model",
            root.join("finetune-local/tests/fixtures/models/llama").to_str().unwrap(),
            "--train",
            root.join("examples/data/reverse-words.jsonl").to_str().unwrap(),
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--lora-dropout",
            "0",
            "--threads",
            "1",
            "--output",
            output.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let port = finetune_core::testing::free_loopback_port().unwrap();
    let out = dir.path().join("srun");
    let status = Command::new("srun")
        .args(["-n2", "--kill-on-bad-exit=1", "--time=10"])
        .arg(format!("--output={}/rank-%t.out", dir.path().display()))
        .arg(format!("--error={}/rank-%t.err", dir.path().display()))
        .arg(&binary)
        .args(args(&out))
        .env("SLURM_CONF", &cluster.conf)
        .env("MASTER_PORT", port.to_string())
        .env("GLOO_SOCKET_IFNAME", "lo")
        .status()
        .unwrap();
    let log = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    assert!(status.success(), "srun: {status}\n{}\n{}", log("rank-0.err"), log("rank-1.err"));
    for rank in 0..2 {
        assert!(
            log(&format!("rank-{rank}.err")).contains(&format!("rank={rank} world_size=2")),
            "rank {rank} joined the run: {}",
            log(&format!("rank-{rank}.err"))
        );
    }
    // Each rank printed its report; rank 0 alone wrote outputs.
    let report = |rank: usize| -> serde_json::Value {
        serde_json::from_str(&log(&format!("rank-{rank}.out"))).unwrap()
    };
    assert_eq!(report(0)["stop"], "completed");
    assert_eq!(report(0)["adapter_dir"], out.join("adapter").to_str().unwrap());
    assert_eq!(report(1)["stop"], "completed");
    assert!(report(1)["adapter_dir"].is_null(), "{}", report(1));
    let steps = report(0)["steps"].as_u64().unwrap();
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count() as u64, steps, "one writer: one line per step");
    // One process with the same global batch trains the same adapter.
    let single = dir.path().join("single");
    let status = Command::new(&binary).args(args(&single)).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let (a, b) = (adapter(&out), adapter(&single));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let diff = (ta - tb).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{na}: {diff}");
    }
}
