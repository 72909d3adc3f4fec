//! `keel bench`: measures Keel end to end on this machine and prints tables.
//!
//! - `keel bench quality [DATASET_DIR] [OPTIONS]`: retrieval quality of each
//!   search mode on each test collection and their mean (quality.rs).
//! - `keel bench load [DATASET_DIR] [--scale 10k|100k|1m]`: webhook intake, then
//!   search latency and capacity per mode over the judged collections in one
//!   tenant; opt-in, a synthetic tenant grown to 10k, 100k (and 1M) chunks
//!   with HNSW recall (load.rs).
//! - `keel bench [DATASET_DIR] [OPTIONS]`: both, sharing one ingestion.
//!
//! Every section runs an in-process server (every route, plus the local
//! model's `/v1/embeddings` unless `OPENAI_API_KEY` or `OPENAI_BASE_URL`
//! configures another provider) against `DATABASE_URL`, which should be a
//! migrated database (`scripts/bench` makes a fresh one), and first ingests
//! the collection through `PUT /api/documents` and embeds it through
//! `/api/cron/embeddings`, Keel's own path.

mod answers;
mod collection;
mod load;
mod metrics;
mod quality;
mod reference;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use rand::Rng as _;
use serde_json::{Value, json};
use tokio_postgres::Client;

use collection::{Collection, GradeRange, JudgmentColumns, Layout, QueryIds};

const ADMIN_KEY: &str = "bench-admin-key-0123456789abcdef0123456789";
const CRON_SECRET: &str = "bench-cron-secret-0123456789abcdef01234567";
/// Documents per `PUT /api/documents` (the default `MAX_DOCUMENTS_PER_REQUEST`).
const INGEST_BATCH: usize = 100;

const USAGE: &str = "usage: keel bench [quality|load] [DATASET_DIR] [OPTIONS]

DATASET_DIR defaults to ../shared/datasets. A directory holding a known
collection (Cranfield's cran.all.1400, MED's MED.ALL, CACM's cacm.all) is read
in its layout; a directory of such directories is every one of them, scored
one after the other and as their mean (the section `load` searches them all
in one tenant).
Options override the layout, for a collection laid out otherwise:
  --documents FILE         documents as .I/.T/.W records
  --queries FILE           queries as .I/.W records
  --judgments FILE         judgments, one per line
  --judgment-columns Q,D[,G]
                           their columns (from 1): query, document, grade;
                           without a grade every pair is relevant  [1,3,4]
  --query-ids ordinal|labelled
                           judgments name queries by position in the query
                           file, or by their .I label
  --relevant-grades MIN-MAX
                           grades that count as relevant    [1-4]
Quality:
  --sweep                  also score the tuning experiments (docs/search-quality.md)
  --try KNOB=V1,V2,...     also score one knob of keel_search at these values
  --modes M1,M2            the modes experiments score      [keyword,hybrid]
  --set KNOB=VALUE         pass this knob to every search (repeatable)
  --reference              compare the keyword ranking with a plain BM25
  --tenant PREFIX          ingest into tenants PREFIX-COLLECTION, created if
                           missing; unchanged documents re-embed nothing, so
                           re-runs take seconds
Load:
  --scale 10k|100k|1m      also grow a synthetic tenant to 10k, 100k (and 1M)
                           chunks and measure latency and HNSW recall there
                           (takes long; never in CI)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    All,
    Quality,
    Load,
}

