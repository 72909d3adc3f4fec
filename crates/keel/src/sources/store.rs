//! The sources SQL functions Keel calls (migrations/0020), one typed
//! binding each, and the API's view of a source (built by the database's
//! `keel.source_json`, read into [`Source`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::ops::audit::Audit;
use crate::platform::db::SqlFunction;

/// A source as the API shows it: its definition, its state and the counts
/// of its current and last crawl.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Source {
    pub id: String,
    /// `sitemap` or `page`.
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    /// `daily` or `hourly`.
    pub schedule: String,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub max_pages: u32,
    pub created_at: String,
    /// `idle` between crawls, otherwise the phase of the current one.
    pub state: String,
    /// When the next crawl starts (idle sources only).
    pub next_run_at: Option<String>,
    /// Pages that are documents now.
    pub pages: u64,
    pub current_run: Option<CurrentRun>,
    pub last_run: Option<LastRun>,
}

/// The crawl in progress.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CurrentRun {
    pub cycle: u64,
    pub started_at: String,
    pub pages_listed: u64,
    pub pages_pending: u64,
    #[serde(flatten)]
    pub counts: PageCounts,
}

/// The last finished crawl.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LastRun {
    pub started_at: String,
    pub finished_at: String,
    pub pages_seen: u64,
    /// False when the listing failed: pages missing from it were kept.
    pub listing_complete: bool,
    pub pages_removed: u64,
    #[serde(flatten)]
    pub counts: PageCounts,
}

/// What a crawl did with each page, by outcome.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct PageCounts {
    #[serde(default)]
    pub changed: u64,
    #[serde(default)]
    pub unchanged: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub unsupported: u64,
    #[serde(default)]
    pub gone: u64,
    #[serde(default)]
    pub disallowed: u64,
    /// Listed pages refused by the tenant's page quota.
    #[serde(default)]
    pub over_quota: u64,
    /// Documents removed.
    #[serde(default)]
    pub removed: u64,
    /// Why the listing failed, when it did.
    #[serde(default)]
    pub error: Option<String>,
}

/// `GET /api/sources`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SourceList {
    pub sources: Vec<Source>,
}

/// `keel_create_source`: a validated source (see `definitions`).
#[derive(Serialize)]
pub struct CreateSource<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub url: &'a str,
    pub host: &'a str,
    pub schedule: &'a str,
    pub include: &'a [String],
    pub exclude: &'a [String],
    pub max_pages: u32,
    pub max_sources: u32,
    pub audit: &'a Audit,
}

impl SqlFunction for CreateSource<'_> {
    const NAME: &'static str = "keel_create_source";
    type Output = Source;
}

/// `keel_list_sources`: the tenant's sources, oldest first (at most 50 exist).
#[derive(Serialize)]
pub struct ListSources {}

impl SqlFunction for ListSources {
    const NAME: &'static str = "keel_list_sources";
    type Output = SourceList;
}

/// `keel_get_source`: one source with its progress and last run.
#[derive(Serialize)]
pub struct GetSource<'a> {
    pub id: &'a str,
}

impl SqlFunction for GetSource<'_> {
    const NAME: &'static str = "keel_get_source";
    type Output = Source;
}

/// `keel_delete_source`: the source, its pages and their documents.
#[derive(Serialize)]
pub struct DeleteSource<'a> {
    pub id: &'a str,
    pub audit: &'a Audit,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeletedSource {
    pub deleted: String,
    pub documents_deleted: u64,
}

impl SqlFunction for DeleteSource<'_> {
    const NAME: &'static str = "keel_delete_source";
    type Output = DeletedSource;
}

/// `keel_claim_source`: the named source (run now), else the most overdue
/// one not in `skip`, under a lease.
#[derive(Serialize)]
pub struct ClaimSource<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    pub lease_seconds: u64,
    pub skip: &'a [String],
}

#[derive(Deserialize)]
pub struct Claim {
    pub busy: bool,
    pub source: Option<ClaimedSource>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClaimedSource {
    pub id: String,
    pub tenant_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    pub host: String,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub max_pages: usize,
    /// `listing` (the cycle's sitemap is still to be read) or `fetching`.
    pub state: String,
    pub lease_token: String,
}

impl SqlFunction for ClaimSource<'_> {
    const NAME: &'static str = "keel_claim_source";
    type Output = Claim;
}

/// The lease every crawl call holds a source by.
#[derive(Serialize, Clone, Copy)]
pub struct Leased<'a> {
    pub id: &'a str,
    pub lease_token: &'a str,
}

