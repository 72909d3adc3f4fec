//! A test collection in the SMART/TREC layout of the Cranfield files:
//! documents and queries as `.I id` records with one-letter fields (`.T`
//! title, `.A` authors, `.B` source, `.W` text, …), judgments as TREC qrels
//! lines `query iteration document grade`.

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

/// The file names of a collection and how to read them.
pub struct Layout {
    pub documents: String,
    pub queries: String,
    pub judgments: String,
    pub query_ids: QueryIds,
    pub relevant_grades: GradeRange,
}

pub struct Collection {
    pub name: String,
    pub documents: Vec<Document>,
    /// Records with neither title nor text, which cannot be ingested.
    pub empty_documents: usize,
    pub queries: Vec<Query>,
    pub judgments: Judgments,
    pub judgment_counts: JudgmentCounts,
}

impl Collection {
    pub fn load(dir: &Path, layout: &Layout) -> anyhow::Result<Self> {
        let read = |name: &str| -> anyhow::Result<String> {
            std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        let (documents, empty_documents) = parse_documents(&read(&layout.documents)?);
        let queries = parse_queries(&read(&layout.queries)?, layout.query_ids);
        let (judgments, judgment_counts) =
            parse_judgments(&read(&layout.judgments)?, layout.relevant_grades)
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
        Ok(Self {
            name,
            documents,
            empty_documents,
            queries,
            judgments,
            judgment_counts,
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

/// TREC qrels: `query iteration document grade` per line. Keeps the
/// judgments whose grade is in `relevant`; a malformed line is an error
/// naming it.
pub fn parse_judgments(
    text: &str,
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
        let [query, _iteration, document, grade] = fields[..] else {
            if fields.is_empty() {
                continue;
            }
            bail!(
                "line {}: expected `query iteration document grade`, got `{}`",
                number + 1,
                line.trim()
            );
        };
        let grade: i32 = grade
            .parse()
            .with_context(|| format!("line {}: grade `{grade}`", number + 1))?;
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
        let (judgments, counts) = parse_judgments(text, GradeRange { min: 1, max: 4 }).unwrap();
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
        let error = parse_judgments("1 0 184 3\n1 184 3\n", GradeRange { min: 1, max: 4 })
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("line 2:"), "{error}");
        let error = parse_judgments("1 0 184 high\n", GradeRange { min: 1, max: 4 })
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
}
