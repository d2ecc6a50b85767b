//! RainFusion on a joint `[video; text]` sequence (`rainfusion::joint`), CPU and generic kernels,
//! against a masked softmax in f64 written out token by token.

use candle_core::{DType, Device, Tensor};
use rainfusion::joint::joint_block_sparse_attention_generic;
use rainfusion::reference::relative_error;
use rainfusion::{
    joint_block_sparse_attention, joint_rainfusion_attention, key_masked_attention,
    predict_joint_video_mask, JointSparsity, JointVideoMask, VideoLayout, Window,
};
use rand::{Rng, SeedableRng};

fn random(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// `[B, Lt]` u8 flags from per-sample valid text lengths (valid text first, as the HunyuanVideo
/// packing lays it out).
fn text_flags(lengths: &[usize], lt: usize) -> (Vec<Vec<bool>>, Tensor) {
    let rows: Vec<Vec<bool>> = lengths
        .iter()
        .map(|&n| (0..lt).map(|j| j < n).collect())
        .collect();
    let flat: Vec<u8> = rows.iter().flatten().map(|&x| x as u8).collect();
    let t = Tensor::from_vec(flat, (lengths.len(), lt), &Device::Cpu).unwrap();
    (rows, t)
}

/// Which keys a query may see, in original token order.
struct JointRule<'a> {
    video_tokens: usize,
    text_valid: &'a [Vec<bool>],
    video: &'a JointVideoMask,
    /// Text columns seen by video rows (false: the band is dropped, for the negative check).
    text_band: bool,
}

impl JointRule<'_> {
    fn allowed(&self, b: usize, h: usize, i: usize, j: usize) -> bool {
        let lv = self.video_tokens;
        if j >= lv {
            return self.text_valid[b][j - lv] && (i >= lv || self.text_band);
        }
        if i >= lv {
            return true;
        }
        let bs = self.video.mask.block_size;
        let inv = &self.video.permutation.inverse;
        let (qb, kb) = (inv[i] as usize / bs, (inv[j] as usize / bs) as u32);
        self.video.mask.row(b, h, qb).contains(&kb)
    }
}

/// Masked softmax in f64, one score row at a time.
fn reference(q: &Tensor, k: &Tensor, v: &Tensor, rule: &JointRule<'_>, scale: f64) -> Tensor {
    let h = q.dim(1).unwrap();
    rainfusion::reference::attention_reference_where(q, k, v, scale, |bh, i, j| {
        rule.allowed(bh / h, bh % h, i, j)
    })
    .unwrap()
}

/// 3 frames of 8 × 10 tokens (a ragged width: leftover columns), 13 text tokens.
fn layout() -> VideoLayout {
    VideoLayout {
        frames: 3,
        height: 8,
        width: 10,
        text_tokens: 13,
    }
}

fn settings(sparsity: f64) -> JointSparsity {
    JointSparsity {
        sparsity,
        block_size: 16,
        window: Window::Tile,
        first_frame_sink: true,
    }
}

fn inputs(b: usize, h: usize, l: usize, d: usize, seed: u64) -> (Tensor, Tensor, Tensor) {
    (
        random((b, h, l, d), seed),
        random((b, h, l, d), seed + 1),
        random((b, h, l, d), seed + 2),
    )
}

#[test]
fn sparse_joint_attention_matches_the_masked_softmax_reference() {
    let layout = layout();
    let (b, h, d) = (2, 2, 8);
    let l = layout.total_tokens();
    let (q, k, v) = inputs(b, h, l, d, 1);
    // Different valid text lengths per sample.
    let (valid, flags) = text_flags(&[10, 4], layout.text_tokens);
    let scale = 1.0 / (d as f64).sqrt();
    let (cpu, video) =
        joint_rainfusion_attention(&q, &k, &v, &layout, Some(&flags), &settings(0.7), scale)
            .unwrap();
    let density = video.density();
    // Frame 0 (5 of the 15 video blocks) is a dense sink, so the density stays well above 0.3.
    assert!(density < 0.8, "video density {density}: too little skipped");
    let generic =
        joint_block_sparse_attention_generic(&q, &k, &v, &layout, Some(&flags), &video, scale)
            .unwrap();
    let rule = JointRule {
        video_tokens: layout.video_tokens(),
        text_valid: &valid,
        video: &video,
        text_band: true,
    };
    let want = reference(&q, &k, &v, &rule, scale);
    let (e_cpu, e_generic) = (
        relative_error(&cpu, &want).unwrap(),
        relative_error(&generic, &want).unwrap(),
    );
    println!("video density {density:.3}: cpu rel err {e_cpu:.2e}, generic {e_generic:.2e}");
    assert!(e_cpu <= 1e-5, "cpu rel err {e_cpu}");
    assert!(e_generic <= 1e-5, "generic rel err {e_generic}");

    // The same data is sensitive to the text band: a kernel that dropped the video rows' text
    // columns would be this far off.
    let no_band = reference(
        &q,
        &k,
        &v,
        &JointRule {
            text_band: false,
            ..rule
        },
        scale,
    );
    let e_drop = relative_error(&no_band, &want).unwrap();
    println!("without the text band: rel err {e_drop:.2e}");
    assert!(
        e_drop > 1e-2,
        "dropping the text band changes only {e_drop}"
    );
    assert!(relative_error(&cpu, &no_band).unwrap() > 1e-2);
}

