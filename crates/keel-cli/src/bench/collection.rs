//! A test collection in the SMART/TREC layout of the Cranfield, MED and CACM
//! files: documents and queries as `.I id` records with one-letter fields
//! (`.T` title, `.A` authors, `.B` source, `.W` text, …), judgments as
//! whitespace-separated lines whose columns [`JudgmentColumns`] names (TREC
//! qrels `query iteration document grade`, or CACM's `query document 0 0`).
//! Numeric ids compare as numbers (`01` is `1`). [`Layout::detect`] knows the
//! three development collections by their file names, and
//! [`parse_references`] reads the reference figures of their READMEs.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use anyhow::{Context as _, bail};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub id: String,
    pub title: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The id the judgments use for this query (see [`QueryIds`]).
    pub id: String,
    pub text: String,
}

/// How judgments name queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryIds {
    /// By position in the query file, from 1 (Cranfield: its `.I` numbers
    /// skip values, its judgments do not).
    Ordinal,
    /// By the `.I` label of the query record.
    Labelled,
}

/// The grades that count as relevant, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GradeRange {
    pub min: i32,
    pub max: i32,
}

impl GradeRange {
    pub fn contains(self, grade: i32) -> bool {
        (self.min..=self.max).contains(&grade)
    }

    /// `MIN-MAX`, both at least 1.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let (min, max) = text
            .split_once('-')
            .with_context(|| format!("`{text}`: expected MIN-MAX, such as 1-4"))?;
        let range = Self {
            min: min.trim().parse().with_context(|| format!("`{min}`"))?,
            max: max.trim().parse().with_context(|| format!("`{max}`"))?,
        };
        if range.min < 1 || range.max < range.min {
            bail!("`{text}`: grades must satisfy 1 <= MIN <= MAX");
        }
        Ok(range)
    }
}

impl fmt::Display for GradeRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// query id → (document id → grade), relevant judgments only.
pub type Judgments = HashMap<String, HashMap<String, u32>>;

/// What reading the judgments kept and left out.
#[derive(Debug, PartialEq, Eq)]
pub struct JudgmentCounts {
    pub relevant: usize,
    /// Grades of 0 or below: judged not relevant.
    pub not_relevant: usize,
    /// Positive grades outside the relevant range.
    pub out_of_range: usize,
}

/// Which whitespace-separated columns of a judgments line (from 1) hold the
/// query id, the document id and the grade; without a grade column every
/// listed pair is relevant with grade 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JudgmentColumns {
    pub query: usize,
    pub document: usize,
    pub grade: Option<usize>,
}

impl JudgmentColumns {
    /// TREC qrels: `query iteration document grade`.
    pub const TREC: Self = Self {
        query: 1,
        document: 3,
        grade: Some(4),
    };

    /// `QUERY,DOCUMENT[,GRADE]`, 1-based column numbers (`1,3,4` is TREC).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let numbers = text
            .split(',')
            .map(|n| match n.trim().parse::<usize>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => bail!("`{text}`: columns are numbers from 1"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        match numbers[..] {
            [query, document] => Ok(Self {
                query,
                document,
                grade: None,
            }),
            [query, document, grade] => Ok(Self {
                query,
                document,
                grade: Some(grade),
            }),
            _ => bail!("`{text}`: expected QUERY,DOCUMENT[,GRADE], such as 1,3,4"),
        }
    }

    fn needed(self) -> usize {
        self.query.max(self.document).max(self.grade.unwrap_or(0))
    }
}

impl fmt::Display for JudgmentColumns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.query, self.document)?;
        match self.grade {
            Some(grade) => write!(f, ",{grade}"),
            None => Ok(()),
        }
    }
}

/// The file names of a collection and how to read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub documents: String,
    pub queries: String,
    pub judgments: String,
    pub query_ids: QueryIds,
    pub judgment_columns: JudgmentColumns,
    pub relevant_grades: GradeRange,
}

