//! Issue 11: what Supabase's API roles may touch. PostgREST connects as
//! `anon` or `authenticated` for anyone holding the public anon key, so these
//! roles must not execute a single Keel function, public or internal, nor read
//! a single table. `has_function_privilege` and `has_table_privilege` answer
//! for the object itself, whatever schema USAGE says, so a later grant of
//! USAGE on `keel` could not silently open anything.

use crate::helpers::TestDatabase;

const API_ROLES: [&str; 2] = ["anon", "authenticated"];

#[tokio::test]
async fn anon_and_authenticated_can_execute_no_function_in_keel_or_public() {
    let db = TestDatabase::migrated().await;
    let client = db.connect().await;

    let rows = client
        .query(
            "select p.oid::regprocedure::text,
                    has_function_privilege('anon', p.oid, 'execute'),
                    has_function_privilege('authenticated', p.oid, 'execute')
             from pg_proc p join pg_namespace n on n.oid = p.pronamespace
             where n.nspname in ('keel', 'public')
             order by 1",
            &[],
        )
        .await
        .unwrap();

    let names: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    assert!(
        names.iter().any(|n| n.starts_with("keel.take_quota(")),
        "the listing sees the internal functions: {names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("keel_health(")),
        "the listing sees the public API: {names:?}"
    );
    let mut open = Vec::new();
    for row in &rows {
        let name: String = row.get(0);
        for (index, role) in API_ROLES.iter().enumerate() {
            if row.get::<_, bool>(index + 1) {
                open.push(format!("{role} may execute {name}"));
            }
        }
    }
    assert!(
        open.is_empty(),
        "{} of {} functions are open:\n{}",
        open.len(),
        rows.len(),
        open.join("\n")
    );
}

#[tokio::test]
async fn anon_and_authenticated_can_read_no_table_or_sequence_in_keel() {
    let db = TestDatabase::migrated().await;
    let client = db.connect().await;

    let rows = client
        .query(
            "select c.oid::regclass::text, c.relkind::text,
                    case when c.relkind = 'S'
                      then has_sequence_privilege('anon', c.oid, 'select,usage,update')
                      else has_table_privilege('anon', c.oid,
                             'select,insert,update,delete,truncate,references,trigger')
                    end,
                    case when c.relkind = 'S'
                      then has_sequence_privilege('authenticated', c.oid, 'select,usage,update')
                      else has_table_privilege('authenticated', c.oid,
                             'select,insert,update,delete,truncate,references,trigger')
                    end
             from pg_class c join pg_namespace n on n.oid = c.relnamespace
             where n.nspname = 'keel' and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
             order by 1",
            &[],
        )
        .await
        .unwrap();

    assert!(
        rows.iter()
            .any(|row| row.get::<_, String>(0) == "keel.tenants"),
        "the listing sees Keel's tables"
    );
    let mut open = Vec::new();
    for row in &rows {
        let name: String = row.get(0);
        for (index, role) in API_ROLES.iter().enumerate() {
            if row.get::<_, bool>(index + 2) {
                open.push(format!("{role} has a privilege on {name}"));
            }
        }
    }
    assert!(open.is_empty(), "{}", open.join("\n"));
}

/// Every migration ends with `select keel.lock_down_api()`; whatever a later
/// migration adds to either schema must come out of it closed.
#[tokio::test]
async fn lock_down_api_closes_functions_and_tables_added_by_a_later_migration() {
    let db = TestDatabase::migrated().await;
    let client = db.connect().await;
    client
        .batch_execute(
            "create function keel.later_helper() returns int language sql as $$ select 1 $$;
             create function public.keel_later(args jsonb) returns jsonb
               language sql security definer set search_path = keel, pg_catalog
               as $$ select '{}'::jsonb $$;
             create table keel.later_table (id int);
             grant select on keel.later_table to anon, authenticated;
             select keel.lock_down_api();",
        )
        .await
        .unwrap();

    for role in API_ROLES {
        for (check, what) in [
            (
                "has_function_privilege($1, 'keel.later_helper()', 'execute')",
                "keel.later_helper()",
            ),
            (
                "has_function_privilege($1, 'public.keel_later(jsonb)', 'execute')",
                "public.keel_later(jsonb)",
            ),
            (
                "has_table_privilege($1, 'keel.later_table', 'select')",
                "keel.later_table",
            ),
        ] {
            let open: bool = client
                .query_one(&format!("select {check}"), &[&role])
                .await
                .unwrap()
                .get(0);
            assert!(!open, "{role} can still reach {what}");
        }
    }
    let service_role_runs_the_api: bool = client
        .query_one(
            "select has_function_privilege('service_role', 'public.keel_later(jsonb)', 'execute')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(service_role_runs_the_api);
}