#[test]
fn full_density_equals_dense_key_masked_attention() {
    let layout = layout();
    let (b, h, d) = (2, 3, 16);
    let l = layout.total_tokens();
    let (q, k, v) = inputs(b, h, l, d, 10);
    let (_, flags) = text_flags(&[13, 7], layout.text_tokens);
    let scale = 0.3;
    let (cpu, video) =
        joint_rainfusion_attention(&q, &k, &v, &layout, Some(&flags), &settings(0.0), scale)
            .unwrap();
    assert_eq!(video.density(), 1.0);
    let generic =
        joint_block_sparse_attention_generic(&q, &k, &v, &layout, Some(&flags), &video, scale)
            .unwrap();
    let key_valid = Tensor::cat(
        &[
            &Tensor::ones((b, layout.video_tokens()), DType::U8, &Device::Cpu).unwrap(),
            &flags,
        ],
        1,
    )
    .unwrap();
    let dense = key_masked_attention(&q, &k, &v, Some(&key_valid), scale).unwrap();
    let (e_cpu, e_generic) = (
        relative_error(&cpu, &dense).unwrap(),
        relative_error(&generic, &dense).unwrap(),
    );
    println!("density 1: cpu vs key_masked_attention {e_cpu:.2e}, generic {e_generic:.2e}");
    assert!(e_cpu <= 1e-6, "cpu {e_cpu}");
    assert!(e_generic <= 1e-6, "generic {e_generic}");

    // No text mask: every text token valid.
    let (cpu, video) =
        joint_rainfusion_attention(&q, &k, &v, &layout, None, &settings(0.0), scale).unwrap();
    let dense = key_masked_attention(&q, &k, &v, None, scale).unwrap();
    let e = relative_error(&cpu, &dense).unwrap();
    assert!(e <= 1e-6, "unmasked {e}");
    let generic =
        joint_block_sparse_attention_generic(&q, &k, &v, &layout, None, &video, scale).unwrap();
    assert!(relative_error(&generic, &dense).unwrap() <= 1e-6);
}

#[test]
fn padded_text_keys_do_not_change_the_output() {
    let layout = layout();
    let (b, h, d) = (2, 2, 8);
    let (lv, lt) = (layout.video_tokens(), layout.text_tokens);
    let l = layout.total_tokens();
    let (q, k, v) = inputs(b, h, l, d, 20);
    let (valid, flags) = text_flags(&[9, 2], lt);
    let video = predict_joint_video_mask(&q, &k, &layout, &settings(0.75)).unwrap();
    // 1 on every position that stays, 0 on padded text positions.
    let keep: Vec<f32> = (0..b)
        .flat_map(|bi| {
            let valid = &valid[bi];
            (0..l).map(move |j| if j < lv || valid[j - lv] { 1.0 } else { 0.0 })
        })
        .collect();
    let keep = Tensor::from_vec(keep, (b, 1, l, 1), &Device::Cpu)
        .unwrap()
        .broadcast_as((b, h, l, d))
        .unwrap();
    let scramble = |x: &Tensor, seed: u64| -> Tensor {
        let big = (random((b, h, l, d), seed) * 1e4).unwrap();
        let padded_part = (big * (1.0 - &keep).unwrap()).unwrap();
        ((x * &keep).unwrap() + padded_part).unwrap()
    };
    let (k2, v2) = (scramble(&k, 30), scramble(&v, 31));
    for (name, run) in [
        (
            "cpu",
            joint_block_sparse_attention as fn(_, _, _, _, _, _, _) -> _,
        ),
        ("generic", joint_block_sparse_attention_generic),
    ] {
        let before = run(&q, &k, &v, &layout, Some(&flags), &video, 0.35).unwrap();
        let after = run(&q, &k2, &v2, &layout, Some(&flags), &video, 0.35).unwrap();
        let diff = (&before - &after)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{name}: padded text keys moved the output");
        // The scrambled positions are real inputs: without the mask they would matter.
        let unmasked = run(&q, &k2, &v2, &layout, None, &video, 0.35).unwrap();
        assert!(relative_error(&unmasked, &before).unwrap() > 1e-2);
    }
}

