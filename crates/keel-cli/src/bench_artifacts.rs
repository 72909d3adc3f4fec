//! `keel bench artifacts`: what a deployment of the route binaries weighs and
//! how fast it wakes up, on this machine:
//!
//! - per function, the release binary (`target/release/<bin>`, x86-64, what
//!   Vercel runs) and the arm64 Lambda zip (`target/lambda/<bin>/bootstrap.zip`),
//!   under `CARGO_TARGET_DIR` when set, as cargo and cargo-lambda put them;
//! - cold start: a fresh `health` / `ready` process, from spawn to its first
//!   200 (median and p90 of [`COLD_RUNS`]), `ready` including its first
//!   database connection;
//! - cold paths: a fresh `documents` process, from spawn to the answer of its
//!   first `PUT /api/documents` of a new document (~100 KB, and one
//!   sentence), and a fresh `search` process to its first search; beside
//!   each, the same request (new content) on the now warm process, so their
//!   difference is what a cold start adds beyond the database's own work;
//! - peak RSS (`VmHWM`) of a `health` and a `ready` process after
//!   [`LOAD_REQUESTS`] requests, [`LOAD_CONCURRENCY`] at a time.
//!
//! `scripts/bench artifacts` builds the binaries and zips first and gives
//! `DATABASE_URL`, a migrated database. `keel bench load` prints the
//! cold-path rows too ([`cold_path_rows`]; `scripts/bench load` builds the
//! three binaries they start).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use serde_json::{Value, json};

const COLD_RUNS: usize = 21;
const COLD_PATH_RUNS: usize = 7;
const LOAD_REQUESTS: usize = 1000;
const LOAD_CONCURRENCY: usize = 50;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const ADMIN_KEY: &str = "bench-artifacts-admin-key-0123456789abcdef";

pub fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench artifacts failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let database_url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .context("DATABASE_URL: required (scripts/bench artifacts sets it)")?;
    let bins = route_binaries(Path::new("Cargo.toml"))?;
    let target = target_dir();
    let release = target.join("release");
    println!(
        "| Keel artifacts (release profile, {} cores, {}) | value |",
        std::thread::available_parallelism().map_or(1, usize::from),
        time::OffsetDateTime::now_utc().date()
    );
    println!("|---|---|");

    let mut total = (0, 0);
    for bin in &bins {
        let binary = file_size(&release.join(bin))?;
        let zip = file_size(&target.join("lambda").join(bin).join("bootstrap.zip"))?;
        total = (total.0 + binary, total.1 + zip);
        print_row(
            &format!("size: {bin} (x86-64 binary / arm64 Lambda zip)"),
            format!("{} / {}", megabytes(binary), megabytes(zip)),
        );
    }
    print_row(
        &format!("size: all {} functions (binaries / zips)", bins.len()),
        format!("{} / {}", megabytes(total.0), megabytes(total.1)),
    );

    // The anonymous rate limit (30/min on /api/ready) would answer this bench with 429s.
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("RATE_LIMIT_ANONYMOUS_PER_MINUTE", "1000000"),
    ];
    let health = cold_starts(&release.join("health"), &env, "/api/health")?;
    print_row(
        &format!("cold start: health, spawn → first 200 (median / p90 of {COLD_RUNS})"),
        format!("{} / {}", millis(health.0), millis(health.1)),
    );
    let ready = cold_starts(&release.join("ready"), &env, "/api/ready")?;
    print_row(
        &format!(
            "cold start: ready, spawn → first 200 incl. database connect (median / p90 of {COLD_RUNS})"
        ),
        format!("{} / {}", millis(ready.0), millis(ready.1)),
    );

    let model = keel::knowledge::EmbeddingModel {
        name: keel_local::MODEL_NAME.to_owned(),
        dimensions: keel_local::DIMENSIONS as u32,
    };
    for line in cold_path_rows(&database_url, &model)? {
        println!("{line}");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("the load runtime starts")?;
    for (bin, path) in [("health", "/api/health"), ("ready", "/api/ready")] {
        let (idle, peak, took) = runtime.block_on(peak_rss(&release.join(bin), &env, path))?;
        print_row(
            &format!(
                "RSS: {bin}, idle after one request / peak after {LOAD_REQUESTS} requests, {LOAD_CONCURRENCY} concurrent"
            ),
            format!(
                "{} / {} ({:.0} requests/s)",
                megabytes(idle),
                megabytes(peak),
                LOAD_REQUESTS as f64 / took.as_secs_f64()
            ),
        );
    }
    Ok(())
}

/// The `[[bin]]` names of the root package, in the order Cargo.toml lists them.
fn route_binaries(manifest: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let mut bins = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(value) = line.strip_prefix("name") {
            let name = value.trim_start().trim_start_matches('=').trim();
            bins.push(name.trim_matches('"').to_owned());
        }
    }
    ensure!(!bins.is_empty(), "no [[bin]] in {}", manifest.display());
    Ok(bins)
}