/// Layout fields given on the command line.
#[derive(Debug, Default)]
struct LayoutOverrides {
    documents: Option<String>,
    queries: Option<String>,
    judgments: Option<String>,
    judgment_columns: Option<JudgmentColumns>,
    query_ids: Option<QueryIds>,
    relevant_grades: Option<GradeRange>,
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

struct Options {
    section: Section,
    dataset_dir: PathBuf,
    layout: LayoutOverrides,
    plan: quality::Plan,
    tenant: Option<String>,
    /// The largest synthetic scale `load` grows to (`--scale`).
    scale: Option<usize>,
}

/// `KNOB=VALUE`, the value as JSON when it parses (numbers), else a string.
fn knob(text: &str) -> anyhow::Result<(String, Value)> {
    let (name, value) = text
        .split_once('=')
        .with_context(|| format!("`{text}`: expected KNOB=VALUE"))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((name.to_owned(), value))
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut args = args.iter().map(String::as_str).peekable();
        let section = match args.peek() {
            Some(&"quality") => Section::Quality,
            Some(&"load") => Section::Load,
            _ => Section::All,
        };
        if section != Section::All {
            args.next();
        }
        let mut options = Self {
            section,
            dataset_dir: PathBuf::from("../shared/datasets"),
            layout: LayoutOverrides::default(),
            plan: quality::Plan::default(),
            tenant: None,
            scale: None,
        };
        let mut dataset_dir = None;
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .map(str::to_owned)
                    .with_context(|| format!("{arg} needs a value"))
            };
            let layout = &mut options.layout;
            match arg {
                "--documents" => layout.documents = Some(value()?),
                "--queries" => layout.queries = Some(value()?),
                "--judgments" => layout.judgments = Some(value()?),
                "--judgment-columns" => {
                    layout.judgment_columns =
                        Some(JudgmentColumns::parse(&value()?).context("--judgment-columns")?);
                }
                "--query-ids" => {
                    layout.query_ids = Some(match value()?.as_str() {
                        "ordinal" => QueryIds::Ordinal,
                        "labelled" => QueryIds::Labelled,
                        other => bail!("--query-ids: `{other}` is not ordinal or labelled"),
                    })
                }
                "--relevant-grades" => {
                    layout.relevant_grades =
                        Some(GradeRange::parse(&value()?).context("--relevant-grades")?);
                }
                "--sweep" => options.plan.sweep = true,
                "--reference" => options.plan.reference = true,
                "--set" => {
                    let (name, value) = knob(&value()?).context("--set")?;
                    options.plan.base.insert(name, value);
                }
                "--try" => {
                    let text = value()?;
                    let (name, values) = text
                        .split_once('=')
                        .with_context(|| format!("--try `{text}`: expected KNOB=V1,V2"))?;
                    let values = values
                        .split(',')
                        .map(|v| knob(&format!("{name}={v}")).map(|(_, v)| v))
                        .collect::<anyhow::Result<_>>()?;
                    options.plan.trials.push((name.to_owned(), values));
                }
                "--modes" => {
                    options.plan.modes = value()?.split(',').map(str::to_owned).collect();
                    if let Some(mode) = options
                        .plan
                        .modes
                        .iter()
                        .find(|m| !quality::MODES.contains(&m.as_str()))
                    {
                        bail!("--modes: `{mode}` is not keyword, vector or hybrid");
                    }
                }
                "--tenant" => options.tenant = Some(value()?),
                "--scale" => {
                    options.scale = Some(match value()?.as_str() {
                        "10k" => 10_000,
                        "100k" => 100_000,
                        "1m" => 1_000_000,
                        other => bail!("--scale: `{other}` is not 10k, 100k or 1m"),
                    })
                }
                flag if flag.starts_with("--") => bail!("unknown option {flag}"),
                dir if dataset_dir.is_none() => dataset_dir = Some(PathBuf::from(dir)),
                extra => bail!("unexpected argument `{extra}`"),
            }
        }
        if let Some(dir) = dataset_dir {
            options.dataset_dir = dir;
        }
        Ok(options)
    }

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
}

