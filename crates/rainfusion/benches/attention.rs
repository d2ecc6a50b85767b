//! CPU attention timings for one Wan-like self-attention layer.
//!
//! heads = 4, head_dim 64 and 128, a 21×16×16 token grid (5,376 tokens), block size 128, tile
//! windows with the first-frame sink. For each sparsity the mask is predicted from the (random)
//! q and k exactly as `RainFusionAttention` does; the kernel then runs on the permuted tensors.
//! Sparsity 0 is the same CPU kernel with every block kept.
//!
//! Run: `cargo bench -p rainfusion --bench attention -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use std::hint::black_box;

use candle_core::{Device, Tensor};
use rainfusion::layout::{dense_tail_tokens, TokenPermutation, Window};
use rainfusion::sparse_cpu::{block_sparse_attention_cpu, dense_attention_cpu};
use rainfusion::v1::{recognise_head_patterns, PatternMasks};
use rainfusion::{dense_attention, predict_block_mask, BlockMask, VideoLayout};

const LAYOUT: VideoLayout = VideoLayout {
    frames: 21,
    height: 16,
    width: 16,
    text_tokens: 0,
};
const HEADS: usize = 4;
const BLOCK: usize = 128;
const SPARSITIES: [f64; 4] = [0.0, 0.5, 0.8, 0.9];

struct Inputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: f64,
    tail: usize,
    permutation: TokenPermutation,
}

fn inputs(head_dim: usize) -> Inputs {
    let shape = (1, HEADS, LAYOUT.total_tokens(), head_dim);
    let random = || Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
    let permutation = TokenPermutation::for_layout(&LAYOUT, Window::Tile, true).unwrap();
    let (q, k, v) = (random(), random(), random());
    let (q, k, v) = (
        permutation.apply(&q).unwrap(),
        permutation.apply(&k).unwrap(),
        permutation.apply(&v).unwrap(),
    );
    Inputs {
        q,
        k,
        v,
        scale: 1.0 / (head_dim as f64).sqrt(),
        tail: dense_tail_tokens(&LAYOUT, true),
        permutation,
    }
}

fn mask_for(x: &Inputs, sparsity: f64) -> BlockMask {
    if sparsity == 0.0 {
        let blocks = LAYOUT.total_tokens().div_ceil(BLOCK);
        return BlockMask::dense(1, HEADS, BLOCK, blocks, blocks);
    }
    predict_block_mask(&x.q, &x.k, BLOCK, sparsity, x.tail).unwrap()
}

fn attention(c: &mut Criterion) {
    for head_dim in [64, 128] {
        let x = inputs(head_dim);
        let mut group = c.benchmark_group(format!("attention_d{head_dim}"));
        group.sample_size(10).sampling_mode(SamplingMode::Flat);
        for sparsity in SPARSITIES {
            let mask = mask_for(&x, sparsity);
            eprintln!(
                "d{head_dim} sparsity {sparsity}: density {:.4}",
                mask.density()
            );
            group.bench_with_input(
                BenchmarkId::new("cpu_kernel", sparsity),
                &mask,
                |b, mask| {
                    b.iter(|| {
                        black_box(
                            block_sparse_attention_cpu(&x.q, &x.k, &x.v, mask, x.scale).unwrap(),
                        )
                    })
                },
            );
        }
        group.bench_function("cpu_kernel_dense_entry", |b| {
            b.iter(|| black_box(dense_attention_cpu(&x.q, &x.k, &x.v, x.scale).unwrap()))
        });
        group.bench_function("candle_dense", |b| {
            b.iter(|| black_box(dense_attention(&x.q, &x.k, &x.v, x.scale).unwrap()))
        });
        group.finish();
    }
}

fn mask_prediction(c: &mut Criterion) {
    for head_dim in [64, 128] {
        let x = inputs(head_dim);
        let mut group = c.benchmark_group(format!("mask_prediction_d{head_dim}"));
        group.sample_size(20);
        for sparsity in [0.5, 0.8, 0.9] {
            group.bench_with_input(BenchmarkId::new("predict", sparsity), &sparsity, |b, &s| {
                b.iter(|| black_box(predict_block_mask(&x.q, &x.k, BLOCK, s, x.tail).unwrap()))
            });
        }
        // RainFusion 1.0: the recogniser with its default 64 sampled queries per head.
        let patterns = PatternMasks::new(&LAYOUT, &x.permutation, BLOCK, 0.8, x.tail).unwrap();
        group.bench_function("v1_recognise_64_samples", |b| {
            b.iter(|| {
                black_box(recognise_head_patterns(&x.q, &x.k, &patterns, 64, x.scale).unwrap())
            })
        });
        group.finish();
    }
}

criterion_group!(benches, attention, mask_prediction);
criterion_main!(benches);
