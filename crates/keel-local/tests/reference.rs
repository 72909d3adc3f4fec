//! The Rust model against the reference: vectors that sentence-transformers
//! produced for the sentences in `fixtures/minilm_reference.json` (see its
//! `note` and scripts/lib/reference-embeddings.py), and the order of outputs
//! when the model sorts its inputs by length internally.
//!
//! Needs the model: `KEEL_LOCAL_MODEL_DIR` (scripts/test exports it).

use std::path::PathBuf;
use std::sync::OnceLock;

use keel_local::{DIMENSIONS, LocalModel};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    text: String,
    word_pieces: usize,
    embedding: Vec<f32>,
}

fn model() -> &'static LocalModel {
    static MODEL: OnceLock<LocalModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = std::env::var_os("KEEL_LOCAL_MODEL_DIR").expect(
            "KEEL_LOCAL_MODEL_DIR must name the all-MiniLM-L6-v2 directory \
             (scripts/test sets it; scripts/lib/install-model.sh prints it)",
        );
        LocalModel::load(&PathBuf::from(dir)).expect("the local model loads")
    })
}

fn fixture() -> Fixture {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("the fixture is readable"))
        .expect("the fixture parses")
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn embeddings_match_sentence_transformers() {
    let fixture = fixture();
    assert!(fixture.items.len() >= 20, "the fixture lost its sentences");
    assert!(
        fixture.items.iter().any(|item| item.word_pieces == 256),
        "the fixture should exercise truncation at 256 word pieces"
    );
    let texts: Vec<String> = fixture.items.iter().map(|item| item.text.clone()).collect();
    let (vectors, tokens) = model().embed(&texts).expect("embedding works");
    assert_eq!(vectors.len(), texts.len());
    assert_eq!(
        tokens,
        fixture
            .items
            .iter()
            .map(|item| item.word_pieces)
            .sum::<usize>(),
        "word pieces counted differently from the reference tokenizer"
    );
    for (item, vector) in fixture.items.iter().zip(&vectors) {
        assert_eq!(vector.len(), DIMENSIONS);
        assert_eq!(item.embedding.len(), DIMENSIONS);
        let similarity = cosine(vector, &item.embedding);
        assert!(
            similarity >= 0.999,
            "cosine {similarity} < 0.999 for {:?}",
            item.text
        );
    }
}

#[test]
fn outputs_keep_input_order_though_batches_are_sorted_by_length() {
    // Distinct texts of lengths out of order, enough to fill several
    // batches, all under the truncation limit so none collapse into another.
    let texts: Vec<String> = fixture()
        .items
        .into_iter()
        .filter(|item| item.word_pieces <= 40)
        .enumerate()
        .flat_map(|(i, item)| {
            [1, 4, 2].map(|repeat| format!("{i}: {}", item.text.repeat(repeat + i % 3)))
        })
        .collect();
    let (together, _) = model().embed(&texts).expect("embedding works");
    let alone: Vec<Vec<f32>> = texts
        .iter()
        .map(|text| {
            let (mut vectors, _) = model()
                .embed(std::slice::from_ref(text))
                .expect("embedding works");
            vectors.remove(0)
        })
        .collect();
    for (i, vector) in together.iter().enumerate() {
        let nearest = (0..alone.len())
            .max_by(|&a, &b| cosine(vector, &alone[a]).total_cmp(&cosine(vector, &alone[b])))
            .expect("there are inputs");
        assert_eq!(nearest, i, "output {i} belongs to input {nearest}");
        let similarity = cosine(vector, &alone[i]);
        assert!(
            similarity > 0.9999,
            "{:?} embeds differently in a batch (cosine {similarity})",
            texts[i]
        );
    }
}
