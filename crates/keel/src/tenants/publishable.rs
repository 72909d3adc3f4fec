//! Publishable keys (`keel_pk_…`): what a browser chat widget holds, like
//! Stripe's publishable key. Harmless to expose by design: the database lets
//! one only chat and read its own visitor's conversation, only from the
//! origins the tenant listed, under the key's own quotas and only over the
//! documents its filter allows (migrations/0015). Only the key's SHA-256 is
//! stored; the key is shown once, at creation.

use url::Url;

use super::keys::{IssuedKey, hash_key, is_token_shaped, random_token};

pub const PUBLISHABLE_PREFIX: &str = "keel_pk_";
/// How much of a key listings and audit rows show.
const PUBLIC_PREFIX_LENGTH: usize = PUBLISHABLE_PREFIX.len() + 6;
/// The most origins one key may list.
pub const MAX_ORIGINS: usize = 20;
/// Live publishable keys per tenant.
pub const MAX_ACTIVE_KEYS: u32 = 50;
/// Bounds and defaults of the per-minute quotas a key carries.
pub const MAX_PER_MINUTE: u32 = 100_000;
pub const DEFAULT_PER_MINUTE: u32 = 120;
pub const DEFAULT_PER_VISITOR_PER_MINUTE: u32 = 10;
/// The largest filter a key may carry, serialised.
pub const MAX_FILTER_BYTES: usize = 4096;

pub fn issue() -> IssuedKey {
    let key = random_token(PUBLISHABLE_PREFIX);
    IssuedKey {
        hash: hash_key(&key),
        prefix: key[..PUBLIC_PREFIX_LENGTH].to_owned(),
        key,
    }
}

/// Whether a presented bearer token has the shape of a publishable key
/// (whether it is live is decided by the database).
pub fn is_publishable(token: &str) -> bool {
    is_token_shaped(token, PUBLISHABLE_PREFIX)
}

/// An origin as browsers send it (`scheme://host[:port]`, lowercase, no
/// default port), or `None` for anything else: a path, a trailing slash,
/// credentials, a query, a scheme other than http(s).
pub fn normalise_origin(raw: &str) -> Option<String> {
    let url = Url::parse(raw).ok()?;
    let bare = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.path() == "/"
        && !raw.ends_with('/')
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none();
    bare.then(|| url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishable_keys_are_told_apart_from_tenant_keys_by_shape() {
        let issued = issue();
        assert!(is_publishable(&issued.key));
        assert!(issued.key.starts_with(&issued.prefix));
        assert_eq!(issued.hash, hash_key(&issued.key));
        let tenant_key = super::super::keys::issue_key().key;
        assert!(!is_publishable(&tenant_key), "a tenant key is not one");
        assert!(!is_publishable("keel_pk_short"), "too short");
        assert!(
            !is_publishable(&format!("keel_pk_{}", "!".repeat(43))),
            "not base64url"
        );
    }

    #[test]
    fn origins_are_normalised_or_refused() {
        let cases = [
            (
                "https://shop.example.com",
                Some("https://shop.example.com"),
                "plain",
            ),
            (
                "HTTPS://Shop.Example.com",
                Some("https://shop.example.com"),
                "case",
            ),
            (
                "https://shop.example.com:443",
                Some("https://shop.example.com"),
                "default port dropped, as browsers send it",
            ),
            (
                "http://localhost:3000",
                Some("http://localhost:3000"),
                "port kept",
            ),
            ("https://shop.example.com/", None, "trailing slash"),
            ("https://shop.example.com/chat", None, "a path"),
            ("https://user:pw@shop.example.com", None, "credentials"),
            ("https://shop.example.com?x=1", None, "a query"),
            ("ftp://shop.example.com", None, "not http(s)"),
            ("shop.example.com", None, "no scheme"),
            ("*", None, "no wildcard"),
            ("null", None, "the opaque origin"),
        ];
        for (raw, expected, reason) in cases {
            assert_eq!(
                normalise_origin(raw).as_deref(),
                expected,
                "{raw}: {reason}"
            );
        }
    }
}