/// `keel_record_source_listing`: listed URLs seen in this cycle.
#[derive(Serialize)]
pub struct RecordListing<'a> {
    #[serde(flatten)]
    pub lease: Leased<'a>,
    pub urls: &'a [String],
    pub done: bool,
    pub complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    pub max_pages_per_tenant: u32,
}

#[derive(Deserialize)]
pub struct ListingRecorded {
    pub lease_lost: bool,
    #[serde(default)]
    pub over_quota: u64,
}

impl SqlFunction for RecordListing<'_> {
    const NAME: &'static str = "keel_record_source_listing";
    type Output = ListingRecorded;
}

/// `keel_pending_source_pages`: pages of the cycle not fetched in it yet.
#[derive(Serialize)]
pub struct PendingPages<'a> {
    #[serde(flatten)]
    pub lease: Leased<'a>,
    pub limit: u32,
}

#[derive(Deserialize)]
pub struct Pending {
    pub lease_lost: bool,
    pub pages: Vec<KnownPage>,
}

/// What the last fetch of a page left.
#[derive(Debug, Deserialize)]
pub struct KnownPage {
    pub url: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub content_hash: Option<String>,
    pub document_id: Option<String>,
}

impl SqlFunction for PendingPages<'_> {
    const NAME: &'static str = "keel_pending_source_pages";
    type Output = Pending;
}

/// `keel_acquire_crawl_host`: the host for one request, or how long to wait.
#[derive(Serialize)]
pub struct AcquireHost<'a> {
    pub host: &'a str,
    pub holder: &'a str,
    pub hold_ms: u64,
}

#[derive(Deserialize)]
pub struct HostTurn {
    pub wait_ms: u64,
}

impl SqlFunction for AcquireHost<'_> {
    const NAME: &'static str = "keel_acquire_crawl_host";
    type Output = HostTurn;
}

/// `keel_release_crawl_host`: the next request may start after `delay_ms`.
#[derive(Serialize)]
pub struct ReleaseHost<'a> {
    pub host: &'a str,
    pub holder: &'a str,
    pub delay_ms: u64,
}

impl SqlFunction for ReleaseHost<'_> {
    const NAME: &'static str = "keel_release_crawl_host";
    type Output = Value;
}

/// `keel_cached_robots`: the host's robots.txt, if fetched recently enough.
#[derive(Serialize)]
pub struct CachedRobots<'a> {
    pub host: &'a str,
    pub max_age_seconds: u64,
}

#[derive(Deserialize, Serialize)]
pub struct StoredRobots {
    /// `rules` (with `body`) or `allow_all`.
    pub status: String,
    pub body: Option<String>,
}

impl SqlFunction for CachedRobots<'_> {
    const NAME: &'static str = "keel_cached_robots";
    type Output = Option<StoredRobots>;
}

/// `keel_store_robots`.
#[derive(Serialize)]
pub struct StoreRobots<'a> {
    pub host: &'a str,
    #[serde(flatten)]
    pub robots: &'a StoredRobots,
}

impl SqlFunction for StoreRobots<'_> {
    const NAME: &'static str = "keel_store_robots";
    type Output = Value;
}

/// `keel_record_source_page`: what fetching one page came to.
#[derive(Serialize)]
pub struct RecordPage<'a> {
    #[serde(flatten)]
    pub lease: Leased<'a>,
    pub url: &'a str,
    /// `changed`, `unchanged`, `gone`, `disallowed`, `failed` or `unsupported`.
    pub outcome: &'static str,
    pub document_id: Option<&'a str>,
    pub canonical_url: Option<&'a str>,
    pub etag: Option<&'a str>,
    pub last_modified: Option<&'a str>,
    pub content_hash: Option<&'a str>,
    pub error: Option<&'a str>,
    /// The host the fetch held, released with the pause before the next request.
    pub host: Option<&'a str>,
    pub holder: &'a str,
    pub delay_ms: u64,
}

#[derive(Deserialize)]
pub struct PageRecorded {
    pub lease_lost: bool,
    pub documents_removed: u64,
}

impl SqlFunction for RecordPage<'_> {
    const NAME: &'static str = "keel_record_source_page";
    type Output = PageRecorded;
}

/// `keel_finish_source_run`: ends the cycle when `finished`, else releases
/// the lease so the next run resumes it.
#[derive(Serialize)]
pub struct FinishRun<'a> {
    #[serde(flatten)]
    pub lease: Leased<'a>,
    pub finished: bool,
}

#[derive(Deserialize)]
pub struct RunFinished {
    pub lease_lost: bool,
    pub source: Option<Source>,
}

impl SqlFunction for FinishRun<'_> {
    const NAME: &'static str = "keel_finish_source_run";
    type Output = RunFinished;
}