#[test]
fn each_sample_of_a_ragged_batch_matches_its_text_alone() {
    // Sample b attended alone, with only its valid text (no padding, no mask), gives the rows of
    // the padded batch: its video rows and its valid text rows.
    let layout = layout();
    let (b, h, d) = (3, 2, 8);
    let (lv, lt) = (layout.video_tokens(), layout.text_tokens);
    let l = layout.total_tokens();
    let (q, k, v) = inputs(b, h, l, d, 40);
    let lengths = [13, 1, 6];
    let (_, flags) = text_flags(&lengths, lt);
    let cfg = settings(0.6);
    let (batched, _) =
        joint_rainfusion_attention(&q, &k, &v, &layout, Some(&flags), &cfg, 0.35).unwrap();
    for (bi, &n) in lengths.iter().enumerate() {
        let alone_layout = VideoLayout {
            text_tokens: n,
            ..layout
        };
        let take = |x: &Tensor| x.narrow(0, bi, 1).unwrap().narrow(2, 0, lv + n).unwrap();
        let (alone, _) = joint_rainfusion_attention(
            &take(&q),
            &take(&k),
            &take(&v),
            &alone_layout,
            None,
            &cfg,
            0.35,
        )
        .unwrap();
        let e = relative_error(&take(&batched), &alone).unwrap();
        println!("sample {bi} ({n} text tokens): rel err vs alone {e:.2e}");
        assert!(e <= 1e-5, "sample {bi}: {e}");
    }
}

#[test]
fn spatiotemporal_windows_without_sink_match_the_reference() {
    let layout = VideoLayout {
        frames: 4,
        height: 8,
        width: 8,
        text_tokens: 5,
    };
    let (b, h, d) = (1, 2, 8);
    let l = layout.total_tokens();
    let (q, k, v) = inputs(b, h, l, d, 50);
    let (valid, flags) = text_flags(&[3], layout.text_tokens);
    let cfg = JointSparsity {
        sparsity: 0.5,
        block_size: 32,
        window: Window::Spatiotemporal,
        first_frame_sink: false,
    };
    let (out, video) =
        joint_rainfusion_attention(&q, &k, &v, &layout, Some(&flags), &cfg, 0.4).unwrap();
    assert!(video.density() < 1.0);
    let rule = JointRule {
        video_tokens: layout.video_tokens(),
        text_valid: &valid,
        video: &video,
        text_band: true,
    };
    let e = relative_error(&out, &reference(&q, &k, &v, &rule, 0.4)).unwrap();
    assert!(e <= 1e-5, "rel err {e}");
}

#[test]
fn wrong_shapes_are_errors() {
    let layout = layout();
    let l = layout.total_tokens();
    let (q, k, v) = inputs(2, 1, l, 4, 60);
    let video = predict_joint_video_mask(&q, &k, &layout, &settings(0.5)).unwrap();
    let (_, bad_flags) = text_flags(&[1, 2], layout.text_tokens + 1);
    assert!(
        joint_block_sparse_attention(&q, &k, &v, &layout, Some(&bad_flags), &video, 1.0).is_err()
    );
    let other = VideoLayout {
        text_tokens: 12,
        ..layout
    };
    assert!(joint_block_sparse_attention(&q, &k, &v, &other, None, &video, 1.0).is_err());
    let one = q.narrow(0, 0, 1).unwrap();
    assert!(joint_block_sparse_attention(&one, &one, &one, &layout, None, &video, 1.0).is_err());
    assert!(predict_joint_video_mask(&q, &k, &layout, &settings(1.0)).is_err());
}

