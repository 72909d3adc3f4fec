//! A crawl run: claims due sources one at a time under a lease, reads the
//! sitemap when a cycle starts, then fetches the cycle's pages within the
//! run's time budget, resuming where the last run stopped. Every request
//! goes through the SSRF-guarded fetcher, one at a time per host across all
//! runs (`keel.crawl_hosts`), with a pause between requests; a page whose
//! content hash is unchanged costs no chunking and no embedding.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Serialize;
use serde_json::json;
use url::Url;
use utoipa::ToSchema;

use super::pages::{self, Unusable};
use super::robots::{self, Robots, Rules};
use super::sitemaps::{self, Sitemap};
use super::store::{
    AcquireHost, CachedRobots, Claim, ClaimSource, ClaimedSource, FinishRun, KnownPage, Leased,
    PendingPages, RecordListing, RecordPage, ReleaseHost, Source, StoreRobots, StoredRobots,
};
use super::{SourceError, definitions};
use crate::knowledge::documents::{self, DocumentInput};
use crate::knowledge::{Knowledge, KnowledgeError};
use crate::platform::budget::Budget;
use crate::platform::config::SourceSettings;
use crate::platform::crypto::sha256_hex;
use crate::platform::db::Db;
use crate::platform::fetch::{self, FetchError, FetchLimits};
use crate::tenants::TenantRef;

/// Sent with every request; robots.txt rules are looked up by its token.
const USER_AGENT: &str = concat!("Keel/", env!("CARGO_PKG_VERSION"), " (knowledge crawler)");
const ROBOTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const SITEMAP_TIMEOUT: Duration = Duration::from_secs(30);
/// Sitemaps an index may send a listing to.
const MAX_CHILD_SITEMAPS: usize = 1_000;
const MAX_REDIRECTS: usize = 5;
/// Listed URLs recorded per database call.
const LISTING_BATCH: usize = 1_000;
/// Pending pages read per database call.
const PAGE_BATCH: u32 = 16;
/// A killed run's sources are taken over this long after its budget ends.
const LEASE_MARGIN: Duration = Duration::from_secs(60);

/// What one run did, over every source it worked on.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct RunReport {
    pub sources: u32,
    pub pages_fetched: u32,
    pub changed: u32,
    pub unchanged: u32,
    pub gone: u32,
    pub disallowed: u32,
    pub failed: u32,
    pub unsupported: u32,
    pub documents_removed: u64,
    /// Sources left mid-cycle for the next run (time budget spent).
    pub resumable: u32,
}

/// Everything a run needs, borrowed from the application.
pub struct Crawler<'a> {
    pub db: &'a Db,
    pub knowledge: &'a Arc<Knowledge>,
    pub settings: &'a SourceSettings,
    /// Development only (`ALLOW_PRIVATE_PULL_URLS`): a local site may be crawled.
    pub allow_private: bool,
}

/// How a page's fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Changed,
    Unchanged,
    Gone,
    Disallowed,
    Failed,
    Unsupported,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Changed => "changed",
            Outcome::Unchanged => "unchanged",
            Outcome::Gone => "gone",
            Outcome::Disallowed => "disallowed",
            Outcome::Failed => "failed",
            Outcome::Unsupported => "unsupported",
        }
    }
}

/// What reading a page gave: a document (with the response's ETag and
/// Last-Modified), or an outcome without one (and why).
enum Read {
    Document(DocumentInput, (Option<String>, Option<String>)),
    Outcome(Outcome, Option<String>),
}

/// What a page's record keeps of the document it became.
struct Kept {
    id: String,
    canonical_url: Option<String>,
    hash: String,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// Whether a step may go on.
enum Step {
    Done,
    OutOfTime,
    LeaseLost,
}

/// One run's identity and clock.
struct Run {
    holder: String,
    budget: Budget,
    report: RunReport,
}

impl Crawler<'_> {
    /// `GET /api/cron/sources`: due sources of every tenant, one after
    /// another, until the budget is spent.
    pub async fn run_due(&self, budget: Duration) -> Result<RunReport, SourceError> {
        let mut run = Run::new(budget);
        let mut skip: Vec<String> = Vec::new();
        while run.budget.has_room() {
            let claim: Claim = self
                .db
                .run(&ClaimSource {
                    id: None,
                    lease_seconds: lease_seconds(budget),
                    skip: &skip,
                })
                .await?;
            let Some(source) = claim.source else {
                break;
            };
            skip.push(source.id.clone());
            self.crawl(&source, &mut run).await?;
        }
        Ok(run.report)
    }

