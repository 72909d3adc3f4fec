//! Ranking metrics over one query's ranked document ids and its relevant
//! judgments (document id → grade ≥ 1), as in the Cranfield README's
//! reference figures:
//! - nDCG@k: gain 2^grade − 1, discount log2(rank + 1), ideal ranking from
//!   every relevant judgment;
//! - AP@k: precision at each relevant rank within k, summed, divided by
//!   min(#relevant, k) (MAP@k is its mean over queries);
//! - Recall@k: relevant documents within k over all relevant documents.
//!
//! A ranking must hold each document once ([`first_occurrences`]); score ties
//! are already broken by the search itself (by chunk id), so the order is
//! deterministic. Queries without a relevant judgment have no score: they are
//! left out of the means, and counted.

use std::collections::{HashMap, HashSet};

pub type Grades = HashMap<String, u32>;

fn gain(grade: u32) -> f64 {
    2f64.powi(grade as i32) - 1.0
}

fn discount(rank_from_zero: usize) -> f64 {
    (rank_from_zero as f64 + 2.0).log2()
}

pub fn ndcg(ranked: &[String], grades: &Grades, k: usize) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, document)| grades.get(document).map_or(0.0, |g| gain(*g)) / discount(i))
        .sum();
    let mut ideal: Vec<u32> = grades.values().copied().collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let ideal_dcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, grade)| gain(*grade) / discount(i))
        .sum();
    if ideal_dcg == 0.0 {
        0.0
    } else {
        dcg / ideal_dcg
    }
}

pub fn average_precision(ranked: &[String], grades: &Grades, k: usize) -> f64 {
    if grades.is_empty() {
        return 0.0;
    }
    let mut hits = 0;
    let mut precisions = 0.0;
    for (i, document) in ranked.iter().take(k).enumerate() {
        if grades.contains_key(document) {
            hits += 1;
            precisions += hits as f64 / (i + 1) as f64;
        }
    }
    precisions / grades.len().min(k) as f64
}

pub fn recall(ranked: &[String], grades: &Grades, k: usize) -> f64 {
    if grades.is_empty() {
        return 0.0;
    }
    let found = ranked
        .iter()
        .take(k)
        .filter(|document| grades.contains_key(*document))
        .count();
    found as f64 / grades.len() as f64
}

/// Ids in order of first appearance: a document ranks where its best chunk does.
pub fn first_occurrences<'a>(ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.into_iter()
        .filter(|id| seen.insert(*id))
        .map(str::to_owned)
        .collect()
}

/// nDCG@10, AP@100, Recall@10 and Recall@100 of one query. `answer` is the
/// ranking a client gets (scored to 10), `deep` a longer one (scored to 100).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scores {
    pub ndcg_at_10: f64,
    pub map_at_100: f64,
    pub recall_at_10: f64,
    pub recall_at_100: f64,
}

impl Scores {
    /// `None` for a query without relevant judgments.
    pub fn of(answer: &[String], deep: &[String], grades: &Grades) -> Option<Self> {
        if grades.is_empty() {
            return None;
        }
        Some(Self {
            ndcg_at_10: ndcg(answer, grades, 10),
            map_at_100: average_precision(deep, grades, 100),
            recall_at_10: recall(answer, grades, 10),
            recall_at_100: recall(deep, grades, 100),
        })
    }
}

/// Means over the scored queries.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MeanScores {
    pub means: Scores,
    pub queries: usize,
}

