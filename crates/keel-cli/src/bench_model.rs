//! `keel bench model [DATASET_DIR] [--rust-only]`: the local
//! all-MiniLM-L6-v2 (keel-local) beside the reference Python stack, measured
//! in one run on this machine.
//!
//! Both embed the same texts, the Cranfield documents (title and text, cut at
//! 256 word pieces by the tokenizer), after a warm-up: first keel-local in
//! this process (one `embed` call over all documents, as the dev server gets
//! them), then sentence-transformers on the CPU in a child process
//! (`scripts/lib/reference-embeddings.py bench`, batch 32) with the Python in
//! `KEEL_REFERENCE_PYTHON` (scripts/bench installs it under .keel/st). Prints
//! documents/s, word pieces/s (also per CPU-second, which other load on the
//! machine hardly moves) and peak RSS of each, and how closely their vectors
//! agree, as a markdown table.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde_json::Value;

const REFERENCE_SCRIPT: &str = "scripts/lib/reference-embeddings.py";
const WARM_UP_DOCUMENTS: usize = 32;

/// Embeds the Cranfield documents with the local model (KEEL_LOCAL_MODEL_DIR)
/// and, unless --rust-only, with sentence-transformers run by
/// KEEL_REFERENCE_PYTHON (scripts/bench sets both).
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// The directory holding cran.all.1400.
    #[arg(
        value_name = "DATASET_DIR",
        default_value = "../shared/datasets/cranfield"
    )]
    dataset_dir: PathBuf,
    /// Measure keel-local only, without the Python reference.
    #[arg(long)]
    rust_only: bool,
}