    /// `POST /api/sources/{id}/sync`: the caller's source, now.
    pub async fn run_now(
        &self,
        tenant: &TenantRef,
        id: &str,
        budget: Duration,
    ) -> Result<(RunReport, Option<Source>), SourceError> {
        let mut run = Run::new(budget);
        let claim = tenant
            .run(
                self.db,
                &ClaimSource {
                    id: Some(id),
                    lease_seconds: lease_seconds(budget),
                    skip: &[],
                },
            )
            .await?;
        let source = match claim {
            Claim {
                source: Some(source),
                ..
            } => source,
            _ => return Err(SourceError::Busy(id.to_owned())),
        };
        let view = self.crawl(&source, &mut run).await?;
        Ok((run.report, view))
    }

    /// Works on one claimed source until its cycle ends or the budget is
    /// spent; returns the source's view when the lease still held.
    async fn crawl(
        &self,
        source: &ClaimedSource,
        run: &mut Run,
    ) -> Result<Option<Source>, SourceError> {
        run.report.sources += 1;
        let lease = Leased {
            id: &source.id,
            lease_token: &source.lease_token,
        };
        let step = match self.robots(&source.host, run).await? {
            None => Step::OutOfTime,
            Some(robots) => {
                let delay = robots
                    .crawl_delay()
                    .unwrap_or_default()
                    .max(self.settings.host_delay);
                let listed = if source.state == "listing" {
                    self.list(source, lease, &robots, delay, run).await?
                } else {
                    Step::Done
                };
                match listed {
                    Step::Done => self.fetch_pages(source, lease, &robots, delay, run).await?,
                    other => other,
                }
            }
        };
        let finished = match step {
            Step::Done => true,
            Step::OutOfTime => {
                run.report.resumable += 1;
                false
            }
            Step::LeaseLost => return Ok(None),
        };
        let done = self.db.run(&FinishRun { lease, finished }).await?;
        Ok(if done.lease_lost { None } else { done.source })
    }

    /// The host's robots.txt rules for Keel: cached for 24 h, else fetched
    /// (4xx: everything allowed; 5xx or unreachable: nothing, not cached,
    /// so the next run asks again). `None` when the run has no time left
    /// to wait for the host.
    async fn robots(&self, host: &str, run: &mut Run) -> Result<Option<Robots>, SourceError> {
        let cached = self
            .db
            .run(&CachedRobots {
                host,
                max_age_seconds: ROBOTS_MAX_AGE.as_secs(),
            })
            .await?;
        if let Some(stored) = cached {
            return Ok(Some(robots_of(&stored)));
        }
        if !self
            .take_host(host, self.settings.page_timeout, run)
            .await?
        {
            return Ok(None);
        }
        let limits = self.limits(self.settings.page_timeout, robots::MAX_ROBOTS_BYTES);
        let url = format!("{host}/robots.txt");
        let stored = match fetch::get("robots.txt", &url, &request_headers(None), &limits).await {
            Ok(fetched) if fetched.status.is_success() => Some(StoredRobots {
                status: "rules".into(),
                body: Some(String::from_utf8_lossy(&fetched.body).into_owned()),
            }),
            Ok(fetched) if fetched.status.is_client_error() => Some(StoredRobots {
                status: "allow_all".into(),
                body: None,
            }),
            _ => None,
        };
        self.release_host(host, self.settings.host_delay, run)
            .await?;
        Ok(Some(match stored {
            Some(stored) => {
                self.db
                    .run(&StoreRobots {
                        host,
                        robots: &stored,
                    })
                    .await?;
                robots_of(&stored)
            }
            None => Robots::DisallowAll,
        }))
    }