impl FromIterator<Scores> for MeanScores {
    fn from_iter<I: IntoIterator<Item = Scores>>(scores: I) -> Self {
        let mut sum = Scores::default();
        let mut queries = 0;
        for s in scores {
            sum.ndcg_at_10 += s.ndcg_at_10;
            sum.map_at_100 += s.map_at_100;
            sum.recall_at_10 += s.recall_at_10;
            sum.recall_at_100 += s.recall_at_100;
            queries += 1;
        }
        let n = queries.max(1) as f64;
        Self {
            means: Scores {
                ndcg_at_10: sum.ndcg_at_10 / n,
                map_at_100: sum.map_at_100 / n,
                recall_at_10: sum.recall_at_10 / n,
                recall_at_100: sum.recall_at_100 / n,
            },
            queries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranking(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    fn grades(pairs: &[(&str, u32)]) -> Grades {
        pairs.iter().map(|(d, g)| ((*d).to_owned(), *g)).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn ndcg_by_hand_with_graded_relevance() {
        let judged = grades(&[("a", 3), ("b", 1), ("c", 2)]);
        // DCG = 7/log2(3) + 3/log2(4) + 1/log2(6) = 4.416508 + 1.5 + 0.386853
        // ideal = 7/log2(2) + 3/log2(3) + 1/log2(4) = 7 + 1.892789 + 0.5
        let value = ndcg(&ranking(&["x", "a", "c", "y", "b"]), &judged, 10);
        assert!(close(value, 6.303361 / 9.392789), "{value}");
        assert!(close(ndcg(&ranking(&["a", "c", "b"]), &judged, 10), 1.0));
        assert_eq!(ndcg(&ranking(&["x", "y"]), &judged, 10), 0.0);
    }

    #[test]
    fn ndcg_cuts_at_k_and_its_ideal_too() {
        let judged = grades(&[("a", 1), ("b", 1)]);
        let late: Vec<String> = (0..10)
            .map(|i| format!("x{i}"))
            .chain(["a".to_owned()])
            .collect();
        assert_eq!(ndcg(&late, &judged, 10), 0.0, "rank 11 is outside @10");
        // @1: the ideal holds one document, so one hit at rank 1 is perfect.
        assert!(close(ndcg(&ranking(&["b", "x"]), &judged, 1), 1.0));
    }

    #[test]
    fn documents_of_equal_grade_are_interchangeable() {
        let judged = grades(&[("a", 2), ("b", 2), ("c", 1)]);
        let one = ndcg(&ranking(&["a", "b", "c"]), &judged, 10);
        let other = ndcg(&ranking(&["b", "a", "c"]), &judged, 10);
        assert!(close(one, 1.0) && close(other, 1.0));
        let worse = ndcg(&ranking(&["c", "a", "b"]), &judged, 10);
        assert!(worse < 1.0);
    }

    #[test]
    fn average_precision_by_hand() {
        let judged = grades(&[("a", 3), ("b", 1), ("c", 2)]);
        let ranked = ranking(&["x", "a", "c", "y", "b"]);
        // hits at ranks 2, 3, 5: (1/2 + 2/3 + 3/5) / 3
        assert!(close(
            average_precision(&ranked, &judged, 100),
            (0.5 + 2.0 / 3.0 + 0.6) / 3.0
        ));
        // @3 sees ranks 2 and 3 only, still over min(3, 3) relevant.
        assert!(close(
            average_precision(&ranked, &judged, 3),
            (0.5 + 2.0 / 3.0) / 3.0
        ));
        // Five relevant, k = 2: dividing by min(5, 2) makes a perfect top 2 score 1.
        let many = grades(&[("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1)]);
        assert!(close(
            average_precision(&ranking(&["a", "b"]), &many, 2),
            1.0
        ));
    }

    #[test]
    fn recall_by_hand() {
        let judged = grades(&[("a", 3), ("b", 1), ("c", 2)]);
        let ranked = ranking(&["x", "a", "c", "y", "b"]);
        assert!(close(recall(&ranked, &judged, 2), 1.0 / 3.0));
        assert!(close(recall(&ranked, &judged, 4), 2.0 / 3.0));
        assert!(close(recall(&ranked, &judged, 100), 1.0));
    }

    #[test]
    fn a_document_counts_once_at_its_best_chunk() {
        let ids = ["b", "a", "b", "c", "a"];
        assert_eq!(first_occurrences(ids), ranking(&["b", "a", "c"]));
    }

    #[test]
    fn queries_without_relevant_documents_are_left_out_of_the_mean() {
        let judged = grades(&[("a", 1)]);
        let hit = ranking(&["a"]);
        let miss = ranking(&["x"]);
        let scores = [
            Scores::of(&hit, &hit, &judged),
            Scores::of(&miss, &miss, &judged),
            Scores::of(&hit, &hit, &Grades::new()),
        ];
        assert_eq!(scores[2], None);
        let mean: MeanScores = scores.into_iter().flatten().collect();
        assert_eq!(mean.queries, 2);
        assert!(close(mean.means.ndcg_at_10, 0.5));
        assert!(close(mean.means.map_at_100, 0.5));
        assert!(close(mean.means.recall_at_100, 0.5));
    }

    #[test]
    fn answer_and_deep_rankings_feed_their_own_metrics() {
        let judged = grades(&[("a", 1), ("b", 1)]);
        let answer = ranking(&["a"]);
        let deep = ranking(&["a", "x", "b"]);
        let scores = Scores::of(&answer, &deep, &judged).unwrap();
        assert!(close(scores.recall_at_10, 0.5));
        assert!(close(scores.recall_at_100, 1.0));
        assert!(close(scores.map_at_100, (1.0 + 2.0 / 3.0) / 2.0));
    }
}
