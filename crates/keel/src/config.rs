//! Typed configuration, parsed once per cold start from environment variables
//! (and a `.env` file in development). Parsing never stops at the first
//! problem: every missing, malformed or inconsistent variable is collected and
//! reported together, each naming its variable. Secrets are wrapped in
//! [`SecretString`] so `Debug` and logs cannot print them.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use url::Url;

/// Where the deployment runs; decides log format, HSTS and strictness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Preview,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Preview => "preview",
            Self::Production => "production",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value {
            "development" => Some(Self::Development),
            "preview" => Some(Self::Preview),
            "production" => Some(Self::Production),
            _ => None,
        }
    }
}

/// How Keel reaches its database.
#[derive(Debug, Clone)]
pub enum DatabaseConfig {
    /// Direct Postgres (local, CI, self-hosted, Supavisor in transaction mode).
    Postgres {
        url: SecretString,
        pool_size: usize,
        /// `DATABASE_CA_CERT`: CAs trusted for the database's certificate
        /// besides the public roots.
        ca_certs: Vec<CertificateDer<'static>>,
    },
    /// Supabase's PostgREST: `POST {url}/rest/v1/rpc/<fn>`.
    PostgRest { url: Url, service_key: SecretString },
}

impl DatabaseConfig {
    pub fn transport_name(&self) -> &'static str {
        match self {
            Self::Postgres { .. } => "postgres",
            Self::PostgRest { .. } => "postgrest",
        }
    }
}

/// An OpenAI-compatible embeddings server.
#[derive(Debug, Clone)]
pub struct EmbeddingsProviderConfig {
    pub base_url: Url,
    pub api_key: Option<SecretString>,
}

/// The embedding model and how hard to try.
#[derive(Debug, Clone)]
pub struct EmbeddingSettings {
    pub model: String,
    pub dimensions: u32,
    /// Retries of one provider request (429, 5xx, timeouts).
    pub max_retries: u32,
    pub request_timeout: Duration,
    /// Chunks claimed and sent per provider request (≤ 2,048, OpenAI's limit).
    pub batch_size: u32,
    /// Attempts of one chunk's job before it is marked failed.
    pub max_attempts: u32,
    pub lease: Duration,
    pub retry_base: Duration,
}

#[derive(Debug, Clone)]
pub struct IngestLimits {
    pub max_documents: usize,
    pub max_document_bytes: usize,
    pub chunk_tokens: usize,
    pub chunk_overlap: usize,
}

#[derive(Debug, Clone)]
pub struct SearchSettings {
    pub cache_ttl: Duration,
    pub lru_size: usize,
    pub disable_vector: bool,
}

/// Requests per minute per bucket (see `ratelimit`).
#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    /// Per tenant, on `POST /api/search`.
    pub search_per_minute: u32,
    /// Per tenant, on every other tenant-key route.
    pub tenant_per_minute: u32,
    /// Per client address, on unauthenticated routes (`/api/ready`).
    pub anonymous_per_minute: u32,
    /// Per client address, on webhook intake: providers send in bursts.
    pub webhook_per_minute: u32,
}

#[derive(Debug, Clone)]
pub struct SentryConfig {
    pub dsn: SecretString,
    pub traces_sample_rate: f32,
}

/// Every setting Keel reads. Built by [`Config::from_env`] or, in tests, from a map.
#[derive(Debug, Clone)]
pub struct Config {
    pub environment: Environment,
    pub version: &'static str,
    pub commit: String,
    pub port: u16,
    pub log_level: String,
    pub database: DatabaseConfig,
    /// Set when both transports were configured: says which one won and why.
    pub database_choice_note: Option<String>,
    pub db_timeout: Duration,
    pub embeddings: Option<EmbeddingsProviderConfig>,
    pub admin_api_key: Option<SecretString>,
    pub cron_secret: Option<SecretString>,
    /// Bearer token for `GET /api/metrics`; unset closes the route.
    pub metrics_token: Option<SecretString>,
    pub encryption_key: Option<Arc<SecretBox<[u8; 32]>>>,
    /// Earlier ENCRYPTION_KEYs, still accepted for decryption after a rotation.
    pub previous_encryption_keys: Vec<Arc<SecretBox<[u8; 32]>>>,
    pub sentry: Option<SentryConfig>,
    pub cors_origins: Vec<String>,
    pub maintenance_mode: bool,
    pub slow_request: Duration,
    pub max_body_bytes: usize,
    pub ready_check_timeout: Duration,
    pub embedding: EmbeddingSettings,
    pub ingest: IngestLimits,
    pub search: SearchSettings,
    pub rate_limits: RateLimitSettings,
    /// How long a cron run may work; below the function's maxDuration.
    pub cron_time_budget: Duration,
    pub tasks: TaskSettings,
}