    /// Records the cycle's URLs: the page itself, or every page of the
    /// sitemap (and the sitemaps of an index) on the source's host that
    /// `include`/`exclude` and robots.txt allow, up to `max_pages`. A sitemap
    /// that fails to load or parse makes the listing incomplete, so the cycle
    /// refreshes the known pages and removes none.
    async fn list(
        &self,
        source: &ClaimedSource,
        lease: Leased<'_>,
        robots: &Robots,
        delay: Duration,
        run: &mut Run,
    ) -> Result<Step, SourceError> {
        let mut listed = Listing::new(source, robots);
        let mut error = None;
        if source.kind == "page" {
            listed.offer(&source.url);
        } else {
            match self.sitemap(&source.url, source, delay, run).await? {
                None => return Ok(Step::OutOfTime),
                Some(Err(problem)) => error = Some(problem),
                Some(Ok(Sitemap::Pages(locs))) => locs.iter().for_each(|loc| listed.offer(loc)),
                Some(Ok(Sitemap::Index(children))) => {
                    for child in children.iter().take(MAX_CHILD_SITEMAPS) {
                        if listed.is_full() {
                            break;
                        }
                        if !listed.same_host(child) {
                            error = Some(format!("{child}: a sitemap on another host is ignored"));
                            continue;
                        }
                        match self.sitemap(child, source, delay, run).await? {
                            None => return Ok(Step::OutOfTime),
                            Some(Ok(Sitemap::Pages(locs))) => {
                                locs.iter().for_each(|loc| listed.offer(loc));
                            }
                            Some(Ok(Sitemap::Index(_))) => {
                                error = Some(format!("{child}: an index may not list indexes"));
                            }
                            Some(Err(problem)) => error = Some(problem),
                        }
                    }
                    if children.len() > MAX_CHILD_SITEMAPS && !listed.is_full() {
                        error = Some(format!(
                            "the index lists more than {MAX_CHILD_SITEMAPS} sitemaps"
                        ));
                    }
                }
            }
        }
        let urls = listed.urls;
        let mut batches = urls.chunks(LISTING_BATCH).peekable();
        loop {
            let batch = batches.next().unwrap_or_default();
            let done = batches.peek().is_none();
            let recorded = self
                .db
                .run(&RecordListing {
                    lease,
                    urls: batch,
                    done,
                    complete: error.is_none(),
                    error: error.as_deref(),
                    max_pages_per_tenant: self.settings.max_pages_per_tenant,
                })
                .await?;
            if recorded.lease_lost {
                return Ok(Step::LeaseLost);
            }
            if recorded.over_quota > 0 {
                tracing::warn!(
                    source = source.id,
                    refused = recorded.over_quota,
                    "pages over the tenant's page quota were not listed"
                );
            }
            if done {
                return Ok(Step::Done);
            }
        }
    }

    /// One sitemap file, loaded and parsed: `None` when the run has no time
    /// left to wait for the host, `Some(Err)` with what went wrong.
    async fn sitemap(
        &self,
        url: &str,
        source: &ClaimedSource,
        delay: Duration,
        run: &mut Run,
    ) -> Result<Option<Result<Sitemap, String>>, SourceError> {
        if !self.take_host(&source.host, SITEMAP_TIMEOUT, run).await? {
            return Ok(None);
        }
        let limits = self.limits(SITEMAP_TIMEOUT, sitemaps::MAX_SITEMAP_BYTES);
        let fetched = fetch::get("sitemap", url, &request_headers(None), &limits).await;
        self.release_host(&source.host, delay, run).await?;
        let parsed = match fetched {
            Ok(fetched) if fetched.status.is_success() => sitemaps::decompress(fetched.body)
                .and_then(|xml| sitemaps::parse(&xml))
                .map_err(|e| format!("{url}: {e}")),
            Ok(fetched) => Err(format!("{url} answered HTTP {}", fetched.status.as_u16())),
            Err(error) => Err(format!("{url}: {}", describe(&error))),
        };
        Ok(Some(parsed))
    }

