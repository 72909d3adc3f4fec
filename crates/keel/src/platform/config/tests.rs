use std::collections::HashMap;

use base64::Engine as _;
use secrecy::ExposeSecret as _;

use super::*;

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn jwt_with_role(role: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.signature",
        b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64.encode(format!(r#"{{"role":"{role}","iss":"supabase"}}"#))
    )
}

fn problem_variables(result: Result<Config, ConfigError>) -> Vec<&'static str> {
    let mut names: Vec<_> = result
        .expect_err("configuration should be rejected")
        .problems
        .into_iter()
        .map(|p| p.variable)
        .collect();
    names.sort();
    names
}

#[test]
fn a_minimal_development_config_needs_only_a_database() {
    let config = Config::from_vars(&vars(&[("DATABASE_URL", "postgres://u:p@localhost/keel")]))
        .expect("valid");
    assert_eq!(config.environment, Environment::Development);
    assert_eq!(config.port, 3000);
    assert_eq!(config.database.transport_name(), "postgres");
    assert!(config.embeddings.is_none());
    assert_eq!(config.slow_request, Duration::from_secs(5));
}

#[test]
fn every_problem_is_reported_at_once_naming_each_variable() {
    let result = Config::from_vars(&vars(&[
        ("ENVIRONMENT", "staging"),
        ("SUPABASE_URL", "not a url"),
        ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_abc"),
        ("OPENAI_API_KEY", "pk-123"),
        ("ENCRYPTION_KEY", "abcd"),
        ("PORT", "eighty"),
        ("MAINTENANCE_MODE", "maybe"),
    ]));
    assert_eq!(
        problem_variables(result),
        vec![
            "ENCRYPTION_KEY",
            "ENVIRONMENT",
            "MAINTENANCE_MODE",
            "OPENAI_API_KEY",
            "PORT",
            "SUPABASE_URL",
        ]
    );
}

#[test]
fn body_limits_default_to_4_mib_and_1_mib_for_webhook_intake_and_refuse_zero() {
    let config = Config::from_vars(&vars(&[("DATABASE_URL", "postgres://u:p@localhost/keel")]))
        .expect("valid");
    assert_eq!(config.max_body_bytes, 4 * 1024 * 1024);
    assert_eq!(config.webhook_max_body_bytes, 1024 * 1024);

    let result = Config::from_vars(&vars(&[
        ("DATABASE_URL", "postgres://u:p@localhost/keel"),
        ("MAX_BODY_BYTES", "0"),
        ("WEBHOOK_MAX_BODY_BYTES", "1MB"),
    ]));
    assert_eq!(
        problem_variables(result),
        vec!["MAX_BODY_BYTES", "WEBHOOK_MAX_BODY_BYTES"]
    );
}

#[test]
fn rate_limits_default_to_the_guides_and_refuse_zero_or_words() {
    let config = Config::from_vars(&vars(&[("DATABASE_URL", "postgres://u:p@localhost/keel")]))
        .expect("valid");
    assert_eq!(config.rate_limits.search_per_minute, 60);
    assert_eq!(config.rate_limits.anonymous_per_minute, 30);
    assert_eq!(config.rate_limits.chat_per_minute, 60);
    assert_eq!(config.tasks.conversation_retention_days, 90);

    let result = Config::from_vars(&vars(&[
        ("DATABASE_URL", "postgres://u:p@localhost/keel"),
        ("RATE_LIMIT_SEARCH_PER_MINUTE", "0"),
        ("RATE_LIMIT_ANONYMOUS_PER_MINUTE", "lots"),
        ("RATE_LIMIT_TENANT_PER_MINUTE", "-5"),
        ("RATE_LIMIT_WEBHOOK_PER_MINUTE", "1200"),
        ("RATE_LIMIT_CHAT_PER_MINUTE", "0"),
        ("CONVERSATION_RETENTION_DAYS", "forever"),
    ]));
    assert_eq!(
        problem_variables(result),
        vec![
            "CONVERSATION_RETENTION_DAYS",
            "RATE_LIMIT_ANONYMOUS_PER_MINUTE",
            "RATE_LIMIT_CHAT_PER_MINUTE",
            "RATE_LIMIT_SEARCH_PER_MINUTE",
            "RATE_LIMIT_TENANT_PER_MINUTE",
        ]
    );
}

