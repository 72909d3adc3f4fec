//! A lean BERT encoder on the CPU, enough for sentence embeddings with
//! all-MiniLM-L6-v2: the sequences of a batch are packed one after another
//! with no padding, so every matrix product runs over real tokens only and
//! attention needs no mask; query, key and value are one fused projection;
//! the products go through `gemm` single-threaded (the caller runs one batch
//! per core); activations live in a [`Scratch`] reused from batch to batch.
//!
//! Inference only: dropout is the identity and token types are all 0.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

use anyhow::{Context as _, bail, ensure};
use gemm::{Parallelism, gemm};
use serde::Deserialize;

use crate::math;

/// The fields of the model's `config.json` the forward pass depends on.
#[derive(Deserialize)]
struct Config {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    layer_norm_eps: f32,
    hidden_act: String,
}

/// A dense layer, `y = x·Wᵀ + b`, with `W` as PyTorch stores it (`[outputs, inputs]`).
struct Linear {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
}

impl Linear {
    fn outputs(&self) -> usize {
        self.bias.len()
    }

    /// `out = x·Wᵀ` over `tokens` rows (or `out += x·Wᵀ` when
    /// `accumulate`); the caller adds the bias in its next pass over `out`.
    fn product(&self, input: &[f32], tokens: usize, out: &mut [f32], accumulate: bool) {
        let outputs = self.outputs();
        assert!(input.len() >= tokens * self.inputs && out.len() >= tokens * outputs);
        // SAFETY: the assertion above keeps every access of this row-major
        // product inside `input`, `out` and `self.weight` ([outputs, inputs]).
        unsafe {
            gemm(
                tokens,
                outputs,
                self.inputs,
                out.as_mut_ptr(),
                1,
                outputs as isize,
                accumulate,
                input.as_ptr(),
                1,
                self.inputs as isize,
                self.weight.as_ptr(),
                self.inputs as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    }
}

struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    /// Query, key and value stacked: one product instead of three.
    qkv: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

pub struct Bert {
    word_embeddings: Vec<f32>,
    /// Position embeddings with the (only) token type's embedding added.
    position_embeddings: Vec<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    intermediate: usize,
    max_positions: usize,
    vocab: usize,
    eps: f32,
}

/// Activation buffers for one batch, kept between batches so a worker
/// allocates them once.
#[derive(Default)]
pub struct Scratch {
    hidden: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    intermediate: Vec<f32>,
    scores: Vec<f32>,
}

fn grow(buffer: &mut Vec<f32>, len: usize) {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
}

impl Bert {
    /// Loads `config.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let config_path = dir.join("config.json");
        let config: Config = serde_json::from_str(
            &std::fs::read_to_string(&config_path)
                .with_context(|| format!("reading {}", config_path.display()))?,
        )
        .with_context(|| format!("parsing {}", config_path.display()))?;
        ensure!(
            config.hidden_act == "gelu",
            "hidden_act `{}` is not supported (only gelu)",
            config.hidden_act
        );
        ensure!(
            config
                .hidden_size
                .is_multiple_of(config.num_attention_heads),
            "hidden_size is not a multiple of num_attention_heads"
        );
        let mut tensors = Tensors::open(&dir.join("model.safetensors"))?;
        let hidden = config.hidden_size;
        let norm = |tensors: &mut Tensors, prefix: &str| -> anyhow::Result<LayerNorm> {
            Ok(LayerNorm {
                gamma: tensors.read(&format!("{prefix}.weight"), &[hidden])?,
                beta: tensors.read(&format!("{prefix}.bias"), &[hidden])?,
            })
        };
        let linear = |tensors: &mut Tensors,
                      prefix: &str,
                      inputs: usize,
                      outputs: usize|
         -> anyhow::Result<Linear> {
            Ok(Linear {
                weight: tensors.read(&format!("{prefix}.weight"), &[outputs, inputs])?,
                bias: tensors.read(&format!("{prefix}.bias"), &[outputs])?,
                inputs,
            })
        };
        let word_embeddings = tensors.read(
            "embeddings.word_embeddings.weight",
            &[config.vocab_size, hidden],
        )?;
        let mut position_embeddings = tensors.read(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, hidden],
        )?;
        let token_types = tensors.read("embeddings.token_type_embeddings.weight", &[])?;
        math::add_row(&mut position_embeddings, &token_types[..hidden]);
        let embedding_norm = norm(&mut tensors, "embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for index in 0..config.num_hidden_layers {
            let prefix = format!("encoder.layer.{index}");
            let mut qkv = linear(
                &mut tensors,
                &format!("{prefix}.attention.self.query"),
                hidden,
                hidden,
            )?;
            for part in ["key", "value"] {
                let next = linear(
                    &mut tensors,
                    &format!("{prefix}.attention.self.{part}"),
                    hidden,
                    hidden,
                )?;
                qkv.weight.extend(next.weight);
                qkv.bias.extend(next.bias);
            }
            let inner = config.intermediate_size;
            layers.push(Layer {
                qkv,
                attention_output: linear(
                    &mut tensors,
                    &format!("{prefix}.attention.output.dense"),
                    hidden,
                    hidden,
                )?,
                attention_norm: norm(
                    &mut tensors,
                    &format!("{prefix}.attention.output.LayerNorm"),
                )?,
                intermediate: linear(
                    &mut tensors,
                    &format!("{prefix}.intermediate.dense"),
                    hidden,
                    inner,
                )?,
                output: linear(
                    &mut tensors,
                    &format!("{prefix}.output.dense"),
                    inner,
                    hidden,
                )?,
                output_norm: norm(&mut tensors, &format!("{prefix}.output.LayerNorm"))?,
            });
        }
        Ok(Self {
            word_embeddings,
            position_embeddings,
            embedding_norm,
            layers,
            hidden,
            heads: config.num_attention_heads,
            intermediate: config.intermediate_size,
            max_positions: config.max_position_embeddings,
            vocab: config.vocab_size,
            eps: config.layer_norm_eps,
        })
    }

