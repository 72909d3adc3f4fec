//! Chunking: documents split on paragraph, then sentence, then word
//! boundaries into chunks bounded in cl100k tokens (the tokenizer of OpenAI's
//! embedding models) with overlap, never inside a UTF-8 character. Each
//! chunk is embedded with its document's title as context.

use serde::Serialize;
use text_splitter::{ChunkConfig, ChunkSizer, TextSplitter};

use crate::platform::config::IngestLimits;
use crate::platform::crypto::sha256_hex;
use crate::platform::tokens;

/// A token-bounded, boundary-aware splitter, built on first use (loading the
/// cl100k tables takes a moment, which only the ingestion route should pay).
pub struct Chunker {
    splitter: TextSplitter<Cl100kTokens>,
}

/// A chunk's size for the splitter: its cl100k tokens.
struct Cl100kTokens;

impl ChunkSizer for Cl100kTokens {
    fn size(&self, chunk: &str) -> usize {
        tokens::count(chunk)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Chunk {
    pub content: String,
    /// SHA-256 of the embedding input (title + chunk).
    pub content_hash: String,
    pub token_count: usize,
}

impl Chunker {
    pub fn new(limits: &IngestLimits) -> Self {
        let config = ChunkConfig::new(limits.chunk_tokens)
            .with_sizer(Cl100kTokens)
            .with_overlap(limits.chunk_overlap)
            .expect("config validation keeps the overlap below the chunk size");
        Self {
            splitter: TextSplitter::new(config),
        }
    }

    pub fn chunk(&self, title: &str, content: &str) -> Vec<Chunk> {
        self.splitter
            .chunks(content)
            .map(|text| Chunk {
                content: text.to_owned(),
                content_hash: sha256_hex(embedding_input(title, text)),
                token_count: tokens::count(text),
            })
            .collect()
    }
}

/// What the model sees for a chunk: its document's title, then the chunk.
pub fn embedding_input(title: &str, chunk: &str) -> String {
    if title.is_empty() {
        chunk.to_owned()
    } else {
        format!("{title}\n\n{chunk}")
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Small limits, so short texts make several chunks; shared with the
    /// documents tests.
    pub(in crate::knowledge) fn limits() -> IngestLimits {
        IngestLimits {
            max_documents: 3,
            max_document_bytes: 1000,
            chunk_tokens: 60,
            chunk_overlap: 10,
        }
    }

    #[test]
    fn chunks_are_token_bounded_overlapping_and_keep_utf8_intact() {
        let chunker = Chunker::new(&limits());
        let paragraph =
            "Our kitchen serves falafel, hummus and crème brûlée. 🌱 Vegan dishes are marked. ";
        let content = paragraph.repeat(20);

        let chunks = chunker.chunk("Menu", &content);

        assert!(chunks.len() > 3, "{} chunks", chunks.len());
        for chunk in &chunks {
            assert!(chunk.token_count <= 60, "{} tokens", chunk.token_count);
            assert!(
                content.contains(&chunk.content),
                "chunks are slices of the text"
            );
            assert_eq!(
                chunk.content_hash,
                sha256_hex(format!("Menu\n\n{}", chunk.content))
            );
        }
        // Overlap: consecutive chunks share text.
        let (first, second) = (&chunks[0].content, &chunks[1].content);
        let tail: String = first
            .chars()
            .rev()
            .take(15)
            .collect::<String>()
            .chars()
            .rev()
            .collect();
        assert!(
            second.contains(tail.trim()),
            "no overlap between {first:?} and {second:?}"
        );
    }

    #[test]
    fn chunks_prefer_paragraph_boundaries() {
        let chunker = Chunker::new(&limits());
        let content = format!(
            "{}\n\n{}",
            "Opening hours are nine to five on weekdays.", "Parking is free behind the building."
        );
        let chunks = chunker.chunk("", &content);
        assert_eq!(chunks.len(), 1, "short text stays one chunk");
        let long = format!(
            "{}\n\n{}",
            "alpha beta gamma delta. ".repeat(10),
            "omega psi chi phi. ".repeat(10)
        );
        let chunks = chunker.chunk("", &long);
        assert!(
            chunks
                .iter()
                .all(|c| !(c.content.contains("alpha") && c.content.contains("omega")))
        );
    }
}
