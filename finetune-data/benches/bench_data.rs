//! The finetune-data benchmark: validation and conversion throughput and peak
//! memory, side by side with a pyarrow/pandas script doing the same work on
//! the same file, in one run.
//!
//! ```sh
//! scripts/setup --bench
//! cargo bench -p finetune-data --bench bench_data -- [--rows 1000000]
//! ```
//!
//! It writes Parquet datasets of 100,000 and `--rows` rows (about 500
//! characters per row, one system message in five missing) to a temporary
//! folder, then runs each phase in its own process (so each peak RSS is its
//! own), single-threaded: ours with this binary (which, like any user of
//! finetune-data alone, does not load libtorch), the peer with
//! `benches/data_peer.py` on `.tools/bench-python`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{RecordBatch, StringArray};
use finetune_core::DatasetSource;
use finetune_data::{
    ConvertOptions, DatasetWriter, OutputFormat, ValidationOptions, Validator, convert,
    validate_with,
};

const USAGE: &str =
    "usage: bench_data [--rows N]\n       bench_data validate PATH | convert PATH OUT";

fn usage_error(message: &str) -> ! {
    eprintln!("error: {message}\n\n{USAGE}");
    std::process::exit(2)
}

const WORDS: &[&str] = &[
    "model", "data", "the", "customer", "order", "shipping", "refund", "account", "password",
    "reset", "please", "help", "with", "my", "invoice", "delivery", "tracking", "number",
    "question", "answer", "thank", "you", "product", "warranty", "return", "policy", "store",
    "online", "support", "ticket", "urgent", "today",
];

fn text(rng: &mut u64, chars: usize) -> String {
    let mut s = String::with_capacity(chars + 16);
    while s.len() < chars {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(WORDS[(*rng % WORDS.len() as u64) as usize]);
    }
    s
}

fn generate(path: &Path, rows: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ rows as u64;
    let mut writer = DatasetWriter::create(path, OutputFormat::Parquet)?;
    let mut done = 0;
    while done < rows {
        let n = 8192.min(rows - done);
        let mut p = Vec::with_capacity(n);
        let mut c = Vec::with_capacity(n);
        let mut s = Vec::with_capacity(n);
        for i in 0..n {
            p.push(format!("#{} {}", done + i, text(&mut rng, 300)));
            c.push(text(&mut rng, 150));
            s.push(((done + i) % 5 != 0).then(|| text(&mut rng, 50)));
        }
        let batch = RecordBatch::try_new(
            finetune_data::canonical_schema(),
            vec![
                Arc::new(StringArray::from(p)),
                Arc::new(StringArray::from(c)),
                Arc::new(StringArray::from(s)),
            ],
        )?;
        writer.write(&batch)?;
        done += n;
    }
    writer.finish()?;
    Ok(())
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

fn source(path: &str) -> DatasetSource {
    DatasetSource::new(path).unwrap_or_else(|e| usage_error(&e.to_string()))
}

/// One measured phase, in this process.
fn phase(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let rows = match args {
        [p, path] if p == "validate" || p == "validate-streaming" => {
            let local = finetune_data::LocalDataset::local(&source(path))?;
            let options = ValidationOptions {
                detect_duplicates: p == "validate",
                ..ValidationOptions::default()
            };
            let (report, stats) = validate_with(&local, Validator::new(path, options))?.finish();
            if !report.valid {
                return Err(format!("the generated data is invalid:\n{report}").into());
            }
            stats.rows
        }
        [p, path, out] if p == "convert" => {
            let local = finetune_data::LocalDataset::local(&source(path))?;
            convert(&local, out, OutputFormat::OpenAiChat, &ConvertOptions::default())?.1
        }
        _ => usage_error("unknown phase"),
    };
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"rows": rows, "seconds": seconds, "peak_rss_kb": peak_rss_kb()})
    );
    Ok(())
}

#[derive(Debug, Default, Clone, Copy)]
struct Measure {
    rows: f64,
    seconds: f64,
    rss_mb: f64,
}

fn measure(mut cmd: Command) -> Result<Measure, Box<dyn std::error::Error>> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().ok_or("no output")?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    Ok(Measure {
        rows: v["rows"].as_f64().unwrap_or(0.0),
        seconds: v["seconds"].as_f64().unwrap_or(f64::NAN),
        rss_mb: v["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if matches!(
        raw.first().map(String::as_str),
        Some("validate" | "validate-streaming" | "convert")
    ) {
        return phase(&raw);
    }
    // `cargo bench` passes `--bench`; take only `--rows N`.
    let big: usize = match raw.iter().position(|a| a == "--rows") {
        Some(i) => raw
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage_error("--rows needs a number")),
        None => 1_000_000,
    };
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let peer_site = crate_dir.join("../.tools/bench-python");
    let peer_script = crate_dir.join("benches/data_peer.py");
    if !peer_site.join("pyarrow").exists() {
        usage_error("the pyarrow peer is not installed: run `scripts/setup --bench`");
    }
    let dir = tempfile::tempdir()?;
    let me = std::env::current_exe()?;
    println!("finetune-data vs pyarrow+pandas, one thread each, same Parquet input");
    println!(
        "{:>9} {:>9} | {:>12} {:>9} | {:>12} {:>9} | {:>7} {:>7}",
        "rows", "phase", "ours rows/s", "ours MB", "peer rows/s", "peer MB", "speed×", "memory×"
    );
    for rows in [100_000usize.min(big), big] {
        let data = dir.path().join(format!("bench-{rows}.parquet"));
        let t = Instant::now();
        generate(&data, rows)?;
        let mb = std::fs::metadata(&data)?.len() as f64 / 1e6;
        eprintln!(
            "generated {rows} rows ({mb:.0} MB Parquet) in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let data_s = data.display().to_string();
        for phase in ["validate", "convert"] {
            let out = dir.path().join(format!("out-{rows}.jsonl"));
            let mut ours = Command::new(&me);
            ours.arg(phase).arg(&data_s).env("RAYON_NUM_THREADS", "1");
            let mut peer = Command::new("python3");
            peer.arg(&peer_script).arg(phase).arg(&data_s).env("PYTHONPATH", &peer_site);
            peer.env("OMP_NUM_THREADS", "1").env("ARROW_NUM_THREADS", "1");
            if phase == "convert" {
                ours.arg(&out);
                peer.arg(&out);
            }
            let a = measure(ours)?;
            let _ = std::fs::remove_file(&out);
            let b = measure(peer)?;
            let _ = std::fs::remove_file(&out);
            if a.rows != b.rows {
                return Err(format!("row counts differ: ours {} vs peer {}", a.rows, b.rows).into());
            }
            let (ra, rb) = (a.rows / a.seconds, b.rows / b.seconds);
            println!(
                "{:>9} {:>9} | {:>12.0} {:>9.1} | {:>12.0} {:>9.1} | {:>6.1}× {:>6.2}×",
                rows,
                phase,
                ra,
                a.rss_mb,
                rb,
                b.rss_mb,
                ra / rb,
                a.rss_mb / b.rss_mb
            );
        }
        let mut ours = Command::new(&me);
        ours.arg("validate-streaming").arg(&data_s);
        let a = measure(ours)?;
        println!(
            "{:>9} {:>9} | {:>12.0} {:>9.1} |  (validation without the duplicate index)",
            rows,
            "stream",
            a.rows / a.seconds,
            a.rss_mb
        );
        if rows == big {
            break;
        }
    }
    println!("speed× = our rows/s ÷ peer rows/s; memory× = our peak RSS ÷ peer peak RSS");
    Ok(())
}
