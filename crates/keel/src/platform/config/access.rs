//! Who may reach what: encryption keys for secrets at rest
//! (`ENCRYPTION_KEY`, `ENCRYPTION_KEYS_PREVIOUS`) and browser origins
//! (`CORS_ORIGINS`).

use std::sync::Arc;

use secrecy::SecretBox;
use url::Url;

use super::vars::Vars;

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
