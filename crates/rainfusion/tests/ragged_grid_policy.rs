//! RainFusion 2.0 end to end on a ragged, Wan-480p-shaped grid (30×52 tokens per frame), for
//! both windows: the policy's output equals the slow masked-softmax reference on the mask it
//! predicted, mapped back to the original token order.

use candle_core::{Device, Tensor};
use rainfusion::layout::{dense_tail_tokens, TokenPermutation, Window};
use rainfusion::policy::DenseSteps;
use rainfusion::reference::masked_attention_reference;
use rainfusion::{
    predict_block_mask, RainFusionAttention, RainFusionConfig, SelfAttention, VideoLayout,
};

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    rainfusion::reference::relative_error(a, b).unwrap() as f32
}

#[test]
fn ragged_wan_grid_matches_reference_for_both_windows() {
    // 3 frames of 30×52: neither side is a multiple of 8, frames are not whole blocks.
    let layout = VideoLayout {
        frames: 4,
        height: 30,
        width: 52,
        text_tokens: 0,
    };
    let shape = (1, 1, layout.total_tokens(), 16);
    let q = Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
    let k = Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
    let v = Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
    for window in [Window::Tile, Window::Spatiotemporal] {
        let config = RainFusionConfig {
            sparsity: 0.8,
            block_size: 64,
            window,
            dense_steps: DenseSteps::Count(1),
            ..Default::default()
        };
        let mut attention = RainFusionAttention::new(config, 1).unwrap();
        attention.begin_step(1, 4);
        let out = attention.attend(0, &q, &k, &v, &layout).unwrap();

        let permutation = TokenPermutation::for_layout(&layout, window, true).unwrap();
        let (qp, kp, vp) = (
            permutation.apply(&q).unwrap(),
            permutation.apply(&k).unwrap(),
            permutation.apply(&v).unwrap(),
        );
        let mask = predict_block_mask(&qp, &kp, 64, 0.8, dense_tail_tokens(&layout, true)).unwrap();
        assert!(
            mask.density() < 0.75,
            "{window}: density {}",
            mask.density()
        );
        let want = permutation
            .restore(&masked_attention_reference(&qp, &kp, &vp, &mask, 0.25).unwrap())
            .unwrap();
        let err = rel_err(&out, &want);
        assert!(err <= 1e-5, "{window}: relative error {err}");
        assert!((attention.effective_density() - mask.density()).abs() < 1e-12);
    }
}
