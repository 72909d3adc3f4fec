use keel::platform::db::DbError;
use keel::platform::db::migrate::{self, MigrateError};

use crate::helpers::{
    TestDatabase, base_vars, migrations, repo_root, spawn_app_on, spawn_app_with,
};

#[tokio::test]
async fn anon_and_authenticated_can_neither_read_tables_nor_execute_functions() {
    let db = TestDatabase::migrated().await;
    let client = db.connect().await;
    let attempts = [
        (
            "select * from keel.schema_migrations",
            "the private schema's tables",
        ),
        (
            "select public.keel_health('{}'::jsonb)",
            "Keel's RPC functions",
        ),
        ("select keel.lock_down_api()", "Keel's internal functions"),
    ];

    for role in ["anon", "authenticated"] {
        for (statement, what) in attempts {
            client
                .batch_execute(&format!("set role {role}"))
                .await
                .unwrap();
            let error = client
                .batch_execute(statement)
                .await
                .expect_err(&format!("{role} must not reach {what}"));
            client.batch_execute("reset role").await.unwrap();
            assert_eq!(
                error.as_db_error().map(|e| e.code().code()),
                Some("42501"),
                "{role} on {what}: {error}"
            );
        }
    }
}

#[tokio::test]
async fn only_the_service_role_can_execute_keel_functions() {
    let db = TestDatabase::migrated().await;
    let client = db.connect().await;

    client.batch_execute("set role service_role").await.unwrap();
    let row = client
        .query_one("select public.keel_health('{}'::jsonb)", &[])
        .await
        .expect("service_role executes the API");
    let probe: serde_json::Value = row.get(0);
    assert_eq!(probe["ok"], true);
    assert_eq!(
        probe["schema_version"],
        migrations().last().unwrap().version
    );

    // ...but even service_role reads tables only through the functions.
    let error = client
        .batch_execute("select * from keel.schema_migrations")
        .await
        .unwrap_err();
    assert_eq!(error.as_db_error().unwrap().code().code(), "42501");
}

#[tokio::test]
async fn every_public_keel_function_is_locked_down() {
    let db = TestDatabase::migrated().await;
    let client = db.connect().await;

    let rows = client
        .query(
            "select p.proname::text, \
                    has_function_privilege('anon', p.oid, 'execute'), \
                    has_function_privilege('authenticated', p.oid, 'execute'), \
                    has_function_privilege('service_role', p.oid, 'execute'), \
                    p.prosecdef, \
                    coalesce(array_to_string(p.proconfig, ','), '') \
             from pg_proc p join pg_namespace n on n.oid = p.pronamespace \
             where n.nspname = 'public' and p.proname like 'keel\\_%'",
            &[],
        )
        .await
        .unwrap();

    assert!(!rows.is_empty());
    for row in rows {
        let name: String = row.get(0);
        assert!(!row.get::<_, bool>(1), "{name}: anon may execute");
        assert!(!row.get::<_, bool>(2), "{name}: authenticated may execute");
        assert!(
            row.get::<_, bool>(3),
            "{name}: service_role may not execute"
        );
        assert!(row.get::<_, bool>(4), "{name}: not SECURITY DEFINER");
        assert!(
            row.get::<_, String>(5).contains("search_path="),
            "{name}: search_path not pinned"
        );
    }
}