/// A self-signed CA: `openssl req -x509 -newkey ec -pkeyopt
/// ec_paramgen_curve:P-256 -nodes -subj /CN=keel-tests`.
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBfjCCASWgAwIBAgIULZFzRnunzTxgsYylQYa1qJVyfQIwCgYIKoZIzj0EAwIw\nFTETMBEGA1UEAwwKa2VlbC10ZXN0czAeFw0yNjExMjEyMzMyNDFaFw0zNjExMTgy\nMzMyNDFaMBUxEzARBgNVBAMMCmtlZWwtdGVzdHMwWTATBgcqhkjOPQIBBggqhkjO\nPQMBBwNCAASW7yzoda+yoIlB8ucdj8vFRtddaccjcY93JFhwgIklRx0R/j717NzE\ngSvFeBuxsOQgsyHuMPWjOJR0cZd3jnsbo1MwUTAdBgNVHQ4EFgQUZURx/5VvY9+D\nlBWeM8dKuYbKxRgwHwYDVR0jBBgwFoAUZURx/5VvY9+DlBWeM8dKuYbKxRgwDwYD\nVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiBopAhD+Q7+eFFIgYeFGnE8\ngAudXdR4mA0/B48Rnx0ZcAIgDvmwdOwZWYUzuBJR1tuei/4TNdqjZpcww9g7vxK9\nUXk=\n-----END CERTIFICATE-----";

#[test]
fn database_ca_cert_accepts_pem_even_with_escaped_newlines_and_names_bad_values() {
    let with_ca = |value: &str| {
        Config::from_vars(&vars(&[
            (
                "DATABASE_URL",
                "postgres://u:p@db.example.supabase.co:5432/postgres",
            ),
            ("DATABASE_CA_CERT", value),
        ]))
    };
    let ca_count = |config: Config| match config.database {
        DatabaseConfig::Postgres { ca_certs, .. } => ca_certs.len(),
        DatabaseConfig::PostgRest { .. } => panic!("expected direct Postgres"),
    };
    assert_eq!(ca_count(with_ca(CA_PEM).expect("PEM")), 1);
    let one_line = CA_PEM.replace('\n', "\\n");
    assert_eq!(ca_count(with_ca(&one_line).expect("escaped newlines")), 1);
    for (bad, reason) in [
        ("not a certificate", "no PEM block"),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "not DER",
        ),
    ] {
        assert_eq!(
            problem_variables(with_ca(bad)),
            vec!["DATABASE_CA_CERT"],
            "{reason}"
        );
    }
}

#[test]
fn libpq_verify_modes_become_the_always_verifying_require() {
    let config = Config::from_vars(&vars(&[(
        "DATABASE_URL",
        "postgres://u:p@db.example.supabase.co:5432/postgres?sslmode=verify-full",
    )]))
    .expect("verify-full is accepted");
    let DatabaseConfig::Postgres { url, .. } = config.database else {
        panic!("expected direct Postgres");
    };
    assert!(url.expose_secret().ends_with("?sslmode=require"));
}

#[test]
fn the_error_message_lists_every_problem_on_its_own_line() {
    let error = Config::from_vars(&vars(&[("ENVIRONMENT", "prod")])).unwrap_err();
    let text = error.to_string();
    assert!(text.contains("ENVIRONMENT: `prod` is not one of"), "{text}");
    assert!(
        text.contains("DATABASE_URL: no database configured"),
        "{text}"
    );
    assert!(
        text.starts_with("invalid configuration (2 problems)"),
        "{text}"
    );
}

#[test]
fn production_requires_its_secrets_and_refuses_wildcard_cors() {
    let result = Config::from_vars(&vars(&[
        ("VERCEL_ENV", "production"),
        ("DATABASE_URL", "postgres://u:p@db/keel?sslmode=require"),
        ("CORS_ORIGINS", "*"),
        ("ADMIN_API_KEY", "short"),
    ]));
    assert_eq!(
        problem_variables(result),
        vec![
            "ADMIN_API_KEY",
            "CORS_ORIGINS",
            "CRON_SECRET",
            "ENCRYPTION_KEY",
            "OPENAI_API_KEY"
        ]
    );
}

#[test]
fn environment_defaults_from_vercel_env() {
    let config = Config::from_vars(&vars(&[
        ("VERCEL_ENV", "preview"),
        ("DATABASE_URL", "postgres://u:p@db/keel"),
    ]))
    .unwrap();
    assert_eq!(config.environment, Environment::Preview);
}

