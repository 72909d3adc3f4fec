//! The generic variable reader: typed values out of a map of environment
//! variables, each problem recorded under its variable's name instead of
//! stopping at the first.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use secrecy::{SecretBox, SecretString};
use url::Url;

use super::{ConfigProblem, Environment};

/// Secrets that guard whole deployments must not be guessable.
const MIN_SHARED_SECRET_LEN: usize = 32;

/// The variables being parsed and the problems found so far.
pub(super) struct Vars<'a> {
    pub(super) vars: &'a HashMap<String, String>,
    pub(super) problems: Vec<ConfigProblem>,
}

impl<'a> Vars<'a> {
    pub(super) fn problem(&mut self, variable: &'static str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            variable,
            message: message.into(),
        });
    }

    /// A set, non-blank value; blank counts as unset so `FOO=` in a .env is harmless.
    pub(super) fn optional(&self, name: &str) -> Option<&'a str> {
        self.vars
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub(super) fn parsed<T: std::str::FromStr + fmt::Display>(
        &mut self,
        name: &'static str,
        default: T,
    ) -> T {
        match self.optional(name) {
            None => default,
            Some(raw) => raw.parse().unwrap_or_else(|_| {
                self.problem(name, format!("`{raw}` is not a valid number"));
                default
            }),
        }
    }

    /// A request quota: a whole number of requests per minute, at least 1.
    pub(super) fn per_minute(&mut self, name: &'static str, default: u32) -> u32 {
        let value = self.parsed(name, default);
        if value == 0 {
            self.problem(name, "must be at least 1 request per minute");
            return default;
        }
        value
    }

    /// A request body limit in bytes, at least 1.
    pub(super) fn body_limit(&mut self, name: &'static str, default: usize) -> usize {
        let value = self.parsed(name, default);
        if value == 0 {
            self.problem(name, "must be at least 1 byte");
            return default;
        }
        value
    }

    pub(super) fn flag(&mut self, name: &'static str) -> bool {
        match self.optional(name).map(str::to_ascii_lowercase).as_deref() {
            None | Some("false" | "0" | "no" | "off") => false,
            Some("true" | "1" | "yes" | "on") => true,
            Some(other) => {
                self.problem(
                    name,
                    format!("`{other}` is not a boolean (use true or false)"),
                );
                false
            }
        }
    }

    pub(super) fn url(&mut self, name: &'static str) -> Option<Url> {
        let raw = self.optional(name)?;
        match Url::parse(raw) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(url)
            }
            _ => {
                self.problem(name, "must be an absolute http(s) URL");
                None
            }
        }
    }

    pub(super) fn environment(&mut self) -> Environment {
        let (name, raw) = match (self.optional("ENVIRONMENT"), self.optional("VERCEL_ENV")) {
            (Some(raw), _) => ("ENVIRONMENT", raw.to_owned()),
            (None, Some(raw)) => ("VERCEL_ENV", raw.to_owned()),
            (None, None) => return Environment::Development,
        };
        Environment::parse(&raw).unwrap_or_else(|| {
            self.problem(
                name,
                format!("`{raw}` is not one of development, preview, production"),
            );
            Environment::Development
        })
    }

    pub(super) fn shared_secret(
        &mut self,
        name: &'static str,
        required: bool,
    ) -> Option<SecretString> {
        match self.optional(name) {
            None if required => {
                self.problem(name, "is required in production");
                None
            }
            None => None,
            Some(value) if value.len() < MIN_SHARED_SECRET_LEN => {
                self.problem(
                    name,
                    format!("must be at least {MIN_SHARED_SECRET_LEN} characters (use `openssl rand -hex 32`)"),
                );
                None
            }
            Some(value) => Some(SecretString::from(value.to_owned())),
        }
    }

    pub(super) fn aes_key(
        &mut self,
        name: &'static str,
        raw: &str,
    ) -> Option<Arc<SecretBox<[u8; 32]>>> {
        let decoded =
            decode_hex(raw).or_else(|| base64::engine::general_purpose::STANDARD.decode(raw).ok());
        match decoded.map(<[u8; 32]>::try_from) {
            Some(Ok(key)) => Some(Arc::new(SecretBox::new(Box::new(key)))),
            _ => {
                self.problem(
                    name,
                    "must be 32 bytes, as 64 hex characters or base64 (use `openssl rand -hex 32`)",
                );
                None
            }
        }
    }
}

fn decode_hex(raw: &str) -> Option<Vec<u8>> {
    if !raw.len().is_multiple_of(2) || !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..raw.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&raw[i..i + 2], 16).ok())
        .collect()
}