#[tokio::test]
async fn pgvector_0_8_or_later_is_enabled() {
    let db = TestDatabase::migrated().await;
    let client = db.connect().await;

    let version: String = client
        .query_one(
            "select extversion from pg_extension where extname = 'vector'",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
    assert!(parts[..2] >= [0, 8][..], "pgvector {version}");
}

#[tokio::test]
async fn migrating_twice_applies_each_migration_once() {
    let db = TestDatabase::empty().await;
    let mut client = db.connect().await;
    let all = migrations();

    let first = migrate::run(&mut client, &all).await.unwrap();
    let second = migrate::run(&mut client, &all).await.unwrap();

    assert_eq!(first.applied.len(), all.len());
    assert_eq!(second.applied.len(), 0);
    assert_eq!(second.already_applied, all.len());
    let recorded: i64 = client
        .query_one("select count(*) from keel.schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, all.len() as i64);
}

#[tokio::test]
async fn concurrent_migration_runs_take_turns() {
    let db = TestDatabase::empty().await;
    let all = migrations();
    let mut first = db.connect().await;
    let mut second = db.connect().await;

    let (a, b) = tokio::join!(
        migrate::run(&mut first, &all),
        migrate::run(&mut second, &all)
    );

    let (a, b) = (a.expect("first run"), b.expect("second run"));
    assert_eq!(
        a.applied.len() + b.applied.len(),
        all.len(),
        "each migration applied exactly once"
    );
    let recorded: i64 = first
        .query_one("select count(*) from keel.schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, all.len() as i64);
}

#[tokio::test]
async fn an_edited_applied_migration_is_refused() {
    let db = TestDatabase::empty().await;
    let mut client = db.connect().await;
    let mut all = migrations();
    migrate::run(&mut client, &all).await.unwrap();

    all[0].sql.push_str("\n-- a sneaky edit\n");
    all[0].checksum = migrate::checksum(&all[0].sql);
    let error = migrate::run(&mut client, &all).await.unwrap_err();

    assert!(
        matches!(error, MigrateError::Edited { version: 1, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("write a new migration instead"));
}

#[tokio::test]
async fn migrations_applied_by_hand_with_psql_are_recorded_by_the_runner() {
    let db = TestDatabase::empty().await;
    let mut client = db.connect().await;
    let all = migrations();

    // An operator pastes every file into the SQL editor, twice by mistake.
    for _ in 0..2 {
        for migration in &all {
            client
                .batch_execute(&migration.sql)
                .await
                .unwrap_or_else(|e| panic!("{} is not re-runnable: {e}", migration.name));
        }
    }
    let report = migrate::run(&mut client, &all).await.unwrap();

    assert_eq!(report.applied.len(), all.len());
    let probe: serde_json::Value = client
        .query_one("select public.keel_health('{}'::jsonb)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(probe["schema_version"], all.last().unwrap().version);
}

#[tokio::test]
async fn migration_files_are_loaded_in_version_order() {
    let loaded = migrate::load_dir(&repo_root().join("migrations")).unwrap();
    let versions: Vec<i64> = loaded.iter().map(|m| m.version).collect();
    let mut sorted = versions.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(versions, sorted);
    assert_eq!(versions[0], 1);
}

/// The test cluster's TLS certificate is signed by a CA of its own, as
/// Supabase's databases are (scripts/lib/postgres.sh).
fn test_cluster_ca() -> String {
    let path = std::env::var("KEEL_TEST_DATABASE_CA_CERT")
        .expect("KEEL_TEST_DATABASE_CA_CERT is not set: run the suite with scripts/test");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// `db`'s URL asking for TLS the way Supabase documents it.
fn verify_full_url(db: &TestDatabase) -> String {
    let url = db.url.replace("sslmode=disable", "sslmode=verify-full");
    assert_ne!(url, db.url, "test URLs name their sslmode");
    url
}

#[tokio::test]
async fn the_database_certificate_is_verified_against_database_ca_cert() {
    let db = TestDatabase::migrated().await;
    let mut vars = base_vars(&db);
    vars.insert("DATABASE_URL".into(), verify_full_url(&db));
    vars.insert("DATABASE_CA_CERT".into(), test_cluster_ca());
    let app = spawn_app_on(db, vars).await;

    assert_eq!(app.get("/api/ready").await.status(), 200);
    app.create_tenant("shop").await;

    let encrypted = app
        .count(
            "select count(*) from pg_stat_ssl s join pg_stat_activity a using (pid)
             where a.application_name = 'keel' and s.ssl",
        )
        .await;
    assert!(encrypted >= 1, "Keel's connections use TLS");
}

#[tokio::test]
async fn a_database_certificate_from_an_untrusted_ca_is_refused() {
    let db = TestDatabase::migrated().await;
    let mut vars = base_vars(&db);
    vars.insert("DATABASE_URL".into(), verify_full_url(&db));
    let app = spawn_app_on(db, vars).await;

    let response = app.get("/api/ready").await;

    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["database"]["error"], "unreachable");
}

#[tokio::test]
async fn a_query_abandoned_at_the_timeout_is_cancelled_on_the_server() {
    let app = spawn_app_with(|_, vars| {
        vars.insert("DB_TIMEOUT_MS".into(), "300".into());
    })
    .await;
    let admin = app.db.connect().await;
    admin
        .batch_execute(
            "create function public.keel_test_sleep(args jsonb) returns jsonb language sql
             as $$ select pg_sleep(30); select '{}'::jsonb $$",
        )
        .await
        .unwrap();

    let error = app
        .app
        .db
        .call::<_, serde_json::Value>("keel_test_sleep", &serde_json::json!({}))
        .await
        .unwrap_err();

    assert!(matches!(error, DbError::Timeout { .. }), "{error}");
    let still_running = "select count(*) from pg_stat_activity
         where query like '%keel_test_sleep(%' and state = 'active' and pid <> pg_backend_pid()";
    let mut running = 1;
    for _ in 0..50 {
        running = admin
            .query_one(still_running, &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
        if running == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(running, 0, "the server stopped the abandoned query");
}