    /// Fetches the cycle's pending pages, a batch at a time, until none is
    /// left (`Done`) or the budget is spent.
    async fn fetch_pages(
        &self,
        source: &ClaimedSource,
        lease: Leased<'_>,
        robots: &Robots,
        delay: Duration,
        run: &mut Run,
    ) -> Result<Step, SourceError> {
        loop {
            if !run.budget.has_room() {
                return Ok(Step::OutOfTime);
            }
            let pending = self
                .db
                .run(&PendingPages {
                    lease,
                    limit: PAGE_BATCH,
                })
                .await?;
            if pending.lease_lost {
                return Ok(Step::LeaseLost);
            }
            if pending.pages.is_empty() {
                return Ok(Step::Done);
            }
            for page in &pending.pages {
                if !run.budget.has_room() {
                    return Ok(Step::OutOfTime);
                }
                let started = Instant::now();
                match self.page(source, lease, robots, delay, page, run).await? {
                    Step::Done => run.budget.finished_round(started),
                    other => return Ok(other),
                }
            }
        }
    }

    /// Fetches one page (conditionally, when a document came of it before)
    /// and records what it came to; a changed page is upserted through the
    /// knowledge area, which queues its chunks for embedding.
    async fn page(
        &self,
        source: &ClaimedSource,
        lease: Leased<'_>,
        robots: &Robots,
        delay: Duration,
        page: &KnownPage,
        run: &mut Run,
    ) -> Result<Step, SourceError> {
        let mut fetched_host = None;
        let read = match Url::parse(&page.url) {
            Err(_) => Read::Outcome(Outcome::Failed, Some("not an absolute URL".into())),
            Ok(url) if !robots.allows(request_path(&url)) => {
                Read::Outcome(Outcome::Disallowed, None)
            }
            Ok(url) => {
                if !self
                    .take_host(&source.host, self.settings.page_timeout, run)
                    .await?
                {
                    return Ok(Step::OutOfTime);
                }
                fetched_host = Some(source.host.as_str());
                run.report.pages_fetched += 1;
                self.read_page(source, &url, page).await?
            }
        };
        let (outcome, error, kept) = match read {
            Read::Outcome(outcome, error) => (outcome, error, None),
            Read::Document(document, (etag, last_modified)) => {
                let kept = Kept {
                    id: document.id.clone(),
                    canonical_url: document.source_url.clone(),
                    hash: document.content_hash(),
                    etag,
                    last_modified,
                };
                if page.content_hash.as_deref() == Some(kept.hash.as_str())
                    && page.document_id.as_deref() == Some(kept.id.as_str())
                {
                    // Same text as last time: no chunking, no embedding.
                    (Outcome::Unchanged, None, Some(kept))
                } else {
                    match self.upsert(&source.tenant_id, document).await? {
                        Ok(()) => (Outcome::Changed, None, Some(kept)),
                        Err(problem) => (Outcome::Failed, Some(problem), None),
                    }
                }
            }
        };
        let mut record = RecordPage {
            lease,
            url: &page.url,
            outcome: outcome.as_str(),
            document_id: page.document_id.as_deref(),
            canonical_url: None,
            etag: page.etag.as_deref(),
            last_modified: page.last_modified.as_deref(),
            content_hash: page.content_hash.as_deref(),
            error: error.as_deref(),
            host: fetched_host,
            holder: &run.holder,
            delay_ms: delay.as_millis() as u64,
        };
        if let Some(kept) = &kept {
            record.document_id = Some(&kept.id);
            record.canonical_url = kept.canonical_url.as_deref();
            record.content_hash = Some(&kept.hash);
            record.etag = kept.etag.as_deref();
            record.last_modified = kept.last_modified.as_deref();
        }
        let recorded = self.db.run(&record).await?;
        if recorded.lease_lost {
            return Ok(Step::LeaseLost);
        }
        run.report.count(outcome);
        run.report.documents_removed += recorded.documents_removed;
        Ok(Step::Done)
    }