#[test]
fn database_url_wins_over_postgrest_and_says_so() {
    let config = Config::from_vars(&vars(&[
        ("DATABASE_URL", "postgres://u:p@db/keel"),
        ("SUPABASE_URL", "https://abc.supabase.co"),
        ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_xyz"),
    ]))
    .unwrap();
    assert_eq!(config.database.transport_name(), "postgres");
    assert!(
        config
            .database_choice_note
            .unwrap()
            .contains("using DATABASE_URL")
    );

    let config = Config::from_vars(&vars(&[
        ("DATABASE_URL", "postgres://u:p@db/keel"),
        ("SUPABASE_URL", "https://abc.supabase.co"),
        ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_xyz"),
        ("DB_TRANSPORT", "postgrest"),
    ]))
    .unwrap();
    assert_eq!(config.database.transport_name(), "postgrest");
}

#[test]
fn supabase_keys_are_checked_for_the_service_role() {
    let cases = [
        (
            jwt_with_role("service_role"),
            true,
            "legacy service_role JWT",
        ),
        ("sb_secret_abc123".to_owned(), true, "new secret key"),
        (
            jwt_with_role("anon"),
            false,
            "the anon key cannot execute Keel's functions",
        ),
        (
            "sb_publishable_abc".to_owned(),
            false,
            "publishable keys are for browsers",
        ),
        (
            "hunter2".to_owned(),
            false,
            "neither a JWT nor a secret key",
        ),
    ];
    for (key, accepted, reason) in cases {
        let result = Config::from_vars(&vars(&[
            ("SUPABASE_URL", "https://abc.supabase.co"),
            ("SUPABASE_SERVICE_ROLE_KEY", &key),
        ]));
        assert_eq!(result.is_ok(), accepted, "{reason}");
    }
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let config = Config::from_vars(&vars(&[
        ("DATABASE_URL", "postgres://keel:db-password-123@db/keel"),
        ("ADMIN_API_KEY", "admin-secret-0123456789abcdef0123456789"),
        ("OPENAI_API_KEY", "sk-openai-secret-value"),
        ("ENCRYPTION_KEY", &"ab".repeat(32)),
    ]))
    .unwrap();
    let debug = format!("{config:?}");
    for secret in [
        "db-password-123",
        "admin-secret",
        "sk-openai-secret",
        &"ab".repeat(32),
    ] {
        assert!(!debug.contains(secret), "{secret} leaked into {debug}");
    }
}

#[test]
fn encryption_key_accepts_hex_or_base64_of_exactly_32_bytes() {
    let base64_key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let cases = [
        ("ab".repeat(32), true, "64 hex characters"),
        (base64_key, true, "base64 of 32 bytes"),
        ("ab".repeat(16), false, "16 bytes is AES-128, not AES-256"),
        ("not-a-key".to_owned(), false, "neither hex nor base64"),
    ];
    for (key, accepted, reason) in cases {
        let result = Config::from_vars(&vars(&[
            ("DATABASE_URL", "postgres://u:p@db/keel"),
            ("ENCRYPTION_KEY", &key),
        ]));
        assert_eq!(result.is_ok(), accepted, "{reason}");
    }
}

#[test]
fn cors_origins_must_be_exact_origins() {
    let cases = [
        ("https://app.example.com", true, "a plain origin"),
        (
            "https://a.example.com, http://localhost:5173",
            true,
            "a list",
        ),
        (
            "https://app.example.com/",
            false,
            "trailing slash never matches an Origin header",
        ),
        (
            "https://app.example.com/path",
            false,
            "origins have no path",
        ),
        ("app.example.com", false, "origins have a scheme"),
    ];
    for (origins, accepted, reason) in cases {
        let result = Config::from_vars(&vars(&[
            ("DATABASE_URL", "postgres://u:p@db/keel"),
            ("CORS_ORIGINS", origins),
        ]));
        assert_eq!(result.is_ok(), accepted, "{reason}");
    }
}

#[test]
fn openai_compatible_servers_may_use_other_key_formats() {
    let config = Config::from_vars(&vars(&[
        ("DATABASE_URL", "postgres://u:p@db/keel"),
        ("OPENAI_BASE_URL", "http://127.0.0.1:3000/v1"),
        ("OPENAI_API_KEY", "local-key"),
    ]))
    .unwrap();
    assert_eq!(
        config.embeddings.unwrap().base_url.as_str(),
        "http://127.0.0.1:3000/v1"
    );
}