impl Layout {
    /// Cranfield (`../shared/datasets/cranfield`, see its README).
    pub fn cranfield() -> Self {
        Self {
            documents: "cran.all.1400".into(),
            queries: "cran.qry".into(),
            judgments: "QRelsCorrectedforTRECeval".into(),
            query_ids: QueryIds::Ordinal,
            judgment_columns: JudgmentColumns::TREC,
            relevant_grades: GradeRange { min: 1, max: 4 },
        }
    }

    /// MED (Medline): no titles, CRLF lines, binary TREC qrels.
    pub fn med() -> Self {
        Self {
            documents: "MED.ALL".into(),
            queries: "MED.QRY".into(),
            judgments: "MED.REL".into(),
            query_ids: QueryIds::Labelled,
            judgment_columns: JudgmentColumns::TREC,
            relevant_grades: GradeRange { min: 1, max: 4 },
        }
    }

    /// CACM: judgments `query document 0 0`, query ids zero-padded.
    pub fn cacm() -> Self {
        Self {
            documents: "cacm.all".into(),
            queries: "query.text".into(),
            judgments: "qrels.text".into(),
            query_ids: QueryIds::Labelled,
            judgment_columns: JudgmentColumns {
                query: 1,
                document: 2,
                grade: None,
            },
            relevant_grades: GradeRange { min: 1, max: 4 },
        }
    }

    /// The layout of a known collection, recognised by its documents file.
    pub fn detect(dir: &Path) -> Option<Self> {
        [Self::cranfield(), Self::med(), Self::cacm()]
            .into_iter()
            .find(|layout| dir.join(&layout.documents).is_file())
    }
}

pub struct Collection {
    pub name: String,
    pub documents: Vec<Document>,
    /// Records with neither title nor text, which cannot be ingested.
    pub empty_documents: usize,
    pub queries: Vec<Query>,
    pub judgments: Judgments,
    pub judgment_counts: JudgmentCounts,
    /// The README's reference nDCG@10 figures, when it has them.
    pub references: References,
}

impl Collection {
    pub fn load(dir: &Path, layout: &Layout) -> anyhow::Result<Self> {
        let read = |name: &str| -> anyhow::Result<String> {
            std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        let (documents, empty_documents) = parse_documents(&read(&layout.documents)?);
        let queries = parse_queries(&read(&layout.queries)?, layout.query_ids);
        let (judgments, judgment_counts) = parse_judgments(
            &read(&layout.judgments)?,
            layout.judgment_columns,
            layout.relevant_grades,
        )
        .with_context(|| format!("parsing {}", layout.judgments))?;
        if documents.is_empty() || queries.is_empty() {
            bail!(
                "{}: found {} documents and {} queries",
                dir.display(),
                documents.len(),
                queries.len()
            );
        }
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "collection".to_owned());
        let references = std::fs::read_to_string(dir.join("README.md"))
            .map(|readme| parse_references(&readme))
            .unwrap_or_default();
        Ok(Self {
            name,
            documents,
            empty_documents,
            queries,
            judgments,
            judgment_counts,
            references,
        })
    }
}

/// One `.I` record: its label and its fields by letter, each field's lines
/// joined with single spaces.
struct Record {
    label: String,
    fields: HashMap<char, String>,
}

impl Record {
    fn field(&self, letter: char) -> &str {
        self.fields.get(&letter).map_or("", String::as_str)
    }
}

/// A field marker is a line holding only `.` and an uppercase letter.
fn field_marker(line: &str) -> Option<char> {
    let mut chars = line.trim_end().chars();
    match (chars.next(), chars.next(), chars.next()) {
        (Some('.'), Some(letter), None) if letter.is_ascii_uppercase() => Some(letter),
        _ => None,
    }
}

