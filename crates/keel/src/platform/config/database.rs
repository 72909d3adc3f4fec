//! Database settings: `DATABASE_URL` (direct Postgres, with `DATABASE_CA_CERT`
//! and `DB_POOL_SIZE`) or `SUPABASE_URL` + `SUPABASE_SERVICE_ROLE_KEY`
//! (PostgREST), and `DB_TRANSPORT` to choose when both are set.

use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use secrecy::SecretString;
use url::Url;

use super::vars::Vars;

/// How Keel reaches its database.
#[derive(Debug, Clone)]
pub enum DatabaseConfig {
    /// Direct Postgres (local, CI, self-hosted, Supavisor in transaction mode).
    Postgres {
        url: SecretString,
        pool_size: usize,
        /// `DATABASE_CA_CERT`: CAs trusted for the database's certificate
        /// besides the public roots.
        ca_certs: Vec<CertificateDer<'static>>,
    },
    /// Supabase's PostgREST: `POST {url}/rest/v1/rpc/<fn>`.
    PostgRest { url: Url, service_key: SecretString },
}

impl DatabaseConfig {
    pub fn transport_name(&self) -> &'static str {
        match self {
            Self::Postgres { .. } => "postgres",
            Self::PostgRest { .. } => "postgrest",
        }
    }
}

impl Vars<'_> {
    /// In `production`, a connection that could fall back to plain text
    /// (`sslmode=disable`/`prefer`, an `http://` PostgREST URL) is refused.
    pub(super) fn database(
        &mut self,
        production: bool,
    ) -> (Option<DatabaseConfig>, Option<String>) {
        let pool_size = self.parsed("DB_POOL_SIZE", 4usize);
        if pool_size == 0 {
            self.problem("DB_POOL_SIZE", "must be at least 1");
        }
        let postgres = self.optional("DATABASE_URL").map(normalise_sslmode);
        let ca_certs = match self.optional("DATABASE_CA_CERT").map(parse_ca_certs) {
            None => Vec::new(),
            Some(Ok(certs)) => certs,
            Some(Err(message)) => {
                self.problem("DATABASE_CA_CERT", message);
                Vec::new()
            }
        };
        match postgres.as_deref().map(str::parse::<tokio_postgres::Config>) {
            Some(Err(_)) => self.problem(
                "DATABASE_URL",
                "is not a valid Postgres connection string (postgres://user:password@host:port/db)",
            ),
            Some(Ok(config))
                if production && config.get_ssl_mode() != tokio_postgres::config::SslMode::Require =>
            {
                self.problem(
                    "DATABASE_URL",
                    "must require TLS in production: add sslmode=require (or verify-full); \
                     disable, and prefer (the default), let the password and every query travel in plain text",
                )
            }
            _ => {}
        }
        let supabase_url = self.url("SUPABASE_URL");
        if production
            && supabase_url
                .as_ref()
                .is_some_and(|url| url.scheme() != "https")
        {
            self.problem(
                "SUPABASE_URL",
                "must be https in production: the service key travels with every call",
            );
        }
        let service_key = self
            .optional("SUPABASE_SERVICE_ROLE_KEY")
            .map(str::to_owned);
        if let Some(key) = &service_key
            && let Err(message) = check_service_key(key)
        {
            self.problem("SUPABASE_SERVICE_ROLE_KEY", message);
        }
        let postgrest = match (self.optional("SUPABASE_URL"), &service_key) {
            (Some(_), None) => {
                self.problem(
                    "SUPABASE_SERVICE_ROLE_KEY",
                    "is required when SUPABASE_URL is set",
                );
                None
            }
            (None, Some(_)) => {
                self.problem(
                    "SUPABASE_URL",
                    "is required when SUPABASE_SERVICE_ROLE_KEY is set",
                );
                None
            }
            (Some(_), Some(key)) => supabase_url.map(|url| DatabaseConfig::PostgRest {
                url,
                service_key: SecretString::from(key.clone()),
            }),
            (None, None) => None,
        };
        let postgres = postgres.map(|url| DatabaseConfig::Postgres {
            url: SecretString::from(url),
            pool_size: pool_size.max(1),
            ca_certs,
        });

        let transport = self.optional("DB_TRANSPORT").unwrap_or("auto").to_owned();
        match transport.as_str() {
            "auto" => match (postgres, postgrest) {
                (Some(pg), Some(rest)) => {
                    drop(rest);
                    let note = "both DATABASE_URL and SUPABASE_URL are set: using DATABASE_URL \
                                (direct Postgres); set DB_TRANSPORT=postgrest to use PostgREST"
                        .to_owned();
                    (Some(pg), Some(note))
                }
                (Some(pg), None) => (Some(pg), None),
                (None, Some(rest)) => (Some(rest), None),
                (None, None) => {
                    if !self.problems.iter().any(|p| {
                        matches!(
                            p.variable,
                            "DATABASE_URL" | "SUPABASE_URL" | "SUPABASE_SERVICE_ROLE_KEY"
                        )
                    }) {
                        self.problem(
                            "DATABASE_URL",
                            "no database configured: set DATABASE_URL, or SUPABASE_URL with SUPABASE_SERVICE_ROLE_KEY",
                        );
                    }
                    (None, None)
                }
            },
            "postgres" => {
                if postgres.is_none() && self.optional("DATABASE_URL").is_none() {
                    self.problem("DATABASE_URL", "is required when DB_TRANSPORT=postgres");
                }
                (postgres, None)
            }
            "postgrest" => {
                if postgrest.is_none() && self.optional("SUPABASE_URL").is_none() {
                    self.problem("SUPABASE_URL", "is required when DB_TRANSPORT=postgrest");
                }
                (postgrest, None)
            }
            other => {
                self.problem(
                    "DB_TRANSPORT",
                    format!("`{other}` is not one of auto, postgres, postgrest"),
                );
                (None, None)
            }
        }
    }
}

