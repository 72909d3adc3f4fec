//! `Idempotency-Key` on the routes that create or rotate a credential: a
//! retried call gets the response of the first one (same key or secret)
//! instead of making another.
//!
//! The SQL function doing the work claims the key in the same transaction
//! (migrations/0014), so a crash between the work and storing its response
//! cannot lose it, and a concurrent duplicate waits and replays. The stored
//! response is the function's own result plus the credential it returned,
//! which Keel seals with AES-256-GCM under `ENCRYPTION_KEY` before the call:
//! a credential is never stored in plain text. Keys are scoped by the SQL
//! function to the caller (`admin`, or the tenant its key resolves to) and
//! the route, and kept 24 hours.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::platform::config::Config;
use crate::platform::crypto::{self, OpenError};

/// The request header carrying the key.
pub const HEADER: &str = "Idempotency-Key";
/// The response header marking a replay.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
const MAX_KEY_LENGTH: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    #[error("`Idempotency-Key` must be 1 to 255 printable ASCII characters")]
    InvalidKey,
    #[error(
        "`Idempotency-Key` needs ENCRYPTION_KEY to be configured: the stored response holds a \
         credential and is never kept in plain text"
    )]
    NoEncryptionKey,
    #[error("this Idempotency-Key was already used with a different request")]
    Reused,
    #[error("the stored idempotent response cannot be opened: {0}")]
    Unreadable(#[from] OpenError),
    #[error("the stored idempotent response is malformed: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// A valid key and the SHA-256 of the request it came with (method, path
/// and body), so the same key with another request is told apart.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    key: String,
    request_hash: String,
}

impl IdempotencyKey {
    pub fn new(
        key: &[u8],
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Self, IdempotencyError> {
        let printable = key.iter().all(|b| (0x20..=0x7e).contains(b));
        if key.is_empty() || key.len() > MAX_KEY_LENGTH || !printable {
            return Err(IdempotencyError::InvalidKey);
        }
        let request = [method.as_bytes(), b"\n", path.as_bytes(), b"\n", body].concat();
        Ok(Self {
            key: String::from_utf8_lossy(key).into_owned(),
            request_hash: crypto::sha256_hex(request),
        })
    }

    /// The claim an SQL function takes as `idempotency`, with the response's
    /// credential sealed under `ENCRYPTION_KEY`.
    pub fn claim(&self, config: &Config, credential: &str) -> Result<Claim, IdempotencyError> {
        let key = config
            .encryption_key
            .as_deref()
            .ok_or(IdempotencyError::NoEncryptionKey)?;
        let sealed = crypto::seal(key, credential.as_bytes());
        Ok(Claim {
            key: self.key.clone(),
            request_hash: self.request_hash.clone(),
            sealed_response: sealed.ciphertext,
            key_id: sealed.key_id,
        })
    }
}

/// `idempotency` in the arguments of `keel_create_tenant`, `keel_issue_key`,
/// `keel_create_webhook_endpoint` and `keel_rotate_webhook_secret`.
#[derive(Debug, Serialize)]
pub struct Claim {
    key: String,
    request_hash: String,
    sealed_response: String,
    key_id: String,
}

/// The claim for a call, when the request carried a key.
pub fn claim(
    key: Option<&IdempotencyKey>,
    config: &Config,
    credential: &str,
) -> Result<Option<Claim>, IdempotencyError> {
    key.map(|key| key.claim(config, credential)).transpose()
}

/// What a function given a claim answers: its result, or what an earlier
/// call with the same key left.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Idempotent<T> {
    Earlier { idempotency: Earlier },
    Done(T),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Earlier {
    Replayed(Stored),
    Reused(bool),
}

#[derive(Debug, Deserialize)]
pub struct Stored {
    result: Value,
    sealed_response: String,
    key_id: String,
}

/// A call's result with the credential to show: the fresh one, or the
/// earlier call's, opened (`replayed`).
#[derive(Debug)]
pub struct Outcome<T> {
    pub result: T,
    pub credential: String,
    pub replayed: bool,
}

impl<T: DeserializeOwned> Idempotent<T> {
    /// `fresh` is the credential this call generated (and passed in).
    pub fn resolve(self, config: &Config, fresh: String) -> Result<Outcome<T>, IdempotencyError> {
        match self {
            Idempotent::Done(result) => Ok(Outcome {
                result,
                credential: fresh,
                replayed: false,
            }),
            Idempotent::Earlier {
                idempotency: Earlier::Reused(_),
            } => Err(IdempotencyError::Reused),
            Idempotent::Earlier {
                idempotency: Earlier::Replayed(stored),
            } => {
                let credential = crypto::open(
                    config.decryption_keys(),
                    &stored.key_id,
                    &stored.sealed_response,
                )?;
                Ok(Outcome {
                    result: serde_json::from_value(stored.result)?,
                    credential: String::from_utf8_lossy(&credential).into_owned(),
                    replayed: true,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_to_255_printable_ascii_characters() {
        let key = |k: &[u8]| IdempotencyKey::new(k, "POST", "/api/tenants", b"{}");
        assert!(key(b"a").is_ok());
        assert!(key(&[b'x'; 255]).is_ok());
        assert!(key(b"order 42: retry/1").is_ok());
        assert!(key(b"").is_err());
        assert!(key(&[b'x'; 256]).is_err());
        assert!(key(b"tab\there").is_err());
        assert!(key("caf\u{e9}".as_bytes()).is_err());
    }

    #[test]
    fn the_request_hash_covers_method_path_and_body() {
        let hash = |path: &str, body: &[u8]| {
            IdempotencyKey::new(b"k", "POST", path, body)
                .unwrap()
                .request_hash
        };
        assert_eq!(hash("/a", b"{}"), hash("/a", b"{}"));
        assert_ne!(hash("/a", b"{}"), hash("/b", b"{}"));
        assert_ne!(hash("/a", b"{}"), hash("/a", b"{\"x\":1}"));
    }
}
