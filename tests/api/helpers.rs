//! Test support: each test gets its own database, cloned from a migrated
//! template, and its own Keel server on a random loopback port, speaking real
//! HTTP. `scripts/test` starts the Postgres cluster and exports
//! `KEEL_TEST_DATABASE_URL` (a superuser URL to its `postgres` database).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use keel::platform::db::migrate;
use tokio::net::TcpListener;
use tokio_postgres::NoTls;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn admin_url() -> String {
    std::env::var("KEEL_TEST_DATABASE_URL")
        .expect("KEEL_TEST_DATABASE_URL is not set: run the suite with scripts/test")
}

/// A database of this test's own, dropped with the cluster at the end of the run.
pub struct TestDatabase {
    pub url: String,
}

impl TestDatabase {
    /// A fresh, fully migrated database.
    pub async fn migrated() -> Self {
        let template = ensure_template().await;
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&admin_url()).await;
        // The template may still show the connection that migrated it for a
        // moment; cloning fails while anyone is connected to it.
        for attempt in 0.. {
            match admin
                .batch_execute(&format!("create database {name} template {template}"))
                .await
            {
                Ok(()) => break,
                Err(error) if attempt < 50 => {
                    let _ = error;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(error) => panic!("cannot clone the template database: {error}"),
            }
        }
        Self::named(name)
    }

    /// A fresh database with no migrations applied.
    pub async fn empty() -> Self {
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        connect(&admin_url())
            .await
            .batch_execute(&format!("create database {name}"))
            .await
            .expect("create database");
        Self::named(name)
    }

    fn named(name: String) -> Self {
        Self {
            url: url_with_database(&admin_url(), &name),
        }
    }

    /// A superuser connection to this database.
    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// This database's URL with host and port replaced, e.g. to go through a proxy.
    pub fn url_via(&self, address: SocketAddr) -> String {
        let mut url = url::Url::parse(&self.url).expect("test URL parses");
        url.set_host(Some(&address.ip().to_string())).unwrap();
        url.set_port(Some(address.port())).unwrap();
        url.to_string()
    }

    pub fn address(&self) -> SocketAddr {
        let url = url::Url::parse(&self.url).expect("test URL parses");
        format!("{}:{}", url.host_str().unwrap(), url.port().unwrap())
            .parse()
            .unwrap()
    }
}

fn url_with_database(url: &str, database: &str) -> String {
    let mut url = url::Url::parse(url).expect("KEEL_TEST_DATABASE_URL parses");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test database: {e}"));
    tokio::spawn(connection);
    client
}

pub fn migrations() -> Vec<migrate::Migration> {
    migrate::load_dir(&repo_root().join("migrations")).expect("migrations load")
}

/// Creates (once per migration set, across test processes) a migrated
/// template database and returns its name.
async fn ensure_template() -> String {
    let migrations = migrations();
    let fingerprint = migrate::checksum(
        &migrations
            .iter()
            .map(|m| m.checksum.as_str())
            .collect::<String>(),
    );
    let template = format!("keel_template_{}", &fingerprint[..16]);
    let mut admin = connect(&admin_url()).await;
    admin
        .execute("select pg_advisory_lock(4242)", &[])
        .await
        .unwrap();
    let exists = admin
        .query_opt("select 1 from pg_database where datname = $1", &[&template])
        .await
        .unwrap()
        .is_some();
    if !exists {
        let building = format!("{template}_building");
        for statement in [
            format!("drop database if exists {building}"),
            format!("create database {building}"),
        ] {
            admin.batch_execute(&statement).await.unwrap();
        }
        {
            let mut client = connect(&url_with_database(&admin_url(), &building)).await;
            migrate::run(&mut client, &migrations)
                .await
                .expect("migrations apply to a fresh database");
        }
        // Renaming waits for nobody; the migrating connection is gone or going.
        for attempt in 0.. {
            match admin
                .batch_execute(&format!("alter database {building} rename to {template}"))
                .await
            {
                Ok(()) => break,
                Err(_) if attempt < 50 => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await
                }
                Err(error) => panic!("cannot finish the template: {error}"),
            }
        }
    }
    admin
        .execute("select pg_advisory_unlock(4242)", &[])
        .await
        .unwrap();
    let _ = &mut admin;
    template
}

pub const ADMIN_KEY: &str = "admin-key-for-tests-0123456789abcdef";
pub const CRON_SECRET: &str = "cron-secret-for-tests-0123456789abcdef";
/// For apps started with `METRICS_TOKEN` set to it.
pub const METRICS_TOKEN: &str = "metrics-token-for-tests-0123456789abcdef";

/// A running Keel server with every route, on its own port and database.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub app: Arc<keel::App>,
    pub db: TestDatabase,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }
}