#[test]
fn rows_wider_than_one_cpu_tile_match_the_reference() {
    // 768 video + 40 text tokens at block 64: dense rows span two 512-key CPU tiles, the text
    // band (half padded) lands in the second one.
    let layout = VideoLayout {
        frames: 3,
        height: 16,
        width: 16,
        text_tokens: 40,
    };
    let (b, h, d) = (2, 1, 8);
    let l = layout.total_tokens();
    let (q, k, v) = inputs(b, h, l, d, 70);
    let (valid, flags) = text_flags(&[25, 40], layout.text_tokens);
    let cfg = JointSparsity {
        sparsity: 0.5,
        block_size: 64,
        window: Window::Tile,
        first_frame_sink: true,
    };
    let (out, video) =
        joint_rainfusion_attention(&q, &k, &v, &layout, Some(&flags), &cfg, 0.35).unwrap();
    let generic =
        joint_block_sparse_attention_generic(&q, &k, &v, &layout, Some(&flags), &video, 0.35)
            .unwrap();
    let rule = JointRule {
        video_tokens: layout.video_tokens(),
        text_valid: &valid,
        video: &video,
        text_band: true,
    };
    let want = reference(&q, &k, &v, &rule, 0.35);
    let (e_cpu, e_generic) = (
        relative_error(&out, &want).unwrap(),
        relative_error(&generic, &want).unwrap(),
    );
    println!(
        "768 + 40 tokens, video density {:.3}: cpu {e_cpu:.2e}, generic {e_generic:.2e}",
        video.density()
    );
    assert!(video.density() < 1.0);
    assert!(e_cpu <= 1e-5 && e_generic <= 1e-5, "{e_cpu} {e_generic}");
}

#[test]
fn no_text_and_bf16_inputs_match_the_reference() {
    let (b, h, d) = (1, 2, 16);
    // No text at all: the video part alone, sink and sparse blocks as usual.
    let video_only = VideoLayout::new(3, 8, 8);
    let l = video_only.total_tokens();
    let (q, k, v) = inputs(b, h, l, d, 80);
    let (out, video) =
        joint_rainfusion_attention(&q, &k, &v, &video_only, None, &settings(0.6), 0.25).unwrap();
    let rule = JointRule {
        video_tokens: l,
        text_valid: &[vec![]],
        video: &video,
        text_band: true,
    };
    let e = relative_error(&out, &reference(&q, &k, &v, &rule, 0.25)).unwrap();
    assert!(e <= 1e-5, "video only: {e}");

    // bf16 inputs: the reference sees the same rounded values, so only accumulation and the
    // output rounding differ.
    let layout = layout();
    let l = layout.total_tokens();
    let (q, k, v) = inputs(b, h, l, d, 90);
    let (valid, flags) = text_flags(&[7], layout.text_tokens);
    let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
    let (q, k, v) = (bf(&q), bf(&k), bf(&v));
    let (out, video) =
        joint_rainfusion_attention(&q, &k, &v, &layout, Some(&flags), &settings(0.6), 0.25)
            .unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    let generic =
        joint_block_sparse_attention_generic(&q, &k, &v, &layout, Some(&flags), &video, 0.25)
            .unwrap();
    let rule = JointRule {
        video_tokens: layout.video_tokens(),
        text_valid: &valid,
        video: &video,
        text_band: true,
    };
    let want = reference(&q, &k, &v, &rule, 0.25);
    let (e_cpu, e_generic) = (
        relative_error(&out, &want).unwrap(),
        relative_error(&generic, &want).unwrap(),
    );
    println!("bf16: cpu rel err {e_cpu:.2e}, generic {e_generic:.2e}");
    assert!(e_cpu <= 2e-2 && e_generic <= 2e-2, "{e_cpu} {e_generic}");
}

