//! Database access: one interface, two transports.
//!
//! Every database operation is an SQL function in `migrations/` that takes one
//! `jsonb` argument and returns `jsonb`. [`Db::call`] runs it either through
//! Supabase's PostgREST (`POST /rest/v1/rpc/<fn>`) or directly on Postgres
//! (`select public.<fn>($1)`), so both transports execute the very same code.
//! Past the transport, callers speak typed structs: each SQL function Keel
//! calls has one argument struct implementing [`SqlFunction`] (its name and
//! result type) in the `store.rs` of the area that owns it, and runs with
//! [`Db::run`]. Errors from either side become one [`DbError`] carrying the
//! SQLSTATE or PostgREST code.

mod error;
pub mod migrate;
mod page;
pub mod postgres;
pub mod postgrest;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use error::{DbError, DbErrorClass};
pub use page::Page;

use crate::platform::config::{Config, DatabaseConfig};
use crate::platform::tls::tls_config_trusting;

/// The typed binding of one `public.keel_*(jsonb) returns jsonb` function:
/// `Self` serialises to its argument, [`SqlFunction::Output`] is its result.
pub trait SqlFunction: Serialize + Sync {
    const NAME: &'static str;
    type Output: DeserializeOwned;
}

/// The database handle built once per cold start and shared by all requests.
#[derive(Clone)]
pub enum Db {
    Postgres(postgres::PgTransport),
    PostgRest(postgrest::PostgRestTransport),
}

impl Db {
    pub fn from_config(config: &Config, http: &reqwest::Client) -> anyhow::Result<Self> {
        Ok(match &config.database {
            DatabaseConfig::Postgres {
                url,
                pool_size,
                ca_certs,
            } => Db::Postgres(postgres::PgTransport::new(
                url,
                *pool_size,
                config.db_timeout,
                tls_config_trusting(ca_certs),
            )?),
            DatabaseConfig::PostgRest { url, service_key } => {
                Db::PostgRest(postgrest::PostgRestTransport::new(
                    http.clone(),
                    url,
                    service_key.clone(),
                    config.db_timeout,
                )?)
            }
        })
    }

    pub fn transport_name(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::PostgRest(_) => "postgrest",
        }
    }

    /// Runs the SQL function `F` with `args`.
    pub async fn run<F: SqlFunction>(&self, args: &F) -> Result<F::Output, DbError> {
        self.call(F::NAME, args).await
    }

    /// Calls `public.<function>(args)` and decodes its `jsonb` result: the
    /// transport itself, for [`Db::run`] and for tests of the transports.
    pub async fn call<A, R>(&self, function: &'static str, args: &A) -> Result<R, DbError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        debug_assert!(
            function
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()),
            "RPC function names are plain identifiers"
        );
        let args = serde_json::to_value(args).map_err(|e| DbError::Protocol {
            function,
            reason: format!("arguments do not serialise: {e}"),
        })?;
        let result = match self {
            Db::Postgres(pg) => pg.call(function, args).await?,
            Db::PostgRest(rest) => rest.call(function, args).await?,
        };
        serde_json::from_value(result).map_err(|e| DbError::Protocol {
            function,
            reason: format!("result does not match the expected shape: {e}"),
        })
    }
}