/// Accepts a legacy `service_role` JWT or a new `sb_secret_` key, and refuses
/// the anon/publishable keys that would silently fail every call.
/// libpq's `sslmode=verify-ca` and `verify-full` (which Supabase documents)
/// become `require`, the strongest mode tokio-postgres parses: Keel's TLS
/// always verifies the certificate chain and the host name, so `require`
/// here is at least as strict as `verify-full`.
pub fn normalise_sslmode(url: &str) -> String {
    url.replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require")
}

/// `DATABASE_CA_CERT`: one or more PEM certificates. Newlines may be written
/// as `\n`, for platforms whose variables are single lines.
pub fn parse_ca_certs(raw: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = raw.replace("\\n", "\n");
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not PEM certificate text: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    match roots.add_parsable_certificates(certs.iter().cloned()) {
        (0, _) => Err(
            "holds no usable certificate (expected -----BEGIN CERTIFICATE----- blocks)".to_owned(),
        ),
        (_, 0) => Ok(certs),
        (_, bad) => Err(format!("{bad} of its certificates cannot be parsed")),
    }
}

fn check_service_key(key: &str) -> Result<(), String> {
    if key.starts_with("sb_secret_") {
        return Ok(());
    }
    if key.starts_with("sb_publishable_") {
        return Err(
            "is a publishable key; use the secret (sb_secret_…) or service_role key".into(),
        );
    }
    let mut parts = key.split('.');
    let payload = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(payload), Some(_), None) => payload,
        _ => return Err("must be a service_role JWT or an sb_secret_ key".into()),
    };
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    match claims
        .as_ref()
        .and_then(|c| c.get("role"))
        .and_then(|r| r.as_str())
    {
        Some("service_role") => Ok(()),
        Some(role) => Err(format!(
            "is a `{role}` key; Keel needs the service_role key"
        )),
        None => Err("must be a service_role JWT or an sb_secret_ key".into()),
    }
}
