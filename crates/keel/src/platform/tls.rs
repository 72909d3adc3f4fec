//! TLS for every outbound connection: HTTPS and Postgres, one rustls setup
//! with the Mozilla roots compiled into the binary, so it works the same on
//! Vercel, Lambda and a bare container.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

/// The rustls configuration for outbound HTTPS.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    tls_config_trusting(&[])
}

/// [`tls_config`] that also trusts `extra_roots`: Postgres connections trust
/// `DATABASE_CA_CERT` too (Supabase signs its database certificates with its
/// own CA, which no public root store holds). Certificates are always
/// verified, host name included.
pub fn tls_config_trusting(extra_roots: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    // Also the process default, for clients built elsewhere (Sentry, tests).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // Parsed and checked when the configuration was read.
    roots.add_parsable_certificates(extra_roots.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}
