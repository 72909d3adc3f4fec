//! cl100k token counts: the tokenizer of OpenAI's embedding and chat models,
//! and the bound that spares loading it when a text is short enough.
//!
//! `bpe-openai` loads its cl100k tables prebuilt (about 20 ms on a cold
//! instance, where tiktoken-rs built them in 70-110 ms) and counts about
//! twice as fast, with tiktoken's exact tokens.

use bpe_openai::Tokenizer;

/// The process-wide cl100k tokenizer, loaded on first use.
pub fn cl100k() -> &'static Tokenizer {
    bpe_openai::cl100k_base()
}

/// Loads the tokenizer (a cold instance's warm-up, web/routing.rs).
pub fn preload() {
    cl100k();
}

/// The cl100k tokens of `text`.
pub fn count(text: &str) -> usize {
    cl100k().count(text)
}

/// Whether `texts` surely hold at most `limit` tokens, decided without the
/// tokenizer: every cl100k token spans at least one byte, so their bytes
/// bound their tokens.
pub fn surely_within<'a>(texts: impl IntoIterator<Item = &'a str>, limit: usize) -> bool {
    texts.into_iter().map(str::len).sum::<usize>() <= limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_tiktokens_and_bytes_bound_them() {
        // Token counts OpenAI's tiktoken gives for cl100k_base.
        for (text, tokens) in [
            ("hello world", 2),
            ("Do you have vegan options?", 6),
            ("crème brûlée 🌱", 9),
        ] {
            assert_eq!(count(text), tokens, "{text}");
            assert!(surely_within([text], text.len()));
            assert!(count(text) <= text.len());
        }
        assert!(!surely_within(["ab", "cd"], 3));
    }
}