fn parse_records(text: &str) -> Vec<Record> {
    let mut records: Vec<Record> = Vec::new();
    let mut field = None;
    for line in text.lines() {
        if let Some(label) = line.strip_prefix(".I ") {
            records.push(Record {
                label: normalise_id(label),
                fields: HashMap::new(),
            });
            field = None;
        } else if let Some(letter) = field_marker(line) {
            field = Some(letter);
            if let Some(record) = records.last_mut() {
                record.fields.entry(letter).or_default();
            }
        } else if let (Some(record), Some(letter)) = (records.last_mut(), field) {
            let words = record.fields.entry(letter).or_default();
            for word in line.split_whitespace() {
                if !words.is_empty() {
                    words.push(' ');
                }
                words.push_str(word);
            }
        }
    }
    records
}

/// Numeric ids compare as numbers: `.I 001` is judged as `1`.
fn normalise_id(id: &str) -> String {
    let id = id.trim();
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
        let trimmed = id.trim_start_matches('0');
        if trimmed.is_empty() { "0" } else { trimmed }.to_owned()
    } else {
        id.to_owned()
    }
}

/// Documents with their `.T` title and `.W` text; a record without text is
/// its title alone. Returns the documents and how many records had neither.
pub fn parse_documents(text: &str) -> (Vec<Document>, usize) {
    let mut empty = 0;
    let documents = parse_records(text)
        .into_iter()
        .filter_map(|record| {
            let title = record.field('T').to_owned();
            let content = match record.field('W') {
                "" => title.clone(),
                text => text.to_owned(),
            };
            if content.is_empty() {
                empty += 1;
                return None;
            }
            Some(Document {
                id: record.label,
                title,
                content,
            })
        })
        .collect();
    (documents, empty)
}

/// Queries in file order, their text from `.W`.
pub fn parse_queries(text: &str, ids: QueryIds) -> Vec<Query> {
    parse_records(text)
        .into_iter()
        .enumerate()
        .map(|(i, record)| Query {
            id: match ids {
                QueryIds::Ordinal => (i + 1).to_string(),
                QueryIds::Labelled => record.label.clone(),
            },
            text: record.field('W').to_owned(),
        })
        .collect()
}

/// One judgment per line, in `columns`. Keeps the judgments whose grade is
/// in `relevant`; a malformed line is an error naming it.
pub fn parse_judgments(
    text: &str,
    columns: JudgmentColumns,
    relevant: GradeRange,
) -> anyhow::Result<(Judgments, JudgmentCounts)> {
    let mut judgments = Judgments::new();
    let mut counts = JudgmentCounts {
        relevant: 0,
        not_relevant: 0,
        out_of_range: 0,
    };
    for (number, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() < columns.needed() {
            bail!(
                "line {}: expected at least {} columns (query, document, grade in {columns}), got `{}`",
                number + 1,
                columns.needed(),
                line.trim()
            );
        }
        let (query, document) = (fields[columns.query - 1], fields[columns.document - 1]);
        let grade: i32 = match columns.grade {
            None => 1,
            Some(column) => {
                let grade = fields[column - 1];
                grade
                    .parse()
                    .with_context(|| format!("line {}: grade `{grade}`", number + 1))?
            }
        };
        if grade <= 0 {
            counts.not_relevant += 1;
        } else if !relevant.contains(grade) {
            counts.out_of_range += 1;
        } else {
            counts.relevant += 1;
            judgments
                .entry(normalise_id(query))
                .or_default()
                .insert(normalise_id(document), grade.unsigned_abs());
        }
    }
    Ok((judgments, counts))
}

/// A collection README's reference nDCG@10 per system.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct References {
    /// Plain BM25 over whole documents.
    pub bm25: Option<f64>,
    /// all-MiniLM-L6-v2 dense retrieval.
    pub dense: Option<f64>,
    /// Reciprocal rank fusion of the two (k 60).
    pub rrf: Option<f64>,
}

