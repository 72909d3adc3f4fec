//! Direct Postgres transport: a small pool of connections, each call one
//! `select public.<fn>($1::jsonb)` sent as an unnamed statement, so it also
//! works through Supavisor/PgBouncer in transaction mode (no prepared
//! statements survive between transactions there).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::DbError;

/// How long a cancel request for a timed-out query may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct PgTransport {
    pool: Pool,
    timeout: Duration,
    /// For cancel requests, which open a connection of their own.
    tls: MakeRustlsConnect,
}

impl PgTransport {
    pub fn new(
        url: &SecretString,
        pool_size: usize,
        timeout: Duration,
        tls: Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<Self> {
        let mut pg_config: tokio_postgres::Config = url
            .expose_secret()
            .parse()
            .map_err(|_| anyhow::anyhow!("DATABASE_URL is not a valid connection string"))?;
        if pg_config.get_connect_timeout().is_none() {
            pg_config.connect_timeout(timeout);
        }
        if pg_config.get_application_name().is_none() {
            pg_config.application_name("keel");
        }
        let tls = MakeRustlsConnect::new((*tls).clone());
        let manager = Manager::from_config(
            pg_config,
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(Runtime::Tokio1)
            .build()?;
        Ok(Self { pool, timeout, tls })
    }

    pub async fn call(&self, function: &'static str, args: Value) -> Result<Value, DbError> {
        let client = self.pool.get().await.map_err(|error| match error {
            deadpool_postgres::PoolError::Timeout(_) => DbError::Timeout {
                function,
                after: self.timeout,
            },
            other => DbError::Unavailable {
                function,
                source: other.into(),
            },
        })?;
        let sql = format!("select public.{function}($1::jsonb)");
        let params: [(&(dyn ToSql + Sync), Type); 1] = [(&args, Type::JSONB)];
        let query = client.query_typed(&sql, &params);
        match tokio::time::timeout(self.timeout, query).await {
            Ok(Ok(rows)) => {
                let row = rows.first().ok_or_else(|| DbError::Protocol {
                    function,
                    reason: "no row returned".to_owned(),
                })?;
                let value: Option<Value> = row.try_get(0).map_err(|e| DbError::Protocol {
                    function,
                    reason: e.to_string(),
                })?;
                Ok(value.unwrap_or(Value::Null))
            }
            Ok(Err(error)) => Err(map_pg_error(function, error)),
            Err(_) => {
                // The server would keep running the abandoned query (it only
                // notices a closed connection when it writes): cancel it, off
                // the request's path. The connection may be stuck mid-query:
                // never hand it out again.
                let cancel = client.cancel_token();
                let tls = self.tls.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(CANCEL_TIMEOUT, cancel.cancel_query(tls)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            tracing::warn!(%error, function, "cancelling a timed-out query failed")
                        }
                        Err(_) => {
                            tracing::warn!(function, "cancelling a timed-out query timed out")
                        }
                    }
                });
                drop(deadpool_postgres::Object::take(client));
                Err(DbError::Timeout {
                    function,
                    after: self.timeout,
                })
            }
        }
    }
}

pub(crate) fn map_pg_error(function: &'static str, error: tokio_postgres::Error) -> DbError {
    match error.as_db_error() {
        Some(db) => DbError::Rejected {
            function,
            code: db.code().code().to_owned(),
            message: db.message().to_owned(),
            details: db.detail().map(str::to_owned),
            hint: db.hint().map(str::to_owned),
        },
        None => DbError::Unavailable {
            function,
            source: error.into(),
        },
    }
}