    pub fn dimensions(&self) -> usize {
        self.hidden
    }

    /// Mean-pooled, L2-normalised embeddings of `sequences` (word-piece ids,
    /// special tokens included), one row of `dimensions()` per sequence in
    /// `out`.
    pub fn embed(&self, sequences: &[&[u32]], scratch: &mut Scratch, out: &mut [f32]) {
        let hidden = self.hidden;
        let tokens: usize = sequences.iter().map(|s| s.len()).sum();
        let longest = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        assert!(
            longest <= self.max_positions,
            "sequence longer than the model's positions"
        );
        assert_eq!(out.len(), sequences.len() * hidden);
        grow(&mut scratch.hidden, tokens * hidden);
        grow(&mut scratch.qkv, tokens * 3 * hidden);
        grow(&mut scratch.context, tokens * hidden);
        grow(&mut scratch.intermediate, tokens * self.intermediate);
        grow(&mut scratch.scores, longest * longest);
        let Scratch {
            hidden: states,
            qkv,
            context,
            intermediate,
            scores,
        } = scratch;
        let states = &mut states[..tokens * hidden];

        let mut rows = states.chunks_exact_mut(hidden);
        for sequence in sequences {
            for (position, &id) in sequence.iter().enumerate() {
                let id = (id as usize).min(self.vocab - 1);
                let row = rows.next().expect("one row per token");
                let word = &self.word_embeddings[id * hidden..][..hidden];
                let place = &self.position_embeddings[position * hidden..][..hidden];
                for ((v, w), p) in row.iter_mut().zip(word).zip(place) {
                    *v = w + p;
                }
            }
        }
        let norm = &self.embedding_norm;
        math::layer_norm_rows(states, None, &norm.gamma, &norm.beta, self.eps);

        let inner = &mut intermediate[..tokens * self.intermediate];
        for layer in &self.layers {
            layer.qkv.product(states, tokens, qkv, false);
            math::add_row(&mut qkv[..tokens * 3 * hidden], &layer.qkv.bias);
            self.attention(sequences, qkv, context, scores);
            // The residual is already in `states`: accumulate onto it.
            layer
                .attention_output
                .product(context, tokens, states, true);
            let (bias, norm) = (&layer.attention_output.bias, &layer.attention_norm);
            math::layer_norm_rows(states, Some(bias), &norm.gamma, &norm.beta, self.eps);
            layer.intermediate.product(states, tokens, inner, false);
            math::bias_gelu(inner, &layer.intermediate.bias);
            layer.output.product(inner, tokens, states, true);
            let (bias, norm) = (&layer.output.bias, &layer.output_norm);
            math::layer_norm_rows(states, Some(bias), &norm.gamma, &norm.beta, self.eps);
        }

        let mut start = 0;
        for (sequence, pooled) in sequences.iter().zip(out.chunks_exact_mut(hidden)) {
            pooled.fill(0.0);
            for row in states[start * hidden..][..sequence.len() * hidden].chunks_exact(hidden) {
                for (p, v) in pooled.iter_mut().zip(row) {
                    *p += v;
                }
            }
            start += sequence.len();
            let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            for p in pooled.iter_mut() {
                *p /= norm;
            }
        }
    }

