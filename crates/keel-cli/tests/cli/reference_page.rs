//! The API reference page (public/reference/) in a real browser: Debian's
//! `chromium`, headless, loads it from `keel serve` (what `scripts/server`
//! runs) and every operation of the OpenAPI document must be listed in the
//! rendered page, with nothing refused by the page's same-origin policy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::serve;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `METHOD /path` of every operation in the document.
fn operations(document: &Value) -> BTreeSet<String> {
    let paths = document["paths"]
        .as_object()
        .expect("the document has paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(move |m| format!("{} {path}", m.to_ascii_uppercase()))
        })
        .collect()
}

/// `METHOD /path` of every operation the rendered page shows: Swagger UI
/// writes each as a method badge followed by the path, with `<wbr>` break
/// hints before its slashes.
fn listed(dom: &str) -> BTreeSet<String> {
    dom.split(r#"class="opblock-summary-method">"#)
        .skip(1)
        .filter_map(|block| {
            let (method, rest) = block.split_once("</span>")?;
            let (_, rest) = rest.split_once(r#"class="opblock-summary-path""#)?;
            let (_, rest) = rest.split_once("<span>")?;
            let (path, _) = rest.split_once("</span>")?;
            Some(format!("{method} {}", path.replace("<wbr>", "")))
        })
        .collect()
}

/// The DOM after the page's scripts ran (and its fetches answered), with
/// what chromium logged.
fn render(url: &str) -> (String, String) {
    let profile = tempdir("keel-chromium-profile");
    let child = Command::new("chromium")
        .args([
            "--headless",
            // Root (CI, containers) has no user namespace sandbox to drop into.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            // Virtual time stops while a fetch is pending: the budget is
            // for the page's own timers, not the network.
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium is installed (scripts/test installs Debian's chromium)");
    // The DOM is read while chromium writes it: a page larger than the pipe's
    // buffer would otherwise block chromium on a write nobody reads.
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let output = child.wait_with_output();
        done.send(()).ok();
        output
    });
    if finished.recv_timeout(Duration::from_secs(90)).is_err() {
        Command::new("kill").arg(pid.to_string()).status().ok();
        panic!("chromium did not finish rendering {url} in 90 s");
    }
    let output = reader.join().unwrap().unwrap();
    std::fs::remove_dir_all(&profile).ok();
    assert!(output.status.success(), "chromium failed: {output:?}");
    (
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_reference_page_lists_every_operation_of_the_document_in_a_real_browser() {
    let public = repo_root().join("public");
    let document: Value =
        serde_json::from_slice(&std::fs::read(public.join("openapi.json")).unwrap()).unwrap();
    let expected = operations(&document);
    assert!(!expected.is_empty(), "the document lists no operation");
    let server = serve(&public);

    let started = Instant::now();
    let (dom, log) = render(&format!("{}/reference/", server.base));
    eprintln!("chromium rendered the reference in {:?}", started.elapsed());

    let title = document["info"]["title"].as_str().unwrap();
    assert!(
        dom.contains(title),
        "the page does not show the document's title {title}"
    );
    let shown = listed(&dom);
    let missing: Vec<_> = expected.difference(&shown).collect();
    assert!(
        missing.is_empty(),
        "not on the page: {missing:?}\n(it lists {shown:?})"
    );
    // The page's CSP allows this origin only: a renderer reaching for a CDN,
    // fonts or a validator elsewhere is blocked, and chromium logs it.
    assert!(
        !log.contains("Content Security Policy"),
        "the page tried what its policy refuses (another origin?):\n{log}"
    );
}