/// Runs `keel bench …` (`args` after `bench`).
pub fn main(args: &[String]) -> std::process::ExitCode {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return std::process::ExitCode::SUCCESS;
    }
    let options = match Options::parse(args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("{error:#}\n\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the runtime builds");
    match runtime.block_on(run(options)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench failed: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> anyhow::Result<()> {
    let mut collections = Vec::new();
    for (dir, layout) in options.collections()? {
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
    let harness = Harness::start().await?;
    let mut sets = Vec::new();
    for collection in collections {
        let slug = options
            .tenant
            .as_ref()
            .map(|prefix| format!("{prefix}-{}", collection.name.to_ascii_lowercase()));
        let ingested = harness.ingest(&collection, slug.as_deref()).await?;
        sets.push(quality::Loaded::new(&harness, collection, ingested).await?);
    }
    if options.section != Section::Load {
        quality::run(&harness, &sets, &options.plan).await?;
    }
    if options.section != Section::Quality {
        load::run(&harness, &sets, options.scale).await?;
    }
    Ok(())
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
        }
        let store_time = started.elapsed();
        eprintln!("embedding…");
        let started = Instant::now();
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
            if report["remaining"].as_u64() == Some(0) {
                break;
            }
        }
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
        let mut outcome: Value = self.app.db.call("keel_search", &args).await?;
        match outcome.get_mut("results").map(Value::take) {
            Some(Value::Array(results)) => Ok(results),
            _ => bail!("keel_search answered {outcome}"),
        }
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

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn sections_and_options_parse() {
        let all = Options::parse(&[]).unwrap();
        assert_eq!(all.section, Section::All);
        assert_eq!(all.dataset_dir, PathBuf::from("../shared/datasets"));
        let quality = Options::parse(&args(
            "quality /data/cisi --documents CISI.ALL --query-ids labelled --relevant-grades 1-2 --judgment-columns 1,2 --sweep --set rrf_k=20 --try bm25_b=0.3,0.5 --modes keyword",
        ))
        .unwrap();
        assert_eq!(quality.section, Section::Quality);
        assert_eq!(quality.dataset_dir, PathBuf::from("/data/cisi"));
        let layout = quality.layout.apply(Layout::cranfield());
        assert_eq!(layout.documents, "CISI.ALL");
        assert_eq!(layout.queries, "cran.qry", "not overridden");
        assert_eq!(layout.query_ids, QueryIds::Labelled);
        assert_eq!(layout.relevant_grades, GradeRange { min: 1, max: 2 });
        assert_eq!(layout.judgment_columns.grade, None);
        assert!(quality.plan.sweep);
        assert_eq!(quality.plan.base["rrf_k"], json!(20));
        assert_eq!(
            quality.plan.trials,
            [("bm25_b".to_owned(), vec![json!(0.3), json!(0.5)])]
        );
        assert_eq!(quality.plan.modes, ["keyword"]);
        assert!(Options::parse(&args("quality --modes fuzzy")).is_err());
        assert!(Options::parse(&args("quality --set rrf_k")).is_err());
        let load = Options::parse(&args("load")).unwrap();
        assert_eq!((load.section, load.scale), (Section::Load, None));
        assert_eq!(
            Options::parse(&args("load --scale 1m")).unwrap().scale,
            Some(1_000_000)
        );
        assert!(Options::parse(&args("load --scale 10")).is_err());
        assert!(Options::parse(&args("quality --bogus")).is_err());
        assert!(Options::parse(&args("quality --tenant")).is_err());
        assert!(Options::parse(&args("quality a b")).is_err());
    }

    #[test]
    fn a_directory_of_collections_is_each_of_them() {
        let root = std::env::temp_dir().join(format!("keel-collections-{}", std::process::id()));
        for (name, file) in [("med", "MED.ALL"), ("cacm", "cacm.all"), ("notes", "x.txt")] {
            std::fs::create_dir_all(root.join(name)).unwrap();
            std::fs::write(root.join(name).join(file), "").unwrap();
        }
        let options = Options::parse(&args(&format!(
            "quality {} --relevant-grades 1-2",
            root.display()
        )))
        .unwrap();
        let found = options.collections().unwrap();
        assert_eq!(
            found,
            [
                (
                    root.join("cacm"),
                    Layout {
                        relevant_grades: GradeRange { min: 1, max: 2 },
                        ..Layout::cacm()
                    }
                ),
                (
                    root.join("med"),
                    Layout {
                        relevant_grades: GradeRange { min: 1, max: 2 },
                        ..Layout::med()
                    }
                ),
            ]
        );
        let one =
            Options::parse(&args(&format!("quality {}", root.join("med").display()))).unwrap();
        assert_eq!(
            one.collections().unwrap(),
            [(root.join("med"), Layout::med())]
        );
        let empty =
            Options::parse(&args(&format!("quality {}", root.join("notes").display()))).unwrap();
        assert!(empty.collections().is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut samples, 0.5), 51.0);
        assert_eq!(percentile(&mut samples, 0.95), 95.0);
    }
}