    /// Scaled dot-product attention of each sequence with itself, head by
    /// head, from the packed `qkv` rows into the packed `context` rows.
    fn attention(
        &self,
        sequences: &[&[u32]],
        qkv: &[f32],
        context: &mut [f32],
        scores: &mut [f32],
    ) {
        let hidden = self.hidden;
        let head = hidden / self.heads;
        let stride = 3 * hidden;
        let scale = 1.0 / (head as f32).sqrt();
        let mut start = 0;
        for sequence in sequences {
            let len = sequence.len();
            assert!(qkv.len() >= (start + len) * stride && context.len() >= (start + len) * hidden);
            assert!(scores.len() >= len * len);
            for h in 0..self.heads {
                let query = qkv[start * stride + h * head..].as_ptr();
                let key = qkv[start * stride + hidden + h * head..].as_ptr();
                let value = qkv[start * stride + 2 * hidden + h * head..].as_ptr();
                // SAFETY: the assertions above keep each product inside the
                // sequence's rows of `qkv`, its rows of `context` and the
                // first `len × len` scores; head slices are `head` wide.
                unsafe {
                    // scores = scale · Q·Kᵀ (len × len)
                    gemm(
                        len,
                        len,
                        head,
                        scores.as_mut_ptr(),
                        1,
                        len as isize,
                        false,
                        query,
                        1,
                        stride as isize,
                        key,
                        stride as isize,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                math::softmax_rows(&mut scores[..len * len], len);
                // SAFETY: as above.
                unsafe {
                    // context = softmax(scores)·V (len × head)
                    gemm(
                        len,
                        head,
                        len,
                        context[start * hidden + h * head..].as_mut_ptr(),
                        1,
                        hidden as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        len as isize,
                        value,
                        1,
                        stride as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
            start += len;
        }
    }
}

/// The tensors of a `.safetensors` file, read one at a time into `f32`
/// vectors (no memory map, so the file's pages never count as resident).
struct Tensors {
    file: File,
    data_start: u64,
    entries: HashMap<String, TensorEntry>,
}

#[derive(Deserialize)]
struct TensorEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

impl Tensors {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut header_len = [0u8; 8];
        file.read_exact(&mut header_len)
            .context("reading the safetensors header length")?;
        let header_len = u64::from_le_bytes(header_len);
        ensure!(
            header_len < 100 << 20,
            "safetensors header of {header_len} bytes"
        );
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .context("reading the safetensors header")?;
        let mut entries: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header).context("parsing the safetensors header")?;
        entries.remove("__metadata__");
        let entries = entries
            .into_iter()
            .map(|(name, entry)| {
                let entry = serde_json::from_value(entry)
                    .with_context(|| format!("safetensors entry {name}"))?;
                Ok((name, entry))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            file,
            data_start: 8 + header_len,
            entries,
        })
    }

    /// Reads tensor `name` as `f32`, checking its shape unless `shape` is empty.
    fn read(&mut self, name: &str, shape: &[usize]) -> anyhow::Result<Vec<f32>> {
        let Some(entry) = self.entries.get(name) else {
            bail!("model.safetensors has no tensor {name}");
        };
        ensure!(
            entry.dtype == "F32",
            "{name}: dtype {} (expected F32)",
            entry.dtype
        );
        ensure!(
            shape.is_empty() || entry.shape == shape,
            "{name}: shape {:?} (expected {shape:?})",
            entry.shape
        );
        let [start, end] = entry.data_offsets;
        let count = entry.shape.iter().product::<usize>();
        ensure!(
            end - start == 4 * count as u64,
            "{name}: size does not match its shape"
        );
        self.file.seek(SeekFrom::Start(self.data_start + start))?;
        let mut values = Vec::with_capacity(count);
        let mut buffer = vec![0u8; 1 << 16];
        let mut remaining = 4 * count;
        while remaining > 0 {
            let chunk = &mut buffer[..remaining.min(1 << 16)];
            self.file
                .read_exact(chunk)
                .with_context(|| format!("reading {name}"))?;
            values.extend(
                chunk
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            remaining -= chunk.len();
        }
        Ok(values)
    }
}
