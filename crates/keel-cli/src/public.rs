//! The static files of `public/` on the dev server, as Vercel serves its
//! output directory beside the functions: `/reference/index.html` at that
//! path and at `/reference/`.
//!
//! Only the files found under the directory at start are routes, each at
//! its exact path, so no request path can reach a file outside it (`..` is
//! a segment no route has). A file is read again on each request, so an
//! edited page shows on reload; a new file needs a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use http::{HeaderValue, Method, Response, header};
use keel::web::{ApiError, ApiRequest, Body, Route};

/// What the page may load: its own origin only (so a page that reached for
/// a CDN fails here, as it would offline), plus the inline styles and
/// `data:` images renderers set from script.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; frame-ancestors 'none'";

/// URL path → file, filled once by [`routes`].
static FILES: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();

/// A route for each file under `dir` (and for each `index.html`, its
/// directory's path). An absent directory serves nothing.
pub fn routes(dir: &Path) -> anyhow::Result<Vec<Route>> {
    let mut files = HashMap::new();
    if dir.is_dir() {
        collect(dir, "", &mut files)?;
    }
    let routes = files
        .keys()
        .map(|path| {
            // A route's path lives as long as the server; there are a handful.
            let path: &'static str = Box::leak(path.clone().into_boxed_str());
            Route::new(path, &[Method::GET], serve_file)
        })
        .collect();
    FILES
        .set(files)
        .map_err(|_| anyhow::anyhow!("the public files are set once"))?;
    Ok(routes)
}

/// Adds the files under `dir` at URL paths under `prefix`. Names that are not
/// plain URL segments (spaces, braces, which route patterns read as
/// parameters) and symbolic links are left out.
fn collect(dir: &Path, prefix: &str, files: &mut HashMap<String, PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with('.') || !name.bytes().all(is_url_safe) {
            continue;
        }
        let path = format!("{prefix}/{name}");
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect(&entry.path(), &path, files)?;
        } else if kind.is_file() {
            if name == "index.html" {
                files.insert(
                    if prefix.is_empty() { "/" } else { prefix }.to_owned(),
                    entry.path(),
                );
            }
            files.insert(path, entry.path());
        }
    }
    Ok(())
}

fn is_url_safe(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_')
}

fn serve_file(_: Arc<keel::App>, request: ApiRequest) -> keel::web::routing::HandlerFuture {
    Box::pin(async move {
        let path = match request.path.trim_end_matches('/') {
            "" => "/",
            path => path,
        };
        let file = FILES
            .get()
            .and_then(|files| files.get(path))
            .ok_or_else(|| ApiError::not_found("no such file"))?;
        let bytes = tokio::fs::read(file)
            .await
            .with_context(|| format!("reading {}", file.display()))
            .map_err(ApiError::internal)?;
        let mut response = Response::new(Body::Full(bytes.into()));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(file)),
        );
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        Ok(response)
    })
}

/// The media type Vercel sends for the file's extension.
fn content_type(file: &Path) -> &'static str {
    match file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
    {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "application/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}
