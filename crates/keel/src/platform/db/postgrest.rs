//! PostgREST transport for Supabase: `POST {SUPABASE_URL}/rest/v1/rpc/<fn>`
//! with the service key, on the one shared reqwest client. Written by hand
//! rather than with the `postgrest` crate (see docs/decisions/0001).
//!
//! PostgREST passes the whole JSON body to a function with a single unnamed
//! `jsonb` parameter and returns its scalar result bare. Errors arrive as
//! `{"code","message","details","hint"}`.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::DbError;

#[derive(Clone)]
pub struct PostgRestTransport {
    client: reqwest::Client,
    rpc_base: Url,
    key: SecretString,
    timeout: Duration,
}

#[derive(Deserialize)]
struct PostgRestErrorBody {
    code: Option<String>,
    message: Option<String>,
    details: Option<String>,
    hint: Option<String>,
}

impl PostgRestTransport {
    pub fn new(
        client: reqwest::Client,
        supabase_url: &Url,
        key: SecretString,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut base = supabase_url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let rpc_base = base.join("rest/v1/rpc/")?;
        Ok(Self {
            client,
            rpc_base,
            key,
            timeout,
        })
    }

    pub async fn call(&self, function: &'static str, args: Value) -> Result<Value, DbError> {
        let url = self
            .rpc_base
            .join(function)
            .map_err(|e| DbError::Protocol {
                function,
                reason: e.to_string(),
            })?;
        let key = self.key.expose_secret();
        let mut apikey = HeaderValue::from_str(key).map_err(|_| DbError::Protocol {
            function,
            reason: "the service key is not a valid header value".to_owned(),
        })?;
        apikey.set_sensitive(true);
        let mut request = self
            .client
            .post(url)
            .timeout(self.timeout)
            .header("apikey", apikey.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(args.to_string());
        // Legacy service_role JWTs also go in Authorization; new sb_secret_
        // keys must not (the gateway would try to verify them as a JWT).
        if !key.starts_with("sb_secret_") {
            let mut bearer =
                HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| DbError::Protocol {
                    function,
                    reason: "the service key is not a valid header value".to_owned(),
                })?;
            bearer.set_sensitive(true);
            request = request.header(AUTHORIZATION, bearer);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(function, self.timeout, e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(function, self.timeout, e))?;
        if status.is_success() {
            if body.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&body).map_err(|e| DbError::Protocol {
                function,
                reason: format!("response is not JSON: {e}"),
            });
        }
        Err(error_from_response(function, status, &body))
    }
}

fn transport_error(function: &'static str, after: Duration, error: reqwest::Error) -> DbError {
    if error.is_timeout() {
        DbError::Timeout { function, after }
    } else {
        DbError::Unavailable {
            function,
            source: error.without_url().into(),
        }
    }
}

fn error_from_response(function: &'static str, status: StatusCode, body: &[u8]) -> DbError {
    match serde_json::from_slice::<PostgRestErrorBody>(body) {
        Ok(PostgRestErrorBody {
            code: Some(code),
            message,
            details,
            hint,
        }) => DbError::Rejected {
            function,
            code,
            message: message.unwrap_or_default(),
            details,
            hint,
        },
        // A gateway in front of PostgREST (Kong, Cloudflare) answering for it.
        _ if matches!(
            status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ) =>
        {
            DbError::Unavailable {
                function,
                source: format!("PostgREST gateway answered {status}").into(),
            }
        }
        _ => DbError::Protocol {
            function,
            reason: format!("PostgREST answered {status} without an error code"),
        },
    }
}
