//! Doubles of the SMS providers' send APIs, as documented: Twilio's
//! Messages resource (`POST /2010-04-01/Accounts/{AccountSid}/Messages.json`,
//! a form body, HTTP basic auth with the account SID and auth token; 201 with
//! the message resource, errors as `{"code","message","more_info","status"}`)
//! and Vonage's Messages API (`POST /v1/messages`, JSON, basic auth with the
//! API key and secret; 202 with `message_uuid`, errors as RFC 7807 problem
//! details). Either can be scripted to answer 429 or 500 first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::support::{json_reply, serve_http};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Twilio,
    Vonage,
}

/// One message the double accepted or refused.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub status: u16,
    /// Form fields (Twilio) or JSON fields (Vonage), as JSON.
    pub body: Value,
}

#[derive(Clone)]
pub struct FakeMessaging {
    provider: Provider,
    /// `user:password` the double accepts.
    credentials: String,
    failures: Arc<Mutex<VecDeque<StatusCode>>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl FakeMessaging {
    /// Starts the double accepting `user`/`password`; returns it and its base URL.
    pub async fn start(provider: Provider, user: &str, password: &str) -> (Self, String) {
        let fake = FakeMessaging {
            provider,
            credentials: format!("{user}:{password}"),
            failures: Arc::default(),
            received: Arc::default(),
        };
        let server = fake.clone();
        let address = serve_http(move |request| {
            let server = server.clone();
            async move { server.handle(request) }
        })
        .await;
        (fake, format!("http://{address}"))
    }

    /// The next requests fail with these statuses, in order.
    pub fn fail_with(&self, statuses: impl IntoIterator<Item = StatusCode>) {
        self.failures.lock().unwrap().extend(statuses);
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The messages it accepted (sent to the phone).
    pub fn sent(&self) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(|r| r.body)
            .collect()
    }

    fn handle(&self, request: Request<Bytes>) -> Response<Bytes> {
        let path = request.uri().path().to_owned();
        let (status, body, fields) = self.answer(&request, &path);
        self.received.lock().unwrap().push(Received {
            path,
            status: status.as_u16(),
            body: fields,
        });
        json_reply(status, body)
    }

    fn answer(&self, request: &Request<Bytes>, path: &str) -> (StatusCode, Value, Value) {
        let authorized = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .is_some_and(|decoded| decoded == self.credentials.as_bytes());
        match self.provider {
            Provider::Twilio => self.twilio(request, path, authorized),
            Provider::Vonage => self.vonage(request, path, authorized),
        }
    }

    fn twilio(
        &self,
        request: &Request<Bytes>,
        path: &str,
        authorized: bool,
    ) -> (StatusCode, Value, Value) {
        let fields: serde_json::Map<String, Value> = url::form_urlencoded::parse(request.body())
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
        let fields = Value::Object(fields);
        let error = |status: StatusCode, code: u32, message: &str| {
            let body = json!({"code": code, "message": message,
                              "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
                              "status": status.as_u16()});
            (status, body, fields.clone())
        };
        let account = self.credentials.split(':').next().unwrap_or_default();
        if path != format!("/2010-04-01/Accounts/{account}/Messages.json") {
            return error(
                StatusCode::NOT_FOUND,
                20404,
                "The requested resource was not found",
            );
        }
        if !authorized {
            return error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
        }
        if let Some(status) = self.failures.lock().unwrap().pop_front() {
            return match status {
                StatusCode::TOO_MANY_REQUESTS => error(status, 20429, "Too Many Requests"),
                _ => error(status, 20500, "Internal Server Error"),
            };
        }
        for (field, code) in [("To", 21604), ("From", 21603), ("Body", 21602)] {
            if fields[field].as_str().is_none_or(str::is_empty) {
                return error(
                    StatusCode::BAD_REQUEST,
                    code,
                    &format!("A '{field}' is required."),
                );
            }
        }
        let sid = format!("SM{}", uuid::Uuid::new_v4().simple());
        let body = json!({"sid": sid, "account_sid": account, "status": "queued",
                          "direction": "outbound-api", "to": fields["To"], "from": fields["From"],
                          "body": fields["Body"], "num_segments": "1", "error_code": null});
        (StatusCode::CREATED, body, fields)
    }

    fn vonage(
        &self,
        request: &Request<Bytes>,
        path: &str,
        authorized: bool,
    ) -> (StatusCode, Value, Value) {
        let fields: Value = serde_json::from_slice(request.body()).unwrap_or(Value::Null);
        let problem = |status: StatusCode, kind: &str, title: &str, detail: &str| {
            let body = json!({"type": format!("https://developer.vonage.com/api-errors#{kind}"),
                              "title": title, "detail": detail,
                              "instance": uuid::Uuid::new_v4().to_string()});
            (status, body, fields.clone())
        };
        if path != "/v1/messages" {
            return problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not Found",
                "No such resource",
            );
        }
        if !authorized {
            return problem(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "You did not provide correct credentials.",
            );
        }
        if let Some(status) = self.failures.lock().unwrap().pop_front() {
            return match status {
                StatusCode::TOO_MANY_REQUESTS => problem(
                    status,
                    "throttled",
                    "Rate Limit Hit",
                    "Please wait, then retry your request",
                ),
                _ => problem(
                    status,
                    "internal-error",
                    "Internal Error",
                    "Something went wrong.",
                ),
            };
        }
        let valid = fields["message_type"] == "text"
            && fields["channel"] == "sms"
            && ["to", "from", "text"]
                .iter()
                .all(|f| fields[*f].as_str().is_some_and(|v| !v.is_empty()));
        if !valid {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-params",
                "Invalid params",
                "The value of one or more parameters is invalid.",
            );
        }
        let body = json!({"message_uuid": uuid::Uuid::new_v4().to_string()});
        (StatusCode::ACCEPTED, body, fields)
    }
}
