//! What a fetched page says: main content out of HTML (navigation, footers
//! and scripts dropped, headings kept as Markdown headings) with its title
//! and canonical URL, or plain text and Markdown as they are. Anything else
//! (PDF, images, archives) is unsupported for now.

use url::Url;

/// A page's text, ready to become a document.
#[derive(Debug, PartialEq, Eq)]
pub struct Extracted {
    pub title: String,
    pub content: String,
    /// `<link rel=canonical>`, resolved against the page's URL.
    pub canonical: Option<Url>,
}

/// Why a page yields no document.
#[derive(Debug, PartialEq, Eq)]
pub enum Unusable {
    /// A kind of content Keel does not read (yet): its media type.
    Unsupported(String),
    /// Readable, but nothing is left once the page's chrome is dropped.
    Empty,
}

const MAX_TITLE_CHARS: usize = 500;

/// Reads a page served as `content_type` from `url`.
pub fn extract(url: &Url, content_type: Option<&str>, body: &[u8]) -> Result<Extracted, Unusable> {
    let media = content_type
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .unwrap_or_default();
    // Servers label binaries loosely; the bytes say what a PDF is.
    if body.starts_with(b"%PDF-") {
        return Err(Unusable::Unsupported("application/pdf".into()));
    }
    let text = String::from_utf8_lossy(body);
    let extracted = match media.as_str() {
        "text/html" | "application/xhtml+xml" => html(url, &text),
        "text/markdown" | "text/x-markdown" => plain(url, &text, true),
        "text/plain" if url.path().ends_with(".md") => plain(url, &text, true),
        "text/plain" => plain(url, &text, false),
        "" if looks_like_html(&text) => html(url, &text),
        other => {
            return Err(Unusable::Unsupported(if other.is_empty() {
                "unknown".into()
            } else {
                other.to_owned()
            }));
        }
    };
    if extracted.content.trim().is_empty() {
        return Err(Unusable::Empty);
    }
    Ok(extracted)
}

fn looks_like_html(text: &str) -> bool {
    let start = text
        .trim_start()
        .get(..15)
        .unwrap_or_default()
        .to_ascii_lowercase();
    start.starts_with("<!doctype html") || start.starts_with("<html")
}

fn html(url: &Url, text: &str) -> Extracted {
    let document = dom_query::Document::from(text);
    let canonical = document
        .select("link[rel~=canonical][href]")
        .attr("href")
        .and_then(|href| url.join(href.trim()).ok());
    let config = dom_smoothie::Config {
        text_mode: dom_smoothie::TextMode::Markdown,
        // Short pages (opening hours, a menu) are content too.
        char_threshold: 0,
        ..Default::default()
    };
    let parsed =
        dom_smoothie::Readability::with_document(document, Some(url.as_str()), Some(config))
            .and_then(|mut readability| readability.parse());
    let (title, content) = match parsed {
        Ok(article) => (article.title, article.text_content.to_string()),
        // Nothing article-like: the whole body's text, scripts dropped.
        Err(_) => {
            let document = dom_query::Document::from(text);
            document
                .select("script, style, noscript, nav, footer, header")
                .remove();
            let title = document.select("title").text().to_string();
            (title, document.select("body").text().to_string())
        }
    };
    Extracted {
        title: bounded_title(&title, url),
        content: tidy(&content),
        canonical,
    }
}

fn plain(url: &Url, text: &str, markdown: bool) -> Extracted {
    let heading = markdown
        .then(|| {
            text.lines()
                .find_map(|line| line.strip_prefix("# ").map(str::trim))
        })
        .flatten()
        .unwrap_or_default();
    Extracted {
        title: bounded_title(heading, url),
        content: tidy(text),
        canonical: None,
    }
}

/// The page's title, else its URL's last path segment, else its host.
fn bounded_title(title: &str, url: &Url) -> String {
    let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
    let title = if title.is_empty() {
        url.path_segments()
            .and_then(|mut s| s.rfind(|s| !s.is_empty()).map(str::to_owned))
            .unwrap_or_else(|| url.host_str().unwrap_or_default().to_owned())
    } else {
        title
    };
    title.chars().take(MAX_TITLE_CHARS).collect()
}

/// Trailing spaces dropped and runs of blank lines folded, so the content
/// hash does not change with a server's whitespace.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for line in text.lines().map(str::trim_end) {
        if line.trim().is_empty() {
            blank += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(path: &str) -> Url {
        Url::parse(&format!("https://diner.example{path}")).unwrap()
    }

    #[test]
    fn html_keeps_the_main_content_and_its_headings_and_drops_the_chrome() {
        let page = r#"<!doctype html><html><head><title>Menu | Joe's Diner</title>
<link rel="canonical" href="/menu">
<script>var tracking = "SCRIPT-TEXT";</script></head>
<body><nav><a href="/">Home</a> <a href="/about">NAVIGATION-LINK</a></nav>
<main><article><h1>Our menu</h1><p>Every dish is cooked to order in our kitchen, from local produce.</p>
<h2>Mains</h2><p>Chickpea curry with rice and pickles, a house favourite for twenty years.</p>
<p>Grilled halloumi with a lemon and herb salad, served warm.</p></article></main>
<footer>FOOTER-TEXT Copyright Joe's Diner</footer></body></html>"#;
        let extracted = extract(
            &url("/menu?ref=home"),
            Some("text/html; charset=utf-8"),
            page.as_bytes(),
        )
        .unwrap();
        assert_eq!(extracted.title, "Menu | Joe's Diner");
        assert_eq!(extracted.canonical, Some(url("/menu")));
        assert!(
            extracted.content.contains("Chickpea curry"),
            "{}",
            extracted.content
        );
        assert!(
            extracted.content.contains("## Mains"),
            "headings stay: {}",
            extracted.content
        );
        for chrome in ["SCRIPT-TEXT", "NAVIGATION-LINK", "FOOTER-TEXT"] {
            assert!(
                !extracted.content.contains(chrome),
                "{chrome} dropped: {}",
                extracted.content
            );
        }
    }

    #[test]
    fn text_and_markdown_are_read_as_they_are_and_binaries_are_unsupported() {
        let markdown = extract(
            &url("/hours.md"),
            Some("text/markdown"),
            b"# Opening hours\n\nDaily 9-5.  \n\n\n\nClosed Mondays.\n",
        )
        .unwrap();
        assert_eq!(markdown.title, "Opening hours");
        assert_eq!(
            markdown.content,
            "# Opening hours\n\nDaily 9-5.\n\nClosed Mondays."
        );
        let text = extract(
            &url("/notes/allergens.txt"),
            Some("text/plain"),
            b"Contains nuts.",
        )
        .unwrap();
        assert_eq!(text.title, "allergens.txt");
        let cases: [(Option<&str>, &[u8], &str); 3] = [
            (Some("application/pdf"), b"%PDF-1.7 ...", "a PDF"),
            (
                Some("text/html"),
                b"%PDF-1.4 mislabelled",
                "a PDF served as HTML",
            ),
            (Some("image/png"), b"\x89PNG", "an image"),
        ];
        for (content_type, body, reason) in cases {
            assert!(
                matches!(
                    extract(&url("/x"), content_type, body),
                    Err(Unusable::Unsupported(_))
                ),
                "{reason}"
            );
        }
        assert_eq!(
            extract(&url("/x"), Some("text/plain"), b"  \n "),
            Err(Unusable::Empty)
        );
    }
}
