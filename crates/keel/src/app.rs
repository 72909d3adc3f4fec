//! The state built once per cold start and shared by every warm invocation:
//! configuration, the one HTTP client (TLS set up once), the database handle,
//! the embeddings client, the query-vector LRU and (on first use) the chunker.

use std::sync::{Arc, OnceLock};

use anyhow::Context as _;

use crate::config::Config;
use crate::db::Db;
use crate::embeddings::Embedder;
use crate::ingest::Chunker;
use crate::search::QueryCache;

pub struct App {
    pub config: Config,
    pub http: reqwest::Client,
    pub db: Db,
    pub embedder: Option<Embedder>,
    pub query_cache: QueryCache,
    chunker: OnceLock<Chunker>,
}

impl App {
    pub fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        let tls = tls_config();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(5))
            .pool_idle_timeout(std::time::Duration::from_secs(50))
            .build()
            .context("building the HTTP client")?;
        let db =
            Db::from_config(&config, &http, tls).context("setting up the database transport")?;
        let embedder = Embedder::from_config(&config, &http);
        let query_cache = QueryCache::new(config.search.lru_size);
        Ok(Arc::new(Self {
            config,
            http,
            db,
            embedder,
            query_cache,
            chunker: OnceLock::new(),
        }))
    }

    /// The chunker, built by the first request that needs it.
    pub fn chunker(&self) -> &Chunker {
        self.chunker
            .get_or_init(|| Chunker::new(&self.config.ingest))
    }
}

/// One rustls configuration for every outbound connection (HTTP and
/// Postgres), trusting the Mozilla roots compiled into the binary so it works
/// the same on Vercel, Lambda and a bare container.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    // Also the process default, for clients built elsewhere (Sentry, tests).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}
