//! The Wan transformer on CUDA (feature `cuda`, needs a GPU; CI builds without the feature, so
//! this file compiles to nothing there): the fused-kernel block path and the candle-ops path,
//! in bf16, against diffusers' f32 velocity of the dit_parity fixtures, and the fused kernels
//! one by one against candle ops.
//!
//! Run on a GPU machine: `cargo test --release -p vdit-models --features cuda --test cuda_dit`.
#![cfg(feature = "cuda")]

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use rainfusion::cuda::fused;
use rainfusion::DenseAttention;
use vdit_models::wan::rope::WanRope;
use vdit_models::wan::WanTransformer;

mod common;
use common::{fixture, forward_on_io, load_io, relative_error};

const BF16_TOLERANCE: f64 = 2e-2;

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA device")
}

/// Opens the transformer in `dir` in bf16 on the GPU, runs it with dense attention on the
/// inputs of `dir/io.safetensors`, and returns its error against the stored diffusers velocity.
fn bf16_velocity_error(dir: &Path) -> f64 {
    let dev = gpu();
    let model = WanTransformer::open(dir, DType::BF16, &dev).unwrap();
    let io = load_io(dir, &dev);
    let out = forward_on_io(&model, &io, &mut DenseAttention);
    relative_error(&out, &io["velocity"])
}

