//! Sparse-vs-dense speedup of the CPU kernel, measured interleaved.
//!
//! On a shared machine the load drifts over minutes, so timing dense and sparse one after the
//! other (as criterion does) skews their ratio. Here every round runs the dense kernel and each
//! sparsity once, back to back; the speedup is the median over rounds of the per-round ratio.
//! Same layer as `attention.rs`: heads 4, a 21×16×16 grid, block 128, tile windows, first-frame
//! sink. Also times mask prediction, the RainFusion 1.0 recogniser, and one whole
//! `RainFusionAttention::attend` call (permute, predict, kernel, restore) against
//! `DenseAttention::attend`.
//!
//! Run: `cargo bench -p rainfusion --bench speedup` (ROUNDS=n to change the 5 rounds).

use std::time::Instant;

use candle_core::{Device, Tensor};
use rainfusion::layout::{dense_tail_tokens, TokenPermutation, Window};
use rainfusion::policy::DenseSteps;
use rainfusion::sparse_cpu::block_sparse_attention_cpu;
use rainfusion::v1::{recognise_head_patterns, PatternMasks};
use rainfusion::{
    predict_block_mask, BlockMask, DenseAttention, RainFusionAttention, RainFusionConfig,
    SelfAttention, VideoLayout,
};

const LAYOUT: VideoLayout = VideoLayout {
    frames: 21,
    height: 16,
    width: 16,
    text_tokens: 0,
};
const HEADS: usize = 4;
const BLOCK: usize = 128;

fn seconds(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn fastest(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    println!(
        "rounds per configuration: {rounds}; threads: {}",
        rayon::current_num_threads()
    );
    println!(
        "| head_dim | sparsity | density | dense kernel | sparse kernel | speedup (median of round ratios) \
         | speedup (fastest dense / fastest sparse) | 1/density | mask prediction (% of sparse) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for head_dim in [64, 128] {
        let shape = (1, HEADS, LAYOUT.total_tokens(), head_dim);
        let permutation = TokenPermutation::for_layout(&LAYOUT, Window::Tile, true).unwrap();
        let random = || {
            permutation
                .apply(&Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap())
                .unwrap()
        };
        let (q, k, v) = (random(), random(), random());
        let scale = 1.0 / (head_dim as f64).sqrt();
        let tail = dense_tail_tokens(&LAYOUT, true);
        let blocks = LAYOUT.total_tokens().div_ceil(BLOCK);
        let dense_mask = BlockMask::dense(1, HEADS, BLOCK, blocks, blocks);
        let sparsities = [0.5, 0.8, 0.9];
        let masks: Vec<BlockMask> = sparsities
            .iter()
            .map(|&s| predict_block_mask(&q, &k, BLOCK, s, tail).unwrap())
            .collect();
        let run = |mask: &BlockMask| {
            seconds(|| drop(block_sparse_attention_cpu(&q, &k, &v, mask, scale).unwrap()))
        };
        run(&masks[1]); // warm-up
        let mut dense_times = Vec::new();
        let mut sparse_times = vec![Vec::new(); sparsities.len()];
        let mut ratios = vec![Vec::new(); sparsities.len()];
        for _ in 0..rounds {
            let dense = run(&dense_mask);
            dense_times.push(dense);
            for (i, mask) in masks.iter().enumerate() {
                let sparse = run(mask);
                sparse_times[i].push(sparse);
                ratios[i].push(dense / sparse);
            }
        }
        for (i, &sparsity) in sparsities.iter().enumerate() {
            let predict = median(
                (0..10)
                    .map(|_| {
                        seconds(|| drop(predict_block_mask(&q, &k, BLOCK, sparsity, tail).unwrap()))
                    })
                    .collect(),
            );
            let sparse = median(sparse_times[i].clone());
            println!(
                "| {head_dim} | {sparsity} | {:.3} | {:.0} ms | {:.0} ms | {:.2}× | {:.2}× | {:.2}× | {:.2} ms ({:.2}%) |",
                masks[i].density(),
                median(dense_times.clone()) * 1e3,
                sparse * 1e3,
                median(ratios[i].clone()),
                fastest(&dense_times) / fastest(&sparse_times[i]),
                1.0 / masks[i].density(),
                predict * 1e3,
                100.0 * predict / sparse
            );
        }

        // RainFusion 1.0 recogniser overhead, relative to the sparse kernel at 0.8.
        let patterns = PatternMasks::new(&LAYOUT, &permutation, BLOCK, 0.8, tail).unwrap();
        let recognise = median(
            (0..10)
                .map(|_| {
                    seconds(|| drop(recognise_head_patterns(&q, &k, &patterns, 64, scale).unwrap()))
                })
                .collect(),
        );
        println!(
            "d{head_dim}: RainFusion 1.0 recogniser (64 sampled queries/head): {:.2} ms = {:.2}% of the 0.8 sparse kernel, {:.2}% of dense",
            recognise * 1e3,
            100.0 * recognise / median(sparse_times[1].clone()),
            100.0 * recognise / median(dense_times.clone())
        );

        // Whole attend calls in original token order.
        let original = |x: &Tensor| permutation.restore(x).unwrap();
        let (qo, ko, vo) = (original(&q), original(&k), original(&v));
        let permute = median(
            (0..5)
                .map(|_| {
                    seconds(|| {
                        let moved: Vec<Tensor> = [&qo, &ko, &vo]
                            .iter()
                            .map(|x| permutation.apply(x).unwrap())
                            .collect();
                        drop(permutation.restore(&moved[2]).unwrap());
                    })
                })
                .collect(),
        );
        println!(
            "d{head_dim}: permuting q, k, v and restoring the output: {:.2} ms",
            permute * 1e3
        );
        let config = RainFusionConfig {
            sparsity: 0.8,
            dense_steps: DenseSteps::Count(0),
            ..Default::default()
        };
        let mut rf = RainFusionAttention::new(config, 1).unwrap();
        let mut call_ratios = Vec::new();
        for _ in 0..rounds.min(3) {
            let dense = seconds(|| drop(DenseAttention.attend(0, &qo, &ko, &vo, &LAYOUT).unwrap()));
            let sparse = seconds(|| drop(rf.attend(0, &qo, &ko, &vo, &LAYOUT).unwrap()));
            call_ratios.push(dense / sparse);
        }
        println!(
            "d{head_dim}: whole attend call at 0.8 (permute + predict + kernel + restore) vs DenseAttention: {:.2}× (density {:.3})",
            median(call_ratios),
            rf.effective_density()
        );
    }
}
