//! The state built once per cold start and shared by every warm invocation:
//! configuration, the one HTTP client (TLS set up once), the database handle,
//! the embeddings client, the query-vector LRU and (on first use) the chunker.

use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use rustls::pki_types::CertificateDer;

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
        let db = Db::from_config(&config, &http).context("setting up the database transport")?;
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

/// The rustls configuration for outbound HTTPS, trusting the Mozilla roots
/// compiled into the binary so it works the same on Vercel, Lambda and a bare
/// container.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    tls_config_trusting(&[])
}

/// [`tls_config`] that also trusts `extra_roots`: Postgres connections trust
/// `DATABASE_CA_CERT` too (Supabase signs its database certificates with its
/// own CA, which no public root store holds). Certificates are always
/// verified, host name included.
pub fn tls_config_trusting(extra_roots: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    // Also the process default, for clients built elsewhere (Sentry, tests).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // Parsed and checked when the configuration was read.
    roots.add_parsable_certificates(extra_roots.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}