    /// One GET of a page and what it says.
    async fn read_page(
        &self,
        source: &ClaimedSource,
        url: &Url,
        page: &KnownPage,
    ) -> Result<Read, SourceError> {
        let validators = page.document_id.is_some().then_some(page);
        let limits = self.limits(self.settings.page_timeout, self.settings.page_max_bytes);
        let fetched =
            match fetch::get("page", url.as_str(), &request_headers(validators), &limits).await {
                Err(error) => return Ok(Read::Outcome(Outcome::Failed, Some(describe(&error)))),
                Ok(fetched) => fetched,
            };
        match fetched.status {
            StatusCode::NOT_MODIFIED if validators.is_some() => {
                return Ok(Read::Outcome(Outcome::Unchanged, None));
            }
            StatusCode::NOT_FOUND | StatusCode::GONE => {
                return Ok(Read::Outcome(Outcome::Gone, None));
            }
            status if !status.is_success() => {
                return Ok(Read::Outcome(
                    Outcome::Failed,
                    Some(format!("HTTP {}", status.as_u16())),
                ));
            }
            _ => {}
        }
        let content_type = header_text(&fetched.headers, header::CONTENT_TYPE);
        let validators = (
            header_text(&fetched.headers, header::ETAG),
            header_text(&fetched.headers, header::LAST_MODIFIED),
        );
        let final_url = fetched.url;
        let body = fetched.body;
        // HTML parsing is CPU-bound: off the async runtime.
        let extracted = tokio::task::spawn_blocking(move || {
            pages::extract(&final_url, content_type.as_deref(), &body).map(|e| (e, final_url))
        })
        .await
        .map_err(|e| KnowledgeError::Internal(anyhow::anyhow!("extraction failed: {e}")))?;
        let (extracted, final_url) = match extracted {
            Err(Unusable::Unsupported(kind)) => {
                return Ok(Read::Outcome(
                    Outcome::Unsupported,
                    Some(format!("{kind} is not read")),
                ));
            }
            Err(Unusable::Empty) => {
                return Ok(Read::Outcome(
                    Outcome::Failed,
                    Some("no readable text".into()),
                ));
            }
            Ok(extracted) => extracted,
        };
        // A canonical URL (or a redirect) to another host is ignored, so one
        // page cannot pose as another.
        let canonical = [extracted.canonical.as_ref(), Some(&final_url)]
            .into_iter()
            .flatten()
            .find(|c| c.origin() == url.origin())
            .unwrap_or(url);
        Ok(Read::Document(
            DocumentInput {
                id: document_id(&source.id, canonical),
                title: extracted.title,
                content: extracted.content,
                metadata: Some(json!({"source_id": source.id})),
                source_url: Some(canonical.to_string()),
            },
            validators,
        ))
    }

    /// Upserts a page's document as its tenant; `Err` with the reason when
    /// the knowledge area refuses it (too large, say).
    async fn upsert(
        &self,
        tenant_id: &str,
        document: DocumentInput,
    ) -> Result<Result<(), String>, SourceError> {
        let documents = vec![document];
        if let Err(error) = documents::validate(&documents, &self.knowledge.limits) {
            return Ok(Err(error.to_string()));
        }
        let tenant = TenantRef::Trusted(tenant_id.to_owned());
        match documents::upsert(self.db, self.knowledge, &tenant, documents).await {
            Ok(_) => Ok(Ok(())),
            Err(KnowledgeError::Contended) => Ok(Err(KnowledgeError::Contended.to_string())),
            Err(error) => Err(error.into()),
        }
    }

    /// Waits for the host's turn (one request at a time, a pause between,
    /// across every run); `false` when the wait would outlast the budget.
    async fn take_host(
        &self,
        host: &str,
        hold: Duration,
        run: &mut Run,
    ) -> Result<bool, SourceError> {
        loop {
            let turn = self
                .db
                .run(&AcquireHost {
                    host,
                    holder: &run.holder,
                    hold_ms: hold.as_millis() as u64,
                })
                .await?;
            if turn.wait_ms == 0 {
                return Ok(true);
            }
            let wait = Duration::from_millis(turn.wait_ms);
            if Instant::now() + wait >= run.budget.deadline() {
                return Ok(false);
            }
            tokio::time::sleep(wait).await;
        }
    }

    async fn release_host(
        &self,
        host: &str,
        delay: Duration,
        run: &Run,
    ) -> Result<(), SourceError> {
        self.db
            .run(&ReleaseHost {
                host,
                holder: &run.holder,
                delay_ms: delay.as_millis() as u64,
            })
            .await?;
        Ok(())
    }

