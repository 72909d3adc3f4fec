//! The real-prose corpus `bench load --scale 100k|1m` searches (issue 17):
//! 100,000 distinct passages of English prose that any machine of this kind
//! can rebuild, embedded once by the local model and cached under
//! `.keel/corpus/`, so a re-run reads it in seconds.
//!
//! The passages come, in this order, from the development collections'
//! documents, the Markdown files and doc comments of the workspace's
//! dependencies (the exact versions `Cargo.lock` names, in Cargo's registry
//! sources), the docstrings of Python's standard library (`python3`'s own
//! `ast`) and the system's English man pages (roff stripped to its text).
//! Each source is cut into paragraphs; a paragraph is a passage when it is
//! prose (at least [`MIN_WORDS`] words, most of them words of letters), and
//! one longer than [`MAX_WORDS`] words is cut into even pieces, so a passage
//! fits the model's 256 word pieces as Keel's chunks do. Exact repeats are
//! dropped.
//!
//! Embedding about 100k passages takes the better part of an hour on two
//! cores, so it is resumable: vectors are appended to `vectors.f32` batch by
//! batch, and an interrupted run continues from the last whole batch.

use std::collections::HashSet;
use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use super::collection::Collection;

/// Where the corpus is cached, from the repository's root.
pub const CACHE_DIR: &str = ".keel/corpus";
/// Passages in the corpus: the issue's 100k real chunks.
pub const CORPUS_PASSAGES: usize = 100_000;
/// Fewer words than this is a heading, a signature or a fragment, not prose.
const MIN_WORDS: usize = 12;
/// Longer paragraphs are cut into even pieces of at most this many words
/// (about 160 word pieces: within the model's 256, like Keel's chunks).
const MAX_WORDS: usize = 120;
/// Passages per embedding call, and per append to the vector cache.
const EMBED_BATCH: usize = 512;

/// The corpus: passages and their unit vectors, in the same order.
pub struct Corpus {
    pub passages: Vec<String>,
    /// `passages.len()` vectors of `keel_local::DIMENSIONS`, one after another.
    pub vectors: Vec<f32>,
    /// How many passages each source gave, in corpus order.
    pub sources: Vec<(String, usize)>,
}

impl Corpus {
    pub fn vector(&self, index: usize) -> &[f32] {
        let d = keel_local::DIMENSIONS;
        &self.vectors[index * d..(index + 1) * d]
    }

    /// "12,345 collections, ..." for the bench table.
    pub fn describe(&self) -> String {
        self.sources
            .iter()
            .map(|(name, count)| format!("{count} {name}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The cached corpus under `cache_dir`, built and embedded first where it
/// is missing or incomplete (the model from `KEEL_LOCAL_MODEL_DIR`).
pub fn load_or_build(cache_dir: &Path, collections: &[&Collection]) -> anyhow::Result<Corpus> {
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("creating {}", cache_dir.display()))?;
    let passages_path = cache_dir.join("passages.jsonl");
    let sources_path = cache_dir.join("sources.json");
    let (passages, sources) = if passages_path.exists() && sources_path.exists() {
        let passages = std::io::BufReader::new(std::fs::File::open(&passages_path)?)
            .lines()
            .map(|line| Ok(serde_json::from_str::<String>(&line?)?))
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("reading {}", passages_path.display()))?;
        let sources = serde_json::from_slice(&std::fs::read(&sources_path)?)?;
        (passages, sources)
    } else {
        eprintln!("gathering the corpus' passages…");
        let Gathered {
            passages, sources, ..
        } = gather(collections)?;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&passages_path)?);
        for passage in &passages {
            writeln!(file, "{}", serde_json::to_string(passage)?)?;
        }
        file.flush()?;
        std::fs::write(&sources_path, serde_json::to_vec(&sources)?)?;
        (passages, sources)
    };
    let vectors = embed_resumably(&cache_dir.join("vectors.f32"), &passages)?;
    Ok(Corpus {
        passages,
        vectors,
        sources,
    })
}

