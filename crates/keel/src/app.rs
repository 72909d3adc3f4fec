//! The state built once per cold start and shared by every warm invocation,
//! assembled from leaf types: configuration, the one HTTP client (TLS set up
//! once), the database handle, and the knowledge and answers areas' state.

use std::sync::Arc;

use anyhow::Context as _;

use crate::answers::pipeline::Answers;
use crate::knowledge::Knowledge;
use crate::platform::config::Config;
use crate::platform::db::Db;
use crate::platform::tls::tls_config;

pub struct App {
    pub config: Config,
    pub http: reqwest::Client,
    pub db: Db,
    pub knowledge: Arc<Knowledge>,
    pub answers: Arc<Answers>,
}

impl App {
    pub fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls_config()).clone())
            .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(5))
            .pool_idle_timeout(std::time::Duration::from_secs(50))
            .build()
            .context("building the HTTP client")?;
        let db = Db::from_config(&config, &http).context("setting up the database transport")?;
        let knowledge = Arc::new(Knowledge::new(&config, &http));
        let answers = Arc::new(Answers::new(&config, &http));
        Ok(Arc::new(Self {
            config,
            http,
            db,
            knowledge,
            answers,
        }))
    }
}
