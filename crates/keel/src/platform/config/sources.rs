//! Website and sitemap ingestion settings: how much a crawl may fetch, per
//! page and per tenant, and how politely.

use std::time::Duration;

use super::vars::Vars;

#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// Pages (listed URLs) across all of a tenant's sources.
    pub max_pages_per_tenant: u32,
    /// One page's body; sitemaps have the protocol's own 50 MB.
    pub page_max_bytes: usize,
    /// One page's whole exchange, redirects included.
    pub page_timeout: Duration,
    /// Pause between two requests to one host, unless its robots.txt asks
    /// for a longer `Crawl-delay`.
    pub host_delay: Duration,
}

impl Vars<'_> {
    pub(super) fn source_settings(&mut self) -> SourceSettings {
        let settings = SourceSettings {
            max_pages_per_tenant: self.parsed("SOURCES_MAX_PAGES_PER_TENANT", 10_000u32),
            page_max_bytes: self.parsed("SOURCES_PAGE_MAX_BYTES", 2 * 1024 * 1024usize),
            page_timeout: Duration::from_millis(self.parsed("SOURCES_PAGE_TIMEOUT_MS", 10_000u64)),
            host_delay: Duration::from_millis(self.parsed("SOURCES_HOST_DELAY_MS", 1_000u64)),
        };
        if settings.page_max_bytes == 0 || settings.page_max_bytes > 50 * 1024 * 1024 {
            self.problem("SOURCES_PAGE_MAX_BYTES", "must be 1 byte to 50 MB");
        }
        if !(100..=60_000).contains(&settings.page_timeout.as_millis()) {
            self.problem("SOURCES_PAGE_TIMEOUT_MS", "must be between 100 and 60000");
        }
        if settings.host_delay > Duration::from_secs(60) {
            self.problem("SOURCES_HOST_DELAY_MS", "must be at most 60000");
        }
        settings
    }
}