/// Every source's passages in corpus order, cut at [`CORPUS_PASSAGES`].
fn gather(collections: &[&Collection]) -> anyhow::Result<Gathered> {
    let mut corpus = Gathered::default();
    for collection in collections {
        for document in &collection.documents {
            corpus.add_text(&format!("{}. {}", document.title, document.content));
        }
    }
    corpus.close_source("passages of the development collections");
    for path in dependency_sources(Path::new("Cargo.lock"))? {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if path.extension().is_some_and(|e| e == "rs") {
            corpus.add_text(&strip_markdown(&doc_comments(&text)));
        } else {
            corpus.add_text(&strip_markdown(&text));
        }
    }
    corpus.close_source("of the dependencies' Markdown and doc comments");
    for docstring in python_docstrings()? {
        corpus.add_text(&strip_doctests(&docstring));
    }
    corpus.close_source("of Python's standard-library docstrings");
    for path in man_pages()? {
        if corpus.passages.len() >= CORPUS_PASSAGES {
            break;
        }
        let mut roff = String::new();
        let file = std::fs::File::open(&path)?;
        if flate2::read::GzDecoder::new(file)
            .read_to_string(&mut roff)
            .is_ok()
        {
            corpus.add_text(&roff_text(&roff));
        }
    }
    corpus.close_source("of man pages");
    if corpus.passages.len() < CORPUS_PASSAGES {
        bail!(
            "the sources gave {} passages, {CORPUS_PASSAGES} are needed ({})",
            corpus.passages.len(),
            corpus
                .sources
                .iter()
                .map(|(n, c)| format!("{c} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(corpus)
}

/// Passages collected so far, without repeats.
#[derive(Default)]
struct Gathered {
    passages: Vec<String>,
    seen: HashSet<String>,
    sources: Vec<(String, usize)>,
    counted: usize,
}

impl Gathered {
    /// The passages of `text` (paragraphs separated by blank lines), up to
    /// the corpus size.
    fn add_text(&mut self, text: &str) {
        for passage in passages(text) {
            if self.passages.len() >= CORPUS_PASSAGES {
                return;
            }
            if self.seen.insert(passage.to_lowercase()) {
                self.passages.push(passage);
            }
        }
    }

    fn close_source(&mut self, name: &str) {
        self.sources
            .push((name.to_owned(), self.passages.len() - self.counted));
        self.counted = self.passages.len();
    }
}

/// The prose passages of `text`: its paragraphs (blank-line separated) with
/// whitespace collapsed, kept when they read as prose, cut into even pieces
/// of at most [`MAX_WORDS`] words.
fn passages(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for paragraph in text.split("\n\n").flat_map(|p| p.split("\r\n\r\n")) {
        let words: Vec<&str> = paragraph.split_whitespace().collect();
        if !is_prose(&words) {
            continue;
        }
        let pieces = words.len().div_ceil(MAX_WORDS);
        let size = words.len().div_ceil(pieces);
        for piece in words.chunks(size) {
            if piece.len() >= MIN_WORDS {
                out.push(piece.join(" "));
            }
        }
    }
    out
}

/// At least [`MIN_WORDS`] words, and at least 70% of the tokens plain words
/// (letters, with an apostrophe, hyphen or trailing punctuation): code,
/// tables and option lists fail.
fn is_prose(tokens: &[&str]) -> bool {
    let words = tokens
        .iter()
        .filter(|token| {
            let word = token.trim_end_matches([',', '.', ';', ':', '!', '?', ')', '"', '\'']);
            let word = word.trim_start_matches(['(', '"', '\'']);
            word.len() >= 2
                && word
                    .chars()
                    .all(|c| c.is_alphabetic() || c == '\'' || c == '-')
        })
        .count();
    words >= MIN_WORDS && words * 10 >= tokens.len() * 7
}

/// The `.rs` and `.md` files of every registry package `lockfile` names,
/// sorted, from Cargo's unpacked sources (`$CARGO_HOME/registry/src`).
fn dependency_sources(lockfile: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let lock = std::fs::read_to_string(lockfile)
        .with_context(|| format!("reading {}", lockfile.display()))?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .context("CARGO_HOME or HOME: where Cargo keeps the registry")?;
    let registries: Vec<PathBuf> = std::fs::read_dir(cargo_home.join("registry/src"))
        .context("reading Cargo's registry sources")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let mut packages = Vec::new();
    for block in lock.split("[[package]]").skip(1) {
        let field = |name: &str| {
            block.lines().find_map(|l| {
                l.strip_prefix(&format!("{name} = \""))
                    .and_then(|v| v.strip_suffix('"'))
            })
        };
        if let (Some(name), Some(version), Some(_)) =
            (field("name"), field("version"), field("source"))
        {
            packages.push(format!("{name}-{version}"));
        }
    }
    packages.sort();
    let mut files = Vec::new();
    for package in packages {
        if let Some(dir) = registries
            .iter()
            .map(|r| r.join(&package))
            .find(|d| d.is_dir())
        {
            collect_files(&dir, &mut files)?;
        }
    }
    Ok(files)
}

/// `.rs` and `.md` files under `dir`, depth first in name order.
fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_files(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "rs" || e == "md") {
            files.push(path);
        }
    }
    Ok(())
}

/// The text of a Rust file's `///` and `//!` comments, each run of them a
/// block of Markdown, blocks separated by blank lines.
fn doc_comments(source: &str) -> String {
    let mut out = String::new();
    let mut in_block = false;
    for line in source.lines() {
        let trimmed = line.trim_start();
        let doc = trimmed
            .strip_prefix("///")
            .filter(|rest| !rest.starts_with('/'))
            .or_else(|| trimmed.strip_prefix("//!"));
        match doc {
            Some(text) => {
                out.push_str(text.strip_prefix(' ').unwrap_or(text));
                out.push('\n');
                in_block = true;
            }
            None if in_block => {
                out.push('\n');
                in_block = false;
            }
            None => {}
        }
    }
    out
}

/// Markdown reduced to its prose: code blocks, tables, HTML and headings
/// become paragraph breaks; link targets, emphasis and backticks go.
fn strip_markdown(markdown: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fenced = !fenced;
            out.push('\n');
            continue;
        }
        let indented = line.starts_with("    ") || line.starts_with('\t');
        if fenced
            || indented
            || trimmed.starts_with('#')
            || trimmed.starts_with('|')
            || trimmed.starts_with('<')
            || trimmed.starts_with("[!")
        {
            out.push('\n');
            continue;
        }
        let item = trimmed
            .strip_prefix("- ")
            .or_else(|| trimmed.strip_prefix("* "))
            .unwrap_or(trimmed);
        out.push_str(&strip_links(item).replace(['`', '*'], ""));
        out.push('\n');
    }
    out
}