#[derive(Debug, Clone)]
pub struct TaskSettings {
    pub retry_base: Duration,
    pub task_retention_days: u32,
    pub delivery_retention_days: u32,
    /// Development only: lets reconciliation pull from loopback/private hosts.
    pub allow_private_pull_urls: bool,
}

/// One variable that is missing, malformed or inconsistent with another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub variable: &'static str,
    pub message: String,
}

/// Every problem found in one parse, so an operator fixes them in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem{}):",
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            writeln!(f, "  - {}: {}", problem.variable, problem.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

pub const OPENAI_DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// Secrets that guard whole deployments must not be guessable.
const MIN_SHARED_SECRET_LEN: usize = 32;

impl Config {
    /// Reads the process environment, after a `.env` file when one exists.
    pub fn from_env() -> Result<Self, ConfigError> {
        load_dotenv();
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_vars(&vars)
    }

    /// Parses settings from a map of variables; the whole parse is pure.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut env = Vars {
            vars,
            problems: Vec::new(),
        };

        let environment = env.environment();
        let production = environment == Environment::Production;
        let commit = env
            .optional("VERCEL_GIT_COMMIT_SHA")
            .unwrap_or(env!("KEEL_BUILD_COMMIT"))
            .to_owned();
        let port = env.parsed("PORT", 3000u16);
        let log_level = env.optional("LOG_LEVEL").unwrap_or("info").to_owned();
        if log_level
            .parse::<tracing_subscriber::filter::Targets>()
            .is_err()
        {
            env.problem(
                "LOG_LEVEL",
                "must be a level (error, warn, info, debug, trace) or targets like `keel=debug,info`",
            );
        }
        let (database, database_choice_note) = env.database();
        let db_timeout = Duration::from_millis(env.parsed("DB_TIMEOUT_MS", 5_000u64));
        let embeddings = env.embeddings(production);
        let admin_api_key = env.shared_secret("ADMIN_API_KEY", production);
        let cron_secret = env.shared_secret("CRON_SECRET", production);
        let metrics_token = env.shared_secret("METRICS_TOKEN", false);
        let encryption_key = env.encryption_key(production);
        let previous_encryption_keys = env.previous_encryption_keys();
        let sentry = env.sentry();
        let cors_origins = env.cors_origins(production);
        let maintenance_mode = env.flag("MAINTENANCE_MODE");
        let slow_request = Duration::from_millis(env.parsed("SLOW_REQUEST_MS", 5_000u64));
        let max_body_bytes = env.parsed("MAX_BODY_BYTES", 4 * 1024 * 1024usize);
        let ready_check_timeout =
            Duration::from_millis(env.parsed("READY_CHECK_TIMEOUT_MS", 2_000u64));
        let embedding = env.embedding_settings();
        let ingest = env.ingest_limits();
        let search = SearchSettings {
            cache_ttl: Duration::from_secs(env.parsed("CACHE_TTL_SECONDS", 86_400u64)),
            lru_size: env.parsed("QUERY_CACHE_SIZE", 1_000usize).max(1),
            disable_vector: env.flag("DISABLE_VECTOR_SEARCH"),
        };
        let rate_limits = RateLimitSettings {
            search_per_minute: env.per_minute("RATE_LIMIT_SEARCH_PER_MINUTE", 60),
            tenant_per_minute: env.per_minute("RATE_LIMIT_TENANT_PER_MINUTE", 300),
            anonymous_per_minute: env.per_minute("RATE_LIMIT_ANONYMOUS_PER_MINUTE", 30),
            webhook_per_minute: env.per_minute("RATE_LIMIT_WEBHOOK_PER_MINUTE", 600),
        };
        let cron_time_budget = Duration::from_millis(env.parsed("CRON_TIME_BUDGET_MS", 45_000u64));
        let tasks = TaskSettings {
            retry_base: Duration::from_secs(env.parsed("TASK_RETRY_BASE_SECONDS", 30u64)),
            task_retention_days: env.parsed("TASK_RETENTION_DAYS", 7u32).max(1),
            delivery_retention_days: env.parsed("WEBHOOK_DELIVERY_RETENTION_DAYS", 30u32).max(1),
            allow_private_pull_urls: env.flag("ALLOW_PRIVATE_PULL_URLS"),
        };
        if tasks.allow_private_pull_urls && production {
            env.problem(
                "ALLOW_PRIVATE_PULL_URLS",
                "must not be set in production (it would let pull URLs reach internal hosts)",
            );
        }

        if !env.problems.is_empty() {
            return Err(ConfigError {
                problems: env.problems,
            });
        }
        Ok(Config {
            environment,
            version: env!("CARGO_PKG_VERSION"),
            commit,
            port,
            log_level,
            database: database.expect("a problem is recorded when no database is configured"),
            database_choice_note,
            db_timeout,
            embeddings,
            admin_api_key,
            cron_secret,
            metrics_token,
            encryption_key,
            previous_encryption_keys,
            sentry,
            cors_origins,
            maintenance_mode,
            slow_request,
            max_body_bytes,
            ready_check_timeout,
            embedding,
            ingest,
            search,
            rate_limits,
            cron_time_budget,
            tasks,
        })
    }

    pub fn is_production(&self) -> bool {
        self.environment == Environment::Production
    }
}

