//! `keel bench`: measures Keel end to end on this machine and prints tables.
//!
//! - `keel bench quality [DATASET_DIR] [OPTIONS]`: retrieval quality of each
//!   search mode on each test collection and their mean (quality.rs).
//! - `keel bench load [DATASET_DIR] [--scale 10k|100k|1m]`: webhook intake, then
//!   search latency and capacity per mode over the judged collections in one
//!   tenant; opt-in, a tenant grown to 10k and 100k chunks of the real-prose
//!   corpus (and 1,000 small tenants beside it at 1m) with HNSW recall and a
//!   chart (load.rs, chart.rs).
//! - `keel bench corpus`: gathers and embeds that corpus once (corpus.rs).
//! - `keel bench [DATASET_DIR] [OPTIONS]`: both, sharing one ingestion.
//!
//! Every section runs an in-process server (every route, plus the local
//! model's `/v1/embeddings` unless `OPENAI_API_KEY` or `OPENAI_BASE_URL`
//! configures another provider) against `DATABASE_URL`, which should be a
//! migrated database (`scripts/bench` makes a fresh one), and first ingests
//! the collection through `PUT /api/documents` and embeds it through
//! `/api/cron/embeddings`, Keel's own path.

mod answers;
mod chart;
mod collection;
mod corpus;
mod load;
mod metrics;
mod peer;
mod quality;
mod reference;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use rand::Rng as _;
use serde_json::{Value, json};
use tokio_postgres::Client;

use collection::{Collection, GradeRange, JudgmentColumns, Layout, QueryIds};

const ADMIN_KEY: &str = "bench-admin-key-0123456789abcdef0123456789";
const CRON_SECRET: &str = "bench-cron-secret-0123456789abcdef01234567";
/// Documents per `PUT /api/documents` (the default `MAX_DOCUMENTS_PER_REQUEST`).
const INGEST_BATCH: usize = 100;

/// `keel bench`: with no section, quality and load over one ingestion.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    section: Option<BenchSection>,
    #[command(flatten)]
    collection: CollectionArgs,
    #[command(flatten)]
    quality: QualityArgs,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Debug, Subcommand)]