/// `[text](target)` and `[text][ref]` become `text`.
fn strip_links(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find("](").or_else(|| rest.find("][")) {
        let close = if rest[open + 1..].starts_with('(') {
            ')'
        } else {
            ']'
        };
        out.push_str(&rest[..open]);
        match rest[open + 2..].find(close) {
            Some(end) => rest = &rest[open + 2 + end + 1..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out.replace('[', "")
}

/// A docstring without its doctest lines (`>>>` and their `...`
/// continuations) and the output lines right after them.
fn strip_doctests(docstring: &str) -> String {
    let mut out = String::new();
    let mut in_example = false;
    for line in docstring.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with(">>>") || (in_example && !trimmed.is_empty()) {
            in_example = true;
            continue;
        }
        in_example = false;
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every docstring (modules, classes, functions) of the standard library of
/// the `python3` on PATH, files in name order, tests excluded.
fn python_docstrings() -> anyhow::Result<Vec<String>> {
    const SCRIPT: &str = r#"
import ast, json, os, sys, sysconfig
root = sysconfig.get_paths()["stdlib"]
for directory, subdirs, files in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if d not in ("test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"))
    for name in sorted(files):
        if not name.endswith(".py"):
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except Exception:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    sys.stdout.write(json.dumps(doc) + "\n")
"#;
    let output = Command::new("python3")
        .args(["-c", SCRIPT])
        .output()
        .context("running python3 for the standard library's docstrings")?;
    if !output.status.success() {
        bail!(
            "python3 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| Ok(serde_json::from_str(line)?))
        .collect()
}

/// The English man pages (`/usr/share/man/man1` … `man8`, gzipped roff), in
/// name order.
fn man_pages() -> anyhow::Result<Vec<PathBuf>> {
    let mut pages = Vec::new();
    for section in 1..=8 {
        let Ok(entries) = std::fs::read_dir(format!("/usr/share/man/man{section}")) else {
            continue;
        };
        pages.extend(
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "gz")),
        );
    }
    pages.sort();
    Ok(pages)
}

/// The running text of a roff (man or mdoc) page: requests that start a
/// paragraph become blank lines, font requests keep their words, no-fill
/// blocks (examples) and comments go, and escapes are removed. A page that
/// only includes another (`.so`) has none.
fn roff_text(roff: &str) -> String {
    let mut out = String::new();
    let mut no_fill = false;
    for line in roff.lines() {
        if let Some(request) = line.strip_prefix('.').or_else(|| line.strip_prefix('\'')) {
            let request = request.trim_start();
            let (name, args) = request.split_once([' ', '\t']).unwrap_or((request, ""));
            match name {
                "so" => return String::new(),
                "nf" | "EX" | "Bd" | "fi" | "EE" | "Ed" => {
                    no_fill = matches!(name, "nf" | "EX" | "Bd");
                    out.push('\n');
                }
                "B" | "I" | "SM" | "SB" | "BR" | "IR" | "RB" | "RI" | "BI" | "IB" | "Em" | "Sy"
                | "Nm" | "Ar" | "Pa" | "Xr" => {
                    if !no_fill {
                        out.push_str(&roff_escapes(&args.replace('"', "")));
                        out.push('\n');
                    }
                }
                _ => out.push('\n'),
            }
        } else if !no_fill {
            out.push_str(&roff_escapes(line));
            out.push('\n');
        }
    }
    out
}

/// A roff text line without its escapes: fonts, sizes and zero-width marks
/// vanish, `\-` is a hyphen, special characters a space.
fn roff_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('-') => out.push('-'),
            Some('e') | Some('\\') => out.push('\\'),
            Some(' ') | Some('~') => out.push(' '),
            Some('"') => break,
            Some('f') | Some('s') | Some('*') | Some('n') => match chars.next() {
                Some('[') => skip_through(&mut chars, ']'),
                Some('(') => {
                    chars.next();
                    chars.next();
                }
                Some('+') | Some('-') => {
                    chars.next();
                }
                _ => {}
            },
            Some('(') => {
                chars.next();
                chars.next();
                out.push(' ');
            }
            Some('[') => {
                skip_through(&mut chars, ']');
                out.push(' ');
            }
            _ => {}
        }
    }
    out
}

