//! Website and sitemap sources against a fixture site served by the test on
//! loopback (crawled with `ALLOW_PRIVATE_PULL_URLS`, as in development): a
//! sitemap index with a gzip sitemap, robots.txt rules, ETags, pages that
//! change, disappear, redirect to cloud metadata, stall or are PDFs.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Request, Response};
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_body, openai_vars, spawn_app_with};
use crate::support::{FakeOpenAi, serve_http};

/// One resource of the fixture site.
#[derive(Clone)]
struct Resource {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    etag: Option<String>,
    location: Option<String>,
    delay: Duration,
}

impl Resource {
    fn html(title: &str, main: &str) -> Self {
        Self::with_type(
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><html><head><title>{title}</title></head><body>\
                 <nav><a href=\"/\">Home</a> <a href=\"/menu\">Menu</a> <a href=\"/hours.md\">Hours</a></nav>\
                 <main><article><h1>{title}</h1>{main}</article></main>\
                 <footer>Joe's Diner, 1 Harbour Street. Follow us everywhere.</footer>\
                 <script>window.analytics = 'tracking';</script></body></html>"
            ),
        )
    }

    fn with_type(content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: 200,
            content_type,
            body: body.into(),
            etag: None,
            location: None,
            delay: Duration::ZERO,
        }
    }

    fn status(status: u16) -> Self {
        Self {
            status,
            ..Self::with_type("text/plain", "")
        }
    }
}

/// A request the site saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    at: Instant,
    user_agent: String,
    conditional: bool,
}

#[derive(Default)]
struct SiteState {
    resources: HashMap<String, Resource>,
    seen: Vec<Seen>,
    in_flight: usize,
    most_in_flight: usize,
}

/// The fixture site: resources by path (with query), changeable between runs.
#[derive(Clone)]
struct Site {
    address: SocketAddr,
    state: Arc<Mutex<SiteState>>,
}

impl Site {
    async fn start() -> Self {
        let state = Arc::new(Mutex::new(SiteState::default()));
        let served = state.clone();
        let address = serve_http(move |request: Request<Bytes>| {
            let state = served.clone();
            async move { Site::answer(state, request).await }
        })
        .await;
        Self { address, state }
    }

