use std::collections::HashMap;

use keel::platform::db::{DbError, DbErrorClass};
use serde_json::{Value, json};

use crate::helpers::{TestDatabase, base_vars, spawn_app_on};
use crate::support::{json_reply, serve_http, start_postgrest};

const SECRET_KEY: &str = "sb_secret_test_0123456789abcdef";

fn service_role_jwt() -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64.encode(r#"{"iss":"supabase","role":"service_role"}"#)
    )
}

fn postgrest_vars(db: &TestDatabase, url: String, key: &str) -> HashMap<String, String> {
    let mut vars = base_vars(db);
    vars.remove("DATABASE_URL");
    vars.insert("SUPABASE_URL".into(), url);
    vars.insert("SUPABASE_SERVICE_ROLE_KEY".into(), key.into());
    vars
}

#[tokio::test]
async fn ready_works_through_postgrest_with_either_kind_of_service_key() {
    for key in [SECRET_KEY.to_owned(), service_role_jwt()] {
        let db = TestDatabase::migrated().await;
        let postgrest = start_postgrest(db.url.clone(), key.clone()).await;
        let vars = postgrest_vars(&db, format!("http://{postgrest}"), &key);
        let app = spawn_app_on(db, vars).await;

        let response = app.get("/api/ready").await;

        assert_eq!(response.status(), 200, "key {}", &key[..10]);
        assert_eq!(app.app.db.transport_name(), "postgrest");
    }
}

