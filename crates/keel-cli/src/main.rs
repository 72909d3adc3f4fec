//! `keel`: the local dev server and the migration runner.
//!
//! - `keel serve`: every route on one port (`PORT`, default 3000), at the same
//!   paths and methods as on Vercel, like `vercel dev`. With
//!   `KEEL_LOCAL_MODEL_DIR` set it also serves the local embedding model as an
//!   OpenAI-compatible `/v1/embeddings`.
//! - `keel migrate [DIR]`: applies pending migrations (default `migrations/`)
//!   to `DATABASE_URL`.
//! - `keel bench [quality|load] [DATASET_DIR] [OPTIONS]`: retrieval quality,
//!   ingest, latency and recall figures on this machine (see bench/); run
//!   through `scripts/bench`.

mod bench;
mod bench_artifacts;
mod bench_model;

use std::path::PathBuf;
use std::process::ExitCode;

use keel::platform::db::migrate;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(),
        Some("migrate") => run_migrate(args.get(1).map(PathBuf::from)),
        Some("bench") if args.get(1).is_some_and(|a| a == "artifacts") => {
            bench_artifacts::main(&args[2..])
        }
        Some("bench") if args.get(1).is_some_and(|a| a == "model") => bench_model::main(&args[2..]),
        Some("bench") => {
            keel::platform::config::load_dotenv();
            bench::main(&args[1..])
        }
        _ => {
            eprintln!(
                "usage: keel serve | keel migrate [MIGRATIONS_DIR] | keel bench [quality|load] [DATASET_DIR] [OPTIONS]"
            );
            ExitCode::from(2)
        }
    }
}

fn serve() -> ExitCode {
    keel::platform::config::load_dotenv();
    let mut routes = keel::routes::all();
    if let Some(dir) = std::env::var_os("KEEL_LOCAL_MODEL_DIR") {
        match keel_local::LocalModel::load(std::path::Path::new(&dir)) {
            Ok(model) => {
                keel_local::install(model);
                routes.extend(keel_local::routes());
                eprintln!("serving {} on /v1/embeddings", keel_local::MODEL_NAME);
            }
            Err(error) => {
                eprintln!("KEEL_LOCAL_MODEL_DIR: cannot load the local model: {error:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    keel::web::runtime::serve_blocking(keel::web::Router::all(routes))
}

fn run_migrate(dir: Option<PathBuf>) -> ExitCode {
    keel::platform::config::load_dotenv();
    let Some(database_url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        eprintln!("DATABASE_URL: required by `keel migrate` (the Postgres the migrations go to)");
        return ExitCode::FAILURE;
    };
    // The same TLS rules as the functions: DATABASE_CA_CERT trusted, verify-* accepted.
    let database_url = keel::platform::config::normalise_sslmode(&database_url);
    let tls = match std::env::var("DATABASE_CA_CERT")
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        None => keel::platform::tls::tls_config(),
        Some(raw) => match keel::platform::config::parse_ca_certs(&raw) {
            Ok(certs) => keel::platform::tls::tls_config_trusting(&certs),
            Err(problem) => {
                eprintln!("DATABASE_CA_CERT: {problem}");
                return ExitCode::FAILURE;
            }
        },
    };
    let dir = dir.unwrap_or_else(|| PathBuf::from("migrations"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime always builds");
    let result = runtime.block_on(async {
        let migrations = migrate::load_dir(&dir)?;
        let mut client = migrate::connect(&database_url, tls).await?;
        migrate::run(&mut client, &migrations).await
    });
    match result {
        Ok(report) => {
            for name in &report.applied {
                println!("applied {name}");
            }
            println!(
                "migrations: {} applied, {} already up to date",
                report.applied.len(),
                report.already_applied
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("migrate failed: {error}");
            ExitCode::FAILURE
        }
    }
}