fn random(shape: &[usize], seed: u64, device: &Device) -> Tensor {
    // A fixed pseudo-random pattern (no RNG crate needed): values in about [-2, 2].
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| {
            let x = (i as u64)
                .wrapping_mul(6364136223846793005)
                .wrapping_add(seed.wrapping_mul(1442695040888963407));
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
        .unwrap()
        .to_device(device)
        .unwrap()
}

/// Runs the fixture's transformer on the GPU in bf16 and returns the error against diffusers.
fn run_on_gpu(case: &str, fused_path: bool) -> f64 {
    // The fused path is the default on CUDA; VDIT_NO_FUSED selects the candle-ops path. Tests in
    // this file that read the variable run in one thread (see `both_paths_match_diffusers`).
    if fused_path {
        std::env::remove_var("VDIT_NO_FUSED");
    } else {
        std::env::set_var("VDIT_NO_FUSED", "1");
    }
    let err = bf16_velocity_error(&fixture(case));
    std::env::remove_var("VDIT_NO_FUSED");
    eprintln!("{case} on CUDA bf16, fused {fused_path}: relative error {err:.3e}");
    err
}

/// LoRAs on the fused path: merged, and unmerged (the folded output bias and the feed-forward
/// layer without the cuBLASLt epilogue then carry the low-rank terms), against diffusers'
/// `load_lora_weights` velocity (tests/fixtures/lora, scripts/reference/gen_lora_fixtures.py).
#[test]
fn loras_on_the_fused_path_match_diffusers() {
    use std::sync::Arc;
    use vdit_models::lora::{LoraMode, LoraSet, LoraSpec};
    use vdit_models::wan::keys::lora_targets;
    use vdit_models::weights::WeightFiles;

    let dev = gpu();
    let dir = fixture("heads2x32");
    let files = Arc::new(WeightFiles::open(&dir).unwrap());
    let cfg = WanTransformer::config_for(&dir, &files).unwrap();
    let lora_dir = common::fixtures_root().join("lora");
    let reference =
        candle_core::safetensors::load(lora_dir.join("reference.safetensors"), &Device::Cpu)
            .unwrap();
    let io = load_io(&dir, &dev);
    for (case, strength) in [("lightx2v", 1.0), ("peft", 0.7)] {
        for mode in [LoraMode::Merge, LoraMode::Runtime] {
            let spec = LoraSpec {
                path: lora_dir.join(format!("{case}.safetensors")),
                strength,
            };
            let set = LoraSet::open(&[spec], &lora_targets(&cfg), mode, false).unwrap();
            let model = WanTransformer::load_with_lora(
                &files,
                &cfg,
                DType::BF16,
                &dev,
                Some(Arc::new(set)),
            )
            .unwrap();
            let out = forward_on_io(&model, &io, &mut DenseAttention);
            let err = relative_error(&out, &reference[case]);
            eprintln!(
                "{case} {} on CUDA bf16: relative error {err:.3e}",
                mode.name()
            );
            assert!(err <= BF16_TOLERANCE, "{case} {}: {err:.3e}", mode.name());
        }
    }
}

#[test]
fn both_paths_match_diffusers() {
    for case in ["heads2x32", "heads2x64"] {
        for fused_path in [true, false] {
            let err = run_on_gpu(case, fused_path);
            assert!(
                err <= BF16_TOLERANCE,
                "{case} fused {fused_path}: relative error {err:.3e} > {BF16_TOLERANCE:e}"
            );
        }
    }
}

/// LayerNorm in f64 on the CPU: the reference of the fused norm.
fn layer_norm_ref(x: &Tensor, eps: f64) -> Tensor {
    let x = x
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let mean = x.mean_keepdim(D::Minus1).unwrap();
    let centred = x.broadcast_sub(&mean).unwrap();
    let var = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    centred
        .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
        .unwrap()
}

/// Runs `check` with the CTA-per-row kernels (the default) and again with the warp-per-row
/// ones (`RAINFUSION_CUDA_ROW_KERNELS=1`). The variable is process-wide: the scripts run this
/// file's tests in one thread.
fn each_row_form(check: fn()) {
    for value in ["0", "1"] {
        std::env::set_var(rainfusion::cuda::ROW_KERNELS_ENV, value);
        eprintln!("{}={value}", rainfusion::cuda::ROW_KERNELS_ENV);
        check();
    }
    std::env::remove_var(rainfusion::cuda::ROW_KERNELS_ENV);
}

#[test]
fn layer_norm_affine_matches_reference_per_batch_and_per_channel() {
    each_row_form(layer_norm_affine_matches_reference_per_batch_and_per_channel_in);
}

fn layer_norm_affine_matches_reference_per_batch_and_per_channel_in() {
    let dev = gpu();
    for dim in [256, 1536, 5120, 100, 102] {
        let (b, l) = (2, 37);
        // A large common offset: the two-pass variance must keep its precision.
        let x = (random(&[b, l, dim], 1, &dev) + 50.0).unwrap();
        let scale = random(&[b, dim], 2, &dev);
        let shift = random(&[b, dim], 3, &dev);
        let y = fused::layer_norm_affine(&x, &scale, &shift, 1e-6, DType::BF16).unwrap();
        assert_eq!((y.dims(), y.dtype()), ([b, l, dim].as_slice(), DType::BF16));
        let expected = layer_norm_ref(&x, 1e-6)
            .broadcast_mul(
                &scale
                    .to_device(&Device::Cpu)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .unsqueeze(1)
                    .unwrap(),
            )
            .unwrap()
            .broadcast_add(
                &shift
                    .to_device(&Device::Cpu)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .unsqueeze(1)
                    .unwrap(),
            )
            .unwrap();
        let err = relative_error(&y, &expected);
        assert!(err < 5e-3, "dim {dim} per batch: {err:.3e}");

        let w = random(&[dim], 4, &dev);
        let bias = random(&[dim], 5, &dev);
        let y = fused::layer_norm_affine(&x, &w, &bias, 1e-6, DType::F16).unwrap();
        let cpu = |t: &Tensor| {
            t.to_device(&Device::Cpu)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
        };
        let expected = layer_norm_ref(&x, 1e-6)
            .broadcast_mul(&cpu(&w))
            .unwrap()
            .broadcast_add(&cpu(&bias))
            .unwrap();
        let err = relative_error(&y, &expected);
        assert!(err < 2e-3, "dim {dim} per channel: {err:.3e}");
    }
}

#[test]
fn rms_norm_rope_matches_candle_ops() {
    each_row_form(rms_norm_rope_matches_candle_ops_in);
}

fn rms_norm_rope_matches_candle_ops_in() {
    let dev = gpu();
    for (heads, head_dim) in [(12, 128), (4, 64), (2, 32)] {
        let (b, f, h, w) = (2, 3, 4, 5);
        let l = f * h * w;
        let dim = heads * head_dim;
        let x = random(&[b, l, dim], 6, &dev).to_dtype(DType::BF16).unwrap();
        let bias = random(&[dim], 7, &dev).to_dtype(DType::BF16).unwrap();
        let weight = random(&[dim], 8, &dev);
        let (cos, sin) = WanRope::new(head_dim, 10_000.0)
            .tables(f, h, w, &dev)
            .unwrap();
        let y = fused::rms_norm_rope(&x, Some(&bias), &weight, Some((&cos, &sin)), head_dim, 1e-6)
            .unwrap();
        // Reference: the same steps in candle ops, f32.
        let v = x
            .to_dtype(DType::F32)
            .unwrap()
            .broadcast_add(&bias.to_dtype(DType::F32).unwrap())
            .unwrap();
        let normed = candle_nn::ops::rms_norm(&v, &weight, 1e-6).unwrap();
        let heads_view = normed
            .reshape((b, l, heads, head_dim))
            .unwrap()
            .transpose(1, 2)
            .unwrap();
        let rotated = WanRope::apply(&heads_view, &cos, &sin).unwrap();
        let expected = rotated
            .transpose(1, 2)
            .unwrap()
            .reshape((b, l, dim))
            .unwrap();
        let err = relative_error(&y, &expected);
        assert!(
            err < 5e-3,
            "heads {heads} × {head_dim} with RoPE: {err:.3e}"
        );

        let y = fused::rms_norm_rope(&x, None, &weight, None, head_dim, 1e-6).unwrap();
        let expected =
            candle_nn::ops::rms_norm(&x.to_dtype(DType::F32).unwrap(), &weight, 1e-6).unwrap();
        let err = relative_error(&y, &expected);
        assert!(
            err < 5e-3,
            "heads {heads} × {head_dim} without RoPE: {err:.3e}"
        );
    }
}

#[test]
fn gated_residual_and_bias_gelu_match_candle_ops() {
    each_row_form(gated_residual_and_bias_gelu_match_candle_ops_in);
}

fn gated_residual_and_bias_gelu_match_candle_ops_in() {
    let dev = gpu();
    let (b, l, dim) = (2, 50, 384);
    let x = random(&[b, l, dim], 9, &dev);
    let y = random(&[b, l, dim], 10, &dev)
        .to_dtype(DType::BF16)
        .unwrap();
    let bias = random(&[dim], 11, &dev).to_dtype(DType::BF16).unwrap();
    let gate = random(&[b, dim], 12, &dev);
    let out = fused::gated_residual(&x, &y, Some(&bias), Some(&gate)).unwrap();
    let u = y
        .to_dtype(DType::F32)
        .unwrap()
        .broadcast_add(&bias.to_dtype(DType::F32).unwrap())
        .unwrap();
    let expected = (&x + u.broadcast_mul(&gate.unsqueeze(1).unwrap()).unwrap()).unwrap();
    assert!(relative_error(&out, &expected) < 1e-6);
    let out = fused::gated_residual(&x, &y, None, None).unwrap();
    let expected = (&x + y.to_dtype(DType::F32).unwrap()).unwrap();
    assert!(relative_error(&out, &expected) < 1e-6);

    let n = 1000;
    let h = random(&[b, l, n], 13, &dev)
        .to_dtype(DType::BF16)
        .unwrap()
        .contiguous()
        .unwrap();
    let hb = random(&[n], 14, &dev).to_dtype(DType::BF16).unwrap();
    let expected = h
        .to_dtype(DType::F32)
        .unwrap()
        .broadcast_add(&hb.to_dtype(DType::F32).unwrap())
        .unwrap()
        .gelu()
        .unwrap();
    fused::bias_gelu_inplace(&h, Some(&hb)).unwrap();
    let err = relative_error(&h, &expected);
    assert!(err < 5e-3, "bias + gelu: {err:.3e}");
}

/// `t` moved one element off its allocation's start (same values, a contiguous view with a
/// start offset): the row kernels then fall back to element-wide accesses.
fn one_element_off(t: &Tensor) -> Tensor {
    let flat = t.flatten_all().unwrap();
    let pad = Tensor::zeros(1, t.dtype(), t.device()).unwrap();
    Tensor::cat(&[&pad, &flat], 0)
        .unwrap()
        .narrow(0, 1, flat.dim(0).unwrap())
        .unwrap()
        .reshape(t.dims())
        .unwrap()
}

/// The gated residual with the next LayerNorm in one pass, at the widths of the Wan models
/// (1,536 one warp a row, 3,072 two, 5,120 four) and one that is not a multiple of 4, with aligned and
/// misaligned inputs (16-byte against element-wide accesses): the stream within f32 rounding
/// of the reference, the norm within bf16's, and each equal to the separate kernels.
#[test]
fn gated_residual_norm_matches_reference_at_every_access_width() {
    each_row_form(gated_residual_norm_matches_reference_at_every_access_width_in);
}

fn gated_residual_norm_matches_reference_at_every_access_width_in() {
    let dev = gpu();
    let cpu = |t: &Tensor| {
        t.to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    };
    for dim in [1536, 3072, 5120, 102] {
        let (b, l) = (2, 37);
        let x = (random(&[b, l, dim], 21, &dev) + 50.0).unwrap();
        let y = random(&[b, l, dim], 22, &dev)
            .to_dtype(DType::BF16)
            .unwrap();
        let bias = random(&[dim], 23, &dev).to_dtype(DType::BF16).unwrap();
        let gate = random(&[b, dim], 24, &dev);
        let (scale, shift) = (random(&[b, dim], 25, &dev), random(&[b, dim], 26, &dev));
        let u = cpu(&y).broadcast_add(&cpu(&bias)).unwrap();
        let v_ref =
            (cpu(&x) + u.broadcast_mul(&cpu(&gate).unsqueeze(1).unwrap()).unwrap()).unwrap();
        let h_ref = layer_norm_ref(&v_ref, 1e-6)
            .broadcast_mul(&cpu(&scale).unsqueeze(1).unwrap())
            .unwrap()
            .broadcast_add(&cpu(&shift).unsqueeze(1).unwrap())
            .unwrap();
        for misaligned in [false, true] {
            let x = if misaligned {
                one_element_off(&x)
            } else {
                x.clone()
            };
            let case = format!("dim {dim}, misaligned {misaligned}");
            let (v, h) = fused::gated_residual_norm(
                &x,
                &y,
                Some(&bias),
                Some(&gate),
                &scale,
                &shift,
                1e-6,
                DType::BF16,
            )
            .unwrap();
            assert_eq!((v.dims(), v.dtype()), ([b, l, dim].as_slice(), DType::F32));
            assert_eq!((h.dims(), h.dtype()), ([b, l, dim].as_slice(), DType::BF16));
            let err = relative_error(&v, &v_ref);
            assert!(err < 1e-6, "{case}: stream {err:.3e}");
            let err = relative_error(&h, &h_ref);
            assert!(err < 5e-3, "{case}: norm {err:.3e}");
            // The same arithmetic as the two kernels one after the other.
            let v_alone = fused::gated_residual(&x, &y, Some(&bias), Some(&gate)).unwrap();
            let h_alone =
                fused::layer_norm_affine(&v_alone, &scale, &shift, 1e-6, DType::BF16).unwrap();
            assert_eq!(common::differing_values(&v, &v_alone), 0, "{case}: stream");
            assert_eq!(common::differing_values(&h, &h_alone), 0, "{case}: norm");
        }
    }
}

/// The q/k RMSNorm + RoPE through its element-pair accesses (a misaligned input) gives the
/// reference as the 8-byte accesses do.
#[test]
fn rms_norm_rope_matches_reference_when_misaligned() {
    each_row_form(rms_norm_rope_matches_reference_when_misaligned_in);
}

fn rms_norm_rope_matches_reference_when_misaligned_in() {
    let dev = gpu();
    let (heads, head_dim) = (12, 128);
    let (b, f, h, w) = (2, 3, 4, 5);
    let (l, dim) = (f * h * w, heads * head_dim);
    let x = random(&[b, l, dim], 27, &dev)
        .to_dtype(DType::BF16)
        .unwrap();
    let weight = random(&[dim], 28, &dev);
    let (cos, sin) = WanRope::new(head_dim, 10_000.0)
        .tables(f, h, w, &dev)
        .unwrap();
    let rope = Some((&cos, &sin));
    let aligned = fused::rms_norm_rope(&x, None, &weight, rope, head_dim, 1e-6).unwrap();
    let off =
        fused::rms_norm_rope(&one_element_off(&x), None, &weight, rope, head_dim, 1e-6).unwrap();
    let normed = candle_nn::ops::rms_norm(&x.to_dtype(DType::F32).unwrap(), &weight, 1e-6)
        .unwrap()
        .reshape((b, l, heads, head_dim))
        .unwrap()
        .transpose(1, 2)
        .unwrap();
    let expected = WanRope::apply(&normed, &cos, &sin)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, l, dim))
        .unwrap();
    for (out, what) in [(&aligned, "aligned"), (&off, "misaligned")] {
        let err = relative_error(out, &expected);
        assert!(err < 5e-3, "{what}: {err:.3e}");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let dev = gpu();
    let x = random(&[1, 4, 8], 1, &dev);
    let a = random(&[3, 8], 2, &dev);
    assert!(fused::layer_norm_affine(&x, &a, &a, 1e-6, DType::BF16).is_err()); // batch 3 vs 1
    let a = random(&[8], 2, &dev);
    assert!(fused::layer_norm_affine(&x, &a, &a, 1e-6, DType::F32).is_err()); // f32 output
    assert!(fused::rms_norm_rope(&x, None, &a, None, 4, 1e-6).is_err()); // f32 input
    let xb = x.to_dtype(DType::BF16).unwrap();
    assert!(fused::rms_norm_rope(&xb, None, &a, None, 3, 1e-6).is_err()); // odd head_dim
    let cpu = Tensor::zeros((1, 4, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(fused::layer_norm_affine(&cpu, &a, &a, 1e-6, DType::BF16).is_err());
}

/// The full-size 1.3B transformer (30 layers, 12 × 128, ffn 8960) with diffusers' own random
/// weights, written by scripts/gpu/full_parity.py into `$VDIT_FULL_DIR`, loaded through the
/// user-facing loader and run in bf16 on the fused path, against diffusers' f32 output.
#[test]
#[ignore]
fn full_size_transformer_matches_diffusers() {
    let Some(dir) = std::env::var_os("VDIT_FULL_DIR") else {
        panic!("set VDIT_FULL_DIR to the folder scripts/gpu/full_parity.py wrote");
    };
    let err = bf16_velocity_error(&PathBuf::from(dir));
    eprintln!("full-size 1.3B transformer, CUDA bf16 (fused path) vs diffusers f32: relative error {err:.3e}");
    assert!(
        err <= BF16_TOLERANCE,
        "relative error {err:.3e} > {BF16_TOLERANCE:e}"
    );
}

#[test]
fn cublaslt_linear_with_bias_and_gelu_matches_candle_ops() {
    let dev = gpu();
    for (rows, input, out) in [(1000, 256, 384), (77, 128, 1024), (3, 1536, 8960)] {
        let x = random(&[1, rows, input], 15, &dev)
            .to_dtype(DType::BF16)
            .unwrap();
        let w = (random(&[out, input], 16, &dev) * 0.05)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let b = random(&[out], 17, &dev).to_dtype(DType::BF16).unwrap();
        let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let linear = f32(&x)
            .broadcast_matmul(&f32(&w).t().unwrap())
            .unwrap()
            .broadcast_add(&f32(&b))
            .unwrap();
        let y = rainfusion::cuda::linear(&x, &w, Some(&b), false).unwrap();
        assert_eq!(y.dims(), [1, rows, out]);
        let err = relative_error(&y, &linear);
        assert!(err < 5e-3, "linear {rows}x{input}→{out}: {err:.3e}");
        let y = rainfusion::cuda::linear(&x, &w, Some(&b), true).unwrap();
        let err = relative_error(&y, &linear.gelu().unwrap());
        assert!(err < 5e-3, "linear + gelu {rows}x{input}→{out}: {err:.3e}");
        let y = rainfusion::cuda::linear(&x, &w, None, false).unwrap();
        let err = relative_error(
            &y,
            &f32(&x).broadcast_matmul(&f32(&w).t().unwrap()).unwrap(),
        );
        assert!(
            err < 5e-3,
            "linear without bias {rows}x{input}→{out}: {err:.3e}"
        );
    }
    let x = random(&[2, 8], 1, &dev).to_dtype(DType::BF16).unwrap();
    let w = random(&[4, 9], 1, &dev).to_dtype(DType::BF16).unwrap();
    assert!(rainfusion::cuda::linear(&x, &w, None, false).is_err()); // 8 inputs vs 9
}

/// Times each fused kernel at the Wan-1.3B 480p size (B2 × 32,760 tokens × 1536, FFN 8960) and
/// prints the achieved bandwidth: `--ignored --nocapture bench_fused_kernels`.
#[test]
#[ignore]
fn bench_fused_kernels() {
    let dev = gpu();
    let (b, l, dim, ffn, heads, head_dim) = (2, 32_760, 1536, 8960, 12, 128);
    let x = random(&[b, l, dim], 1, &dev);
    let y16 = random(&[b, l, dim], 2, &dev).to_dtype(DType::BF16).unwrap();
    let per_batch = random(&[b, dim], 3, &dev);
    let vec32 = random(&[dim], 4, &dev);
    let vec16 = vec32.to_dtype(DType::BF16).unwrap();
    let (cos, sin) = WanRope::new(head_dim, 10_000.0)
        .tables(21, 30, 52, &dev)
        .unwrap();
    let u = random(&[b, l, ffn], 5, &dev).to_dtype(DType::BF16).unwrap();
    let ub = random(&[ffn], 6, &dev).to_dtype(DType::BF16).unwrap();
    let h16 = y16.clone();
    let w_ffn = (random(&[ffn, dim], 7, &dev) * 0.02)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let time = |name: &str, bytes: f64, f: &dyn Fn()| {
        f();
        dev.synchronize().unwrap();
        let iters = 20;
        let start = std::time::Instant::now();
        for _ in 0..iters {
            f();
        }
        dev.synchronize().unwrap();
        let s = start.elapsed().as_secs_f64() / iters as f64;
        println!(
            "fused {name:<36} {:8.3} ms {:7.0} GB/s",
            s * 1e3,
            bytes / s / 1e9
        );
    };
    let n = (b * l * dim) as f64;
    let _ = heads;
    // The row kernels in both forms: CTA per row (the default), then warp per row.
    for (form, value) in [("cta", "0"), ("warp", "1")] {
        std::env::set_var(rainfusion::cuda::ROW_KERNELS_ENV, value);
        let name = |what: &str| format!("{what} [{form}]");
        time(&name("layer_norm_affine (f32→bf16)"), n * 6.0, &|| {
            fused::layer_norm_affine(&x, &per_batch, &per_batch, 1e-6, DType::BF16).unwrap();
        });
        time(&name("rms_norm_rope (bf16, RoPE)"), n * 4.0, &|| {
            fused::rms_norm_rope(
                &y16,
                Some(&vec16),
                &vec32,
                Some((&cos, &sin)),
                head_dim,
                1e-6,
            )
            .unwrap();
        });
        time(
            &name("gated_residual (f32 + bf16 → f32)"),
            n * 10.0,
            &|| {
                fused::gated_residual(&x, &y16, Some(&vec16), Some(&per_batch)).unwrap();
            },
        );
        time(
            &name("gated_residual_norm (→ f32 and bf16)"),
            n * 12.0,
            &|| {
                fused::gated_residual_norm(
                    &x,
                    &y16,
                    Some(&vec16),
                    Some(&per_batch),
                    &per_batch,
                    &per_batch,
                    1e-6,
                    DType::BF16,
                )
                .unwrap();
            },
        );
    }
    std::env::remove_var(rainfusion::cuda::ROW_KERNELS_ENV);
    let nu = (b * l * ffn) as f64;
    time("bias_gelu in place (FFN width)", nu * 4.0, &|| {
        fused::bias_gelu_inplace(&u, Some(&ub)).unwrap();
    });
    let flops = 2.0 * (b * l) as f64 * dim as f64 * ffn as f64;
    time(
        "candle matmul [65520x1536]·[1536x8960]",
        flops / 1e3,
        &|| {
            h16.broadcast_matmul(&w_ffn.t().unwrap()).unwrap();
        },
    );
    time("cuBLASLt linear + bias + gelu (same)", flops / 1e3, &|| {
        rainfusion::cuda::linear(&h16, &w_ffn, Some(&ub), true).unwrap();
    });
    println!("(the two matmul rows print TFLOP/s in the GB/s column)");
}

/// The VAE's tensor-core cuDNN convolution (feature `cudnn`) against candle's f32 conv2d.
#[cfg(feature = "cudnn")]
#[test]
fn tensor_core_convolution_matches_candle_conv2d() {
    let dev = gpu();
    for (n, c, h, w, o, k, pad) in [
        (2, 96, 30, 52, 96, 3, 1),
        (3, 64, 17, 9, 32, 3, 1),
        (1, 48, 8, 8, 24, 1, 0),
    ] {
        let x = random(&[n, c, h, w], 21, &dev)
            .to_dtype(DType::BF16)
            .unwrap();
        let kernel = (random(&[o, c, k, k], 22, &dev) * 0.05)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let expected = f32(&x).conv2d(&f32(&kernel), pad, 1, 1, 1).unwrap();
        let y = vdit_models::wan::vae::conv2d_tensor_ops(&x, &kernel, pad).unwrap();
        assert_eq!(y.dims(), expected.dims());
        let err = relative_error(&y, &expected);
        assert!(err < 1e-2, "conv {n}x{c}x{h}x{w} * {o}x{k}x{k}: {err:.3e}");
    }
}

/// The whole VAE decoder on CUDA in bf16, on its default convolution path (the tensor-core cuDNN
/// convolution unless VDIT_VAE_TENSOR_OPS=0), against diffusers' f32 decode of the vae fixture.
#[cfg(feature = "cudnn")]
#[test]
fn vae_decode_on_cuda_matches_diffusers() {
    let (vae, latents, expected) =
        common::vae_fixture("diffusion_pytorch_model.safetensors", DType::BF16, &gpu());
    // The decoder moves the latents to its device.
    let video = vae.decode(&latents, None).unwrap();
    let video = video
        .to_dtype(DType::F32)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
    let err = relative_error(&video, &expected);
    eprintln!("VAE decode on CUDA bf16 (default convolutions): relative error {err:.3e}");
    assert!(err <= BF16_TOLERANCE, "relative error {err:.3e}");
}