/// Wall time of the joint sparse path against dense `key_masked_attention` on one CPU shape
/// (`cargo test --release -p rainfusion --test joint_attention -- --ignored --nocapture`).
#[test]
#[ignore = "timing, not a check"]
fn joint_sparse_against_dense_timing() {
    let layout = VideoLayout {
        frames: 5,
        height: 32,
        width: 32,
        text_tokens: 256,
    };
    let (b, h, d) = (1, 4, 64);
    let l = layout.total_tokens();
    let (q, k, v) = inputs(b, h, l, d, 100);
    let (_, flags) = text_flags(&[180], layout.text_tokens);
    let key_valid = Tensor::cat(
        &[
            &Tensor::ones((b, layout.video_tokens()), DType::U8, &Device::Cpu).unwrap(),
            &flags,
        ],
        1,
    )
    .unwrap();
    let cfg = JointSparsity {
        sparsity: 0.8,
        block_size: 128,
        ..Default::default()
    };
    let time = |f: &dyn Fn()| {
        f();
        let start = std::time::Instant::now();
        for _ in 0..3 {
            f();
        }
        start.elapsed().as_secs_f64() / 3.0
    };
    let dense = time(&|| {
        key_masked_attention(&q, &k, &v, Some(&key_valid), 0.125).unwrap();
    });
    let video = predict_joint_video_mask(&q, &k, &layout, &cfg).unwrap();
    let predict = time(&|| {
        predict_joint_video_mask(&q, &k, &layout, &cfg).unwrap();
    });
    let sparse = time(&|| {
        joint_block_sparse_attention(&q, &k, &v, &layout, Some(&flags), &video, 0.125).unwrap();
    });
    // The same kernel with every block kept (the candle-ops dense path above is slower).
    let all = predict_joint_video_mask(
        &q,
        &k,
        &layout,
        &JointSparsity {
            sparsity: 0.0,
            ..cfg
        },
    )
    .unwrap();
    let full = time(&|| {
        joint_block_sparse_attention(&q, &k, &v, &layout, Some(&flags), &all, 0.125).unwrap();
    });
    println!(
        "{l} tokens ({} video + {} text), {h} heads × {d}: dense masked {:.1} ms, joint at \
         density 1 {:.1} ms, joint sparse {:.1} ms + prediction {:.1} ms at video density {:.3}",
        layout.video_tokens(),
        layout.text_tokens,
        dense * 1e3,
        full * 1e3,
        sparse * 1e3,
        predict * 1e3,
        video.density()
    );
}

#[test]
fn policies_attend_to_padded_joint_sequences() {
    use rainfusion::{
        DenseAttention, DenseSteps, RainFusionAttention, RainFusionConfig, SelfAttention,
    };
    let layout = layout();
    let (b, h, d) = (2, 2, 8);
    let l = layout.total_tokens();
    let (q, k, v) = inputs(b, h, l, d, 21);
    let (_, flags) = text_flags(&[9, 3], layout.text_tokens);
    let scale = 1.0 / (d as f64).sqrt();

    // Dense: the padded text keys excluded, exactly key_masked_attention's.
    let ones = Tensor::ones((b, layout.video_tokens()), DType::U8, &Device::Cpu).unwrap();
    let key_valid = Tensor::cat(&[&ones, &flags], 1).unwrap();
    let want = key_masked_attention(&q, &k, &v, Some(&key_valid), scale).unwrap();
    let got = DenseAttention
        .attend_joint(0, &q, &k, &v, &layout, Some(&flags))
        .unwrap();
    assert_eq!(relative_error(&got, &want).unwrap(), 0.0);
    // Without padding it is the plain call.
    let plain = DenseAttention.attend(0, &q, &k, &v, &layout).unwrap();
    let joint = DenseAttention
        .attend_joint(0, &q, &k, &v, &layout, None)
        .unwrap();
    assert_eq!(relative_error(&joint, &plain).unwrap(), 0.0);

    // RainFusion: the joint path with the mask it predicts, reused on the next step.
    let config = RainFusionConfig {
        sparsity: 0.7,
        block_size: 16,
        window: Window::Tile,
        dense_steps: DenseSteps::Count(1),
        mask_refresh: 5,
        dense_layers: 0,
        first_frame_sink: true,
    };
    let mut policy = RainFusionAttention::new(config, 1).unwrap();
    policy.begin_step(0, 3);
    let warm_up = policy
        .attend_joint(0, &q, &k, &v, &layout, Some(&flags))
        .unwrap();
    assert_eq!(
        relative_error(&warm_up, &want).unwrap(),
        0.0,
        "dense warm-up step"
    );
    let video = predict_joint_video_mask(&q, &k, &layout, &settings(0.7)).unwrap();
    let sparse =
        joint_block_sparse_attention(&q, &k, &v, &layout, Some(&flags), &video, scale).unwrap();
    for step in 1..3 {
        policy.begin_step(step, 3);
        let got = policy
            .attend_joint(0, &q, &k, &v, &layout, Some(&flags))
            .unwrap();
        assert_eq!(relative_error(&got, &sparse).unwrap(), 0.0, "step {step}");
    }
    assert_eq!(
        policy.mask_predictions(),
        1,
        "the mask is reused after its prediction"
    );
    assert!(policy.effective_density() < 1.0);
    assert!(
        relative_error(&sparse, &want).unwrap() > 1e-3,
        "the sparse call skips blocks"
    );
}