pub fn main(
    ModelArgs {
        dataset_dir,
        rust_only,
    }: ModelArgs,
) -> ExitCode {
    match run(&dataset_dir, rust_only) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench model failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// One side's measurement.
struct Measured {
    documents: usize,
    word_pieces: usize,
    seconds: f64,
    /// User plus system time of the whole process while embedding: unlike
    /// `seconds`, it hardly moves when other work shares the cores.
    cpu_seconds: f64,
    peak_rss_mib: f64,
}

impl Measured {
    fn rows(&self, name: &str) -> [(String, String); 4] {
        [
            (
                format!("{name}: documents/s"),
                format!("{:.1}", self.documents as f64 / self.seconds),
            ),
            (
                format!("{name}: word pieces/s"),
                format!("{:.0}", self.word_pieces as f64 / self.seconds),
            ),
            (
                format!("{name}: word pieces per CPU-second"),
                format!("{:.0}", self.word_pieces as f64 / self.cpu_seconds),
            ),
            (
                format!("{name}: peak RSS (whole process)"),
                format!("{:.0} MiB", self.peak_rss_mib),
            ),
        ]
    }
}

fn run(dataset_dir: &Path, rust_only: bool) -> anyhow::Result<()> {
    let model_dir = std::env::var_os("KEEL_LOCAL_MODEL_DIR")
        .map(PathBuf::from)
        .context("KEEL_LOCAL_MODEL_DIR: required (scripts/lib/install-model.sh prints it)")?;
    let documents_path = dataset_dir.join("cran.all.1400");
    let texts = parse_documents(
        &std::fs::read_to_string(&documents_path)
            .with_context(|| format!("reading {}", documents_path.display()))?,
    );
    if texts.is_empty() {
        bail!("no documents in {}", documents_path.display());
    }

    let model = keel_local::LocalModel::load(&model_dir)?;
    model.embed(&texts[..WARM_UP_DOCUMENTS.min(texts.len())])?;
    let cpu_started = cpu_seconds()?;
    let started = Instant::now();
    let (vectors, word_pieces) = model.embed(&texts)?;
    let rust = Measured {
        documents: texts.len(),
        word_pieces,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds()? - cpu_started,
        peak_rss_mib: peak_rss_mib()?,
    };
    drop(model);

    let mut rows = vec![(
        "documents: Cranfield title + text, ≤ 256 word pieces".to_owned(),
        format!("{} documents, {word_pieces} word pieces", texts.len()),
    )];
    rows.extend(rust.rows(&format!(
        "keel-local (Rust, {} threads)",
        std::thread::available_parallelism().map_or(1, usize::from)
    )));
    if !rust_only {
        let (reference, reference_vectors, label) = run_reference(&model_dir, &texts)?;
        if reference.word_pieces != word_pieces {
            eprintln!(
                "note: sentence-transformers counted {} word pieces, keel-local {word_pieces}",
                reference.word_pieces
            );
        }
        rows.extend(reference.rows(&label));
        rows.push((
            "keel-local / sentence-transformers speed".to_owned(),
            format!("{:.2}×", reference.seconds / rust.seconds),
        ));
        let cosines: Vec<f64> = vectors
            .iter()
            .zip(&reference_vectors)
            .map(|(a, b)| cosine(a, b))
            .collect();
        let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
        rows.push((
            "keel-local vs sentence-transformers: cosine min / mean".to_owned(),
            format!("{min:.6} / {mean:.6}"),
        ));
    }
    println!("| metric | value |\n|---|---|");
    for (metric, value) in rows {
        println!("| {metric} | {value} |");
    }
    Ok(())
}

/// Runs the reference script on `texts`; returns its measurement, its
/// vectors and a label naming the versions it ran.
fn run_reference(
    model_dir: &Path,
    texts: &[String],
) -> anyhow::Result<(Measured, Vec<Vec<f32>>, String)> {
    let python = std::env::var_os("KEEL_REFERENCE_PYTHON").context(
        "KEEL_REFERENCE_PYTHON: required for the sentence-transformers side \
         (scripts/bench installs it; or pass --rust-only)",
    )?;
    let work = std::env::temp_dir().join(format!("keel-bench-model-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let texts_path = work.join("texts.json");
    let vectors_path = work.join("vectors.f32");
    std::fs::write(&texts_path, serde_json::to_vec(texts)?)?;
    let output = Command::new(&python)
        .arg("-B")
        .arg(REFERENCE_SCRIPT)
        .arg("bench")
        .arg(model_dir)
        .arg(&texts_path)
        .arg(&vectors_path)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .with_context(|| format!("running {}", Path::new(&python).display()))?;
    let vectors = std::fs::read(&vectors_path);
    std::fs::remove_dir_all(&work).ok();
    if !output.status.success() {
        bail!(
            "{REFERENCE_SCRIPT} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let report: Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("{REFERENCE_SCRIPT} printed no JSON report"))?;
    let number = |key: &str| -> anyhow::Result<f64> {
        report[key]
            .as_f64()
            .with_context(|| format!("{REFERENCE_SCRIPT}: `{key}` missing from its report"))
    };
    let measured = Measured {
        documents: number("documents")? as usize,
        word_pieces: number("word_pieces")? as usize,
        seconds: number("seconds")?,
        cpu_seconds: number("cpu_seconds")?,
        peak_rss_mib: number("peak_rss_mib")?,
    };
    let versions = &report["versions"];
    let label = format!(
        "sentence-transformers {} (torch {}, {} threads, batch 32)",
        versions["sentence_transformers"].as_str().unwrap_or("?"),
        versions["torch"].as_str().unwrap_or("?"),
        report["torch_threads"]
    );
    let vectors: Vec<Vec<f32>> = vectors
        .context("reading the reference vectors")?
        .chunks_exact(4 * keel_local::DIMENSIONS)
        .map(|row| {
            row.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect();
    if vectors.len() != texts.len() {
        bail!(
            "{REFERENCE_SCRIPT} wrote {} vectors for {} texts",
            vectors.len(),
            texts.len()
        );
    }
    Ok((measured, vectors, label))
}

/// Cranfield's `.I/.T/.A/.B/.W` records as "title\ntext".
fn parse_documents(records: &str) -> Vec<String> {
    records
        .replace("\r\n", "\n")
        .split("\n.I ")
        .filter_map(|record| {
            let (_, fields) = record.split_once('\n')?;
            let field = |tag: &str| -> String {
                fields
                    .split(&format!(".{tag}\n"))
                    .nth(1)
                    .and_then(|s| s.split("\n.").next())
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            Some(format!("{}\n{}", field("T"), field("W")))
        })
        .collect()
}

/// This process's peak resident set (`VmHWM`), in MiB.
fn peak_rss_mib() -> anyhow::Result<f64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok(kib / 1024.0)
}

/// User plus system time of this process so far (`/proc/self/stat`, in the
/// kernel's fixed 100 ticks per second).
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // Fields after the parenthesised command name, which may hold spaces:
    // state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("unexpected /proc/self/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |index: usize| -> anyhow::Result<f64> {
        fields
            .get(index - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .context("unexpected /proc/self/stat")
    };
    Ok((ticks(14)? + ticks(15)?) / 100.0)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cranfield_records_become_title_and_text() {
        let texts = parse_documents(
            ".I 1\n.T\nwing flow .\n.A\nx\n.B\ny\n.W\nwing flow .\nmore  text .\n.I 2\n.T\nt2\n.W\nbody 2\n",
        );
        assert_eq!(
            texts,
            ["wing flow .\nwing flow . more text .", "t2\nbody 2"]
        );
    }

    #[test]
    fn peak_rss_and_cpu_time_are_read() {
        assert!(peak_rss_mib().expect("VmHWM is readable") > 1.0);
        // Spin until the counter moves (at most 10 s, however loaded the machine).
        let before = cpu_seconds().expect("/proc/self/stat is readable");
        let started = Instant::now();
        let mut spent = 0.0;
        while spent < 0.05 && started.elapsed().as_secs() < 10 {
            std::hint::black_box((0..10_000u64).sum::<u64>());
            spent = cpu_seconds().expect("readable") - before;
        }
        assert!(spent >= 0.05, "CPU time did not advance: {spent} s");
    }
}