fn skip_through(chars: &mut std::iter::Peekable<std::str::Chars>, end: char) {
    for c in chars.by_ref() {
        if c == end {
            break;
        }
    }
}

/// The vectors of `passages`, read from `path` as far as it holds them and
/// the rest embedded by the local model and appended batch by batch.
fn embed_resumably(path: &Path, passages: &[String]) -> anyhow::Result<Vec<f32>> {
    let width = keel_local::DIMENSIONS * 4;
    let mut bytes = std::fs::read(path).unwrap_or_default();
    bytes.truncate(bytes.len() / width * width);
    let done = bytes.len() / width;
    if done > passages.len() {
        bail!(
            "{} holds {done} vectors for {} passages; delete it to re-embed",
            path.display(),
            passages.len()
        );
    }
    if done < passages.len() {
        let dir = std::env::var_os("KEEL_LOCAL_MODEL_DIR").context(
            "KEEL_LOCAL_MODEL_DIR: the local model embeds the corpus (scripts/bench sets it)",
        )?;
        let model = keel_local::LocalModel::load(Path::new(&dir))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)?;
        file.set_len(bytes.len() as u64)?;
        let mut file = std::io::BufWriter::new(file);
        std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))?;
        eprintln!(
            "embedding the corpus: {done} of {} passages cached, the rest now (resumable)…",
            passages.len()
        );
        let bar = crate::progress::bar(passages.len(), "passages");
        bar.set_position(done as u64);
        for batch in passages[done..].chunks(EMBED_BATCH) {
            let (vectors, _) = model.embed(batch)?;
            let mut appended = Vec::with_capacity(batch.len() * width);
            for value in vectors.iter().flatten() {
                appended.extend_from_slice(&value.to_le_bytes());
            }
            file.write_all(&appended)?;
            file.flush()?;
            bytes.extend_from_slice(&appended);
            bar.inc(batch.len() as u64);
        }
        bar.finish_and_clear();
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prose_paragraphs_become_passages_and_code_does_not() {
        let text = "The quick brown fox jumps over the lazy dog while the farmer watches from the gate.\n\n\
                    let x = foo(bar, baz); let y = x.map(|v| v + 1).collect::<Vec<_>>(); x y z\n\n\
                    Too short to count.";
        assert_eq!(
            passages(text),
            vec![
                "The quick brown fox jumps over the lazy dog while the farmer watches from the gate."
            ]
        );
    }

    #[test]
    fn long_paragraphs_are_cut_into_even_pieces_within_the_word_limit() {
        let text = vec!["word"; 250].join(" ");
        let pieces = passages(&text);
        assert_eq!(
            pieces
                .iter()
                .map(|p| p.split(' ').count())
                .collect::<Vec<_>>(),
            vec![84, 84, 82]
        );
    }

    #[test]
    fn doc_comments_keep_their_text_and_not_the_code() {
        let source = "//! The crate's summary line.\n//! More.\nuse x;\n/// A function.\n//// not a doc\nfn f() {}\n";
        assert_eq!(
            doc_comments(source),
            "The crate's summary line.\nMore.\n\nA function.\n\n"
        );
    }

    #[test]
    fn markdown_keeps_prose_and_drops_code_links_and_headings() {
        let markdown = "# Title\nSee [the docs](https://x.y) and `code` for **more**.\n```rust\nfn main() {}\n```\n| a | b |\n";
        assert_eq!(
            strip_markdown(markdown),
            "\nSee the docs and code for more.\n\n\n\n\n"
        );
    }

    #[test]
    fn roff_keeps_the_words_of_a_man_page() {
        let roff = ".\\\" comment\n.TH LS 1\n.SH NAME\nls \\- list directory contents\n.SH DESCRIPTION\nList information about the \\fIFILE\\fRs (the current directory by default).\n.B \"\\-a\"\ndo not ignore\n.nf\ncode here\n.fi\n";
        assert_eq!(
            roff_text(roff),
            "\n\n\nls - list directory contents\n\nList information about the FILEs (the current directory by default).\n-a\ndo not ignore\n\n\n"
        );
        assert_eq!(roff_text(".so man1/other.1\n"), "");
    }

    #[test]
    fn doctests_are_not_prose() {
        assert_eq!(
            strip_doctests("Return the sum.\n\n>>> add(1, 2)\n3\n\nMore text.\n"),
            "Return the sum.\n\n\nMore text.\n"
        );
    }
}