/// The nDCG@10 column of a README's markdown table whose rows name the
/// systems: `BM25 …`, `… dense …`, `… fusion …` or `RRF …`.
pub fn parse_references(readme: &str) -> References {
    let mut references = References::default();
    let mut column = None;
    for line in readme.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if !line.trim_start().starts_with('|') || cells.len() < 2 {
            column = None;
            continue;
        }
        if let Some(i) = cells.iter().position(|c| c.eq_ignore_ascii_case("nDCG@10")) {
            column = Some(i);
            continue;
        }
        let (Some(i), Some(system)) = (column, cells.first()) else {
            continue;
        };
        let Some(value) = cells
            .get(i)
            .and_then(|v| v.trim_matches('*').parse::<f64>().ok())
        else {
            continue;
        };
        let system = system.to_ascii_lowercase();
        let slot = if system.contains("fusion") || system.starts_with("rrf") {
            &mut references.rrf
        } else if system.contains("dense") {
            &mut references.dense
        } else if system.starts_with("bm25") {
            &mut references.bm25
        } else {
            continue;
        };
        slot.get_or_insert(value);
    }
    references
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCUMENTS: &str = ".I 1\n.T\nexperimental investigation of a\nwing in a slipstream .\n.A\nbrenckman,m.\n.B\nj. ae. scs. 25, 1958, 324.\n.W\nexperimental investigation of a\nwing in a slipstream .\n  an experimental study .\n.I 2\n.T\nsimple shear flow .\n.A\n.B\n.W\n.I 3\n.T\n.W\n.I 004\n.T\nboundary layers\n.W\n.5 mach number\n";

    #[test]
    fn documents_keep_title_and_text_and_skip_authors_and_source() {
        let (documents, empty) = parse_documents(DOCUMENTS);
        assert_eq!(empty, 1, "record 3 has neither title nor text");
        assert_eq!(
            documents[0],
            Document {
                id: "1".into(),
                title: "experimental investigation of a wing in a slipstream .".into(),
                content:
                    "experimental investigation of a wing in a slipstream . an experimental study ."
                        .into(),
            }
        );
        assert_eq!(
            documents[1].content, "simple shear flow .",
            "no text: the title stands in"
        );
        assert_eq!(documents[2].id, "4", "numeric ids lose leading zeros");
        assert_eq!(
            documents[2].content, ".5 mach number",
            "a line starting with a dot is text, not a field"
        );
    }

    #[test]
    fn crlf_files_parse_like_lf_files() {
        let (lf, _) = parse_documents(DOCUMENTS);
        let (crlf, _) = parse_documents(&DOCUMENTS.replace('\n', "\r\n"));
        assert_eq!(lf, crlf);
    }

    const QUERIES: &str = ".I 001\r\n.W\r\nwhat similarity laws must be obeyed\r\nwhen constructing aeroelastic models .\r\n.I 002\r\n.W\r\nwhat are the structural problems .\r\n.I 004\r\n.W\r\nheat conduction in composite slabs .\r\n";

    #[test]
    fn queries_are_numbered_by_position_not_by_label() {
        let queries = parse_queries(QUERIES, QueryIds::Ordinal);
        let ids: Vec<&str> = queries.iter().map(|q| q.id.as_str()).collect();
        assert_eq!(ids, ["1", "2", "3"], "the third query is labelled 004");
        assert_eq!(
            queries[0].text,
            "what similarity laws must be obeyed when constructing aeroelastic models ."
        );
        let labelled = parse_queries(QUERIES, QueryIds::Labelled);
        let ids: Vec<&str> = labelled.iter().map(|q| q.id.as_str()).collect();
        assert_eq!(ids, ["1", "2", "4"]);
    }

    #[test]
    fn judgments_keep_the_relevant_grade_range() {
        let text =
            "1 0 184 3\r\n1 0 29 4\r\n1 0 486 5\r\n2 0 12 0\r\n2 0 13 -1\r\n\r\n003 0 0051 1";
        let (judgments, counts) =
            parse_judgments(text, JudgmentColumns::TREC, GradeRange { min: 1, max: 4 }).unwrap();
        assert_eq!(
            counts,
            JudgmentCounts {
                relevant: 3,
                not_relevant: 2,
                out_of_range: 1
            }
        );
        assert_eq!(
            judgments["1"],
            HashMap::from([("184".to_owned(), 3), ("29".to_owned(), 4)])
        );
        assert!(
            !judgments.contains_key("2"),
            "a query with no relevant document has no entry"
        );
        assert_eq!(judgments["3"], HashMap::from([("51".to_owned(), 1)]));
    }

    #[test]
    fn malformed_judgments_name_the_line() {
        let trec = JudgmentColumns::TREC;
        let grades = GradeRange { min: 1, max: 4 };
        let error = parse_judgments("1 0 184 3\n1 184 3\n", trec, grades)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("line 2:"), "{error}");
        let error = parse_judgments("1 0 184 high\n", trec, grades)
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 1"), "{error}");
    }

    #[test]
    fn grade_ranges_parse_and_refuse_nonsense() {
        assert_eq!(
            GradeRange::parse("1-4").unwrap(),
            GradeRange { min: 1, max: 4 }
        );
        assert!(GradeRange::parse("4").is_err());
        assert!(GradeRange::parse("0-4").is_err());
        assert!(GradeRange::parse("3-2").is_err());
        assert!(GradeRange { min: 1, max: 4 }.contains(4));
        assert!(!GradeRange { min: 1, max: 4 }.contains(5));
    }

    #[test]
    fn judgment_columns_read_cacm_and_trec_lines() {
        let cacm = JudgmentColumns::parse("1,2").unwrap();
        assert_eq!(
            cacm,
            JudgmentColumns {
                query: 1,
                document: 2,
                grade: None
            }
        );
        assert_eq!(
            JudgmentColumns::parse("1,3,4").unwrap(),
            JudgmentColumns::TREC
        );
        assert!(JudgmentColumns::parse("1").is_err());
        assert!(JudgmentColumns::parse("0,2").is_err());
        assert!(JudgmentColumns::parse("1,2,x").is_err());
        let (judgments, counts) = parse_judgments(
            "01 1410  0 0\n01 1572  0 0\n\n10 0047 0 0\n",
            cacm,
            GradeRange { min: 1, max: 4 },
        )
        .unwrap();
        assert_eq!(
            counts.relevant, 3,
            "no grade column: every pair is relevant"
        );
        assert_eq!(
            judgments["1"],
            HashMap::from([("1410".to_owned(), 1), ("1572".to_owned(), 1)]),
            "query ids lose their zero padding"
        );
        assert_eq!(judgments["10"], HashMap::from([("47".to_owned(), 1)]));
        let error = parse_judgments(
            "1 2\n",
            JudgmentColumns::TREC,
            GradeRange { min: 1, max: 4 },
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("line 1:"), "{error}");
    }

    #[test]
    fn layouts_are_detected_by_their_documents_file() {
        let dir = std::env::temp_dir().join(format!("keel-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(Layout::detect(&dir), None);
        std::fs::write(dir.join("MED.ALL"), ".I 1\n.W\nx\n").unwrap();
        assert_eq!(Layout::detect(&dir), Some(Layout::med()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn references_come_from_the_readme_table() {
        let readme = "# MED\n\nSome text | with a bar.\n\n| system | nDCG@10 | MAP@100 |\n|---|---|---|\n| BM25 (k1 0.9, b 0.4, Snowball stems) | 0.672 | 0.501 |\n| all-MiniLM-L6-v2 dense (256 word pieces, cosine) | 0.790 | 0.716 |\n| reciprocal rank fusion of the two (k = 60) | 0.793 | 0.675 |\n\n| other | 1 |\n|---|---|\n| BM25 | 0.9 |\n";
        assert_eq!(
            parse_references(readme),
            References {
                bm25: Some(0.672),
                dense: Some(0.790),
                rrf: Some(0.793)
            }
        );
        assert_eq!(parse_references("no table"), References::default());
    }
}