/// The variables every test app starts from; tests override what they need.
pub fn base_vars(db: &TestDatabase) -> HashMap<String, String> {
    HashMap::from([
        ("ENVIRONMENT".to_owned(), "development".to_owned()),
        ("DATABASE_URL".to_owned(), db.url.clone()),
        ("LOG_LEVEL".to_owned(), "warn".to_owned()),
        ("ADMIN_API_KEY".to_owned(), ADMIN_KEY.to_owned()),
        ("CRON_SECRET".to_owned(), CRON_SECRET.to_owned()),
        ("ENCRYPTION_KEY".to_owned(), "5e".repeat(32)),
        // Tests of other behaviour poll and repeat freely; the rate-limit
        // tests set the quotas they exercise.
        (
            "RATE_LIMIT_SEARCH_PER_MINUTE".to_owned(),
            "100000".to_owned(),
        ),
        (
            "RATE_LIMIT_TENANT_PER_MINUTE".to_owned(),
            "100000".to_owned(),
        ),
        (
            "RATE_LIMIT_ANONYMOUS_PER_MINUTE".to_owned(),
            "100000".to_owned(),
        ),
        (
            "RATE_LIMIT_WEBHOOK_PER_MINUTE".to_owned(),
            "100000".to_owned(),
        ),
        ("RATE_LIMIT_CHAT_PER_MINUTE".to_owned(), "100000".to_owned()),
    ])
}

/// Variables of a production deployment: its required secrets, and TLS to
/// the database verified against the test cluster's own CA (production
/// refuses a plain-text database connection).
pub fn production_vars(db: &TestDatabase, vars: &mut HashMap<String, String>) {
    let ca = std::env::var("KEEL_TEST_DATABASE_CA_CERT")
        .expect("KEEL_TEST_DATABASE_CA_CERT is not set: run the suite with scripts/test");
    vars.insert("ENVIRONMENT".into(), "production".into());
    vars.insert(
        "DATABASE_URL".into(),
        db.url.replace("sslmode=disable", "sslmode=verify-full"),
    );
    vars.insert(
        "DATABASE_CA_CERT".into(),
        std::fs::read_to_string(&ca).unwrap_or_else(|e| panic!("reading {ca}: {e}")),
    );
    vars.insert("ADMIN_API_KEY".into(), "a".repeat(40));
    vars.insert("CRON_SECRET".into(), "c".repeat(40));
    vars.insert("ENCRYPTION_KEY".into(), "ab".repeat(32));
    vars.insert("OPENAI_API_KEY".into(), "sk-test".into());
}

/// `request` with `body` as JSON, or without a body.
pub fn maybe_json(
    request: reqwest::RequestBuilder,
    body: Option<serde_json::Value>,
) -> reqwest::RequestBuilder {
    match body {
        Some(body) => request.json(&body),
        None => request,
    }
}

/// A client whose requests come from `ip`, a loopback address other than
/// 127.0.0.1, so tests can act as different client addresses.
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().expect("an IP address"))
        .build()
        .expect("a client")
}

/// Variables pointing Keel at a fake OpenAI server (64-dimension vectors).
pub fn openai_vars(vars: &mut HashMap<String, String>, base_url: &str) {
    vars.insert("OPENAI_BASE_URL".into(), base_url.into());
    vars.insert("OPENAI_API_KEY".into(), "sk-test".into());
    vars.insert("EMBEDDING_MODEL".into(), "text-embedding-3-small".into());
    vars.insert("EMBEDDING_DIMENSIONS".into(), "64".into());
}

impl TestApp {
    /// Creates a tenant through the admin API and returns its API key.
    pub async fn create_tenant(&self, slug: &str) -> String {
        let response = self
            .post_json(
                "/api/tenants",
                ADMIN_KEY,
                &serde_json::json!({"name": slug, "slug": slug}),
            )
            .await;
        assert_eq!(response.status(), 201, "creating tenant {slug}");
        let body: serde_json::Value = response.json().await.unwrap();
        body["api_key"].as_str().unwrap().to_owned()
    }

    pub async fn put_documents(
        &self,
        key: &str,
        documents: serde_json::Value,
    ) -> reqwest::Response {
        self.client
            .put(self.url("/api/documents"))
            .bearer_auth(key)
            .json(&serde_json::json!({"documents": documents}))
            .send()
            .await
            .unwrap()
    }

    pub async fn search(&self, key: &str, body: serde_json::Value) -> reqwest::Response {
        self.post_json("/api/search", key, &body).await
    }

    /// Runs the embedding cron once, as Vercel Cron would, and returns its report.
    pub async fn run_embedding_cron(&self) -> serde_json::Value {
        self.run_cron("/api/cron/embeddings").await
    }

