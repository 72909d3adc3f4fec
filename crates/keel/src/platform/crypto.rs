//! The cryptography Keel relies on, each in one place: SHA-256 as hex,
//! constant-time secret comparison, and AES-256-GCM sealing of secrets at
//! rest under a key that is named by a short id, so keys can rotate.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A 256-bit AES key from `ENCRYPTION_KEY` (or an earlier one).
pub type EncryptionKey = SecretBox<[u8; 32]>;

const NONCE_BYTES: usize = 12;

/// Lowercase hex of SHA-256 over `bytes`.
pub fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    hex(&Sha256::digest(bytes.as_ref()))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time comparison of a presented secret with the configured one.
/// Both sides are hashed first so neither content nor length leaks through timing.
pub fn secret_matches(presented: &str, expected: &SecretString) -> bool {
    let presented = Sha256::digest(presented.as_bytes());
    let expected = Sha256::digest(expected.expose_secret().as_bytes());
    presented.ct_eq(&expected).into()
}

/// A short, non-secret name for an encryption key, stored beside each ciphertext.
pub fn key_id(key: &EncryptionKey) -> String {
    hex(&Sha256::digest([b"keel-encryption-key:".as_slice(), key.expose_secret()].concat())[..4])
}

/// A secret sealed for storage: base64(nonce ‖ ciphertext ‖ tag) and the id
/// of the key that sealed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext: String,
    pub key_id: String,
}

/// AES-256-GCM with a random 96-bit nonce.
pub fn seal(key: &EncryptionKey, plaintext: &[u8]) -> Sealed {
    let cipher = Aes256Gcm::new(key.expose_secret().into());
    let mut nonce = [0u8; NONCE_BYTES];
    rand::rng().fill_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&nonce), plaintext)
        .expect("AES-GCM encryption of a short secret cannot fail");
    Sealed {
        ciphertext: base64::engine::general_purpose::STANDARD
            .encode([nonce.as_slice(), &ciphertext].concat()),
        key_id: key_id(key),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no configured ENCRYPTION_KEY has id {0}; add the old key to ENCRYPTION_KEYS_PREVIOUS")]
    UnknownKey(String),
    #[error("the stored secret does not decrypt (wrong key or tampered)")]
    Corrupt,
}

/// Opens `ciphertext` with whichever of `keys` has `key_id`.
pub fn open<'a>(
    keys: impl IntoIterator<Item = &'a EncryptionKey>,
    key_id_stored: &str,
    ciphertext: &str,
) -> Result<Vec<u8>, OpenError> {
    let key = keys
        .into_iter()
        .find(|key| key_id(key) == key_id_stored)
        .ok_or_else(|| OpenError::UnknownKey(key_id_stored.to_owned()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(ciphertext)
        .map_err(|_| OpenError::Corrupt)?;
    if bytes.len() <= NONCE_BYTES {
        return Err(OpenError::Corrupt);
    }
    let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
    Aes256Gcm::new(key.expose_secret().into())
        .decrypt(Nonce::from_slice(nonce), ciphertext)
        .map_err(|_| OpenError::Corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_matches_only_the_exact_secret() {
        let secret = SecretString::from("correct horse battery staple".to_owned());
        assert!(secret_matches("correct horse battery staple", &secret));
        assert!(!secret_matches("correct horse battery stapl", &secret));
        assert!(!secret_matches("", &secret));
    }

    #[test]
    fn secrets_round_trip_through_encryption_and_fail_on_tampering() {
        let key = EncryptionKey::new(Box::new([9u8; 32]));
        let sealed = seal(&key, b"whsec_secret");
        assert_ne!(
            sealed,
            seal(&key, b"whsec_secret"),
            "a fresh nonce each time"
        );
        assert_eq!(
            open([&key], &sealed.key_id, &sealed.ciphertext).unwrap(),
            b"whsec_secret"
        );
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(&sealed.ciphertext)
            .unwrap();
        bytes[NONCE_BYTES] ^= 1;
        let tampered = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert!(matches!(
            open([&key], &sealed.key_id, &tampered),
            Err(OpenError::Corrupt)
        ));
        let other = EncryptionKey::new(Box::new([8u8; 32]));
        assert_eq!(key_id(&key).len(), 8);
        assert_ne!(key_id(&key), key_id(&other));
        assert!(matches!(
            open([&other], &sealed.key_id, &sealed.ciphertext),
            Err(OpenError::UnknownKey(_))
        ));
    }

    #[test]
    fn sha256_hex_is_the_lowercase_digest() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
