//! `keel`: the local dev server, the migration runner and the benchmarks.
//!
//! - `keel serve`: every route on one port (`PORT`, default 3000), at the same
//!   paths and methods as on Vercel, like `vercel dev`, and the static files
//!   of `public/` as Vercel serves them. With `KEEL_LOCAL_MODEL_DIR` set it
//!   also serves the local embedding model as an OpenAI-compatible
//!   `/v1/embeddings`.
//! - `keel migrate [DIR]`: applies pending migrations (default `migrations/`)
//!   to `DATABASE_URL`.
//! - `keel bench [quality|load|model|artifacts] …`: retrieval quality,
//!   ingest, latency and recall figures on this machine (see bench/); run
//!   through `scripts/bench`.

mod bench;
mod bench_artifacts;
mod bench_model;
mod progress;
mod public;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keel::platform::db::migrate;

/// Keel: the backend for AI assistants, run locally.
///
/// Settings come from the environment or `.env` (see .env.production.example).
#[derive(Debug, Parser)]
#[command(name = "keel", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve every route and the files of public/ on 127.0.0.1:$PORT.
    ///
    /// The same paths and methods as on Vercel (default port 3000). With
    /// KEEL_LOCAL_MODEL_DIR set, also serves the local all-MiniLM-L6-v2 model
    /// as an OpenAI-compatible /v1/embeddings. `scripts/server` runs this.
    Serve {
        /// The static files served beside the API, as Vercel serves them.
        #[arg(long, value_name = "DIR", default_value = "public")]
        public: PathBuf,
    },
    /// Apply the pending migrations to DATABASE_URL.
    ///
    /// Files `NNNN_name.sql` run in order, each in a transaction, recorded
    /// with its checksum; an applied file that changed is refused. An
    /// advisory lock keeps two runs apart. DATABASE_CA_CERT is trusted as by
    /// the functions.
    Migrate {
        /// The directory holding the migration files.
        #[arg(value_name = "MIGRATIONS_DIR", default_value = "migrations")]
        dir: PathBuf,
    },
    /// Measure Keel on this machine and print the tables (scripts/bench).
    ///
    /// With no command: `quality` and `load` over one ingestion of the
    /// collections. Each run serves Keel in this process against
    /// DATABASE_URL, a migrated database (`scripts/bench` makes a fresh one).
    Bench(Box<bench::BenchArgs>),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve { public } => serve(public),
        Command::Migrate { dir } => run_migrate(dir),
        Command::Bench(args) => bench::main(*args),
    }
}

fn serve(public: PathBuf) -> ExitCode {
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
    match public::routes(&public) {
        Ok(files) => routes.extend(files),
        Err(error) => {
            eprintln!("--public {}: {error:#}", public.display());
            return ExitCode::FAILURE;
        }
    }
    keel::web::runtime::serve_blocking(keel::web::Router::all(routes))
}

fn run_migrate(dir: PathBuf) -> ExitCode {
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime always builds");
    let result = runtime.block_on(async {
        let migrations = migrate::load_dir(&dir)?;
        let mut client = migrate::connect(&database_url, tls).await?;
        let bar = progress::bar(migrations.len(), "migrations");
        let report = migrate::run_reporting(&mut client, &migrations, |migration| {
            bar.set_message(migration.name.clone());
            bar.inc(1);
        })
        .await;
        bar.finish_and_clear();
        report
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