    /// `POST path` with a bearer credential and a JSON body.
    pub async fn post_json(
        &self,
        path: &str,
        credential: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(credential)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `GET path` with a bearer credential.
    pub async fn get_authorized(&self, path: &str, credential: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(credential)
            .send()
            .await
            .unwrap()
    }

    /// `GET path` with a bearer credential, expecting JSON back.
    pub async fn get_json(&self, path: &str, credential: &str) -> serde_json::Value {
        let response = self.get_authorized(path, credential).await;
        response.json().await.expect("a JSON body")
    }

    /// Runs a cron route as Vercel Cron would and returns its report.
    pub async fn run_cron(&self, path: &str) -> serde_json::Value {
        let response = self.get_authorized(path, CRON_SECRET).await;
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    }

    /// `GET /api/metrics` with [`METRICS_TOKEN`]: the Prometheus text.
    pub async fn metrics(&self) -> String {
        let response = self.get_authorized("/api/metrics", METRICS_TOKEN).await;
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// Registers a webhook endpoint for the tenant; returns (id, secret).
    pub async fn create_webhook_endpoint(
        &self,
        key: &str,
        body: serde_json::Value,
    ) -> (String, String) {
        let response = self.post_json("/api/webhooks/endpoints", key, &body).await;
        assert_eq!(response.status(), 201, "creating a webhook endpoint");
        let body: serde_json::Value = response.json().await.unwrap();
        (
            body["id"].as_str().unwrap().to_owned(),
            body["secret"].as_str().unwrap().to_owned(),
        )
    }

    /// Sends a delivery signed as a Standard Webhooks sender would.
    pub async fn deliver(
        &self,
        endpoint: &str,
        secret: &str,
        webhook_id: &str,
        event: &serde_json::Value,
    ) -> reqwest::Response {
        let body = event.to_string();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.client
            .post(self.url(&format!("/api/webhooks/{endpoint}")))
            .header("content-type", "application/json")
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", now.to_string())
            .header(
                "webhook-signature",
                keel::webhooks::signatures::sign(secret, webhook_id, now, body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// One number from this app's database.
    pub async fn count(&self, sql: &str) -> i64 {
        self.db
            .connect()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_, _| {}).await
}

/// Spawns an app after letting the test adjust its variables.
pub async fn spawn_app_with(
    customise: impl FnOnce(&TestDatabase, &mut HashMap<String, String>),
) -> TestApp {
    let db = TestDatabase::migrated().await;
    let mut vars = base_vars(&db);
    customise(&db, &mut vars);
    spawn_app_on(db, vars).await
}

pub async fn spawn_app_on(db: TestDatabase, vars: HashMap<String, String>) -> TestApp {
    start(db, vars, false).await
}

/// An app that embeds with the real all-MiniLM-L6-v2, served on its own
/// `/v1/embeddings` exactly as `keel serve` does.
pub async fn spawn_app_with_local_model(
    customise: impl FnOnce(&mut HashMap<String, String>),
) -> TestApp {
    let db = TestDatabase::migrated().await;
    let mut vars = base_vars(&db);
    customise(&mut vars);
    start(db, vars, true).await
}

fn load_local_model() {
    static LOADED: std::sync::Once = std::sync::Once::new();
    LOADED.call_once(|| {
        let dir = std::env::var("KEEL_LOCAL_MODEL_DIR")
            .expect("KEEL_LOCAL_MODEL_DIR is not set: run the suite with scripts/test");
        keel_local::install(
            keel_local::LocalModel::load(std::path::Path::new(&dir)).expect("local model loads"),
        );
    });
}

async fn start(db: TestDatabase, mut vars: HashMap<String, String>, local_model: bool) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let mut routes = keel::routes::all();
    if local_model {
        load_local_model();
        routes.extend(keel_local::routes());
        vars.insert("OPENAI_BASE_URL".into(), format!("{address}/v1"));
        vars.insert("EMBEDDING_MODEL".into(), keel_local::MODEL_NAME.into());
        vars.insert(
            "EMBEDDING_DIMENSIONS".into(),
            keel_local::DIMENSIONS.to_string(),
        );
    }
    let config = keel::platform::config::Config::from_vars(&vars).unwrap_or_else(|e| panic!("{e}"));
    let app = keel::App::new(config).expect("app builds");
    keel::platform::telemetry::init(&app.config, &app.http);
    let router = Arc::new(keel::web::Router::all(routes));
    tokio::spawn(keel::web::runtime::serve_local(
        listener,
        app.clone(),
        router,
        std::future::pending(),
    ));
    TestApp {
        address,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        app,
        db,
    }
}

/// The `error` object of a JSON error body, after checking its stable shape.
pub async fn error_body(response: reqwest::Response) -> serde_json::Value {
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    let error = body["error"].clone();
    assert!(error["code"].is_string(), "error.code missing in {body}");
    assert!(
        error["message"].is_string(),
        "error.message missing in {body}"
    );
    assert!(
        error["request_id"].is_string(),
        "error.request_id missing in {body}"
    );
    error
}
