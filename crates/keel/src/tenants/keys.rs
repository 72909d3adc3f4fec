//! Tenant API keys: `keel_` followed by 32 random bytes (base64url). Only a
//! key's SHA-256 is stored, and the database resolves a key hash to its
//! tenant inside every tenant function (see migrations/0002), so
//! authenticating costs no extra round trip and a lookup by hash reveals
//! nothing about the key through timing.

use base64::Engine as _;
use rand::RngCore as _;

use crate::platform::crypto::sha256_hex;

const KEY_PREFIX: &str = "keel_";
/// `keel_` + 43 base64url characters (32 bytes).
const KEY_LENGTH: usize = KEY_PREFIX.len() + 43;
/// How much of a key listings and audit rows may show: enough to tell keys
/// apart, not enough to use one.
const PUBLIC_PREFIX_LENGTH: usize = KEY_PREFIX.len() + 6;

/// A freshly issued tenant key: shown to the caller once, stored as a hash.
pub struct IssuedKey {
    pub key: String,
    pub hash: String,
    pub prefix: String,
}

pub fn issue_key() -> IssuedKey {
    let key = random_token(KEY_PREFIX);
    IssuedKey {
        hash: hash_key(&key),
        prefix: key[..PUBLIC_PREFIX_LENGTH].to_owned(),
        key,
    }
}

/// `prefix` followed by 32 random bytes, base64url (43 characters): the
/// shape of every bearer secret Keel issues (tenant, publishable and
/// visitor tokens).
pub fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Whether `token` has the shape [`random_token`] gives with `prefix`.
pub fn is_token_shaped(token: &str, prefix: &str) -> bool {
    token.len() == prefix.len() + 43
        && token.starts_with(prefix)
        && token[prefix.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn hash_key(key: &str) -> String {
    sha256_hex(key)
}

/// A presented credential that has the shape of a tenant key (whether it is
/// valid is decided by the database).
fn well_formed(token: Option<&str>) -> Option<&str> {
    token.filter(|key| key.len() == KEY_LENGTH && key.starts_with(KEY_PREFIX))
}

/// The hash of a presented tenant key; `None` for anything not shaped like
/// one, refused without touching the database.
pub fn presented_key_hash(token: Option<&str>) -> Option<String> {
    well_formed(token).map(hash_key)
}

/// The audit actor for a tenant request: the key's public prefix, never the key.
pub fn actor(token: Option<&str>) -> String {
    match well_formed(token) {
        Some(key) => format!("tenant-key:{}", &key[..PUBLIC_PREFIX_LENGTH]),
        None => "tenant".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_are_unique_well_formed_and_stored_only_as_hashes() {
        let first = issue_key();
        let second = issue_key();
        assert_ne!(first.key, second.key);
        assert_eq!(first.key.len(), KEY_LENGTH);
        assert!(first.key.starts_with("keel_"));
        assert_eq!(first.hash, hash_key(&first.key));
        assert_eq!(first.hash.len(), 64);
        assert!(!first.hash.contains(&first.key[5..]));
        assert!(first.key.starts_with(&first.prefix));
    }
}
