//! The migration runner behind `keel migrate`.
//!
//! Migrations are plain SQL files `NNNN_name.sql` in `migrations/`, applied in
//! order, each in its own transaction, and recorded in `keel.schema_migrations`
//! with a SHA-256 checksum. An applied migration whose file has since changed
//! is refused. A session advisory lock makes concurrent runs (two deploys, two
//! test processes) take turns instead of colliding. The files are also valid
//! for `psql` or the Supabase SQL editor: they are written to be re-runnable,
//! so a later `keel migrate` simply records them.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Arbitrary but fixed: every Keel migration run contends on this key.
const MIGRATION_LOCK_KEY: i64 = 0x006b_6565_6c6d_6967; // "keelmig"

#[derive(Debug, Clone)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    pub sql: String,
    pub checksum: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot read migrations from {dir}: {reason}")]
    Load { dir: String, reason: String },
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error(
        "migration {version} ({name}) was edited after it was applied (checksum {applied} in the database, {current} on disk); write a new migration instead"
    )]
    Edited {
        version: i64,
        name: String,
        applied: String,
        current: String,
    },
    #[error("migration {version} ({name}) failed: {message}")]
    Failed {
        version: i64,
        name: String,
        message: String,
    },
    #[error("migration bookkeeping failed: {0}")]
    Database(#[from] tokio_postgres::Error),
}

/// What a run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MigrateReport {
    pub applied: Vec<String>,
    pub already_applied: usize,
}

/// Reads `NNNN_name.sql` files in version order; refuses duplicate versions.
pub fn load_dir(dir: &Path) -> Result<Vec<Migration>, MigrateError> {
    let load_error = |reason: String| MigrateError::Load {
        dir: dir.display().to_string(),
        reason,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| load_error(e.to_string()))?;
    let mut migrations = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| load_error(e.to_string()))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("sql") {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let version = stem
            .split_once('_')
            .and_then(|(number, _)| number.parse::<i64>().ok())
            .ok_or_else(|| load_error(format!("{stem}.sql is not named NNNN_name.sql")))?;
        let sql = std::fs::read_to_string(&path).map_err(|e| load_error(e.to_string()))?;
        migrations.push(Migration {
            version,
            checksum: checksum(&sql),
            name: stem,
            sql,
        });
    }
    migrations.sort_by_key(|m| m.version);
    if let Some(pair) = migrations.windows(2).find(|w| w[0].version == w[1].version) {
        return Err(load_error(format!(
            "{} and {} share version {}",
            pair[0].name, pair[1].name, pair[0].version
        )));
    }
    Ok(migrations)
}

pub fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Connects with the same TLS setup as the app (Supabase requires TLS on its
/// pooler when `sslmode=require`).
pub async fn connect(
    database_url: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Client, MigrateError> {
    let (client, connection) =
        tokio_postgres::connect(database_url, MakeRustlsConnect::new((*tls).clone()))
            .await
            .map_err(MigrateError::Connect)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "migration connection closed");
        }
    });
    Ok(client)
}

/// Applies every pending migration, in order, under the advisory lock.
pub async fn run(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<MigrateReport, MigrateError> {
    run_reporting(client, migrations, |_| {}).await
}

/// [`run`], calling `done` after each migration is applied or found already
/// applied (the CLI's progress bar).
pub async fn run_reporting(
    client: &mut Client,
    migrations: &[Migration],
    done: impl FnMut(&Migration),
) -> Result<MigrateReport, MigrateError> {
    client
        .execute("select pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let result = apply_pending(client, migrations, done).await;
    // Unlock even after a failure; a dropped connection would release it too.
    let unlocked = client
        .execute("select pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let report = result?;
    unlocked?;
    Ok(report)
}

async fn apply_pending(
    client: &mut Client,
    migrations: &[Migration],
    mut done: impl FnMut(&Migration),
) -> Result<MigrateReport, MigrateError> {
    let applied = applied_checksums(client).await?;
    let mut report = MigrateReport::default();
    for migration in migrations {
        if let Some((_, recorded)) = applied.iter().find(|(v, _)| *v == migration.version) {
            if *recorded != migration.checksum {
                return Err(MigrateError::Edited {
                    version: migration.version,
                    name: migration.name.clone(),
                    applied: recorded.clone(),
                    current: migration.checksum.clone(),
                });
            }
            report.already_applied += 1;
            done(migration);
            continue;
        }
        let failed = |e: tokio_postgres::Error| MigrateError::Failed {
            version: migration.version,
            name: migration.name.clone(),
            message: e
                .as_db_error()
                .map(|db| format!("{} ({})", db.message(), db.code().code()))
                .unwrap_or_else(|| e.to_string()),
        };
        let transaction = client.transaction().await?;
        transaction
            .batch_execute(&migration.sql)
            .await
            .map_err(failed)?;
        transaction
            .execute(
                "insert into keel.schema_migrations (version, name, checksum) values ($1, $2, $3) \
                 on conflict (version) do update set checksum = excluded.checksum, name = excluded.name",
                &[&migration.version, &migration.name, &migration.checksum],
            )
            .await
            .map_err(failed)?;
        transaction.commit().await.map_err(failed)?;
        tracing::info!(migration = %migration.name, "applied migration");
        report.applied.push(migration.name.clone());
        done(migration);
    }
    Ok(report)
}

async fn applied_checksums(client: &Client) -> Result<Vec<(i64, String)>, MigrateError> {
    // Before the first migration there is no bookkeeping table yet; a table
    // created by psql (migrations applied by hand) may lack checksums.
    let exists: bool = client
        .query_one(
            "select to_regclass('keel.schema_migrations') is not null",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "select version, checksum from keel.schema_migrations where checksum is not null",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