    fn limits(&self, timeout: Duration, max_bytes: usize) -> FetchLimits {
        FetchLimits {
            timeout,
            max_bytes,
            max_redirects: MAX_REDIRECTS,
            allow_private: self.allow_private,
        }
    }
}

impl Run {
    fn new(budget: Duration) -> Self {
        Self {
            holder: uuid::Uuid::new_v4().to_string(),
            budget: Budget::new(budget),
            report: RunReport::default(),
        }
    }
}

impl RunReport {
    fn count(&mut self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Changed => &mut self.changed,
            Outcome::Unchanged => &mut self.unchanged,
            Outcome::Gone => &mut self.gone,
            Outcome::Disallowed => &mut self.disallowed,
            Outcome::Failed => &mut self.failed,
            Outcome::Unsupported => &mut self.unsupported,
        };
        *counter += 1;
    }
}

/// The URLs a listing keeps: on the source's host, without credentials,
/// allowed by `include`/`exclude` and robots.txt, each once, at most
/// `max_pages`.
struct Listing<'a> {
    source: &'a ClaimedSource,
    origin: url::Origin,
    robots: &'a Robots,
    seen: HashSet<String>,
    urls: Vec<String>,
}

impl<'a> Listing<'a> {
    fn new(source: &'a ClaimedSource, robots: &'a Robots) -> Self {
        // Stored URLs were validated; an opaque origin would match nothing.
        let origin = Url::parse(&source.url)
            .map(|u| u.origin())
            .unwrap_or_else(|_| url::Origin::new_opaque());
        Self {
            source,
            origin,
            robots,
            seen: HashSet::new(),
            urls: Vec::new(),
        }
    }

    fn is_full(&self) -> bool {
        self.urls.len() >= self.source.max_pages
    }

    fn same_host(&self, url: &str) -> bool {
        Url::parse(url).is_ok_and(|u| u.origin() == self.origin)
    }

    fn offer(&mut self, raw: &str) {
        if self.is_full() {
            return;
        }
        let Ok(url) = definitions::crawlable_url(raw) else {
            return;
        };
        if url.origin() != self.origin {
            return;
        }
        let path = request_path(&url);
        let included = self.source.include.is_empty()
            || self.source.include.iter().any(|p| robots::matches(p, path));
        let excluded = self.source.exclude.iter().any(|p| robots::matches(p, path));
        if !included || excluded || !self.robots.allows(path) {
            return;
        }
        let url = String::from(url);
        if self.seen.insert(url.clone()) {
            self.urls.push(url);
        }
    }
}

/// What robots.txt rules and `include`/`exclude` patterns match: the path
/// and query, as requested.
fn request_path(url: &Url) -> &str {
    &url[url::Position::BeforePath..url::Position::AfterQuery]
}

fn robots_of(stored: &StoredRobots) -> Robots {
    match (stored.status.as_str(), &stored.body) {
        ("rules", Some(body)) => Robots::Rules(Rules::parse(body)),
        _ => Robots::AllowAll,
    }
}

/// A page's document id: its source and canonical URL, hashed to a bounded
/// length, so one page cannot overwrite another source's or tenant's.
pub fn document_id(source_id: &str, canonical: &Url) -> String {
    format!(
        "sources/{source_id}/{}",
        &sha256_hex(canonical.as_str())[..32]
    )
}

fn request_headers(validators: Option<&KnownPage>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static(
            "text/html,application/xhtml+xml,text/markdown,text/plain;q=0.9,*/*;q=0.1",
        ),
    );
    if let Some(page) = validators {
        let pairs = [
            (header::IF_NONE_MATCH, &page.etag),
            (header::IF_MODIFIED_SINCE, &page.last_modified),
        ];
        for (name, value) in pairs {
            if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, value);
            }
        }
    }
    headers
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 512)
        .map(str::to_owned)
}

fn describe(error: &FetchError) -> String {
    match error {
        FetchError::Refused(reason) => format!("refused: {reason}"),
        FetchError::Failed(reason) => reason.clone(),
    }
}

fn lease_seconds(budget: Duration) -> u64 {
    (budget + LEASE_MARGIN).as_secs()
}