#[test]
fn client_addresses_come_from_headers_only_where_a_proxy_is_trusted() {
    let db = ("DATABASE_URL", "postgres://u:p@localhost/keel");
    let cases = [
        (vec![db], ClientIpSource::Peer, "locally: the socket"),
        (
            vec![db, ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001")],
            ClientIpSource::Peer,
            "Lambda: the request context, never a client's header",
        ),
        (
            vec![db, ("VERCEL", "1")],
            ClientIpSource::Vercel,
            "Vercel overwrites its headers",
        ),
        (
            vec![db, ("VERCEL_IPC_PATH", "/tmp/ipc")],
            ClientIpSource::Vercel,
            "Vercel, detected as the runtime does",
        ),
        (
            vec![db, ("CLIENT_IP_SOURCE", "x-forwarded-for:1")],
            ClientIpSource::ForwardedFor { hops: 1 },
            "behind an ALB",
        ),
        (
            vec![db, ("VERCEL", "1"), ("CLIENT_IP_SOURCE", "peer")],
            ClientIpSource::Peer,
            "explicit wins",
        ),
    ];
    for (pairs, expected, reason) in cases {
        let config = Config::from_vars(&vars(&pairs)).expect(reason);
        assert_eq!(config.client_ip_source, expected, "{reason}");
    }
    for bad in [
        "x-forwarded-for",
        "x-forwarded-for:0",
        "x-forwarded-for:many",
        "headers",
    ] {
        assert_eq!(
            problem_variables(Config::from_vars(&vars(&[db, ("CLIENT_IP_SOURCE", bad)]))),
            vec!["CLIENT_IP_SOURCE"],
            "{bad}"
        );
    }
}

#[test]
fn production_refuses_connections_that_may_travel_in_plain_text() {
    let production = [
        ("ENVIRONMENT", "production"),
        ("ADMIN_API_KEY", "a-long-enough-admin-key-0123456789abcdef"),
        ("CRON_SECRET", "a-long-enough-cron-secret-0123456789abcdef"),
        (
            "ENCRYPTION_KEY",
            "abababababababababababababababababababababababababababababababab",
        ),
        ("OPENAI_API_KEY", "sk-test"),
    ];
    const TLS: (&str, &str) = (
        "DATABASE_URL",
        "postgres://u:p@db.example.com/keel?sslmode=require",
    );
    type Case = (
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static str,
    );
    let cases: [Case; 7] = [
        (
            &[(
                "DATABASE_URL",
                "postgres://u:p@db.example.com/keel?sslmode=disable",
            )],
            "DATABASE_URL",
            "sslmode=disable",
        ),
        (
            &[(
                "DATABASE_URL",
                "postgres://u:p@db.example.com/keel?sslmode=prefer",
            )],
            "DATABASE_URL",
            "prefer falls back to plain text",
        ),
        (
            &[("DATABASE_URL", "postgres://u:p@db.example.com/keel")],
            "DATABASE_URL",
            "no sslmode means prefer",
        ),
        (
            &[(
                "DATABASE_URL",
                "host=db.example.com user=u dbname=keel sslmode=disable",
            )],
            "DATABASE_URL",
            "key=value form",
        ),
        (
            &[
                ("DB_TRANSPORT", "postgrest"),
                ("SUPABASE_URL", "http://abc.supabase.co"),
                ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_xyz"),
            ],
            "SUPABASE_URL",
            "the service key would cross the network in the clear",
        ),
        (
            &[TLS, ("OPENAI_BASE_URL", "http://embeddings.internal/v1")],
            "OPENAI_BASE_URL",
            "the API key and tenant text in the clear",
        ),
        (
            &[
                TLS,
                ("SUPABASE_URL", "http://abc.supabase.co"),
                ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_xyz"),
            ],
            "SUPABASE_URL",
            "even when DATABASE_URL wins",
        ),
    ];
    for (extra, variable, reason) in cases {
        let mut pairs = production.to_vec();
        pairs.extend_from_slice(extra);
        if !extra
            .iter()
            .any(|(k, _)| k.starts_with("DATABASE_URL") || *k == "DB_TRANSPORT")
        {
            pairs.push(TLS);
        }
        let result = Config::from_vars(&vars(&pairs));
        assert_eq!(problem_variables(result), vec![variable], "{reason}");
    }

    let mut pairs = production.to_vec();
    pairs.push((
        "DATABASE_URL",
        "postgres://u:p@db.example.com/keel?sslmode=verify-full",
    ));
    pairs.push(("OPENAI_BASE_URL", "https://embeddings.example.com/v1"));
    Config::from_vars(&vars(&pairs)).expect("TLS everywhere is fine");
    let development = [
        (
            "DATABASE_URL",
            "postgres://u:p@localhost/keel?sslmode=disable",
        ),
        ("SUPABASE_URL", "http://127.0.0.1:54321"),
        ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_xyz"),
        ("OPENAI_BASE_URL", "http://127.0.0.1:3000/v1"),
    ];
    Config::from_vars(&vars(&development)).expect("development keeps plain text for local servers");
}