/// Loads `.env` into the process environment when present. A missing file is
/// normal (production); real variables always win over the file.
pub fn load_dotenv() {
    let _ = dotenvy::dotenv();
}

/// The variables being parsed and the problems found so far.
struct Vars<'a> {
    vars: &'a HashMap<String, String>,
    problems: Vec<ConfigProblem>,
}

impl<'a> Vars<'a> {
    fn problem(&mut self, variable: &'static str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            variable,
            message: message.into(),
        });
    }

    /// A set, non-blank value; blank counts as unset so `FOO=` in a .env is harmless.
    fn optional(&self, name: &str) -> Option<&'a str> {
        self.vars
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn parsed<T: std::str::FromStr + fmt::Display>(&mut self, name: &'static str, default: T) -> T {
        match self.optional(name) {
            None => default,
            Some(raw) => raw.parse().unwrap_or_else(|_| {
                self.problem(name, format!("`{raw}` is not a valid number"));
                default
            }),
        }
    }

    /// A request quota: a whole number of requests per minute, at least 1.
    fn per_minute(&mut self, name: &'static str, default: u32) -> u32 {
        let value = self.parsed(name, default);
        if value == 0 {
            self.problem(name, "must be at least 1 request per minute");
            return default;
        }
        value
    }

    fn flag(&mut self, name: &'static str) -> bool {
        match self.optional(name).map(str::to_ascii_lowercase).as_deref() {
            None | Some("false" | "0" | "no" | "off") => false,
            Some("true" | "1" | "yes" | "on") => true,
            Some(other) => {
                self.problem(
                    name,
                    format!("`{other}` is not a boolean (use true or false)"),
                );
                false
            }
        }
    }

    fn url(&mut self, name: &'static str) -> Option<Url> {
        let raw = self.optional(name)?;
        match Url::parse(raw) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(url)
            }
            _ => {
                self.problem(name, "must be an absolute http(s) URL");
                None
            }
        }
    }

    fn environment(&mut self) -> Environment {
        let (name, raw) = match (self.optional("ENVIRONMENT"), self.optional("VERCEL_ENV")) {
            (Some(raw), _) => ("ENVIRONMENT", raw.to_owned()),
            (None, Some(raw)) => ("VERCEL_ENV", raw.to_owned()),
            (None, None) => return Environment::Development,
        };
        Environment::parse(&raw).unwrap_or_else(|| {
            self.problem(
                name,
                format!("`{raw}` is not one of development, preview, production"),
            );
            Environment::Development
        })
    }

    fn database(&mut self) -> (Option<DatabaseConfig>, Option<String>) {
        let pool_size = self.parsed("DB_POOL_SIZE", 4usize);
        if pool_size == 0 {
            self.problem("DB_POOL_SIZE", "must be at least 1");
        }
        let postgres = self.optional("DATABASE_URL").map(normalise_sslmode);
        let ca_certs = match self.optional("DATABASE_CA_CERT").map(parse_ca_certs) {
            None => Vec::new(),
            Some(Ok(certs)) => certs,
            Some(Err(message)) => {
                self.problem("DATABASE_CA_CERT", message);
                Vec::new()
            }
        };
        if let Some(url) = &postgres
            && url.parse::<tokio_postgres::Config>().is_err()
        {
            self.problem(
                "DATABASE_URL",
                "is not a valid Postgres connection string (postgres://user:password@host:port/db)",
            );
        }
        let supabase_url = self.url("SUPABASE_URL");
        let service_key = self
            .optional("SUPABASE_SERVICE_ROLE_KEY")
            .map(str::to_owned);
        if let Some(key) = &service_key
            && let Err(message) = check_service_key(key)
        {
            self.problem("SUPABASE_SERVICE_ROLE_KEY", message);
        }
        let postgrest = match (self.optional("SUPABASE_URL"), &service_key) {
            (Some(_), None) => {
                self.problem(
                    "SUPABASE_SERVICE_ROLE_KEY",
                    "is required when SUPABASE_URL is set",
                );
                None
            }
            (None, Some(_)) => {
                self.problem(
                    "SUPABASE_URL",
                    "is required when SUPABASE_SERVICE_ROLE_KEY is set",
                );
                None
            }
            (Some(_), Some(key)) => supabase_url.map(|url| DatabaseConfig::PostgRest {
                url,
                service_key: SecretString::from(key.clone()),
            }),
            (None, None) => None,
        };
        let postgres = postgres.map(|url| DatabaseConfig::Postgres {
            url: SecretString::from(url),
            pool_size: pool_size.max(1),
            ca_certs,
        });

        let transport = self.optional("DB_TRANSPORT").unwrap_or("auto").to_owned();
        match transport.as_str() {
            "auto" => match (postgres, postgrest) {
                (Some(pg), Some(rest)) => {
                    drop(rest);
                    let note = "both DATABASE_URL and SUPABASE_URL are set: using DATABASE_URL \
                                (direct Postgres); set DB_TRANSPORT=postgrest to use PostgREST"
                        .to_owned();
                    (Some(pg), Some(note))
                }
                (Some(pg), None) => (Some(pg), None),
                (None, Some(rest)) => (Some(rest), None),
                (None, None) => {
                    if !self.problems.iter().any(|p| {
                        matches!(
                            p.variable,
                            "DATABASE_URL" | "SUPABASE_URL" | "SUPABASE_SERVICE_ROLE_KEY"
                        )
                    }) {
                        self.problem(
                            "DATABASE_URL",
                            "no database configured: set DATABASE_URL, or SUPABASE_URL with SUPABASE_SERVICE_ROLE_KEY",
                        );
                    }
                    (None, None)
                }
            },
            "postgres" => {
                if postgres.is_none() && self.optional("DATABASE_URL").is_none() {
                    self.problem("DATABASE_URL", "is required when DB_TRANSPORT=postgres");
                }
                (postgres, None)
            }
            "postgrest" => {
                if postgrest.is_none() && self.optional("SUPABASE_URL").is_none() {
                    self.problem("SUPABASE_URL", "is required when DB_TRANSPORT=postgrest");
                }
                (postgrest, None)
            }
            other => {
                self.problem(
                    "DB_TRANSPORT",
                    format!("`{other}` is not one of auto, postgres, postgrest"),
                );
                (None, None)
            }
        }
    }

    fn embeddings(&mut self, production: bool) -> Option<EmbeddingsProviderConfig> {
        let custom_base = self.url("OPENAI_BASE_URL");
        let base_set = self.optional("OPENAI_BASE_URL").is_some();
        let api_key = self.optional("OPENAI_API_KEY").map(str::to_owned);
        // OpenAI's own keys start with sk-; compatible servers use their own formats.
        if let Some(key) = &api_key
            && !base_set
            && !key.starts_with("sk-")
        {
            self.problem(
                "OPENAI_API_KEY",
                "must start with `sk-` (or set OPENAI_BASE_URL for a compatible server)",
            );
        }
        if production && api_key.is_none() && !base_set {
            self.problem(
                "OPENAI_API_KEY",
                "is required in production (or set OPENAI_BASE_URL for a compatible server)",
            );
        }
        if api_key.is_none() && !base_set {
            return None;
        }
        let base_url = match custom_base {
            Some(url) => url,
            None if base_set => return None,
            None => Url::parse(OPENAI_DEFAULT_BASE_URL).expect("constant URL parses"),
        };
        Some(EmbeddingsProviderConfig {
            base_url,
            api_key: api_key.map(SecretString::from),
        })
    }

    fn embedding_settings(&mut self) -> EmbeddingSettings {
        let model = self
            .optional("EMBEDDING_MODEL")
            .unwrap_or("text-embedding-3-small")
            .to_owned();
        let dimensions = self.parsed("EMBEDDING_DIMENSIONS", 1536u32);
        // pgvector's HNSW indexes `vector` columns up to 2,000 dimensions.
        if !(1..=2000).contains(&dimensions) {
            self.problem("EMBEDDING_DIMENSIONS", "must be between 1 and 2000");
        }
        let batch_size = self.parsed("EMBEDDING_BATCH_SIZE", 256u32);
        if !(1..=2048).contains(&batch_size) {
            self.problem(
                "EMBEDDING_BATCH_SIZE",
                "must be between 1 and 2048 (OpenAI's limit)",
            );
        }
        let max_attempts = self.parsed("EMBEDDING_MAX_ATTEMPTS", 5u32);
        if max_attempts == 0 {
            self.problem("EMBEDDING_MAX_ATTEMPTS", "must be at least 1");
        }
        EmbeddingSettings {
            model,
            dimensions,
            max_retries: self.parsed("EMBEDDING_MAX_RETRIES", 4u32),
            request_timeout: Duration::from_millis(self.parsed("EMBEDDING_TIMEOUT_MS", 30_000u64)),
            batch_size: batch_size.clamp(1, 2048),
            max_attempts: max_attempts.max(1),
            lease: Duration::from_secs(self.parsed("EMBEDDING_LEASE_SECONDS", 120u64).max(1)),
            retry_base: Duration::from_secs(self.parsed("EMBEDDING_RETRY_BASE_SECONDS", 30u64)),
        }
    }

    fn ingest_limits(&mut self) -> IngestLimits {
        let limits = IngestLimits {
            max_documents: self.parsed("MAX_DOCUMENTS_PER_REQUEST", 100usize).max(1),
            max_document_bytes: self.parsed("MAX_DOCUMENT_BYTES", 1_000_000usize).max(1),
            chunk_tokens: self.parsed("CHUNK_TOKENS", 400usize),
            chunk_overlap: self.parsed("CHUNK_OVERLAP_TOKENS", 50usize),
        };
        // One chunk plus its title must fit OpenAI's 8,192-token input limit.
        if !(50..=8000).contains(&limits.chunk_tokens) {
            self.problem("CHUNK_TOKENS", "must be between 50 and 8000");
        }
        if limits.chunk_overlap >= limits.chunk_tokens {
            self.problem("CHUNK_OVERLAP_TOKENS", "must be smaller than CHUNK_TOKENS");
        }
        limits
    }

    fn shared_secret(&mut self, name: &'static str, required: bool) -> Option<SecretString> {
        match self.optional(name) {
            None if required => {
                self.problem(name, "is required in production");
                None
            }
            None => None,
            Some(value) if value.len() < MIN_SHARED_SECRET_LEN => {
                self.problem(
                    name,
                    format!("must be at least {MIN_SHARED_SECRET_LEN} characters (use `openssl rand -hex 32`)"),
                );
                None
            }
            Some(value) => Some(SecretString::from(value.to_owned())),
        }
    }

    fn encryption_key(&mut self, required: bool) -> Option<Arc<SecretBox<[u8; 32]>>> {
        let name = "ENCRYPTION_KEY";
        let Some(raw) = self.optional(name) else {
            if required {
                self.problem(name, "is required in production");
            }
            return None;
        };
        self.aes_key(name, raw)
    }

    fn previous_encryption_keys(&mut self) -> Vec<Arc<SecretBox<[u8; 32]>>> {
        let Some(raw) = self.optional("ENCRYPTION_KEYS_PREVIOUS") else {
            return Vec::new();
        };
        raw.split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .filter_map(|k| self.aes_key("ENCRYPTION_KEYS_PREVIOUS", k))
            .collect()
    }

    fn aes_key(&mut self, name: &'static str, raw: &str) -> Option<Arc<SecretBox<[u8; 32]>>> {
        let decoded =
            decode_hex(raw).or_else(|| base64::engine::general_purpose::STANDARD.decode(raw).ok());
        match decoded.map(<[u8; 32]>::try_from) {
            Some(Ok(key)) => Some(Arc::new(SecretBox::new(Box::new(key)))),
            _ => {
                self.problem(
                    name,
                    "must be 32 bytes, as 64 hex characters or base64 (use `openssl rand -hex 32`)",
                );
                None
            }
        }
    }

    fn sentry(&mut self) -> Option<SentryConfig> {
        let dsn = self.optional("SENTRY_DSN").map(str::to_owned);
        let rate = self.parsed("SENTRY_TRACES_SAMPLE_RATE", 0.0f32);
        if !(0.0..=1.0).contains(&rate) {
            self.problem("SENTRY_TRACES_SAMPLE_RATE", "must be between 0.0 and 1.0");
        }
        let dsn = dsn?;
        if dsn.parse::<sentry::types::Dsn>().is_err() {
            self.problem(
                "SENTRY_DSN",
                "is not a valid Sentry DSN (https://key@host/project)",
            );
            return None;
        }
        Some(SentryConfig {
            dsn: SecretString::from(dsn),
            traces_sample_rate: rate.clamp(0.0, 1.0),
        })
    }

    fn cors_origins(&mut self, production: bool) -> Vec<String> {
        let Some(raw) = self.optional("CORS_ORIGINS") else {
            return Vec::new();
        };
        let mut origins = Vec::new();
        for origin in raw.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            if origin == "*" {
                if production {
                    self.problem(
                        "CORS_ORIGINS",
                        "`*` is not allowed in production; list exact origins",
                    );
                } else {
                    origins.push(origin.to_owned());
                }
                continue;
            }
            match Url::parse(origin) {
                Ok(url)
                    if matches!(url.scheme(), "http" | "https")
                        && url.host().is_some()
                        && url.path() == "/"
                        && !origin.ends_with('/') =>
                {
                    origins.push(url.origin().ascii_serialization());
                }
                _ => self.problem(
                    "CORS_ORIGINS",
                    format!("`{origin}` is not an origin like https://app.example.com (no path, no trailing slash)"),
                ),
            }
        }
        origins
    }
}

