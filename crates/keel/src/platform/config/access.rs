//! Who may reach what: encryption keys for secrets at rest
//! (`ENCRYPTION_KEY`, `ENCRYPTION_KEYS_PREVIOUS`), browser origins
//! (`CORS_ORIGINS`) and whose word the client's address is taken on
//! (`CLIENT_IP_SOURCE`), and the public URL senders reach this deployment
//! at (`PUBLIC_BASE_URL`).

use std::sync::Arc;

use secrecy::SecretBox;
use url::Url;

use super::vars::Vars;

/// Where a request's client address (quota bucket, audit IP) comes from.
/// Headers are only believed when a proxy in front is known to overwrite or
/// append them; anything else lets a client pick its own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpSource {
    /// The platform's own record only: the socket locally, the API Gateway
    /// request context on Lambda, the entry an ALB appended to
    /// `x-forwarded-for` (see `web::runtime`). Client-written headers are ignored.
    Peer,
    /// Vercel's `x-real-ip`, else the first `x-forwarded-for` entry: Vercel's
    /// edge overwrites both, so clients cannot set them there.
    Vercel,
    /// The address the outermost of `hops` trusted proxies saw: the
    /// `hops`-th `x-forwarded-for` entry from the right (each proxy appends
    /// the address it received the request from). An ALB alone is 1.
    ForwardedFor { hops: u8 },
}

impl Vars<'_> {
    pub(super) fn encryption_key(&mut self, required: bool) -> Option<Arc<SecretBox<[u8; 32]>>> {
        let name = "ENCRYPTION_KEY";
        let Some(raw) = self.optional(name) else {
            if required {
                self.problem(name, "is required in production");
            }
            return None;
        };
        self.aes_key(name, raw)
    }

    pub(super) fn previous_encryption_keys(&mut self) -> Vec<Arc<SecretBox<[u8; 32]>>> {
        let Some(raw) = self.optional("ENCRYPTION_KEYS_PREVIOUS") else {
            return Vec::new();
        };
        raw.split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .filter_map(|k| self.aes_key("ENCRYPTION_KEYS_PREVIOUS", k))
            .collect()
    }

    pub(super) fn cors_origins(&mut self, production: bool) -> Vec<String> {
        let Some(raw) = self.optional("CORS_ORIGINS") else {
            return Vec::new();
        };
        let mut origins = Vec::new();
        for origin in raw.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            if origin == "*" {
                if production {
                    self.problem(
                        "CORS_ORIGINS",
                        "`*` is not allowed in production; list exact origins",
                    );
                } else {
                    origins.push(origin.to_owned());
                }
                continue;
            }
            match Url::parse(origin) {
                Ok(url)
                    if matches!(url.scheme(), "http" | "https")
                        && url.host().is_some()
                        && url.path() == "/"
                        && !origin.ends_with('/') =>
                {
                    origins.push(url.origin().ascii_serialization());
                }
                _ => self.problem(
                    "CORS_ORIGINS",
                    format!("`{origin}` is not an origin like https://app.example.com (no path, no trailing slash)"),
                ),
            }
        }
        origins
    }
}

impl Vars<'_> {
    /// `CLIENT_IP_SOURCE`: `peer`, `vercel` or `x-forwarded-for:<hops>`;
    /// by default `vercel` on Vercel (`VERCEL=1` or `VERCEL_IPC_PATH`), else `peer`.
    pub(super) fn client_ip_source(&mut self) -> ClientIpSource {
        let name = "CLIENT_IP_SOURCE";
        let on_vercel =
            self.optional("VERCEL") == Some("1") || self.optional("VERCEL_IPC_PATH").is_some();
        let Some(raw) = self.optional(name) else {
            return if on_vercel {
                ClientIpSource::Vercel
            } else {
                ClientIpSource::Peer
            };
        };
        match raw.to_ascii_lowercase().as_str() {
            "peer" => return ClientIpSource::Peer,
            "vercel" => return ClientIpSource::Vercel,
            other => {
                if let Some(hops) = other
                    .strip_prefix("x-forwarded-for:")
                    .and_then(|hops| hops.trim().parse::<u8>().ok())
                    .filter(|hops| (1..=10).contains(hops))
                {
                    return ClientIpSource::ForwardedFor { hops };
                }
            }
        }
        self.problem(
            name,
            format!("`{raw}` is not `peer`, `vercel` or `x-forwarded-for:<trusted proxies, 1-10>`"),
        );
        ClientIpSource::Peer
    }
}

impl Vars<'_> {
    /// `PUBLIC_BASE_URL`: scheme and host (and any path prefix) senders use
    /// to reach this deployment, without a query or fragment, since a
    /// delivery's URL is this plus `/api/webhooks/{id}`.
    pub(super) fn public_base_url(&mut self) -> Option<Url> {
        let url = self.url("PUBLIC_BASE_URL")?;
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            self.problem(
                "PUBLIC_BASE_URL",
                "must be a scheme and host (and path prefix) only, such as https://keel.example.com",
            );
            return None;
        }
        Some(url)
    }
}