fn file_size(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| {
            format!(
                "{} is missing: run it through scripts/bench",
                path.display()
            )
        })?
        .len())
}

/// Where cargo puts its builds: `CARGO_TARGET_DIR` when set, else `target`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), PathBuf::from)
}

fn row(metric: &str, value: String) -> String {
    format!("| {metric} | {value} |")
}

fn print_row(metric: &str, value: String) {
    println!("{}", row(metric, value));
}

fn megabytes(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// A route binary started as a platform would start it, killed when dropped.
struct Function {
    child: Child,
    address: SocketAddr,
}

impl Function {
    fn spawn(binary: &Path, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = Command::new(binary)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child,
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        })
    }

    /// Connects as soon as the process listens.
    fn connect(&mut self, since: Instant) -> anyhow::Result<TcpStream> {
        loop {
            match TcpStream::connect(self.address) {
                Ok(stream) => return Ok(stream),
                Err(error) => {
                    if let Some(status) = self.child.try_wait()? {
                        bail!("the function exited with {status} before listening");
                    }
                    if since.elapsed() > STARTUP_TIMEOUT {
                        return Err(anyhow!(error).context("the function never listened"));
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        }
    }

    /// `VmRSS` and `VmHWM` (peak) from /proc, in bytes.
    fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|line| line.starts_with(name))
                .with_context(|| format!("no {name} in /proc/<pid>/status"))?;
            let kib: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()?;
            Ok(kib * 1024)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 exchange on `stream`: the status and the body.
fn exchange(
    mut stream: TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the response head")?;
    let status = std::str::from_utf8(&response[..head_end])?
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("no status in the response")?;
    Ok((status, response[head_end + 4..].to_vec()))
}

/// Median and p90 of spawn → first 200 on `path`.
fn cold_starts(
    binary: &Path,
    env: &[(&str, &str)],
    path: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let mut times = Vec::with_capacity(COLD_RUNS);
    for _ in 0..COLD_RUNS {
        let started = Instant::now();
        let mut function = Function::spawn(binary, env)?;
        let stream = function.connect(started)?;
        let (status, body) = exchange(stream, "GET", path, &[], &[])?;
        let took = started.elapsed();
        ensure!(
            status == 200,
            "{} answered {status}: {}",
            binary.display(),
            String::from_utf8_lossy(&body)
        );
        times.push(took);
    }
    times.sort();
    Ok((times[times.len() / 2], times[times.len() * 9 / 10]))
}

/// A request of a cold-path row: method, path and body.
type Request = (&'static str, String, Vec<u8>);
/// The `n`th request of a cold-path row, each with new content.
type Requests = fn(usize) -> Request;

/// The cold-path rows: a tenant is created, then the release `documents`
/// and `search` binaries are each started [`COLD_PATH_RUNS`] times,
/// configured with the bench's embedding `model` (a function configured
/// with another would register that model in the bench database, and
/// every later search would choose between the two).
pub(crate) fn cold_path_rows(
    database_url: &str,
    model: &keel::knowledge::EmbeddingModel,
) -> anyhow::Result<Vec<String>> {
    let release = target_dir().join("release");
    for bin in ["tenants", "documents", "search"] {
        file_size(&release.join(bin))?;
    }
    let dimensions = model.dimensions.to_string();
    let env = [
        ("DATABASE_URL", database_url),
        ("ADMIN_API_KEY", ADMIN_KEY),
        ("EMBEDDING_MODEL", &model.name),
        ("EMBEDDING_DIMENSIONS", &dimensions),
    ];
    let slug = format!("bench-artifacts-{}", std::process::id());
    let mut tenants = Function::spawn(&release.join("tenants"), &env)?;
    let stream = tenants.connect(Instant::now())?;
    let (status, body) = exchange(
        stream,
        "POST",
        "/api/tenants",
        &[
            ("authorization", &format!("Bearer {ADMIN_KEY}")),
            ("content-type", "application/json"),
        ],
        json!({"name": "bench artifacts", "slug": slug})
            .to_string()
            .as_bytes(),
    )?;
    ensure!(
        status == 201,
        "creating a tenant answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let created: Value = serde_json::from_slice(&body)?;
    let key = created["api_key"]
        .as_str()
        .context("no api_key in the tenant")?;
    drop(tenants);

    let rows: [(&str, &str, Requests); 3] = [
        (
            "documents",
            "first PUT of a new ~100 KB document (tokenizer load and chunking included)",
            |i| put_document(format!("long-{i}"), document_text(i)),
        ),
        (
            "documents",
            "first PUT of a new one-sentence document",
            |i| {
                put_document(
                    format!("short-{i}"),
                    format!("We open at {} on Sundays.", 7 + i % 5),
                )
            },
        ),
        ("search", "first keyword search over those documents", |i| {
            let body = json!({"query": format!("vegan curry refunds run {i}"), "mode": "keyword"});
            (
                "POST",
                "/api/search".to_owned(),
                body.to_string().into_bytes(),
            )
        }),
    ];
    let mut lines = Vec::with_capacity(rows.len());
    for (bin, what, request) in rows {
        let (cold, warm) = cold_and_warm(&release.join(bin), &env, key, request)?;
        lines.push(row(
            &format!(
                "cold path: {bin}, spawn → {what} / the same on the warm process (median of {COLD_PATH_RUNS})"
            ),
            format!(
                "{} / {} (cold adds {})",
                millis(cold),
                millis(warm),
                millis(cold.saturating_sub(warm))
            ),
        ));
    }
    Ok(lines)
}

fn put_document(id: String, content: String) -> Request {
    let body = json!({"documents": [{"id": id, "title": "Cold start", "content": content}]});
    (
        "PUT",
        "/api/documents".to_owned(),
        body.to_string().into_bytes(),
    )
}

/// Medians of a fresh process's spawn → answer of its first request, and of
/// its second request's answer time (new content each time).
fn cold_and_warm(
    binary: &Path,
    env: &[(&str, &str)],
    key: &str,
    request: Requests,
) -> anyhow::Result<(Duration, Duration)> {
    let authorization = format!("Bearer {key}");
    let headers = [
        ("authorization", authorization.as_str()),
        ("content-type", "application/json"),
    ];
    let send = |function: &mut Function, since: Instant, (method, path, body): Request| {
        let stream = function.connect(since)?;
        let (status, answer) = exchange(stream, method, &path, &headers, &body)?;
        ensure!(
            status == 200,
            "{method} {path} answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
        anyhow::Ok(since.elapsed())
    };
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for run in 0..COLD_PATH_RUNS {
        let started = Instant::now();
        let mut function = Function::spawn(binary, env)?;
        cold.push(send(&mut function, started, request(2 * run))?);
        warm.push(send(&mut function, Instant::now(), request(2 * run + 1))?);
    }
    cold.sort();
    warm.sort();
    Ok((cold[cold.len() / 2], warm[warm.len() / 2]))
}

/// ~100 KB of sentence-like text, different for every `run`.
fn document_text(run: usize) -> String {
    const WORDS: [&str; 16] = [
        "the", "kitchen", "serves", "vegan", "curry", "daily", "until", "ten", "orders", "ship",
        "within", "two", "days", "refunds", "take", "a",
    ];
    let mut text = format!("Run {run}. ");
    let mut state = run as u64 + 1;
    while text.len() < 100_000 {
        for word in 0..12 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            if word > 0 {
                text.push(' ');
            }
            text.push_str(WORDS[(state >> 60) as usize]);
        }
        text.push_str(". ");
    }
    text
}

/// RSS after one request, peak RSS after the load, and how long the load took.
async fn peak_rss(
    binary: &Path,
    env: &[(&str, &str)],
    path: &str,
) -> anyhow::Result<(u64, u64, Duration)> {
    let mut function = Function::spawn(binary, env)?;
    let stream = function.connect(Instant::now())?;
    let (status, _) = exchange(stream, "GET", path, &[], &[])?;
    ensure!(status == 200, "{} answered {status}", binary.display());
    let (idle, _) = function.memory()?;

    keel::platform::tls::tls_config();
    let client = reqwest::Client::new();
    let url = format!("http://{}{path}", function.address);
    let started = Instant::now();
    let workers = (0..LOAD_CONCURRENCY).map(|worker| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let mut failures = 0;
            for _ in (worker..LOAD_REQUESTS).step_by(LOAD_CONCURRENCY) {
                match client.get(&url).send().await {
                    Ok(response) if response.status().is_success() => {
                        response.bytes().await?;
                    }
                    _ => failures += 1,
                }
            }
            Ok::<usize, reqwest::Error>(failures)
        }
    });
    let failures: usize = futures::future::try_join_all(workers)
        .await?
        .into_iter()
        .sum();
    let took = started.elapsed();
    ensure!(
        failures == 0,
        "{failures} of {LOAD_REQUESTS} requests to {url} failed"
    );
    let (_, peak) = function.memory()?;
    Ok((idle, peak, took))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_binaries_are_read_from_the_bin_tables_only() {
        let dir = std::env::temp_dir().join(format!("keel-bins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest: PathBuf = dir.join("Cargo.toml");
        std::fs::write(
            &manifest,
            "[package]\nname = \"keel-functions\"\n\n[[bin]]\nname = \"health\"\npath = \"api/health.rs\"\n\n[[bin]]\nname= \"task-list\"\n\n[[test]]\nname = \"api\"\n",
        )
        .unwrap();
        assert_eq!(route_binaries(&manifest).unwrap(), ["health", "task-list"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn every_run_ingests_a_different_document_of_about_100_kb() {
        let (a, b) = (document_text(0), document_text(1));
        assert_ne!(a, b);
        assert!((100_000..100_200).contains(&a.len()), "{}", a.len());
    }
}