/// Accepts a legacy `service_role` JWT or a new `sb_secret_` key, and refuses
/// the anon/publishable keys that would silently fail every call.
/// libpq's `sslmode=verify-ca` and `verify-full` (which Supabase documents)
/// become `require`, the strongest mode tokio-postgres parses: Keel's TLS
/// always verifies the certificate chain and the host name, so `require`
/// here is at least as strict as `verify-full`.
pub fn normalise_sslmode(url: &str) -> String {
    url.replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require")
}

/// `DATABASE_CA_CERT`: one or more PEM certificates. Newlines may be written
/// as `\n`, for platforms whose variables are single lines.
pub fn parse_ca_certs(raw: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = raw.replace("\\n", "\n");
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not PEM certificate text: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    match roots.add_parsable_certificates(certs.iter().cloned()) {
        (0, _) => Err(
            "holds no usable certificate (expected -----BEGIN CERTIFICATE----- blocks)".to_owned(),
        ),
        (_, 0) => Ok(certs),
        (_, bad) => Err(format!("{bad} of its certificates cannot be parsed")),
    }
}

fn check_service_key(key: &str) -> Result<(), String> {
    if key.starts_with("sb_secret_") {
        return Ok(());
    }
    if key.starts_with("sb_publishable_") {
        return Err(
            "is a publishable key; use the secret (sb_secret_…) or service_role key".into(),
        );
    }
    let mut parts = key.split('.');
    let payload = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(payload), Some(_), None) => payload,
        _ => return Err("must be a service_role JWT or an sb_secret_ key".into()),
    };
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    match claims
        .as_ref()
        .and_then(|c| c.get("role"))
        .and_then(|r| r.as_str())
    {
        Some("service_role") => Ok(()),
        Some(role) => Err(format!(
            "is a `{role}` key; Keel needs the service_role key"
        )),
        None => Err("must be a service_role JWT or an sb_secret_ key".into()),
    }
}

