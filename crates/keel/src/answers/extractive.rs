//! Extractive answers, for when no chat model is configured (the local
//! stack, CI): the sentences of the best passages that share the most words
//! with the question, quoted with their citation numbers. Honest and
//! offline: it says it is quoting, and answers as model `keel-extractive`.

use std::collections::HashSet;

use super::Citation;

pub const MODEL: &str = "keel-extractive";

/// Passages quoted at most, and sentences per passage.
const QUOTED_PASSAGES: usize = 3;
const SENTENCES_PER_PASSAGE: usize = 2;
const MAX_QUOTE_CHARS: usize = 400;

const STOPWORDS: &[&str] = &[
    "the", "and", "are", "for", "you", "your", "with", "what", "when", "where", "which", "who",
    "how", "does", "have", "has", "any", "can", "from", "that", "this", "there", "they", "them",
    "their", "about", "also", "was", "were", "will", "would", "could", "should", "our", "out",
    "all", "not", "but", "its", "into", "than", "then", "too", "very", "just", "some", "such",
    "only", "own", "same", "tell", "please", "know", "want", "need",
];

const NOTHING_FOUND: &str = "I couldn't find anything about that in the knowledge base.";
const TOOLS_UNAVAILABLE: &str = "(No chat model is configured, so tools were not called: this answer quotes the knowledge base only.)";

/// The answer to `question` from `passages`, as the lines it streams in.
pub fn answer(question: &str, passages: &[Citation], tools_requested: bool) -> Vec<String> {
    let mut lines = Vec::new();
    if tools_requested {
        lines.push(format!("{TOOLS_UNAVAILABLE}\n\n"));
    }
    if passages.is_empty() {
        lines.push(NOTHING_FOUND.to_owned());
        return lines;
    }
    let terms = terms(question);
    lines.push("Here is what the knowledge base says:\n".to_owned());
    for (index, passage) in passages.iter().take(QUOTED_PASSAGES).enumerate() {
        let quote = best_sentences(&passage.text, &terms);
        if !quote.is_empty() {
            lines.push(format!("\n> {quote} [{}]\n", index + 1));
        }
    }
    lines
}

/// The question's content words, lowercased.
fn terms(text: &str) -> HashSet<String> {
    words(text)
        .filter(|w| w.chars().count() >= 3 && !STOPWORDS.contains(&w.as_str()))
        .collect()
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Up to two sentences sharing the most words with the question, in their
/// original order (the first sentence when none shares any), each question
/// with the sentence answering it.
fn best_sentences(text: &str, terms: &HashSet<String>) -> String {
    let sentences = sentences(text);
    let mut scored: Vec<(usize, usize)> = sentences
        .iter()
        .enumerate()
        .map(|(position, sentence)| {
            let shared: HashSet<String> = words(sentence).filter(|w| terms.contains(w)).collect();
            (shared.len(), position)
        })
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut chosen: Vec<usize> = scored
        .iter()
        .filter(|(score, _)| *score > 0)
        .take(SENTENCES_PER_PASSAGE)
        .map(|(_, position)| *position)
        .collect();
    if chosen.is_empty() && !sentences.is_empty() {
        chosen.push(0);
    }
    // In a FAQ the sentence that shares the question's words is often the
    // question itself: the answer is the sentence after it.
    let answers: Vec<usize> = chosen
        .iter()
        .filter(|&&position| sentences[position].ends_with('?') && position + 1 < sentences.len())
        .map(|position| position + 1)
        .collect();
    chosen.extend(answers);
    chosen.sort_unstable();
    chosen.dedup();
    // Neighbours read on; a gap between quoted sentences is marked.
    let mut quote = String::new();
    for (n, &position) in chosen.iter().enumerate() {
        if n > 0 {
            quote.push_str(if position == chosen[n - 1] + 1 {
                " "
            } else {
                " … "
            });
        }
        quote.push_str(sentences[position]);
    }
    truncate(&quote, MAX_QUOTE_CHARS)
}

/// Sentences and lines of `text`, trimmed, non-empty.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut start = 0;
        let bytes = line.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            let ends =
                matches!(b, b'.' | b'!' | b'?') && bytes.get(i + 1).is_none_or(|n| *n == b' ');
            if ends {
                out.push(line[start..=i].trim());
                start = i + 1;
            }
        }
        out.push(line[start..].trim());
    }
    out.retain(|s| !s.is_empty() && s.chars().any(char::is_alphanumeric));
    out
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let cut: String = text.chars().take(max).collect();
    let cut = cut.rsplit_once(' ').map_or(cut.as_str(), |(head, _)| head);
    format!("{cut} …")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(text: &str) -> Citation {
        Citation {
            document_id: "menu".into(),
            title: Some("Menu".into()),
            chunk_index: 0,
            source_url: None,
            text: text.into(),
        }
    }

    #[test]
    fn the_sentence_sharing_the_question_words_is_quoted_with_its_number() {
        let passages = [
            passage(
                "Welcome to Luigi's. Our vegan options are the falafel bowl and the lentil soup. Desserts change daily.",
            ),
            passage("We are open from noon."),
        ];
        let answer = answer("Do you have vegan options?", &passages, false).concat();
        assert!(
            answer.contains("> Our vegan options are the falafel bowl and the lentil soup. [1]"),
            "{answer}"
        );
        assert!(
            answer.contains("[2]"),
            "every passage found is cited: {answer}"
        );
        assert!(!answer.contains("Desserts"), "{answer}");
    }

    #[test]
    fn a_faq_question_is_quoted_with_its_answer() {
        let faq = passage("Do you have vegan options? Yes: the chickpea curry. Parking is free.");
        let answer = answer("Do you have vegan options?", &[faq], false).concat();
        assert!(
            answer.contains("> Do you have vegan options? Yes: the chickpea curry. [1]"),
            "{answer}"
        );
        assert!(!answer.contains("Parking"), "{answer}");
    }

    #[test]
    fn nothing_found_says_so_instead_of_inventing() {
        assert_eq!(answer("opening hours?", &[], false).concat(), NOTHING_FOUND);
    }

    #[test]
    fn a_request_with_tools_is_told_they_were_not_called() {
        let answer = answer("vegan?", &[passage("Vegan falafel.")], true).concat();
        assert!(answer.starts_with(TOOLS_UNAVAILABLE), "{answer}");
    }

    #[test]
    fn long_quotes_are_cut_at_a_word() {
        let long = format!("vegan {}", "word ".repeat(200));
        let quote = best_sentences(&long, &terms("vegan"));
        assert!(quote.chars().count() <= MAX_QUOTE_CHARS + 2);
        assert!(quote.ends_with(" …"));
    }
}
