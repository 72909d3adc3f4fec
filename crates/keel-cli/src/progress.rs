//! Progress bars for the long runs (migrations, ingest, embedding, growing a
//! synthetic tenant), on stderr.
//!
//! indicatif draws nothing when stderr is not a terminal, so CI logs and
//! redirected output keep only the plain lines the commands print anyway.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `len` `unit`s, e.g. `bar(1400, "documents")`.
pub fn bar(len: usize, unit: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(&format!(
        "{{elapsed_precise}} [{{wide_bar}}] {{pos}}/{{len}} {unit} ({{eta}} left) {{msg}}"
    ))
    .expect("the template is valid")
    .progress_chars("=> ");
    ProgressBar::new(len as u64).with_style(style)
}