fn decode_hex(raw: &str) -> Option<Vec<u8>> {
    if !raw.len().is_multiple_of(2) || !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..raw.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&raw[i..i + 2], 16).ok())
        .collect()
}

/// Constant-time comparison of a presented secret with the configured one.
/// Both sides are hashed first so neither content nor length leaks through timing.
pub fn secret_matches(presented: &str, expected: &SecretString) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let presented = Sha256::digest(presented.as_bytes());
    let expected = Sha256::digest(expected.expose_secret().as_bytes());
    presented.ct_eq(&expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn jwt_with_role(role: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.signature",
            b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"role":"{role}","iss":"supabase"}}"#))
        )
    }

    fn problem_variables(result: Result<Config, ConfigError>) -> Vec<&'static str> {
        let mut names: Vec<_> = result
            .expect_err("configuration should be rejected")
            .problems
            .into_iter()
            .map(|p| p.variable)
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_minimal_development_config_needs_only_a_database() {
        let config = Config::from_vars(&vars(&[("DATABASE_URL", "postgres://u:p@localhost/keel")]))
            .expect("valid");
        assert_eq!(config.environment, Environment::Development);
        assert_eq!(config.port, 3000);
        assert_eq!(config.database.transport_name(), "postgres");
        assert!(config.embeddings.is_none());
        assert_eq!(config.slow_request, Duration::from_secs(5));
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_each_variable() {
        let result = Config::from_vars(&vars(&[
            ("ENVIRONMENT", "staging"),
            ("SUPABASE_URL", "not a url"),
            ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_abc"),
            ("OPENAI_API_KEY", "pk-123"),
            ("ENCRYPTION_KEY", "abcd"),
            ("PORT", "eighty"),
            ("MAINTENANCE_MODE", "maybe"),
        ]));
        assert_eq!(
            problem_variables(result),
            vec![
                "ENCRYPTION_KEY",
                "ENVIRONMENT",
                "MAINTENANCE_MODE",
                "OPENAI_API_KEY",
                "PORT",
                "SUPABASE_URL",
            ]
        );
    }

    #[test]
    fn rate_limits_default_to_the_guides_and_refuse_zero_or_words() {
        let config = Config::from_vars(&vars(&[("DATABASE_URL", "postgres://u:p@localhost/keel")]))
            .expect("valid");
        assert_eq!(config.rate_limits.search_per_minute, 60);
        assert_eq!(config.rate_limits.anonymous_per_minute, 30);

        let result = Config::from_vars(&vars(&[
            ("DATABASE_URL", "postgres://u:p@localhost/keel"),
            ("RATE_LIMIT_SEARCH_PER_MINUTE", "0"),
            ("RATE_LIMIT_ANONYMOUS_PER_MINUTE", "lots"),
            ("RATE_LIMIT_TENANT_PER_MINUTE", "-5"),
            ("RATE_LIMIT_WEBHOOK_PER_MINUTE", "1200"),
        ]));
        assert_eq!(
            problem_variables(result),
            vec![
                "RATE_LIMIT_ANONYMOUS_PER_MINUTE",
                "RATE_LIMIT_SEARCH_PER_MINUTE",
                "RATE_LIMIT_TENANT_PER_MINUTE",
            ]
        );
    }

    /// A self-signed CA: `openssl req -x509 -newkey ec -pkeyopt
    /// ec_paramgen_curve:P-256 -nodes -subj /CN=keel-tests`.
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBfjCCASWgAwIBAgIULZFzRnunzTxgsYylQYa1qJVyfQIwCgYIKoZIzj0EAwIw\nFTETMBEGA1UEAwwKa2VlbC10ZXN0czAeFw0yNjExMjEyMzMyNDFaFw0zNjExMTgy\nMzMyNDFaMBUxEzARBgNVBAMMCmtlZWwtdGVzdHMwWTATBgcqhkjOPQIBBggqhkjO\nPQMBBwNCAASW7yzoda+yoIlB8ucdj8vFRtddaccjcY93JFhwgIklRx0R/j717NzE\ngSvFeBuxsOQgsyHuMPWjOJR0cZd3jnsbo1MwUTAdBgNVHQ4EFgQUZURx/5VvY9+D\nlBWeM8dKuYbKxRgwHwYDVR0jBBgwFoAUZURx/5VvY9+DlBWeM8dKuYbKxRgwDwYD\nVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiBopAhD+Q7+eFFIgYeFGnE8\ngAudXdR4mA0/B48Rnx0ZcAIgDvmwdOwZWYUzuBJR1tuei/4TNdqjZpcww9g7vxK9\nUXk=\n-----END CERTIFICATE-----";

    #[test]
    fn database_ca_cert_accepts_pem_even_with_escaped_newlines_and_names_bad_values() {
        let with_ca = |value: &str| {
            Config::from_vars(&vars(&[
                (
                    "DATABASE_URL",
                    "postgres://u:p@db.example.supabase.co:5432/postgres",
                ),
                ("DATABASE_CA_CERT", value),
            ]))
        };
        let ca_count = |config: Config| match config.database {
            DatabaseConfig::Postgres { ca_certs, .. } => ca_certs.len(),
            DatabaseConfig::PostgRest { .. } => panic!("expected direct Postgres"),
        };
        assert_eq!(ca_count(with_ca(CA_PEM).expect("PEM")), 1);
        let one_line = CA_PEM.replace('\n', "\\n");
        assert_eq!(ca_count(with_ca(&one_line).expect("escaped newlines")), 1);
        for (bad, reason) in [
            ("not a certificate", "no PEM block"),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "not DER",
            ),
        ] {
            assert_eq!(
                problem_variables(with_ca(bad)),
                vec!["DATABASE_CA_CERT"],
                "{reason}"
            );
        }
    }

    #[test]
    fn libpq_verify_modes_become_the_always_verifying_require() {
        let config = Config::from_vars(&vars(&[(
            "DATABASE_URL",
            "postgres://u:p@db.example.supabase.co:5432/postgres?sslmode=verify-full",
        )]))
        .expect("verify-full is accepted");
        let DatabaseConfig::Postgres { url, .. } = config.database else {
            panic!("expected direct Postgres");
        };
        assert!(url.expose_secret().ends_with("?sslmode=require"));
    }

    #[test]
    fn the_error_message_lists_every_problem_on_its_own_line() {
        let error = Config::from_vars(&vars(&[("ENVIRONMENT", "prod")])).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("ENVIRONMENT: `prod` is not one of"), "{text}");
        assert!(
            text.contains("DATABASE_URL: no database configured"),
            "{text}"
        );
        assert!(
            text.starts_with("invalid configuration (2 problems)"),
            "{text}"
        );
    }

    #[test]
    fn production_requires_its_secrets_and_refuses_wildcard_cors() {
        let result = Config::from_vars(&vars(&[
            ("VERCEL_ENV", "production"),
            ("DATABASE_URL", "postgres://u:p@db/keel"),
            ("CORS_ORIGINS", "*"),
            ("ADMIN_API_KEY", "short"),
        ]));
        assert_eq!(
            problem_variables(result),
            vec![
                "ADMIN_API_KEY",
                "CORS_ORIGINS",
                "CRON_SECRET",
                "ENCRYPTION_KEY",
                "OPENAI_API_KEY"
            ]
        );
    }

    #[test]
    fn environment_defaults_from_vercel_env() {
        let config = Config::from_vars(&vars(&[
            ("VERCEL_ENV", "preview"),
            ("DATABASE_URL", "postgres://u:p@db/keel"),
        ]))
        .unwrap();
        assert_eq!(config.environment, Environment::Preview);
    }

    #[test]
    fn database_url_wins_over_postgrest_and_says_so() {
        let config = Config::from_vars(&vars(&[
            ("DATABASE_URL", "postgres://u:p@db/keel"),
            ("SUPABASE_URL", "https://abc.supabase.co"),
            ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_xyz"),
        ]))
        .unwrap();
        assert_eq!(config.database.transport_name(), "postgres");
        assert!(
            config
                .database_choice_note
                .unwrap()
                .contains("using DATABASE_URL")
        );

        let config = Config::from_vars(&vars(&[
            ("DATABASE_URL", "postgres://u:p@db/keel"),
            ("SUPABASE_URL", "https://abc.supabase.co"),
            ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_xyz"),
            ("DB_TRANSPORT", "postgrest"),
        ]))
        .unwrap();
        assert_eq!(config.database.transport_name(), "postgrest");
    }

    #[test]
    fn supabase_keys_are_checked_for_the_service_role() {
        let cases = [
            (
                jwt_with_role("service_role"),
                true,
                "legacy service_role JWT",
            ),
            ("sb_secret_abc123".to_owned(), true, "new secret key"),
            (
                jwt_with_role("anon"),
                false,
                "the anon key cannot execute Keel's functions",
            ),
            (
                "sb_publishable_abc".to_owned(),
                false,
                "publishable keys are for browsers",
            ),
            (
                "hunter2".to_owned(),
                false,
                "neither a JWT nor a secret key",
            ),
        ];
        for (key, accepted, reason) in cases {
            let result = Config::from_vars(&vars(&[
                ("SUPABASE_URL", "https://abc.supabase.co"),
                ("SUPABASE_SERVICE_ROLE_KEY", &key),
            ]));
            assert_eq!(result.is_ok(), accepted, "{reason}");
        }
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let config = Config::from_vars(&vars(&[
            ("DATABASE_URL", "postgres://keel:db-password-123@db/keel"),
            ("ADMIN_API_KEY", "admin-secret-0123456789abcdef0123456789"),
            ("OPENAI_API_KEY", "sk-openai-secret-value"),
            ("ENCRYPTION_KEY", &"ab".repeat(32)),
        ]))
        .unwrap();
        let debug = format!("{config:?}");
        for secret in [
            "db-password-123",
            "admin-secret",
            "sk-openai-secret",
            &"ab".repeat(32),
        ] {
            assert!(!debug.contains(secret), "{secret} leaked into {debug}");
        }
    }

    #[test]
    fn encryption_key_accepts_hex_or_base64_of_exactly_32_bytes() {
        let base64_key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let cases = [
            ("ab".repeat(32), true, "64 hex characters"),
            (base64_key, true, "base64 of 32 bytes"),
            ("ab".repeat(16), false, "16 bytes is AES-128, not AES-256"),
            ("not-a-key".to_owned(), false, "neither hex nor base64"),
        ];
        for (key, accepted, reason) in cases {
            let result = Config::from_vars(&vars(&[
                ("DATABASE_URL", "postgres://u:p@db/keel"),
                ("ENCRYPTION_KEY", &key),
            ]));
            assert_eq!(result.is_ok(), accepted, "{reason}");
        }
    }

    #[test]
    fn cors_origins_must_be_exact_origins() {
        let cases = [
            ("https://app.example.com", true, "a plain origin"),
            (
                "https://a.example.com, http://localhost:5173",
                true,
                "a list",
            ),
            (
                "https://app.example.com/",
                false,
                "trailing slash never matches an Origin header",
            ),
            (
                "https://app.example.com/path",
                false,
                "origins have no path",
            ),
            ("app.example.com", false, "origins have a scheme"),
        ];
        for (origins, accepted, reason) in cases {
            let result = Config::from_vars(&vars(&[
                ("DATABASE_URL", "postgres://u:p@db/keel"),
                ("CORS_ORIGINS", origins),
            ]));
            assert_eq!(result.is_ok(), accepted, "{reason}");
        }
    }

    #[test]
    fn openai_compatible_servers_may_use_other_key_formats() {
        let config = Config::from_vars(&vars(&[
            ("DATABASE_URL", "postgres://u:p@db/keel"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:3000/v1"),
            ("OPENAI_API_KEY", "local-key"),
        ]))
        .unwrap();
        assert_eq!(
            config.embeddings.unwrap().base_url.as_str(),
            "http://127.0.0.1:3000/v1"
        );
    }

    #[test]
    fn secret_matches_only_the_exact_secret() {
        let secret = SecretString::from("correct horse battery staple".to_owned());
        assert!(secret_matches("correct horse battery staple", &secret));
        assert!(!secret_matches("correct horse battery stapl", &secret));
        assert!(!secret_matches("", &secret));
    }
}