    async fn answer(state: Arc<Mutex<SiteState>>, request: Request<Bytes>) -> Response<Bytes> {
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let if_none_match = header("if-none-match");
        let resource = {
            let mut state = state.lock().unwrap();
            state.seen.push(Seen {
                path: path.clone(),
                at: Instant::now(),
                user_agent: header("user-agent"),
                conditional: !if_none_match.is_empty(),
            });
            state.in_flight += 1;
            state.most_in_flight = state.most_in_flight.max(state.in_flight);
            state.resources.get(&path).cloned()
        };
        let resource = resource.unwrap_or_else(|| Resource::status(404));
        tokio::time::sleep(resource.delay).await;
        state.lock().unwrap().in_flight -= 1;
        let mut response = Response::builder().header("content-type", resource.content_type);
        if let Some(etag) = &resource.etag {
            if *etag == if_none_match {
                return response
                    .status(304)
                    .header("etag", etag)
                    .body(Bytes::new())
                    .unwrap();
            }
            response = response.header("etag", etag);
        }
        if let Some(location) = &resource.location {
            response = response.header("location", location);
        }
        response
            .status(resource.status)
            .body(Bytes::from(resource.body))
            .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn put(&self, path: &str, resource: Resource) {
        self.state
            .lock()
            .unwrap()
            .resources
            .insert(path.to_owned(), resource);
    }

    fn remove(&self, path: &str) {
        self.state.lock().unwrap().resources.remove(path);
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn forget_requests(&self) {
        self.state.lock().unwrap().seen.clear();
    }

    fn requests_for(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }

    /// A `<urlset>` of these paths.
    fn urlset(&self, paths: &[&str]) -> String {
        let urls: String = paths
            .iter()
            .map(|p| {
                format!(
                    "<url><loc>{}</loc></url>",
                    self.url(p).replace('&', "&amp;")
                )
            })
            .collect();
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <urlset xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">{urls}</urlset>"
        )
    }

    /// Serves a sitemap index at /sitemap.xml over a gzip sitemap of
    /// `gzipped` and a plain one of `plain`.
    fn sitemaps(&self, gzipped: &[&str], plain: &[&str]) {
        let index = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <sitemapindex xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">\
             <sitemap><loc>{}</loc></sitemap><sitemap><loc>{}</loc></sitemap></sitemapindex>",
            self.url("/sitemap-pages.xml.gz"),
            self.url("/sitemap-more.xml")
        );
        self.put(
            "/sitemap.xml",
            Resource::with_type("application/xml", index),
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(self.urlset(gzipped).as_bytes()).unwrap();
        self.put(
            "/sitemap-pages.xml.gz",
            Resource::with_type("application/gzip", gz.finish().unwrap()),
        );
        self.put(
            "/sitemap-more.xml",
            Resource::with_type("application/xml", self.urlset(plain)),
        );
    }
}

const MENU: &str = "<p>Every dish is cooked to order from local produce.</p>\
    <h2>Mains</h2><p>Chickpea curry with basmati rice and lime pickle.</p>\
    <p>Grilled halloumi with lemon and herb salad.</p>";
const NEW_MENU: &str = "<p>Every dish is cooked to order from local produce.</p>\
    <h2>Mains</h2><p>Chickpea curry with basmati rice and lime pickle.</p>\
    <p>Saffron risotto with roasted pumpkin and sage, new this season.</p>";

/// Joe's Diner: a home page, a menu, opening hours in Markdown, an about
/// page with an ETag, and a private page robots.txt keeps Keel out of.
fn restaurant(site: &Site) {
    site.put(
        "/robots.txt",
        Resource::with_type(
            "text/plain",
            "User-agent: *\nDisallow: /\n\nUser-agent: keel\nDisallow: /staff\nAllow: /\n",
        ),
    );
    site.put(
        "/",
        Resource::html(
            "Joe's Diner",
            "<p>A neighbourhood diner by the harbour since 1998, serving breakfast, lunch and dinner.</p>",
        ),
    );
    site.put("/menu", Resource::html("Menu", MENU));
    site.put(
        "/hours.md",
        Resource::with_type(
            "text/markdown",
            "# Opening hours\n\nMonday to Saturday 8am to 10pm. Sundays brunch only, 9am to 3pm.\n",
        ),
    );
    let mut about = Resource::html(
        "About us",
        "<p>Joe opened the diner after twenty years as a ship's cook.</p>",
    );
    about.etag = Some("\"about-v1\"".into());
    site.put("/about", about);
    site.put(
        "/staff",
        Resource::html("Staff only", "<p>The safe's code is 1234.</p>"),
    );
    site.sitemaps(&["/", "/menu", "/staff"], &["/hours.md", "/about"]);
}

async fn crawler_app(openai_url: &str, extra: &[(&str, &str)]) -> TestApp {
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    spawn_app_with(|_, vars| {
        openai_vars(vars, openai_url);
        vars.insert("ALLOW_PRIVATE_PULL_URLS".into(), "true".into());
        vars.insert("SOURCES_HOST_DELAY_MS".into(), "0".into());
        vars.extend(extra);
    })
    .await
}

async fn create_source(app: &TestApp, key: &str, body: Value) -> Value {
    let response = app.post_json("/api/sources", key, &body).await;
    assert_eq!(response.status(), 201, "creating a source");
    response.json().await.unwrap()
}

/// Creates a source and answers its id.
async fn source_id(app: &TestApp, key: &str, body: Value) -> String {
    create_source(app, key, body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn sync(app: &TestApp, key: &str, id: &str) -> Value {
    let response = app
        .post_json(&format!("/api/sources/{id}/sync"), key, &json!({}))
        .await;
    assert_eq!(response.status(), 200, "syncing a source");
    response.json().await.unwrap()
}

/// Every document of the tenant, by id.
async fn documents(app: &TestApp, key: &str) -> Vec<Value> {
    app.get_json("/api/documents?limit=200", key).await["documents"]
        .as_array()
        .unwrap()
        .clone()
}

fn embedded_texts(openai: &FakeOpenAi) -> Vec<String> {
    openai
        .requests()
        .iter()
        .flat_map(|r| r["input"].as_array().cloned().unwrap_or_default())
        .filter_map(|i| i.as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_restaurants_site_stays_current_and_only_the_changed_menu_is_embedded_again() {
    let (openai, openai_url) = FakeOpenAi::start().await;
    let app = crawler_app(&openai_url, &[]).await;
    let key = app.create_tenant("joes").await;
    let site = Site::start().await;
    restaurant(&site);
    let source = create_source(
        &app,
        &key,
        json!({"type": "sitemap", "url": site.url("/sitemap.xml"), "schedule": "hourly"}),
    )
    .await;
    assert_eq!(source["state"], "idle");
    let id = source["id"].as_str().unwrap();

    let started = Instant::now();
    let first = sync(&app, &key, id).await;
    let first_took = started.elapsed();
    assert_eq!(
        first["run"],
        json!({"sources": 1, "pages_fetched": 4, "changed": 4, "unchanged": 0, "gone": 0,
               "disallowed": 0, "failed": 0, "unsupported": 0, "documents_removed": 0, "resumable": 0}),
        "four pages read; /staff is disallowed by robots.txt, so it was never listed"
    );
    assert_eq!(site.requests_for("/staff"), 0, "robots.txt keeps Keel out");
    assert!(
        site.seen()
            .iter()
            .all(|s| s.user_agent.starts_with("Keel/")),
        "every request names Keel"
    );
    let last_run = &first["source"]["last_run"];
    assert_eq!(last_run["pages_seen"], 4);
    assert_eq!(last_run["listing_complete"], true);
    assert_eq!(first["source"]["state"], "idle");
    assert_eq!(first["source"]["pages"], 4);

    let stored = documents(&app, &key).await;
    assert_eq!(stored.len(), 4);
    let menu = stored
        .iter()
        .find(|d| d["source_url"] == site.url("/menu"))
        .expect("the menu is a document");
    assert_eq!(menu["title"], "Menu");
    assert_eq!(menu["metadata"], json!({"source_id": id}));
    let hours = stored
        .iter()
        .find(|d| d["source_url"] == site.url("/hours.md"))
        .unwrap();
    assert_eq!(hours["title"], "Opening hours");
    app.run_embedding_cron().await;
    let first_texts = embedded_texts(&openai);
    assert!(
        first_texts.iter().any(|t| t.contains("Chickpea curry")),
        "{first_texts:?}"
    );
    assert!(
        !first_texts
            .iter()
            .any(|t| t.contains("tracking") || t.contains("Follow us everywhere")),
        "scripts and footers are not content: {first_texts:?}"
    );

    // The chef changes the menu; nothing else changes.
    site.put("/menu", Resource::html("Menu", NEW_MENU));
    site.forget_requests();
    let requests_before = openai.requests().len();
    let started = Instant::now();
    let second = sync(&app, &key, id).await;
    let changed_took = started.elapsed();
    assert_eq!(second["run"]["changed"], 1, "{second}");
    assert_eq!(second["run"]["unchanged"], 3, "{second}");
    assert!(
        site.seen()
            .iter()
            .any(|s| s.path == "/about" && s.conditional),
        "the page with an ETag is asked conditionally"
    );
    app.run_embedding_cron().await;
    let new_texts: Vec<String> = embedded_texts(&openai)
        .into_iter()
        .skip(first_texts.len())
        .collect();
    assert!(openai.requests().len() > requests_before);
    assert!(
        !new_texts.is_empty() && new_texts.iter().all(|t| t.contains("Menu")),
        "only the menu's chunks are embedded again: {new_texts:?}"
    );

    let response = app
        .search(
            &key,
            json!({"query": "saffron risotto", "mode": "keyword", "top_k": 3}),
        )
        .await;
    let found: Value = response.json().await.unwrap();
    assert_eq!(
        found["results"][0]["source_url"],
        site.url("/menu"),
        "{found}"
    );
    assert!(
        found["results"][0]["content"]
            .as_str()
            .unwrap()
            .contains("Saffron risotto")
    );

    // Nothing changes: the re-run writes no document and embeds nothing.
    let chunks_before = app
        .count("select count(*) + coalesce(max(id), 0) from keel.chunks")
        .await;
    let requests_before = openai.requests().len();
    let started = Instant::now();
    let third = sync(&app, &key, id).await;
    let unchanged_took = started.elapsed();
    assert_eq!(third["run"]["unchanged"], 4, "{third}");
    assert_eq!(third["run"]["changed"], 0, "{third}");
    app.run_embedding_cron().await;
    assert_eq!(openai.requests().len(), requests_before, "nothing to embed");
    assert_eq!(
        app.count("select count(*) + coalesce(max(id), 0) from keel.chunks")
            .await,
        chunks_before,
        "no chunk replaced"
    );
    eprintln!(
        "crawl of the fixture: first run {} pages in {first_took:?}; menu changed {changed_took:?}; nothing changed {unchanged_took:?}",
        first["run"]["pages_fetched"]
    );

    // Deleting the source deletes its documents.
    let response = app
        .client
        .delete(app.url(&format!("/api/sources/{id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let deleted: Value = response.json().await.unwrap();
    assert_eq!(deleted["documents_deleted"], 4);
    assert!(documents(&app, &key).await.is_empty());
    assert_eq!(app.count("select count(*) from keel.source_pages").await, 0);
}

#[tokio::test]
async fn pages_that_disappear_are_removed_but_a_broken_sitemap_removes_nothing() {
    let (_openai, openai_url) = FakeOpenAi::start().await;
    let app = crawler_app(&openai_url, &[]).await;
    let key = app.create_tenant("joes").await;
    let site = Site::start().await;
    restaurant(&site);
    let id = source_id(
        &app,
        &key,
        json!({"type": "sitemap", "url": site.url("/sitemap.xml")}),
    )
    .await;
    sync(&app, &key, &id).await;
    assert_eq!(documents(&app, &key).await.len(), 4);

    // The hours page leaves the sitemap; the about page answers 410.
    site.sitemaps(&["/", "/menu"], &["/about"]);
    site.put("/about", Resource::status(410));
    let run = sync(&app, &key, &id).await;
    assert_eq!(run["run"]["gone"], 1, "{run}");
    let last_run = &run["source"]["last_run"];
    assert_eq!(last_run["pages_removed"], 1, "{run}");
    assert_eq!(last_run["removed"], 2, "{run}");
    let urls: Vec<Value> = documents(&app, &key)
        .await
        .iter()
        .map(|d| d["source_url"].clone())
        .collect();
    assert_eq!(urls.len(), 2, "{urls:?}");
    assert!(!urls.contains(&json!(site.url("/hours.md"))));
    assert!(!urls.contains(&json!(site.url("/about"))));

    // A sitemap that fails to load, or loads only partly, removes nothing.
    for (breakage, reason) in [
        (Resource::status(503), "the index answers 503"),
        (
            Resource::with_type("application/xml", "<sitemapindex><sitemap><loc>"),
            "the index is cut off",
        ),
    ] {
        site.put("/sitemap.xml", breakage);
        let run = sync(&app, &key, &id).await;
        let last_run = &run["source"]["last_run"];
        assert_eq!(last_run["listing_complete"], false, "{reason}: {run}");
        assert!(
            last_run["error"].as_str().unwrap().contains("sitemap.xml"),
            "{reason}: {run}"
        );
        assert_eq!(last_run["removed"], 0, "{reason}: {run}");
        assert_eq!(
            run["run"]["unchanged"], 2,
            "{reason}: known pages are refreshed"
        );
        assert_eq!(documents(&app, &key).await.len(), 2, "{reason}");
    }
    site.sitemaps(&["/", "/menu"], &[]);
    site.remove("/sitemap-more.xml");
    let run = sync(&app, &key, &id).await;
    assert_eq!(
        run["source"]["last_run"]["listing_complete"], false,
        "one sitemap of the index missing: {run}"
    );
    assert_eq!(documents(&app, &key).await.len(), 2);
}

#[tokio::test]
async fn the_guard_refuses_a_redirect_to_cloud_metadata_and_slow_or_binary_pages_are_counted() {
    let (_openai, openai_url) = FakeOpenAi::start().await;
    let app = crawler_app(&openai_url, &[("SOURCES_PAGE_TIMEOUT_MS", "500")]).await;
    let key = app.create_tenant("joes").await;
    let site = Site::start().await;
    restaurant(&site);
    let mut metadata = Resource::status(302);
    metadata.location = Some("http://169.254.169.254/latest/meta-data/iam/".into());
    site.put("/specials", metadata);
    let mut slow = Resource::html("Events", "<p>Jazz on Fridays.</p>");
    slow.delay = Duration::from_secs(60);
    site.put("/events", slow);
    site.put(
        "/menu.pdf",
        Resource::with_type("application/pdf", b"%PDF-1.7\n...".to_vec()),
    );
    site.sitemaps(
        &["/", "/menu", "/specials"],
        &["/events", "/menu.pdf", "/hours.md"],
    );
    let id = source_id(
        &app,
        &key,
        json!({"type": "sitemap", "url": site.url("/sitemap.xml")}),
    )
    .await;
    let started = Instant::now();
    let run = sync(&app, &key, &id).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the page that would take a minute is cut off at its time limit"
    );
    assert_eq!(run["run"]["changed"], 3, "{run}");
    assert_eq!(
        run["run"]["failed"], 2,
        "the redirect and the slow page: {run}"
    );
    assert_eq!(run["run"]["unsupported"], 1, "the PDF: {run}");
    let rows = app
        .db
        .connect()
        .await
        .query(
            "select url, status, last_error from keel.source_pages where status <> 'ok' order by url",
            &[],
        )
        .await
        .unwrap();
    let failures: HashMap<String, (String, String)> = rows
        .iter()
        .map(|r| {
            let url: String = r.get(0);
            let path = url.rsplit('/').next().unwrap().to_owned();
            (
                path,
                (r.get(1), r.get::<_, Option<String>>(2).unwrap_or_default()),
            )
        })
        .collect();
    assert_eq!(failures["specials"].0, "failed");
    assert!(
        failures["specials"].1.contains("refused") && failures["specials"].1.contains("link-local"),
        "{failures:?}"
    );
    assert_eq!(failures["events"].0, "failed");
    assert!(failures["events"].1.contains("500 ms"), "{failures:?}");
    assert_eq!(failures["menu.pdf"].0, "unsupported");
    assert_eq!(documents(&app, &key).await.len(), 3);
}

#[tokio::test]
async fn a_big_source_resumes_across_overlapping_runs_politely_and_fetches_nothing_twice() {
    let (_openai, openai_url) = FakeOpenAi::start().await;
    let app = crawler_app(
        &openai_url,
        &[
            ("CRON_TIME_BUDGET_MS", "1500"),
            ("SOURCES_HOST_DELAY_MS", "50"),
        ],
    )
    .await;
    let key = app.create_tenant("joes").await;
    let site = Site::start().await;
    site.put(
        "/robots.txt",
        Resource::with_type("text/plain", "User-agent: *\nCrawl-delay: 0.1\n"),
    );
    let paths: Vec<String> = (0..40).map(|i| format!("/dishes/{i}")).collect();
    for (i, path) in paths.iter().enumerate() {
        site.put(
            path,
            Resource::html(
                &format!("Dish {i}"),
                &format!("<p>Dish number {i} of the menu.</p>"),
            ),
        );
    }
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    site.put(
        "/sitemap.xml",
        Resource::with_type("application/xml", site.urlset(&refs)),
    );
    let id = source_id(
        &app,
        &key,
        json!({"type": "sitemap", "url": site.url("/sitemap.xml")}),
    )
    .await;

    let mut progress = Vec::new();
    for _ in 0..20 {
        // Two cron runs at once, as when one outlasts its minute.
        let (a, b) = tokio::join!(
            app.run_cron("/api/cron/sources"),
            app.run_cron("/api/cron/sources")
        );
        assert!(
            a["sources"].as_u64().unwrap() + b["sources"].as_u64().unwrap() <= 1,
            "one source is crawled by one run at a time: {a} {b}"
        );
        let source = app.get_json(&format!("/api/sources/{id}"), &key).await;
        if source["state"] == "idle" {
            assert_eq!(source["last_run"]["changed"], 40, "{source}");
            break;
        }
        progress.push(source["current_run"]["pages_pending"].as_u64().unwrap());
    }
    assert!(
        progress.len() >= 2 && progress.windows(2).all(|w| w[1] < w[0]),
        "progress is visible run after run: {progress:?}"
    );
    for path in &paths {
        assert_eq!(
            site.requests_for(path),
            1,
            "{path} fetched once in the cycle"
        );
    }
    assert_eq!(documents(&app, &key).await.len(), 40);
    let state = site.state.lock().unwrap();
    assert_eq!(state.most_in_flight, 1, "one request at a time per host");
    let pages: Vec<&Seen> = state
        .seen
        .iter()
        .filter(|s| s.path.starts_with("/dishes/"))
        .collect();
    let closest = pages.windows(2).map(|w| w[1].at - w[0].at).min().unwrap();
    assert!(
        closest >= Duration::from_millis(95),
        "robots.txt's Crawl-delay of 0.1 s holds across runs: {closest:?}"
    );
}

#[tokio::test]
async fn a_tenant_lists_no_more_pages_than_its_quota() {
    let (_openai, openai_url) = FakeOpenAi::start().await;
    let app = crawler_app(&openai_url, &[("SOURCES_MAX_PAGES_PER_TENANT", "3")]).await;
    let key = app.create_tenant("joes").await;
    let site = Site::start().await;
    restaurant(&site);
    let id = source_id(
        &app,
        &key,
        json!({"type": "sitemap", "url": site.url("/sitemap.xml")}),
    )
    .await;
    let run = sync(&app, &key, &id).await;
    assert_eq!(run["run"]["changed"], 3, "{run}");
    assert_eq!(run["source"]["last_run"]["over_quota"], 1, "{run}");
    assert_eq!(documents(&app, &key).await.len(), 3);
    let other = source_id(
        &app,
        &key,
        json!({"type": "page", "url": site.url("/about")}),
    )
    .await;
    let run = sync(&app, &key, &other).await;
    assert_eq!(
        run["run"]["pages_fetched"], 0,
        "the quota counts every source: {run}"
    );
    assert_eq!(run["source"]["last_run"]["over_quota"], 1, "{run}");
}

#[tokio::test]
async fn bad_sources_are_refused_naming_the_field() {
    let app = crawler_app("http://127.0.0.1:9/v1", &[]).await;
    let key = app.create_tenant("joes").await;
    let cases = [
        (
            json!({"type": "rss", "url": "https://diner.example/feed"}),
            "invalid_field",
            "`type`",
            "an unknown type",
        ),
        (
            json!({"type": "sitemap", "url": "diner.example/sitemap.xml"}),
            "invalid_field",
            "`url`",
            "a relative URL",
        ),
        (
            json!({"type": "sitemap", "url": "ftp://diner.example/sitemap.xml"}),
            "invalid_field",
            "`url`",
            "not http(s)",
        ),
        (
            json!({"type": "sitemap", "url": "https://joe:secret@diner.example/sitemap.xml"}),
            "invalid_field",
            "credentials",
            "credentials in the URL would be stored and shown",
        ),
        (
            json!({"type": "sitemap", "url": format!("https://diner.example/{}", "a".repeat(2100))}),
            "invalid_field",
            "`url`",
            "longer than 2048",
        ),
        (
            json!({"type": "sitemap", "url": "https://diner.example/s.xml", "schedule": "weekly"}),
            "invalid_field",
            "`schedule`",
            "an unknown schedule",
        ),
        (
            json!({"type": "sitemap", "url": "https://diner.example/s.xml", "max_pages": 0}),
            "invalid_field",
            "`max_pages`",
            "zero pages",
        ),
        (
            json!({"type": "sitemap", "url": "https://diner.example/s.xml", "max_pages": 50001}),
            "invalid_field",
            "`max_pages`",
            "over a sitemap's 50,000",
        ),
        (
            json!({"type": "sitemap", "url": "https://diner.example/s.xml", "max_pages": "ten"}),
            "invalid_json",
            "max_pages",
            "not a number",
        ),
        (
            json!({"type": "sitemap", "url": "https://diner.example/s.xml", "include": ["menu"]}),
            "invalid_field",
            "`include[0]`",
            "a pattern not starting with /",
        ),
        (
            json!({"type": "sitemap", "url": "https://diner.example/s.xml", "exclude": ["/a b"]}),
            "invalid_field",
            "`exclude[0]`",
            "a space in a pattern",
        ),
        (
            json!({"type": "sitemap", "url": "https://diner.example/s.xml", "include": vec!["/x"; 51]}),
            "invalid_field",
            "`include`",
            "too many patterns",
        ),
        (
            json!({"type": "page", "url": "https://diner.example/menu", "include": ["/menu"]}),
            "invalid_field",
            "`include`",
            "patterns on a single page",
        ),
        (
            json!({"type": "page", "url": "https://diner.example/menu", "max_pages": 5}),
            "invalid_field",
            "`max_pages`",
            "a page is one page",
        ),
        (
            json!({"type": "sitemap", "url": "https://diner.example/s.xml", "depth": 3}),
            "invalid_json",
            "depth",
            "an unknown field",
        ),
        (
            json!({"url": "https://diner.example/s.xml"}),
            "invalid_json",
            "type",
            "no type",
        ),
    ];
    for (body, code, named, reason) in cases {
        let response = app.post_json("/api/sources", &key, &body).await;
        assert_eq!(response.status(), 400, "{reason}");
        let error = error_body(response).await;
        assert_eq!(error["code"], code, "{reason}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains(named),
            "{reason}: {error}"
        );
    }
    assert_eq!(app.count("select count(*) from keel.sources").await, 0);

    let body = json!({"type": "page", "url": "https://diner.example/menu"});
    create_source(&app, &key, body.clone()).await;
    let again = app.post_json("/api/sources", &key, &body).await;
    assert_eq!(again.status(), 409, "the same URL twice");
    for (path, reason) in [
        ("/api/sources/not-a-uuid", "a malformed id"),
        (
            "/api/sources/00000000-0000-4000-8000-000000000000",
            "an unknown id",
        ),
    ] {
        let response = app
            .client
            .get(app.url(path))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{reason}");
    }
}

#[tokio::test]
async fn another_tenant_can_neither_see_nor_sync_nor_delete_a_source() {
    let (_openai, openai_url) = FakeOpenAi::start().await;
    let app = crawler_app(&openai_url, &[]).await;
    let joes = app.create_tenant("joes").await;
    let clinic = app.create_tenant("clinic").await;
    let site = Site::start().await;
    restaurant(&site);
    let id = source_id(
        &app,
        &joes,
        json!({"type": "page", "url": site.url("/menu")}),
    )
    .await;
    sync(&app, &joes, &id).await;

    let listed = app.get_json("/api/sources", &clinic).await;
    assert_eq!(listed, json!({"sources": []}));
    let path = format!("/api/sources/{id}");
    let attempts = [
        (app.client.get(app.url(&path)), "read"),
        (app.client.delete(app.url(&path)), "delete"),
        (app.client.post(app.url(&format!("{path}/sync"))), "sync"),
    ];
    for (request, what) in attempts {
        let response = request.bearer_auth(&clinic).send().await.unwrap();
        assert_eq!(
            response.status(),
            404,
            "the clinic cannot {what} Joe's source"
        );
    }
    let source = app.get_json(&path, &joes).await;
    assert_eq!(source["pages"], 1, "{source}");
    assert_eq!(documents(&app, &joes).await.len(), 1);
    assert!(documents(&app, &clinic).await.is_empty());
}
