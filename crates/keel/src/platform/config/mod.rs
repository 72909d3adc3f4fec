//! Typed configuration, parsed once per cold start from environment variables
//! (and a `.env` file in development). Parsing never stops at the first
//! problem: every missing, malformed or inconsistent variable is collected and
//! reported together, each naming its variable. Secrets are wrapped in
//! [`SecretString`] so `Debug` and logs cannot print them.
//!
//! One file per area reads that area's variables ([`database`],
//! [`knowledge`], [`access`], [`operations`], [`sources`]) through the generic reader in
//! [`vars`]; this file assembles them.

mod access;
mod answers;
mod database;
mod knowledge;
mod operations;
mod sources;
mod vars;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{SecretBox, SecretString};
use url::Url;

pub use access::ClientIpSource;
pub use answers::{AnswerSettings, ChatProviderConfig, SmsSettings};
pub use database::{DatabaseConfig, normalise_sslmode, parse_ca_certs};
pub use knowledge::{
    EmbeddingSettings, EmbeddingsProviderConfig, IngestLimits, OPENAI_DEFAULT_BASE_URL,
    SearchSettings,
};
pub use operations::{RateLimitSettings, SentryConfig, TaskSettings, TenantQuotas};
pub use sources::SourceSettings;
use vars::Vars;

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

    pub(crate) fn parse(value: &str) -> Option<Self> {
        match value {
            "development" => Some(Self::Development),
            "preview" => Some(Self::Preview),
            "production" => Some(Self::Production),
            _ => None,
        }
    }
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
    /// None: answers are extractive (quoted passages, no model).
    pub chat: Option<ChatProviderConfig>,
    pub answers: AnswerSettings,
    pub sms: SmsSettings,
    pub admin_api_key: Option<SecretString>,
    pub cron_secret: Option<SecretString>,
    /// Bearer token for `GET /api/metrics`; unset closes the route.
    pub metrics_token: Option<SecretString>,
    pub encryption_key: Option<Arc<SecretBox<[u8; 32]>>>,
    /// Earlier ENCRYPTION_KEYs, still accepted for decryption after a rotation.
    pub previous_encryption_keys: Vec<Arc<SecretBox<[u8; 32]>>>,
    pub sentry: Option<SentryConfig>,
    pub cors_origins: Vec<String>,
    /// Where the client's address comes from (`CLIENT_IP_SOURCE`).
    pub client_ip_source: ClientIpSource,
    pub maintenance_mode: bool,
    pub slow_request: Duration,
    pub max_body_bytes: usize,
    /// The smaller body limit of webhook intake, whose bodies are read by
    /// anyone who knows an endpoint's URL.
    pub webhook_max_body_bytes: usize,
    /// `PUBLIC_BASE_URL`: where senders reach this deployment. Twilio signs
    /// the URL it posts to, which the function behind Vercel or API Gateway
    /// does not see as sent.
    pub public_base_url: Option<Url>,
    pub ready_check_timeout: Duration,
    pub embedding: EmbeddingSettings,
    pub ingest: IngestLimits,
    pub search: SearchSettings,
    pub rate_limits: RateLimitSettings,
    /// How long a cron run may work; below the function's maxDuration.
    pub cron_time_budget: Duration,
    pub tasks: TaskSettings,
    pub sources: SourceSettings,
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
        let (database, database_choice_note) = env.database(production);
        let db_timeout = Duration::from_millis(env.parsed("DB_TIMEOUT_MS", 5_000u64));
        let embeddings = env.embeddings(production);
        let chat = env.chat_provider(production);
        let answers = env.answer_settings();
        let sms = env.sms_settings();
        let admin_api_key = env.shared_secret("ADMIN_API_KEY", production);
        let cron_secret = env.shared_secret("CRON_SECRET", production);
        let metrics_token = env.shared_secret("METRICS_TOKEN", false);
        let encryption_key = env.encryption_key(production);
        let previous_encryption_keys = env.previous_encryption_keys();
        let sentry = env.sentry();
        let cors_origins = env.cors_origins(production);
        let client_ip_source = env.client_ip_source();
        let maintenance_mode = env.flag("MAINTENANCE_MODE");
        let slow_request = Duration::from_millis(env.parsed("SLOW_REQUEST_MS", 5_000u64));
        let max_body_bytes = env.body_limit("MAX_BODY_BYTES", 4 * 1024 * 1024);
        let webhook_max_body_bytes = env.body_limit("WEBHOOK_MAX_BODY_BYTES", 1024 * 1024);
        let public_base_url = env.public_base_url();
        let ready_check_timeout =
            Duration::from_millis(env.parsed("READY_CHECK_TIMEOUT_MS", 2_000u64));
        let embedding = env.embedding_settings();
        let ingest = env.ingest_limits();
        let search = env.search_settings();
        let rate_limits = env.rate_limits();
        let cron_time_budget = Duration::from_millis(env.parsed("CRON_TIME_BUDGET_MS", 45_000u64));
        let tasks = env.task_settings(production);
        let sources = env.source_settings();

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
            chat,
            answers,
            sms,
            admin_api_key,
            cron_secret,
            metrics_token,
            encryption_key,
            previous_encryption_keys,
            sentry,
            cors_origins,
            client_ip_source,
            maintenance_mode,
            slow_request,
            max_body_bytes,
            webhook_max_body_bytes,
            public_base_url,
            ready_check_timeout,
            embedding,
            ingest,
            search,
            rate_limits,
            cron_time_budget,
            tasks,
            sources,
        })
    }

    pub fn is_production(&self) -> bool {
        self.environment == Environment::Production
    }

    /// Every key that may open a stored secret: the current one, then the
    /// earlier ones kept for a rotation.
    pub fn decryption_keys(&self) -> impl Iterator<Item = &SecretBox<[u8; 32]>> {
        self.encryption_key
            .iter()
            .chain(&self.previous_encryption_keys)
            .map(|key| &**key)
    }
}

/// Loads `.env` into the process environment when present. A missing file is
/// normal (production); real variables always win over the file.
pub fn load_dotenv() {
    let _ = dotenvy::dotenv();
}

#[cfg(test)]
mod tests;