enum BenchSection {
    /// Retrieval quality of each search mode on each collection, and their mean.
    Quality {
        #[command(flatten)]
        collection: CollectionArgs,
        #[command(flatten)]
        quality: QualityArgs,
    },
    /// Webhook intake, then search latency and capacity per mode, the peer
    /// and vector recall (opt-in: a tenant grown to 10k and 100k chunks of
    /// the real-prose corpus, with 1,000 more small tenants at 1m).
    Load {
        #[command(flatten)]
        collection: CollectionArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Gather and embed the real-prose corpus `load --scale 100k|1m`
    /// searches, cached under .keel/corpus (resumable; about an hour once).
    Corpus {
        #[command(flatten)]
        collection: CollectionArgs,
    },
    /// The local all-MiniLM-L6-v2 beside sentence-transformers: speed and agreement.
    Model(crate::bench_model::ModelArgs),
    /// Function binary and Lambda zip sizes, cold start and peak RSS (after
    /// `scripts/bench artifacts` built them).
    Artifacts,
}

/// The collections to ingest.
///
/// A directory holding a known collection (Cranfield's cran.all.1400, MED's
/// MED.ALL, CACM's cacm.all) is read in its layout; a directory of such
/// directories is every one of them, scored one after the other and as
/// their mean (`load` searches them all in one tenant).
#[derive(Debug, Args)]
struct CollectionArgs {
    /// The collection, or a directory of collections.
    #[arg(value_name = "DATASET_DIR", default_value = "../shared/datasets")]
    dataset_dir: PathBuf,
    #[command(flatten)]
    layout: LayoutOverrides,
    /// Ingest into tenants PREFIX-COLLECTION, created if missing; unchanged
    /// documents re-embed nothing, so re-runs take seconds.
    #[arg(long, value_name = "PREFIX")]
    tenant: Option<String>,
}

/// Layout fields given on the command line, for a collection laid out
/// otherwise than the known ones.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "Collection layout")]
struct LayoutOverrides {
    /// Documents as .I/.T/.W records.
    #[arg(long, value_name = "FILE")]
    documents: Option<String>,
    /// Queries as .I/.W records.
    #[arg(long, value_name = "FILE")]
    queries: Option<String>,
    /// Judgments, one per line.
    #[arg(long, value_name = "FILE")]
    judgments: Option<String>,
    /// Their columns (from 1): query, document, grade; without a grade every
    /// pair is relevant [default of the layout; TREC: 1,3,4].
    #[arg(long, value_name = "Q,D[,G]", value_parser = parse_with(JudgmentColumns::parse))]
    judgment_columns: Option<JudgmentColumns>,
    /// Judgments name queries by position in the query file, or by their .I label.
    #[arg(long, value_name = "ordinal|labelled", value_parser = parse_with(parse_query_ids))]
    query_ids: Option<QueryIds>,
    /// Grades that count as relevant [default of the layout: 1-4].
    #[arg(long, value_name = "MIN-MAX", value_parser = parse_with(GradeRange::parse))]
    relevant_grades: Option<GradeRange>,
}

/// What `quality` scores besides the defaults.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "Quality")]
struct QualityArgs {
    /// Also score the tuning experiments (docs/search-quality.md).
    #[arg(long)]
    sweep: bool,
    /// Also score one knob of keel_search at these values (repeatable).
    #[arg(long = "try", value_name = "KNOB=V1,V2,...", value_parser = parse_with(trial))]
    trials: Vec<(String, Vec<Value>)>,
    /// The modes experiments score [default: keyword,hybrid].
    #[arg(long, value_name = "M1,M2", value_delimiter = ',', value_parser = quality::MODES)]
    modes: Vec<String>,
    /// Pass this knob to every search (repeatable).
    #[arg(long = "set", value_name = "KNOB=VALUE", value_parser = parse_with(knob))]
    knobs: Vec<(String, Value)>,
    /// Compare the keyword ranking with a plain BM25.
    #[arg(long)]
    reference: bool,
}

impl QualityArgs {
    fn plan(self) -> quality::Plan {
        quality::Plan {
            base: self.knobs.into_iter().collect(),
            sweep: self.sweep,
            trials: self.trials,
            modes: self.modes,
            reference: self.reference,
        }
    }
}

#[derive(Debug, Default, Args)]
#[command(next_help_heading = "Load")]
struct LoadArgs {
    /// Also grow a tenant to 10k and 100k chunks of the real-prose corpus
    /// (with `1m`, add 1,000 tenants of 900 chunks) and measure latency,
    /// the peer and HNSW recall there (takes long; never in CI).
    #[arg(long, value_name = "10k|100k|1m", value_parser = parse_with(parse_scale))]
    scale: Option<usize>,
}

/// A clap value parser from a `&str → anyhow::Result` function, keeping
/// its message (clap prefixes the argument's name).
fn parse_with<T: Clone + Send + Sync + 'static>(
    parse: fn(&str) -> anyhow::Result<T>,
) -> impl Fn(&str) -> Result<T, String> + Clone {
    move |text| parse(text).map_err(|e| format!("{e:#}"))
}

fn parse_query_ids(text: &str) -> anyhow::Result<QueryIds> {
    match text {
        "ordinal" => Ok(QueryIds::Ordinal),
        "labelled" => Ok(QueryIds::Labelled),
        other => bail!("`{other}` is not ordinal or labelled"),
    }
}

fn parse_scale(text: &str) -> anyhow::Result<usize> {
    match text {
        "10k" => Ok(10_000),
        "100k" => Ok(100_000),
        "1m" => Ok(1_000_000),
        other => bail!("`{other}` is not 10k, 100k or 1m"),
    }
}

/// `KNOB=VALUE`, the value as JSON when it parses (numbers), else a string.
fn knob(text: &str) -> anyhow::Result<(String, Value)> {
    let (name, value) = text
        .split_once('=')
        .with_context(|| format!("`{text}`: expected KNOB=VALUE"))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((name.to_owned(), value))
}