/// A function that raises whatever SQLSTATE it is asked to, executable by
/// service_role only, like every Keel function.
async fn install_raising_function(db: &TestDatabase) {
    db.connect()
        .await
        .batch_execute(
            "create function public.keel_test_raise(args jsonb) returns jsonb language plpgsql \
             security definer set search_path = pg_catalog as $$ \
             begin raise exception using errcode = args->>'code', message = args->>'message', \
               detail = 'some detail', hint = 'some hint'; end $$; \
             select keel.lock_down_api();",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn both_transports_report_the_same_typed_error_for_the_same_failure() {
    let db = TestDatabase::migrated().await;
    install_raising_function(&db).await;
    let postgrest = start_postgrest(db.url.clone(), SECRET_KEY.into()).await;
    let rest_vars = postgrest_vars(&db, format!("http://{postgrest}"), SECRET_KEY);
    let direct_vars = base_vars(&db);
    let direct =
        keel::App::new(keel::platform::config::Config::from_vars(&direct_vars).unwrap()).unwrap();
    let rest =
        keel::App::new(keel::platform::config::Config::from_vars(&rest_vars).unwrap()).unwrap();

    let cases = [
        ("23505", DbErrorClass::Conflict, 409, "slug already taken"),
        ("P0002", DbErrorClass::NotFound, 404, "no such document"),
        (
            "22023",
            DbErrorClass::InvalidInput,
            400,
            "top_k must be between 1 and 20",
        ),
        (
            "P0001",
            DbErrorClass::InvalidInput,
            400,
            "raised by a function",
        ),
        (
            "53300",
            DbErrorClass::Unavailable,
            503,
            "too many connections",
        ),
        ("XX000", DbErrorClass::Internal, 500, "internal error"),
    ];
    for (code, class, status, message) in cases {
        for app in [&direct, &rest] {
            let transport = app.db.transport_name();
            let error = app
                .db
                .call::<_, Value>(
                    "keel_test_raise",
                    &json!({"code": code, "message": message}),
                )
                .await
                .unwrap_err();

            match &error {
                DbError::Rejected {
                    code: got,
                    message: got_message,
                    details,
                    hint,
                    ..
                } => {
                    assert_eq!(got, code, "{transport}");
                    assert_eq!(got_message, message, "{transport}");
                    assert_eq!(details.as_deref(), Some("some detail"), "{transport}");
                    assert_eq!(hint.as_deref(), Some("some hint"), "{transport}");
                }
                other => panic!("{transport}: expected Rejected, got {other:?}"),
            }
            assert_eq!(error.class(), class, "{transport} {code}");
            let response = keel::ApiError::from(error).into_response("r");
            assert_eq!(response.status().as_u16(), status, "{transport} {code}");
        }
    }
}

#[tokio::test]
async fn a_gated_call_keeps_its_count_and_reports_the_same_typed_error_on_either_transport() {
    use keel::ops::ratelimit::{GateError, RateGate, Scope};

    let db = TestDatabase::migrated().await;
    let postgrest = start_postgrest(db.url.clone(), SECRET_KEY.into()).await;
    let rest_vars = postgrest_vars(&db, format!("http://{postgrest}"), SECRET_KEY);
    let direct_vars = base_vars(&db);
    let direct =
        keel::App::new(keel::platform::config::Config::from_vars(&direct_vars).unwrap()).unwrap();
    let rest =
        keel::App::new(keel::platform::config::Config::from_vars(&rest_vars).unwrap()).unwrap();
    let ip = "203.0.113.7".parse().ok();
    let unknown = keel::webhooks::store::WebhookEndpoint {
        id: "6f1c2a9e-0000-4000-8000-000000000000",
    };

    for app in [&direct, &rest] {
        let transport = app.db.transport_name();
        let gate = RateGate::new(Some(Scope::Webhook), &app.config.rate_limits, ip);
        let Err(error) = gate.run(&app.db, &unknown).await else {
            panic!("{transport}: an unknown endpoint was found");
        };

        let GateError::Db(error) = error else {
            panic!("{transport}: expected the function's error, got {error:?}");
        };
        match &error {
            DbError::Rejected {
                function,
                code,
                message,
                details,
                hint,
            } => {
                assert_eq!(*function, "keel_webhook_endpoint", "{transport}");
                assert_eq!(code, "P0002", "{transport}");
                assert_eq!(message, "no webhook endpoint with this id", "{transport}");
                assert_eq!(details.as_deref(), None, "{transport}");
                assert_eq!(hint.as_deref(), None, "{transport}");
            }
            other => panic!("{transport}: expected Rejected, got {other:?}"),
        }
        assert_eq!(error.class(), DbErrorClass::NotFound, "{transport}");
        assert!(gate.quota().is_some(), "{transport}: the quota was charged");
    }
    let counted: i64 = db
        .connect()
        .await
        .query_one(
            "select count(*) from keel.rate_limit_hits where bucket = 'webhook:address:203.0.113.7'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(counted, 2, "each failed call kept its count");

    // Keel from before migration 0010 (no `errors: return`) still gets the
    // error raised, as it expects during a deploy.
    let raised = db
        .connect()
        .await
        .query_one(
            "select public.keel_gated($1::text::jsonb)",
            &[&json!({"function": "keel_webhook_endpoint",
                      "args": {"id": "6f1c2a9e-0000-4000-8000-000000000000"},
                      "limit": {"scope": "webhook", "per_minute": 10, "client_ip": "203.0.113.8"}})
            .to_string()],
        )
        .await
        .unwrap_err();
    assert_eq!(raised.as_db_error().map(|e| e.code().code()), Some("P0002"));
}

#[tokio::test]
async fn a_missing_function_is_reported_by_either_transport_as_our_fault() {
    let db = TestDatabase::migrated().await;
    let postgrest = start_postgrest(db.url.clone(), SECRET_KEY.into()).await;
    let rest_vars = postgrest_vars(&db, format!("http://{postgrest}"), SECRET_KEY);
    let direct =
        keel::App::new(keel::platform::config::Config::from_vars(&base_vars(&db)).unwrap())
            .unwrap();
    let rest =
        keel::App::new(keel::platform::config::Config::from_vars(&rest_vars).unwrap()).unwrap();

    for (app, code) in [(&direct, "42883"), (&rest, "PGRST202")] {
        let error = app
            .db
            .call::<_, Value>("keel_not_deployed", &json!({}))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(code));
        assert_eq!(error.class(), DbErrorClass::Internal);
    }
}

#[tokio::test]
async fn postgrest_outages_are_unavailable_not_internal() {
    let db = TestDatabase::migrated().await;
    // A gateway answering for a dead PostgREST with an HTML page.
    let gateway = serve_http(|_| async {
        hyper::Response::builder()
            .status(503)
            .header("content-type", "text/html")
            .body(bytes::Bytes::from_static(
                b"<html>upstream unavailable</html>",
            ))
            .unwrap()
    })
    .await;
    // A PostgREST that lost its database.
    let no_db = serve_http(|_| async {
        json_reply(
            hyper::StatusCode::SERVICE_UNAVAILABLE,
            json!({"code": "PGRST001", "message": "Database client error. Retrying the connection.", "details": null, "hint": null}),
        )
    })
    .await;
    // Nobody listening at all.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };

    for (address, reason) in [
        (gateway, "gateway 503"),
        (no_db, "PGRST001"),
        (closed, "connection refused"),
    ] {
        let vars = postgrest_vars(&db, format!("http://{address}"), SECRET_KEY);
        let app =
            keel::App::new(keel::platform::config::Config::from_vars(&vars).unwrap()).unwrap();

        let error = app
            .db
            .call::<_, Value>("keel_health", &json!({}))
            .await
            .unwrap_err();

        assert_eq!(
            error.class(),
            DbErrorClass::Unavailable,
            "{reason}: {error:?}"
        );
        let response = keel::ApiError::from(error).into_response("r");
        assert_eq!(response.status(), 503, "{reason}");
        assert_eq!(response.headers()["retry-after"], "5", "{reason}");
    }
}

#[tokio::test]
async fn the_service_key_is_sent_as_postgrest_expects_for_each_kind() {
    // Legacy JWTs go in apikey and Authorization; sb_secret_ keys in apikey only.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = seen.clone();
    let address = serve_http(move |request: hyper::Request<bytes::Bytes>| {
        let recorder = recorder.clone();
        async move {
            let header = |name: &str| {
                request
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            recorder.lock().unwrap().push((
                header("apikey"),
                header("authorization"),
                header("content-type"),
                request.uri().path().to_owned(),
                String::from_utf8_lossy(request.body()).into_owned(),
            ));
            json_reply(hyper::StatusCode::OK, json!({"ok": true}))
        }
    })
    .await;
    let db = TestDatabase::migrated().await;
    let jwt = service_role_jwt();

    for key in [SECRET_KEY, jwt.as_str()] {
        let vars = postgrest_vars(&db, format!("http://{address}/"), key);
        let app =
            keel::App::new(keel::platform::config::Config::from_vars(&vars).unwrap()).unwrap();
        let result: Value = app
            .db
            .call("keel_health", &json!({"probe": 1}))
            .await
            .unwrap();
        assert_eq!(result, json!({"ok": true}));
    }

    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].0.as_deref(), Some(SECRET_KEY));
    assert_eq!(
        seen[0].1, None,
        "sb_secret_ keys must not be sent as a bearer JWT"
    );
    assert_eq!(seen[1].0.as_deref(), Some(jwt.as_str()));
    assert_eq!(seen[1].1.as_deref(), Some(format!("Bearer {jwt}").as_str()));
    for (_, _, content_type, path, body) in seen.iter() {
        assert_eq!(content_type.as_deref(), Some("application/json"));
        assert_eq!(path, "/rest/v1/rpc/keel_health");
        assert_eq!(body, r#"{"probe":1}"#);
    }
}
