//! Sitemaps per the sitemaps.org protocol: a `<urlset>` of pages or a
//! `<sitemapindex>` of sitemaps, each file at most 50,000 entries and
//! 50 MB uncompressed, gzip accepted (recognised by its magic bytes).

use std::io::Read as _;

use quick_xml::events::Event;

/// The protocol's bounds on one file.
pub const MAX_SITEMAP_BYTES: usize = 50 * 1024 * 1024;
pub const MAX_ENTRIES: usize = 50_000;

/// What one sitemap file lists.
#[derive(Debug, PartialEq, Eq)]
pub enum Sitemap {
    Pages(Vec<String>),
    Index(Vec<String>),
}

/// Why a sitemap file cannot be used; a listing with one is incomplete.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SitemapError {
    #[error("not a sitemap: {0}")]
    Malformed(String),
    #[error("more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("larger than {MAX_SITEMAP_BYTES} bytes uncompressed")]
    TooLarge,
}

/// The body as served: gunzipped (bounded) when it is gzip.
pub fn decompress(body: Vec<u8>) -> Result<Vec<u8>, SitemapError> {
    if !body.starts_with(&[0x1f, 0x8b]) {
        return Ok(body);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .take(MAX_SITEMAP_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| SitemapError::Malformed(format!("bad gzip: {e}")))?;
    if out.len() > MAX_SITEMAP_BYTES {
        return Err(SitemapError::TooLarge);
    }
    Ok(out)
}

/// The `<loc>`s of a `<urlset>` or `<sitemapindex>` (namespace prefixes
/// ignored), trimmed, in document order.
pub fn parse(xml: &[u8]) -> Result<Sitemap, SitemapError> {
    let text =
        std::str::from_utf8(xml).map_err(|_| SitemapError::Malformed("not UTF-8 text".into()))?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut root: Option<bool> = None; // Some(true): an index
    let mut locs = Vec::new();
    let mut current: Option<String> = None;
    // Open elements: a file cut off mid-way must not pass for a short one.
    let mut depth = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| SitemapError::Malformed(e.to_string()))?;
        match event {
            Event::Start(start) => {
                depth += 1;
                let name = start.local_name();
                let name: &str = name.as_ref();
                match (root, name) {
                    (None, "urlset") => root = Some(false),
                    (None, "sitemapindex") => root = Some(true),
                    (None, other) => {
                        return Err(SitemapError::Malformed(format!(
                            "the root element is <{}>, not <urlset> or <sitemapindex>",
                            other
                        )));
                    }
                    (Some(_), "loc") => current = Some(String::new()),
                    _ => {}
                }
            }
            Event::Text(text) => {
                if let Some(loc) = current.as_mut() {
                    loc.push_str(&text.xml10_content());
                }
            }
            Event::CData(data) => {
                if let Some(loc) = current.as_mut() {
                    loc.push_str(&data.into_inner());
                }
            }
            Event::GeneralRef(reference) => {
                if let Some(loc) = current.as_mut() {
                    let resolved = match reference.resolve_char_ref() {
                        Ok(Some(c)) => Some(c),
                        _ => match AsRef::<str>::as_ref(&reference) {
                            "amp" => Some('&'),
                            "lt" => Some('<'),
                            "gt" => Some('>'),
                            "quot" => Some('"'),
                            "apos" => Some('\''),
                            _ => None,
                        },
                    };
                    let c = resolved.ok_or_else(|| {
                        SitemapError::Malformed("an unknown entity in a <loc>".into())
                    })?;
                    loc.push(c);
                }
            }
            Event::End(end) => {
                depth = depth.saturating_sub(1);
                if AsRef::<str>::as_ref(&end.local_name()) != "loc" {
                    continue;
                }
                if let Some(loc) = current.take() {
                    if locs.len() == MAX_ENTRIES {
                        return Err(SitemapError::TooManyEntries);
                    }
                    locs.push(loc.trim().to_owned());
                }
            }
            Event::Eof if depth > 0 => {
                return Err(SitemapError::Malformed(
                    "the file ends inside an element".into(),
                ));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    match root {
        Some(true) => Ok(Sitemap::Index(locs)),
        Some(false) => Ok(Sitemap::Pages(locs)),
        None => Err(SitemapError::Malformed(
            "no <urlset> or <sitemapindex>".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn a_urlset_and_an_index_list_their_locs() {
        let urlset = br#"<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
  <url><loc> https://example.com/menu?a=1&amp;b=2 </loc><lastmod>2026-01-01</lastmod></url>
  <url><loc><![CDATA[https://example.com/about]]></loc></url>
</urlset>"#;
        assert_eq!(
            parse(urlset).unwrap(),
            Sitemap::Pages(vec![
                "https://example.com/menu?a=1&b=2".into(),
                "https://example.com/about".into()
            ])
        );
        let index = br#"<sm:sitemapindex xmlns:sm="http://www.sitemaps.org/schemas/sitemap/0.9">
<sm:sitemap><sm:loc>https://example.com/s1.xml.gz</sm:loc></sm:sitemap></sm:sitemapindex>"#;
        assert_eq!(
            parse(index).unwrap(),
            Sitemap::Index(vec!["https://example.com/s1.xml.gz".into()])
        );
    }

    #[test]
    fn broken_or_oversized_sitemaps_are_refused() {
        let cases: [(&[u8], &str); 5] = [
            (b"<html><body>Not found</body></html>", "an HTML error page"),
            (
                b"<urlset><url><loc>https://a/</loc></url>",
                "cut off mid-file",
            ),
            (b"<sitemapindex><sitemap><loc>", "cut off inside a loc"),
            (b"", "empty"),
            (b"\xff\xfe<urlset/>", "not UTF-8"),
        ];
        for (body, reason) in cases {
            assert!(parse(body).is_err(), "{reason}");
        }
        let many = format!(
            "<urlset>{}</urlset>",
            "<url><loc>https://a/</loc></url>".repeat(MAX_ENTRIES + 1)
        );
        assert_eq!(parse(many.as_bytes()), Err(SitemapError::TooManyEntries));
    }

    #[test]
    fn gzip_is_recognised_by_its_magic_bytes_and_bounded() {
        let xml = b"<urlset><url><loc>https://a/x</loc></url></urlset>";
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(xml).unwrap();
        let gz = encoder.finish().unwrap();
        assert_eq!(decompress(gz).unwrap(), xml);
        assert_eq!(decompress(xml.to_vec()).unwrap(), xml, "plain XML passes");
        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        bomb.write_all(&vec![b' '; MAX_SITEMAP_BYTES + 10]).unwrap();
        assert_eq!(
            decompress(bomb.finish().unwrap()),
            Err(SitemapError::TooLarge)
        );
    }
}
