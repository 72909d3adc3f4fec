//! A plain BM25, written to check Keel's keyword ranking against
//! (`keel bench quality --reference`). It ranks bags of terms that Postgres
//! analysed (`to_tsvector('english', …)`, so stems and stopwords are Keel's
//! own): either Keel's chunks, a document ranking where its best chunk does,
//! or whole documents (title and text), as the collections' README figures do.
//!
//! score(q, u) = Σ over the query's terms t present in u of
//!   idf(t) · tf · (k1 + 1) / (tf + k1 · (1 − b + b · len(u) / avglen)),
//! idf(t) = ln(1 + (N − n(t) + 0.5) / (n(t) + 0.5)) (Lucene's, never negative),
//! with N units, n(t) the units holding t, len the unit's term count.

use std::collections::HashMap;

use super::metrics::first_occurrences;

/// One ranked unit (a chunk or a document) of `document`.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub document: String,
    /// Term → occurrences.
    pub terms: HashMap<String, u32>,
    /// Term count (occurrences, not distinct terms).
    pub length: u32,
}

impl Unit {
    pub fn new(document: &str, terms: impl IntoIterator<Item = (String, u32)>) -> Self {
        let terms: HashMap<String, u32> = terms.into_iter().collect();
        Self {
            document: document.to_owned(),
            length: terms.values().sum(),
            terms,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub k1: f64,
    pub b: f64,
    /// A term the query repeats counts that many times (else once).
    pub query_counts: bool,
}

pub struct Bm25 {
    units: Vec<Unit>,
    frequencies: HashMap<String, u32>,
    average_length: f64,
}

impl Bm25 {
    pub fn new(units: Vec<Unit>) -> Self {
        let mut frequencies: HashMap<String, u32> = HashMap::new();
        for unit in &units {
            for term in unit.terms.keys() {
                *frequencies.entry(term.clone()).or_default() += 1;
            }
        }
        let total: u64 = units.iter().map(|u| u64::from(u.length)).sum();
        let average_length = total as f64 / units.len().max(1) as f64;
        Self {
            units,
            frequencies,
            average_length,
        }
    }

    pub fn idf(&self, term: &str) -> f64 {
        let n = f64::from(self.frequencies.get(term).copied().unwrap_or(0));
        let units = self.units.len() as f64;
        (1.0 + (units - n + 0.5) / (n + 0.5)).ln()
    }

    /// Each unit's score for `query` (its terms, repeated as often as it
    /// repeats them), matching units only, best first; ties by position.
    pub fn scores(&self, query: &[String], params: Params) -> Vec<(usize, f64)> {
        let mut terms: Vec<&String> = query.iter().collect();
        terms.sort();
        let mut counts: Vec<f64> = Vec::new();
        terms.dedup_by(|a, b| a == b);
        for term in &terms {
            let n = query.iter().filter(|t| t == term).count();
            counts.push(if params.query_counts { n as f64 } else { 1.0 });
        }
        let idfs: Vec<f64> = terms
            .iter()
            .zip(&counts)
            .map(|(t, n)| n * self.idf(t))
            .collect();
        let mut scored: Vec<(usize, f64)> = self
            .units
            .iter()
            .enumerate()
            .filter_map(|(i, unit)| {
                let norm = params.k1
                    * (1.0 - params.b + params.b * f64::from(unit.length) / self.average_length);
                let mut score = 0.0;
                let mut matched = false;
                for (term, idf) in terms.iter().zip(&idfs) {
                    if let Some(&tf) = unit.terms.get(*term) {
                        let tf = f64::from(tf);
                        score += idf * tf * (params.k1 + 1.0) / (tf + norm);
                        matched = true;
                    }
                }
                matched.then_some((i, score))
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored
    }

    /// Document ids, each where its best unit ranks.
    pub fn rank_documents(&self, query: &[String], params: Params) -> Vec<String> {
        let scores = self.scores(query, params);
        first_occurrences(scores.iter().map(|(i, _)| self.units[*i].document.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(document: &str, terms: &[(&str, u32)]) -> Unit {
        Unit::new(document, terms.iter().map(|(t, n)| (t.to_string(), *n)))
    }

    #[allow(non_snake_case)]
    fn P(k1: f64, b: f64) -> Params {
        Params {
            k1,
            b,
            query_counts: false,
        }
    }

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn scores_match_the_formula_by_hand() {
        // N 3, avglen (4 + 2 + 6) / 3 = 4.
        let index = Bm25::new(vec![
            unit("a", &[("wing", 2), ("flow", 2)]),
            unit("b", &[("flow", 2)]),
            unit("c", &[("heat", 6)]),
        ]);
        let params = Params {
            k1: 1.2,
            b: 0.75,
            query_counts: false,
        };
        // idf(wing) = ln(1 + 2.5 / 1.5), idf(flow) = ln(1 + 1.5 / 2.5).
        let (idf_wing, idf_flow) = ((1.0f64 + 2.5 / 1.5).ln(), (1.0f64 + 1.5 / 2.5).ln());
        assert!((index.idf("wing") - idf_wing).abs() < 1e-12);
        // Unit a: length 4 = avglen, so the norm is k1.
        let a = idf_wing * 2.0 * 2.2 / (2.0 + 1.2) + idf_flow * 2.0 * 2.2 / (2.0 + 1.2);
        // Unit b: length 2, norm 1.2 · (0.25 + 0.75 · 0.5) = 0.75.
        let b = idf_flow * 2.0 * 2.2 / (2.0 + 0.75);
        let scores = index.scores(&words("wing flow flow missing"), params);
        assert_eq!(scores.len(), 2, "c matches no term");
        assert_eq!(scores[0].0, 0);
        assert!((scores[0].1 - a).abs() < 1e-12, "{} vs {a}", scores[0].1);
        assert_eq!(scores[1].0, 1);
        assert!((scores[1].1 - b).abs() < 1e-12, "{} vs {b}", scores[1].1);
        let counted = Params {
            query_counts: true,
            ..params
        };
        let scores = index.scores(&words("wing flow flow missing"), counted);
        assert!((scores[1].1 - 2.0 * b).abs() < 1e-12, "flow counts twice");
    }

    #[test]
    fn length_normalisation_follows_b() {
        let index = Bm25::new(vec![
            unit("long", &[("wing", 1), ("x", 9)]),
            unit("short", &[("wing", 1)]),
        ]);
        let shorter_first = index.rank_documents(&words("wing"), P(1.2, 0.75));
        assert_eq!(shorter_first, ["short", "long"]);
        let scores = index.scores(&words("wing"), P(1.2, 0.0));
        assert_eq!(scores[0].1, scores[1].1, "b 0: length does not count");
        assert_eq!(
            index.rank_documents(&words("wing"), P(1.2, 0.0)),
            ["long", "short"],
            "ties keep unit order"
        );
    }

    #[test]
    fn a_document_ranks_where_its_best_chunk_does() {
        let index = Bm25::new(vec![
            unit("d1", &[("flow", 1), ("x", 3)]),
            unit("d2", &[("wing", 1)]),
            unit("d1", &[("wing", 2), ("flow", 1)]),
            unit("d3", &[("y", 1)]),
        ]);
        assert_eq!(
            index.rank_documents(&words("wing flow"), P(0.9, 0.4)),
            ["d1", "d2"]
        );
    }

    #[test]
    fn units_count_occurrences_for_their_length() {
        assert_eq!(unit("d", &[("a", 3), ("b", 1)]).length, 4);
    }
}
