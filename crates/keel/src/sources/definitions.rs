//! What a source is: the body of `POST /api/sources`, checked and
//! normalised before anything is stored.

use serde::Deserialize;
use url::Url;
use utoipa::ToSchema;

use super::SourceError;

const MAX_URL_CHARS: usize = 2048;
const MAX_PATTERNS: usize = 50;
const MAX_PATTERN_CHARS: usize = 200;
/// A sitemap lists at most 50,000 URLs per file; a source takes at most that.
pub const MAX_PAGES: u32 = 50_000;
const DEFAULT_MAX_PAGES: u32 = 1_000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceRequest {
    /// `sitemap` (every page it lists, nested sitemaps followed) or `page`.
    #[serde(rename = "type")]
    pub kind: String,
    /// An `http(s)` URL of at most 2,048 characters on a public host.
    pub url: String,
    /// `daily` (default) or `hourly`.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Sitemap sources: path patterns (`/menu/*`) a page must match; at most 50.
    #[serde(default)]
    pub include: Vec<String>,
    /// Sitemap sources: path patterns a page must not match; at most 50.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Pages taken from the source, 1 to 50,000; default 1,000.
    #[serde(default)]
    pub max_pages: Option<u32>,
}

/// A source ready to be stored.
#[derive(Debug, PartialEq, Eq)]
pub struct NewSource {
    pub kind: &'static str,
    /// Without fragment.
    pub url: String,
    /// `scheme://host[:port]`: the key of politeness and robots.txt.
    pub host: String,
    pub schedule: &'static str,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub max_pages: u32,
}

impl SourceRequest {
    /// Checks every field, naming the first bad one.
    pub fn validate(self) -> Result<NewSource, SourceError> {
        let kind = match self.kind.as_str() {
            "sitemap" => "sitemap",
            "page" => "page",
            _ => return Err(SourceError::invalid("type", "must be `sitemap` or `page`")),
        };
        let url =
            crawlable_url(&self.url).map_err(|problem| SourceError::invalid("url", problem))?;
        let schedule = match self.schedule.as_deref() {
            None | Some("daily") => "daily",
            Some("hourly") => "hourly",
            Some(_) => {
                return Err(SourceError::invalid(
                    "schedule",
                    "must be `daily` or `hourly`",
                ));
            }
        };
        for (field, patterns) in [("include", &self.include), ("exclude", &self.exclude)] {
            if kind == "page" && !patterns.is_empty() {
                return Err(SourceError::invalid(
                    field,
                    "applies to sitemap sources only",
                ));
            }
            if patterns.len() > MAX_PATTERNS {
                return Err(SourceError::invalid(
                    field,
                    format!("must hold at most {MAX_PATTERNS} patterns"),
                ));
            }
            for (i, pattern) in patterns.iter().enumerate() {
                let valid = pattern.starts_with('/')
                    && pattern.chars().count() <= MAX_PATTERN_CHARS
                    && !pattern.chars().any(|c| c.is_control() || c.is_whitespace());
                if !valid {
                    return Err(SourceError::invalid(
                        &format!("{field}[{i}]"),
                        format!(
                            "must be a path pattern starting with `/` (`*` any characters, a final `$` the end), at most {MAX_PATTERN_CHARS} characters without spaces"
                        ),
                    ));
                }
            }
        }
        let max_pages = match (kind, self.max_pages) {
            ("page", None | Some(1)) => 1,
            ("page", Some(_)) => {
                return Err(SourceError::invalid(
                    "max_pages",
                    "must be 1 for a page source",
                ));
            }
            (_, None) => DEFAULT_MAX_PAGES,
            (_, Some(n)) if (1..=MAX_PAGES).contains(&n) => n,
            (_, Some(_)) => {
                return Err(SourceError::invalid(
                    "max_pages",
                    format!("must be between 1 and {MAX_PAGES}"),
                ));
            }
        };
        Ok(NewSource {
            kind,
            host: url.origin().ascii_serialization(),
            url: url.into(),
            schedule,
            include: self.include,
            exclude: self.exclude,
            max_pages,
        })
    }
}

/// An absolute http(s) URL with a host and no credentials (stored URLs are
/// shown and logged), fragment dropped.
pub fn crawlable_url(raw: &str) -> Result<Url, &'static str> {
    if raw.len() > MAX_URL_CHARS {
        return Err("must be at most 2048 characters");
    }
    let mut url = Url::parse(raw).map_err(|_| "must be an absolute http(s) URL")?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err("must be an absolute http(s) URL");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials (user:password@)");
    }
    url.set_fragment(None);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: serde_json::Value) -> Result<NewSource, String> {
        let request: SourceRequest = serde_json::from_value(body).map_err(|e| e.to_string())?;
        request.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn a_sitemap_source_gets_defaults_and_a_host_key() {
        let source = request(serde_json::json!({
            "type": "sitemap", "url": "https://Diner.example:443/sitemap.xml#top"
        }))
        .unwrap();
        assert_eq!(
            source,
            NewSource {
                kind: "sitemap",
                url: "https://diner.example/sitemap.xml".into(),
                host: "https://diner.example".into(),
                schedule: "daily",
                include: vec![],
                exclude: vec![],
                max_pages: DEFAULT_MAX_PAGES,
            }
        );
        let page = request(serde_json::json!({"type": "page", "url": "http://127.0.0.1:8080/menu", "schedule": "hourly"})).unwrap();
        assert_eq!(
            (page.host.as_str(), page.max_pages),
            ("http://127.0.0.1:8080", 1)
        );
    }
}