/// `KNOB=V1,V2,...`: one knob at several values.
fn trial(text: &str) -> anyhow::Result<(String, Vec<Value>)> {
    let (name, values) = text
        .split_once('=')
        .with_context(|| format!("`{text}`: expected KNOB=V1,V2"))?;
    let values = values
        .split(',')
        .map(|v| knob(&format!("{name}={v}")).map(|(_, v)| v))
        .collect::<anyhow::Result<_>>()?;
    Ok((name.to_owned(), values))
}

impl LayoutOverrides {
    fn any_file(&self) -> bool {
        self.documents.is_some() || self.queries.is_some() || self.judgments.is_some()
    }

    fn apply(&self, mut layout: Layout) -> Layout {
        if let Some(v) = &self.documents {
            layout.documents = v.clone();
        }
        if let Some(v) = &self.queries {
            layout.queries = v.clone();
        }
        if let Some(v) = &self.judgments {
            layout.judgments = v.clone();
        }
        if let Some(v) = self.judgment_columns {
            layout.judgment_columns = v;
        }
        if let Some(v) = self.query_ids {
            layout.query_ids = v;
        }
        if let Some(v) = self.relevant_grades {
            layout.relevant_grades = v;
        }
        layout
    }
}

/// One run: the collections, and the sections it measures over them.
struct Run {
    collection: CollectionArgs,
    /// `quality`'s plan, when it runs.
    quality: Option<quality::Plan>,
    /// `load`'s options, when it runs.
    load: Option<LoadArgs>,
}

impl CollectionArgs {
    /// Each collection to score and its layout: the directory itself when
    /// it holds a known collection or options name its files, else each of
    /// its subdirectories that holds one, by name.
    fn collections(&self) -> anyhow::Result<Vec<(PathBuf, Layout)>> {
        let dir = &self.dataset_dir;
        if let Some(layout) = Layout::detect(dir) {
            return Ok(vec![(dir.clone(), self.layout.apply(layout))]);
        }
        if self.layout.any_file() {
            return Ok(vec![(dir.clone(), self.layout.apply(Layout::cranfield()))]);
        }
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if let Some(layout) = Layout::detect(&path) {
                found.push((path, self.layout.apply(layout)));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        if found.is_empty() {
            bail!(
                "{}: no known collection here or in its subdirectories; name the files with --documents, --queries and --judgments",
                dir.display()
            );
        }
        Ok(found)
    }
    /// Every collection read, each announced with its counts on stderr.
    fn load_all(&self) -> anyhow::Result<Vec<Collection>> {
        let mut collections = Vec::new();
        for (dir, layout) in self.collections()? {
            let collection = Collection::load(&dir, &layout)?;
            let counts = &collection.judgment_counts;
            eprintln!(
                "{}: {} documents ({} empty records skipped), {} queries, {} relevant judgments (grades {}; {} not relevant, {} with other grades ignored)",
                collection.name,
                collection.documents.len(),
                collection.empty_documents,
                collection.queries.len(),
                counts.relevant,
                layout.relevant_grades,
                counts.not_relevant,
                counts.out_of_range,
            );
            collections.push(collection);
        }
        Ok(collections)
    }
}

/// Runs `keel bench …`.
pub fn main(args: BenchArgs) -> std::process::ExitCode {
    let run = match args.section {
        Some(BenchSection::Model(args)) => return crate::bench_model::main(args),
        Some(BenchSection::Artifacts) => return crate::bench_artifacts::main(),
        Some(BenchSection::Corpus { collection }) => {
            return match collection.load_all().and_then(|c| {
                corpus::load_or_build(Path::new(corpus::CACHE_DIR), &c.iter().collect::<Vec<_>>())
            }) {
                Ok(corpus) => {
                    println!(
                        "corpus: {} passages ({}), embedded",
                        corpus.passages.len(),
                        corpus.describe()
                    );
                    std::process::ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("bench corpus failed: {error:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        None => Run {
            collection: args.collection,
            quality: Some(args.quality.plan()),
            load: Some(args.load),
        },
        Some(BenchSection::Quality {
            collection,
            quality,
        }) => Run {
            collection,
            quality: Some(quality.plan()),
            load: None,
        },
        Some(BenchSection::Load { collection, load }) => Run {
            collection,
            quality: None,
            load: Some(load),
        },
    };
    keel::platform::config::load_dotenv();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the runtime builds");
    match runtime.block_on(run.run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench failed: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

impl Run {
    async fn run(self) -> anyhow::Result<()> {
        let collections = self.collection.load_all()?;
        let harness = Harness::start().await?;
        let mut sets = Vec::new();
        for collection in collections {
            let slug = self
                .collection
                .tenant
                .as_ref()
                .map(|prefix| format!("{prefix}-{}", collection.name.to_ascii_lowercase()));
            let ingested = harness.ingest(&collection, slug.as_deref()).await?;
            sets.push(quality::Loaded::new(&harness, collection, ingested).await?);
        }
        if let Some(plan) = &self.quality {
            quality::run(&harness, &sets, plan).await?;
        }
        if let Some(load) = &self.load {
            load::run(&harness, &sets, load.scale).await?;
        }
        Ok(())
    }
}

/// An in-process Keel server and a direct database connection.
pub struct Harness {
    app: Arc<keel::App>,
    /// The chat model double answers are timed against.
    chat: answers::InstantChat,
    client: reqwest::Client,
    base: String,
    db: Client,
    model: keel::knowledge::EmbeddingModel,
}

/// A collection stored and embedded in one tenant.
pub struct Ingested {
    key: String,
    tenant_id: String,
    chunks: u64,
    /// Chunking and storing (`PUT /api/documents`).
    store_time: Duration,
    /// The embeddings cron until no job remains.
    embed_time: Duration,
    embedded: u64,
    provider_requests: u64,
}

impl Harness {
    async fn start() -> anyhow::Result<Self> {
        let database_url =
            std::env::var("DATABASE_URL").context("DATABASE_URL: the bench database")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let mut vars: HashMap<String, String> = std::env::vars().collect();
        let local_model =
            !vars.contains_key("OPENAI_API_KEY") && !vars.contains_key("OPENAI_BASE_URL");
        let mut routes = keel::routes::all();
        if local_model {
            let dir = std::env::var_os("KEEL_LOCAL_MODEL_DIR").context(
                "KEEL_LOCAL_MODEL_DIR: required for the local model (scripts/bench sets it)",
            )?;
            eprintln!("loading the local model…");
            keel_local::install(keel_local::LocalModel::load(Path::new(&dir))?);
            routes.extend(keel_local::routes());
            vars.insert("OPENAI_BASE_URL".into(), format!("{base}/v1"));
            vars.insert("EMBEDDING_MODEL".into(), keel_local::MODEL_NAME.into());
            vars.insert(
                "EMBEDDING_DIMENSIONS".into(),
                keel_local::DIMENSIONS.to_string(),
            );
            // all-MiniLM-L6-v2 reads at most 256 word pieces: keep chunks within
            // them (as scripts/server does), and batches small enough for a CPU
            // forward pass per request. The environment may override both.
            for (name, value) in [
                ("CHUNK_TOKENS", "200"),
                ("CHUNK_OVERLAP_TOKENS", "30"),
                ("EMBEDDING_BATCH_SIZE", "64"),
                ("EMBEDDING_TIMEOUT_MS", "300000"),
            ] {
                vars.entry(name.into()).or_insert_with(|| value.into());
            }
        }
        let (chat, chat_url) = answers::InstantChat::start().await?;
        vars.insert("CHAT_BASE_URL".into(), chat_url);
        vars.insert("CHAT_API_KEY".into(), answers::CHAT_KEY.into());
        let per_minute = "1000000";
        for (name, value) in [
            ("ADMIN_API_KEY", ADMIN_KEY),
            ("CRON_SECRET", CRON_SECRET),
            ("ENCRYPTION_KEY", &"ab".repeat(32)),
            ("LOG_LEVEL", "error"),
            ("DB_POOL_SIZE", "8"),
            ("CRON_TIME_BUDGET_MS", "600000"),
            // The bench is one client sending thousands of requests.
            ("RATE_LIMIT_SEARCH_PER_MINUTE", per_minute),
            ("RATE_LIMIT_TENANT_PER_MINUTE", per_minute),
            ("RATE_LIMIT_ANONYMOUS_PER_MINUTE", per_minute),
            ("RATE_LIMIT_WEBHOOK_PER_MINUTE", per_minute),
            ("RATE_LIMIT_CHAT_PER_MINUTE", per_minute),
        ] {
            vars.insert(name.into(), value.into());
        }
        let config =
            keel::platform::config::Config::from_vars(&vars).map_err(|e| anyhow!("{e}"))?;
        let model = keel::knowledge::EmbeddingModel::configured(&config);
        eprintln!(
            "embedding with {} ({} dimensions), chunks of at most {} tokens overlapping {}",
            model.name, model.dimensions, config.ingest.chunk_tokens, config.ingest.chunk_overlap
        );
        let app = keel::App::new(config)?;
        tokio::spawn(keel::web::runtime::serve_local(
            listener,
            app.clone(),
            Arc::new(keel::web::Router::all(routes)),
            std::future::pending(),
        ));
        let db =
            keel::platform::db::migrate::connect(&database_url, keel::platform::tls::tls_config())
                .await?;
        Ok(Self {
            app,
            chat,
            client: reqwest::Client::new(),
            base,
            db,
            model,
        })
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        // A 503 says "retry shortly" (a saturated machine's pool wait, a
        // database restart): retried as a client would, a few times.
        for attempt in 1.. {
            let mut request = self
                .client
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(key);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await?;
            let status = response.status();
            if status != reqwest::StatusCode::SERVICE_UNAVAILABLE || attempt == 5 {
                return Ok((status, response.json().await?));
            }
            tokio::time::sleep(Duration::from_secs(attempt)).await;
        }
        unreachable!("the loop returns by its fifth attempt")
    }

    async fn post(&self, path: &str, key: &str, body: &Value) -> anyhow::Result<Value> {
        let (status, body) = self
            .request(reqwest::Method::POST, path, key, Some(body))
            .await?;
        if !status.is_success() {
            bail!("{path} answered {status}: {body}");
        }
        Ok(body)
    }

    async fn create_tenant(&self, slug: &str) -> anyhow::Result<String> {
        let body = self
            .post(
                "/api/tenants",
                ADMIN_KEY,
                &json!({"name": slug, "slug": slug}),
            )
            .await?;
        Ok(body["api_key"].as_str().context("api_key")?.to_owned())
    }

    /// A key for the tenant `slug`, creating the tenant when it does not exist.
    async fn tenant_key(&self, slug: &str) -> anyhow::Result<String> {
        let (status, body) = self
            .request(
                reqwest::Method::POST,
                "/api/tenants",
                ADMIN_KEY,
                Some(&json!({"name": slug, "slug": slug})),
            )
            .await?;
        let body = if status == reqwest::StatusCode::CONFLICT {
            self.post(&format!("/api/tenants/{slug}/keys"), ADMIN_KEY, &json!({}))
                .await?
        } else if status.is_success() {
            body
        } else {
            bail!("/api/tenants answered {status}: {body}");
        };
        Ok(body["api_key"].as_str().context("api_key")?.to_owned())
    }

    async fn tenant_id(&self, key: &str) -> anyhow::Result<String> {
        Ok(self
            .db
            .query_one(
                "select tenant_id::text from keel.api_keys where key_hash = $1",
                &[&keel::tenants::keys::hash_key(key)],
            )
            .await?
            .get(0))
    }

    /// Stores the collection in a fresh tenant (or `slug`) and embeds it.
    async fn ingest(
        &self,
        collection: &Collection,
        slug: Option<&str>,
    ) -> anyhow::Result<Ingested> {
        let key = match slug {
            Some(slug) => self.tenant_key(slug).await?,
            None => {
                self.create_tenant(&format!("bench-{}", rand::rng().random::<u32>()))
                    .await?
            }
        };
        let tenant_id = self.tenant_id(&key).await?;
        eprintln!("ingesting {} documents…", collection.documents.len());
        let started = Instant::now();
        let bar = crate::progress::bar(collection.documents.len(), "documents");
        for batch in collection.documents.chunks(INGEST_BATCH) {
            let documents: Vec<Value> = batch
                .iter()
                .map(|d| json!({"id": d.id, "title": d.title, "content": d.content}))
                .collect();
            let (status, body) = self
                .request(
                    reqwest::Method::PUT,
                    "/api/documents",
                    &key,
                    Some(&json!({"documents": documents})),
                )
                .await?;
            if !status.is_success() {
                bail!("PUT /api/documents answered {status}: {body}");
            }
            bar.inc(batch.len() as u64);
        }
        bar.finish_and_clear();
        let store_time = started.elapsed();
        eprintln!("embedding…");
        let started = Instant::now();
        // The length is known after the first run: what it embedded plus what remains.
        let bar = crate::progress::bar(0, "chunks");
        let (mut embedded, mut provider_requests) = (0, 0);
        loop {
            let (status, report) = self
                .request(
                    reqwest::Method::GET,
                    "/api/cron/embeddings",
                    CRON_SECRET,
                    None,
                )
                .await?;
            if !status.is_success() {
                bail!("/api/cron/embeddings answered {status}: {report}");
            }
            embedded += report["embedded"].as_u64().unwrap_or(0);
            provider_requests += report["provider_requests"].as_u64().unwrap_or(0);
            if report["failed"].as_u64().unwrap_or(0) > 0 {
                bail!("embedding failed: {report}");
            }
            let remaining = report["remaining"].as_u64();
            bar.set_length(embedded + remaining.unwrap_or(0));
            bar.set_position(embedded);
            if remaining == Some(0) {
                break;
            }
        }
        bar.finish_and_clear();
        let embed_time = started.elapsed();
        let chunks: i64 = self
            .db
            .query_one(
                "select count(*) from keel.chunks where tenant_id = $1::text::uuid",
                &[&tenant_id],
            )
            .await?
            .get(0);
        Ok(Ingested {
            key,
            tenant_id,
            chunks: chunks as u64,
            store_time,
            embed_time,
            embedded,
            provider_requests,
        })
    }

    /// Query vectors from the configured provider, in order.
    async fn embed_queries(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        let embedder = self
            .app
            .knowledge
            .embedder
            .as_ref()
            .context("no embeddings provider is configured")?;
        let deadline = Instant::now() + Duration::from_secs(600);
        Ok(embedder.embed(&self.model, texts, deadline).await?)
    }

    /// `keel_search`, the function behind `POST /api/search`, called as the
    /// handler calls it once it holds the query vector, plus `tuning` (the
    /// ranking's knobs, see migrations/0006). Returns the results.
    async fn search(
        &self,
        key: &str,
        query: &str,
        vector: &[f32],
        mode: &str,
        top_k: usize,
        tuning: &Value,
    ) -> anyhow::Result<Vec<Value>> {
        let args = self.search_args(key, query, vector, mode, top_k, tuning);
        let mut outcome: Value = self.app.db.call("keel_search", &args).await?;
        match outcome.get_mut("results").map(Value::take) {
            Some(Value::Array(results)) => Ok(results),
            _ => bail!("keel_search answered {outcome}"),
        }
    }

    /// The arguments of `keel_search` as the handler passes them once it
    /// holds the query vector, plus `tuning`.
    fn search_args(
        &self,
        key: &str,
        query: &str,
        vector: &[f32],
        mode: &str,
        top_k: usize,
        tuning: &Value,
    ) -> Value {
        let mut args = json!({
            "key_hash": keel::tenants::keys::hash_key(key),
            "mode": mode,
            "query": query,
            "top_k": top_k,
            "filter": {},
            "model": self.model.name,
            "dimensions": self.model.dimensions,
            "model_chosen": true,
            "query_hash": "bench",
            "cache_hit": true,
            "cache_ttl_seconds": 60,
        });
        if mode != "keyword" {
            args["embedding"] = json!(vector);
        }
        if let (Some(args), Some(tuning)) = (args.as_object_mut(), tuning.as_object()) {
            args.extend(tuning.clone());
        }
        args
    }
}

/// The `p` quantile (0..=1) of `samples`, in milliseconds.
fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index].as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `keel bench <text>` as the command line parses it.
    fn bench(text: &str) -> Result<BenchArgs, clap::Error> {
        use clap::FromArgMatches as _;
        BenchArgs::augment_args(clap::Command::new("bench"))
            .try_get_matches_from(std::iter::once("bench").chain(text.split_whitespace()))
            .and_then(|matches| BenchArgs::from_arg_matches(&matches))
    }

    fn quality(text: &str) -> (CollectionArgs, QualityArgs) {
        match bench(text).unwrap().section {
            Some(BenchSection::Quality {
                collection,
                quality,
            }) => (collection, quality),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn sections_and_options_parse() {
        let all = bench("").unwrap();
        assert!(all.section.is_none());
        assert_eq!(
            all.collection.dataset_dir,
            PathBuf::from("../shared/datasets")
        );
        let (collection, options) = quality(
            "quality /data/cisi --documents CISI.ALL --query-ids labelled --relevant-grades 1-2 --judgment-columns 1,2 --sweep --set rrf_k=20 --try bm25_b=0.3,0.5 --modes keyword",
        );
        assert_eq!(collection.dataset_dir, PathBuf::from("/data/cisi"));
        let layout = collection.layout.apply(Layout::cranfield());
        assert_eq!(layout.documents, "CISI.ALL");
        assert_eq!(layout.queries, "cran.qry", "not overridden");
        assert_eq!(layout.query_ids, QueryIds::Labelled);
        assert_eq!(layout.relevant_grades, GradeRange { min: 1, max: 2 });
        assert_eq!(layout.judgment_columns.grade, None);
        let plan = options.plan();
        assert!(plan.sweep);
        assert_eq!(plan.base["rrf_k"], json!(20));
        assert_eq!(
            plan.trials,
            [("bm25_b".to_owned(), vec![json!(0.3), json!(0.5)])]
        );
        assert_eq!(plan.modes, ["keyword"]);
        assert!(matches!(
            bench("load").unwrap().section,
            Some(BenchSection::Load {
                load: LoadArgs { scale: None },
                ..
            })
        ));
        assert!(matches!(
            bench("load --scale 1m").unwrap().section,
            Some(BenchSection::Load {
                load: LoadArgs {
                    scale: Some(1_000_000)
                },
                ..
            })
        ));
        assert_eq!(
            bench("/data --scale 100k").unwrap().load.scale,
            Some(100_000)
        );
        assert!(matches!(
            bench("corpus").unwrap().section,
            Some(BenchSection::Corpus { .. })
        ));
        assert!(matches!(
            bench("model /data --rust-only").unwrap().section,
            Some(BenchSection::Model(_))
        ));
    }

    #[test]
    fn bad_options_are_refused_naming_the_option() {
        for (args, named, why) in [
            ("quality --modes fuzzy", "--modes", "not a search mode"),
            (
                "quality --modes keyword,fuzzy",
                "--modes",
                "one bad mode in a list",
            ),
            ("quality --set rrf_k", "--set", "a knob without a value"),
            ("quality --try bm25_b", "--try", "a trial without values"),
            (
                "quality --relevant-grades 3-1",
                "--relevant-grades",
                "an empty range",
            ),
            (
                "quality --judgment-columns 0,1",
                "--judgment-columns",
                "columns count from 1",
            ),
            (
                "quality --query-ids random",
                "--query-ids",
                "neither ordinal nor labelled",
            ),
            ("load --scale 10", "--scale", "not 10k, 100k or 1m"),
            ("quality --bogus", "--bogus", "an unknown option"),
            (
                "quality --tenant",
                "--tenant",
                "an option without its value",
            ),
            ("quality a b", "b", "two dataset directories"),
            ("load --sweep", "--sweep", "a quality option given to load"),
            ("artifacts extra", "extra", "artifacts takes no argument"),
        ] {
            let error = bench(args).expect_err(why).to_string();
            assert!(error.contains(named), "{args} ({why}): {error}");
        }
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut samples, 0.5), 51.0);
        assert_eq!(percentile(&mut samples, 0.95), 95.0);
    }
}
