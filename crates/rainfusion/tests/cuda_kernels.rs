//! The CUDA kernels against the CPU reference (feature `cuda`, needs a GPU; CI builds without
//! the feature, so this file compiles to nothing there).
//!
//! Run on a GPU machine: `cargo test --release -p rainfusion --features cuda --test cuda_kernels`.
#![cfg(feature = "cuda")]

use std::sync::{Mutex, MutexGuard};

use candle_core::{DType, Device, Tensor};
use rainfusion::cuda::OutputLayout;
use rainfusion::{cuda, dense_attention, BlockMask};
use rand::{Rng, SeedableRng};

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA device")
}

/// Tests run on parallel threads, and [`cuda::NO_WGMMA_ENV`] switches the kernel for the whole
/// process: a test that sets it, or that expects two calls to run the same kernel (bit-equal
/// results), holds this lock.
static KERNEL_CHOICE: Mutex<()> = Mutex::new(());

fn same_kernel() -> MutexGuard<'static, ()> {
    KERNEL_CHOICE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `[B, L, H, D]` memory of random values viewed as `[B, H, L, D]` on `dev` in `dtype` (how a
/// transformer's projections produce q, k, v), and the same values as a contiguous f32
/// `[B, H, L, D]` on the CPU, rounded to `dtype` (the reference's input).
fn blhd_view(
    dev: &Device,
    (b, h, l, d): (usize, usize, usize, usize),
    dtype: DType,
    seed: u64,
) -> (Tensor, Tensor) {
    let host = random((b, l, h, d), seed).to_dtype(dtype).unwrap();
    let view = host.to_device(dev).unwrap().transpose(1, 2).unwrap();
    let reference = host
        .to_dtype(DType::F32)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap();
    (view, reference)
}

/// Every element of `a` equals the one of `b` (same shape; compared through f32, which holds
/// every bf16/f16 value exactly; a NaN anywhere fails).
fn assert_bit_equal(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let flat = |t: &Tensor| {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (a, b) = (flat(a), flat(b));
    let first_diff = a.iter().zip(&b).position(|(x, y)| x != y);
    assert!(
        first_diff.is_none(),
        "{what}: first difference at element {first_diff:?}"
    );
}

fn random(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// `t` rounded to `dtype` and back to f32: the reference then sees exactly the kernel's inputs.
fn rounded(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    rainfusion::reference::relative_error(a, b).unwrap()
}

/// Reference block-sparse attention on the CPU in f32: each (b, h, query block) attends to the
/// keys of its kept blocks only; rows with no kept block are zero.
fn sparse_reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: &BlockMask, scale: f64) -> Tensor {
    let (b, h, l, d) = q.dims4().unwrap();
    let bs = mask.block_size;
    let mut out = vec![0f32; b * h * l * d];
    for bi in 0..b {
        for hi in 0..h {
            let qh = q.get(bi).unwrap().get(hi).unwrap();
            let kh = k.get(bi).unwrap().get(hi).unwrap();
            let vh = v.get(bi).unwrap().get(hi).unwrap();
            for qb in 0..mask.query_blocks {
                let kept = mask.row(bi, hi, qb);
                if kept.is_empty() {
                    continue;
                }
                let rows = bs.min(l - qb * bs);
                let keys: Vec<u32> = kept
                    .iter()
                    .flat_map(|&kb| {
                        (kb as usize * bs..((kb as usize + 1) * bs).min(l)).map(|t| t as u32)
                    })
                    .collect();
                let idx = Tensor::new(keys.as_slice(), &Device::Cpu).unwrap();
                let qs = qh
                    .narrow(0, qb * bs, rows)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let ks = kh
                    .index_select(&idx, 0)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let vs = vh
                    .index_select(&idx, 0)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let o = dense_attention(&qs, &ks, &vs, scale).unwrap();
                let o = o.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let base = ((bi * h + hi) * l + qb * bs) * d;
                out[base..base + rows * d].copy_from_slice(&o);
            }
        }
    }
    Tensor::from_vec(out, (b, h, l, d), &Device::Cpu).unwrap()
}

fn random_mask(b: usize, h: usize, bs: usize, blocks: usize, keep: usize, seed: u64) -> BlockMask {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut rows = Vec::new();
    for r in 0..b * h * blocks {
        let mut row: Vec<u32> = (0..blocks as u32)
            .filter(|_| rng.random_range(0..blocks) < keep)
            .collect();
        if r % 7 == 3 {
            row.clear(); // some rows keep nothing
        }
        rows.push(row);
    }
    BlockMask::from_rows(b, h, bs, blocks, blocks, &rows).unwrap()
}

#[test]
fn dense_flash_attention_matches_cpu_reference() {
    let dev = gpu();
    for (dtype, tol) in [(DType::BF16, 2e-2), (DType::F16, 5e-3)] {
        for d in [64, 128] {
            for l in [300, 256] {
                let r = |seed| rounded(&random((2, 3, l, d), seed), dtype);
                let (q, k, v) = (r(1), r(2), r(3));
                let scale = 1.0 / (d as f64).sqrt();
                let want = dense_attention(&q, &k, &v, scale).unwrap();
                let up = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(&dev).unwrap();
                let got = cuda::flash_attention(&up(&q), &up(&k), &up(&v), scale).unwrap();
                assert_eq!(got.dims4().unwrap(), (2, 3, l, d));
                assert_eq!(got.dtype(), dtype);
                let err = rel_err(&got, &want);
                assert!(err < tol, "{dtype:?} d{d} L{l}: rel err {err}");
            }
        }
    }
}

#[test]
fn strided_inputs_are_read_in_place_and_agree_with_contiguous() {
    let _lock = same_kernel();
    let dev = gpu();
    // [B, L, H, D] memory viewed as [B, H, L, D], as a transformer produces q, k, v.
    let mk = |seed| {
        random((1, 200, 4, 128), seed)
            .to_dtype(DType::BF16)
            .unwrap()
            .to_device(&dev)
            .unwrap()
    };
    let (q, k, v) = (
        mk(4).transpose(1, 2).unwrap(),
        mk(5).transpose(1, 2).unwrap(),
        mk(6).transpose(1, 2).unwrap(),
    );
    assert!(!q.is_contiguous());
    let strided = cuda::flash_attention(&q, &k, &v, 0.1).unwrap();
    let contiguous = cuda::flash_attention(
        &q.contiguous().unwrap(),
        &k.contiguous().unwrap(),
        &v.contiguous().unwrap(),
        0.1,
    )
    .unwrap();
    assert_eq!(rel_err(&strided, &contiguous), 0.0);
}

#[test]
fn block_sparse_attention_matches_cpu_reference() {
    let dev = gpu();
    for (bs, d, l) in [
        (128usize, 128usize, 700usize),
        (64, 128, 300),
        (64, 64, 333),
        (128, 64, 512),
    ] {
        let blocks = l.div_ceil(bs);
        let r = |seed| rounded(&random((2, 2, l, d), seed), DType::BF16);
        let (q, k, v) = (r(7), r(8), r(9));
        let mask = random_mask(2, 2, bs, blocks, blocks / 2, 10);
        let scale = 1.0 / (d as f64).sqrt();
        let want = sparse_reference(&q, &k, &v, &mask, scale);
        let up = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_device(&dev).unwrap();
        let got = cuda::block_sparse_attention(&up(&q), &up(&k), &up(&v), &mask, scale).unwrap();
        let err = rel_err(&got, &want);
        assert!(err < 2e-2, "block {bs} d{d} L{l}: rel err {err}");
    }
}

/// On Hopper the d128 / block-128 case runs the wgmma kernel; the portable mma.sync kernel must
/// agree with it (both within rounding of the reference; bit equality is not expected).
#[test]
fn hopper_and_portable_kernels_agree() {
    let _lock = same_kernel();
    let dev = gpu();
    let up = |seed| {
        random((2, 3, 1000, 128), seed)
            .to_dtype(DType::BF16)
            .unwrap()
            .to_device(&dev)
            .unwrap()
    };
    let (q, k, v) = (up(24), up(25), up(26));
    let mask = random_mask(2, 3, 128, 8, 4, 27);
    let default_path = cuda::block_sparse_attention(&q, &k, &v, &mask, 0.088).unwrap();
    std::env::set_var(cuda::NO_WGMMA_ENV, "1");
    let portable = cuda::block_sparse_attention(&q, &k, &v, &mask, 0.088);
    let portable_dense = cuda::flash_attention(&q, &k, &v, 0.088);
    std::env::remove_var(cuda::NO_WGMMA_ENV);
    let err = rel_err(&default_path, &portable.unwrap());
    assert!(err < 1e-2, "wgmma vs mma.sync: {err}");
    let err = rel_err(
        &cuda::flash_attention(&q, &k, &v, 0.088).unwrap(),
        &portable_dense.unwrap(),
    );
    assert!(err < 1e-2, "dense wgmma vs mma.sync: {err}");
}

/// Cross-attention (video queries over text keys): q a `[B, L, H, D]` view with ragged Lq, k/v
/// views of `[B, Lk, H, D]` memory with Lk not a multiple of any tile, against the CPU reference;
/// the `[B, L, H, D]` output is the `[B, H, L, D]` one transposed, bit for bit.
#[test]
fn cross_attention_matches_cpu_reference() {
    let _lock = same_kernel();
    let dev = gpu();
    let (b, h) = (1, 2);
    for (dtype, tol) in [(DType::BF16, 2e-2), (DType::F16, 5e-3)] {
        for d in [64, 128] {
            for (lq, lk) in [(1000, 512), (777, 77), (1000, 300), (777, 512), (1000, 77)] {
                let seed = (lq * 1000 + lk + d) as u64;
                let (q, q_ref) = blhd_view(&dev, (b, h, lq, d), dtype, seed);
                let (k, k_ref) = blhd_view(&dev, (b, h, lk, d), dtype, seed + 1);
                let (v, v_ref) = blhd_view(&dev, (b, h, lk, d), dtype, seed + 2);
                assert!(!q.is_contiguous() && !k.is_contiguous());
                let scale = 1.0 / (d as f64).sqrt();
                let want = dense_attention(&q_ref, &k_ref, &v_ref, scale).unwrap();
                let what = format!("{dtype:?} d{d} Lq{lq} Lk{lk}");
                let got = cuda::cross_attention(&q, &k, &v, scale, OutputLayout::Bhld).unwrap();
                assert_eq!(got.dims4().unwrap(), (b, h, lq, d), "{what}");
                assert_eq!(got.dtype(), dtype);
                let err = rel_err(&got, &want);
                assert!(err < tol, "{what}: rel err {err}");
                let blhd = cuda::cross_attention(&q, &k, &v, scale, OutputLayout::Blhd).unwrap();
                assert_eq!(blhd.dims4().unwrap(), (b, lq, h, d), "{what}");
                assert_bit_equal(&blhd, &got.transpose(1, 2).unwrap(), &what);
            }
        }
    }
}

/// k and v of different memory layouts are copied to one; a contiguous q with strided k/v and
/// batch 2 give the same result as all-contiguous inputs.
#[test]
fn cross_attention_mixed_layouts_agree_with_contiguous() {
    let _lock = same_kernel();
    let dev = gpu();
    let (b, h, lq, lk, d) = (2, 3, 300, 100, 128);
    let (q, _) = blhd_view(&dev, (b, h, lq, d), DType::BF16, 40);
    let (k, _) = blhd_view(&dev, (b, h, lk, d), DType::BF16, 41);
    let (v, _) = blhd_view(&dev, (b, h, lk, d), DType::BF16, 42);
    let reference = cuda::cross_attention(
        &q.contiguous().unwrap(),
        &k.contiguous().unwrap(),
        &v.contiguous().unwrap(),
        0.09,
        OutputLayout::Bhld,
    )
    .unwrap();
    let q_contiguous = q.contiguous().unwrap();
    let v_contiguous = v.contiguous().unwrap(); // strides now differ from k's
    for (name, q, v) in [
        ("contiguous q, strided k/v", &q_contiguous, &v),
        ("strided q, k/v of different strides", &q, &v_contiguous),
    ] {
        let got = cuda::cross_attention(q, &k, v, 0.09, OutputLayout::Bhld).unwrap();
        assert_bit_equal(&got, &reference, name);
    }
}

/// With Lk == Lq, cross_attention is the dense self-attention kernel.
#[test]
fn cross_attention_with_equal_lengths_is_flash_attention() {
    let _lock = same_kernel();
    let dev = gpu();
    let (q, _) = blhd_view(&dev, (1, 2, 333, 64), DType::F16, 43);
    let (k, _) = blhd_view(&dev, (1, 2, 333, 64), DType::F16, 44);
    let (v, _) = blhd_view(&dev, (1, 2, 333, 64), DType::F16, 45);
    let a = cuda::cross_attention(&q, &k, &v, 0.125, OutputLayout::Blhd).unwrap();
    let b = cuda::flash_attention_with_layout(&q, &k, &v, 0.125, OutputLayout::Blhd).unwrap();
    assert_bit_equal(&a, &b, "cross vs flash, Lk == Lq");
}

/// The `[B, L, H, D]` output of dense, block-sparse (host and device mask) attention is the
/// `[B, H, L, D]` output transposed, bit for bit, for both head dims and both mask block sizes.
#[test]
fn blhd_output_is_the_bhld_output_transposed() {
    let _lock = same_kernel();
    let dev = gpu();
    for (bs, d, l) in [
        (128usize, 128usize, 700usize),
        (64, 128, 300),
        (128, 64, 333),
        (64, 64, 200),
    ] {
        let (b, h) = (2, 3);
        let (q, _) = blhd_view(&dev, (b, h, l, d), DType::BF16, 30);
        let (k, _) = blhd_view(&dev, (b, h, l, d), DType::BF16, 31);
        let (v, _) = blhd_view(&dev, (b, h, l, d), DType::BF16, 32);
        let blocks = l.div_ceil(bs);
        let mask = random_mask(b, h, bs, blocks, blocks / 2, 33);
        let what = |kind: &str| format!("{kind} block {bs} d{d} L{l}");
        let check = |kind: &str, bhld: Tensor, blhd: Tensor| {
            assert_eq!(bhld.dims4().unwrap(), (b, h, l, d), "{}", what(kind));
            assert_eq!(blhd.dims4().unwrap(), (b, l, h, d), "{}", what(kind));
            assert!(blhd.is_contiguous());
            assert_bit_equal(&blhd, &bhld.transpose(1, 2).unwrap(), &what(kind));
        };
        check(
            "dense",
            cuda::flash_attention(&q, &k, &v, 0.1).unwrap(),
            cuda::flash_attention_with_layout(&q, &k, &v, 0.1, OutputLayout::Blhd).unwrap(),
        );
        check(
            "sparse, host mask",
            cuda::block_sparse_attention(&q, &k, &v, &mask, 0.1).unwrap(),
            cuda::block_sparse_attention_with_layout(&q, &k, &v, &mask, 0.1, OutputLayout::Blhd)
                .unwrap(),
        );
        let device_mask = cuda::predict_block_mask(&q, &k, bs, 0.5, 0).unwrap();
        check(
            "sparse, device mask",
            cuda::block_sparse_attention_device(&q, &k, &v, &device_mask, 0.1).unwrap(),
            cuda::block_sparse_attention_device_with_layout(
                &q,
                &k,
                &v,
                &device_mask,
                0.1,
                OutputLayout::Blhd,
            )
            .unwrap(),
        );
    }
}

/// On Hopper, cross-attention at head_dim 128 runs the wgmma kernel; the portable kernel must
/// agree with it, and both with the CPU reference, for key lengths below, at and above one
/// 64-key tile boundary.
#[test]
fn hopper_and_portable_kernels_agree_for_cross_attention() {
    let _lock = same_kernel();
    let dev = gpu();
    for lk in [77, 512, 1] {
        let (q, q_ref) = blhd_view(&dev, (2, 2, 1000, 128), DType::BF16, 50 + lk as u64);
        let (k, k_ref) = blhd_view(&dev, (2, 2, lk, 128), DType::BF16, 60 + lk as u64);
        let (v, v_ref) = blhd_view(&dev, (2, 2, lk, 128), DType::BF16, 70 + lk as u64);
        let want = dense_attention(&q_ref, &k_ref, &v_ref, 0.088).unwrap();
        let default_path = cuda::cross_attention(&q, &k, &v, 0.088, OutputLayout::Blhd).unwrap();
        std::env::set_var(cuda::NO_WGMMA_ENV, "1");
        let portable = cuda::cross_attention(&q, &k, &v, 0.088, OutputLayout::Blhd);
        std::env::remove_var(cuda::NO_WGMMA_ENV);
        let portable = portable.unwrap();
        let err = rel_err(&default_path, &portable);
        assert!(err < 1e-2, "Lk {lk}: wgmma vs mma.sync: {err}");
        let want = want.transpose(1, 2).unwrap();
        let err = rel_err(&default_path, &want);
        assert!(err < 2e-2, "Lk {lk}: default kernel vs CPU: {err}");
        let err = rel_err(&portable, &want);
        assert!(err < 2e-2, "Lk {lk}: mma.sync kernel vs CPU: {err}");
    }
}

/// On Hopper, the kernel's two ways of loading q, k and v (TMA, the default where rows are not
/// gathered, and cp.async) agree with each other and with the CPU reference: dense with a ragged
/// length, block-sparse with empty rows, cross-attention over 77 keys. Two calls are bit-equal
/// (the ping-pong schedule does not change the arithmetic). The gathered window order (always
/// cp.async) agrees with its permuted copies.
#[test]
fn tma_and_cp_async_loads_agree_with_the_reference() {
    let _lock = same_kernel();
    let dev = gpu();
    // (The setting the process started with comes back after each call.)
    let before = std::env::var_os(cuda::TMA_ENV);
    let with_cp_async = |f: &dyn Fn() -> Tensor| {
        std::env::set_var(cuda::TMA_ENV, "0");
        let out = f();
        match &before {
            Some(value) => std::env::set_var(cuda::TMA_ENV, value),
            None => std::env::remove_var(cuda::TMA_ENV),
        }
        out
    };
    let (q, q_ref) = blhd_view(&dev, (2, 3, 1000, 128), DType::BF16, 80);
    let (k, k_ref) = blhd_view(&dev, (2, 3, 1000, 128), DType::BF16, 81);
    let (v, v_ref) = blhd_view(&dev, (2, 3, 1000, 128), DType::BF16, 82);
    let mask = random_mask(2, 3, 128, 8, 3, 83);
    type Case<'a> = (&'a str, Box<dyn Fn() -> Tensor + 'a>, Tensor);
    let cases: Vec<Case> = vec![
        (
            "dense",
            Box::new(|| cuda::flash_attention(&q, &k, &v, 0.088).unwrap()),
            dense_attention(&q_ref, &k_ref, &v_ref, 0.088).unwrap(),
        ),
        (
            "block-sparse",
            Box::new(|| cuda::block_sparse_attention(&q, &k, &v, &mask, 0.088).unwrap()),
            sparse_reference(&q_ref, &k_ref, &v_ref, &mask, 0.088),
        ),
        (
            "cross, 77 keys",
            Box::new(|| {
                cuda::cross_attention(
                    &q,
                    &k.narrow(2, 0, 77).unwrap(),
                    &v.narrow(2, 0, 77).unwrap(),
                    0.088,
                    OutputLayout::Bhld,
                )
                .unwrap()
            }),
            dense_attention(
                &q_ref,
                &k_ref.narrow(2, 0, 77).unwrap().contiguous().unwrap(),
                &v_ref.narrow(2, 0, 77).unwrap().contiguous().unwrap(),
                0.088,
            )
            .unwrap(),
        ),
    ];
    for (what, run, want) in &cases {
        let tma = run();
        assert_bit_equal(&tma, &run(), &format!("{what}: TMA, twice"));
        let cp_async = with_cp_async(run.as_ref());
        assert_bit_equal(
            &cp_async,
            &with_cp_async(run.as_ref()),
            &format!("{what}: cp.async, twice"),
        );
        // The same arithmetic on the same tiles: only the loads differ.
        assert_bit_equal(&tma, &cp_async, &format!("{what}: TMA vs cp.async"));
        let err = rel_err(&tma, want);
        assert!(err < 2e-2, "{what}: vs CPU: {err}");
    }

    // The gathered window order: the warp-specialised kernel reads through `order` as well.
    let perm = window_permutation(5, 16, 24, 60);
    let order = cuda::DeviceTokenOrder::upload(&perm, &dev).unwrap();
    let shape = (1, 2, perm.len(), 128);
    let (q, _) = blhd_view(&dev, shape, DType::BF16, 84);
    let (k, _) = blhd_view(&dev, shape, DType::BF16, 85);
    let (v, _) = blhd_view(&dev, shape, DType::BF16, 86);
    let mask =
        cuda::predict_block_mask_in_order(&q, &k, Some(&order), 128, 0.7, 60 + 16 * 24).unwrap();
    let gathered =
        cuda::block_sparse_attention_in_order(&q, &k, &v, &mask, &order, 0.088, OutputLayout::Bhld)
            .unwrap();
    let permuted = |t: &Tensor| perm.apply(t).unwrap();
    let copies = perm
        .restore(
            &cuda::block_sparse_attention_device(
                &permuted(&q),
                &permuted(&k),
                &permuted(&v),
                &mask,
                0.088,
            )
            .unwrap(),
        )
        .unwrap();
    assert_bit_equal(
        &gathered,
        &copies,
        "gathered (cp.async) vs permuted copies (TMA)",
    );
}

#[test]
fn dense_mask_equals_no_mask() {
    let _lock = same_kernel();
    let dev = gpu();
    let up = |seed| {
        random((1, 2, 500, 128), seed)
            .to_dtype(DType::BF16)
            .unwrap()
            .to_device(&dev)
            .unwrap()
    };
    let (q, k, v) = (up(11), up(12), up(13));
    let mask = BlockMask::dense(1, 2, 128, 4, 4);
    let a = cuda::flash_attention(&q, &k, &v, 0.09).unwrap();
    let b = cuda::block_sparse_attention(&q, &k, &v, &mask, 0.09).unwrap();
    assert_eq!(rel_err(&a, &b), 0.0);
}

#[test]
fn block_means_match_cpu() {
    let dev = gpu();
    let x = random((2, 3, 301, 64), 14);
    let got = cuda::block_means(&x.to_device(&dev).unwrap(), 128).unwrap();
    assert_eq!(got.dims4().unwrap(), (2, 3, 3, 64));
    // The last block averages its 45 real tokens.
    assert!(rel_err(&got, &cpu_block_means(&x, 128)) < 1e-6);
}

/// Block means on the CPU: x `[B, H, L, D]` f32 → the mean over each run of `block` tokens
/// (the last over its real tokens).
fn cpu_block_means(x: &Tensor, block: usize) -> Tensor {
    let l = x.dim(2).unwrap();
    let parts: Vec<Tensor> = (0..l.div_ceil(block))
        .map(|blk| {
            let len = block.min(l - blk * block);
            x.narrow(2, blk * block, len)
                .unwrap()
                .mean_keepdim(2)
                .unwrap()
        })
        .collect();
    Tensor::cat(&parts, 2).unwrap()
}

#[test]
fn block_means_with_16_byte_loads_match_cpu() {
    // bf16, head_dim 128 and 64, aligned rows: the vec16 kernel; a [B, L, H, D] view too.
    let dev = gpu();
    for (d, seed) in [(128, 40), (64, 41)] {
        let x = rounded(&random((1, 4, 515, d), seed), DType::BF16);
        let on_gpu = x.to_dtype(DType::BF16).unwrap().to_device(&dev).unwrap();
        let got = cuda::block_means(&on_gpu, 128).unwrap();
        assert!(
            rel_err(&got, &cpu_block_means(&x, 128)) < 1e-6,
            "head_dim {d}"
        );
        let (view, reference) = blhd_view(&dev, (1, 4, 515, d), DType::BF16, seed + 10);
        let got = cuda::block_means(&view, 128).unwrap();
        let want = cuda::block_means(&reference.to_device(&dev).unwrap(), 128).unwrap();
        assert!(rel_err(&got, &want) < 1e-6, "head_dim {d}, strided view");
    }
}

/// A window permutation of a small video (first-frame sink, text tail), for the in-order tests.
fn window_permutation(
    frames: usize,
    height: usize,
    width: usize,
    text: usize,
) -> rainfusion::TokenPermutation {
    let layout = rainfusion::VideoLayout {
        frames,
        height,
        width,
        text_tokens: text,
    };
    let perm =
        rainfusion::TokenPermutation::for_layout(&layout, rainfusion::Window::Tile, true).unwrap();
    assert!(!perm.is_identity());
    perm
}

#[test]
fn block_means_in_order_equal_those_of_the_permuted_copy() {
    let dev = gpu();
    let perm = window_permutation(5, 16, 24, 60); // 1980 tokens
    let order = cuda::DeviceTokenOrder::upload(&perm, &dev).unwrap();
    for (dtype, d) in [(DType::BF16, 128), (DType::F16, 64), (DType::F32, 64)] {
        let (view, _) = blhd_view(&dev, (2, 3, perm.len(), d), dtype, 42);
        let copy = perm.apply(&view).unwrap();
        let got = cuda::block_means_in_order(&view, 128, Some(&order)).unwrap();
        let want = cuda::block_means(&copy, 128).unwrap();
        assert_bit_equal(&got, &want, &format!("{dtype:?} head_dim {d}"));
    }
    // An order of another length is refused.
    let short = cuda::DeviceTokenOrder::upload(&window_permutation(2, 8, 8, 0), &dev).unwrap();
    let (view, _) = blhd_view(&dev, (1, 1, perm.len(), 64), DType::BF16, 43);
    assert!(cuda::block_means_in_order(&view, 128, Some(&short)).is_err());
}

#[test]
fn block_means_of_q_and_k_in_one_launch_equal_each_alone() {
    // q contiguous, k a [B, L, H, D] view (other strides); natural order and window order.
    let dev = gpu();
    let perm = window_permutation(5, 16, 24, 60); // 1980 tokens
    let order = cuda::DeviceTokenOrder::upload(&perm, &dev).unwrap();
    for (dtype, d) in [(DType::BF16, 128), (DType::F16, 64)] {
        let q = random((2, 3, perm.len(), d), 44)
            .to_dtype(dtype)
            .unwrap()
            .to_device(&dev)
            .unwrap();
        let (k, _) = blhd_view(&dev, (2, 3, perm.len(), d), dtype, 45);
        for order in [None, Some(&order)] {
            let (qm, km) = cuda::block_means_pair(&q, &k, 128, order).unwrap();
            let what = format!("{dtype:?} head_dim {d}, order {}", order.is_some());
            let q_alone = cuda::block_means_in_order(&q, 128, order).unwrap();
            let k_alone = cuda::block_means_in_order(&k, 128, order).unwrap();
            assert_bit_equal(&qm, &q_alone, &format!("q, {what}"));
            assert_bit_equal(&km, &k_alone, &format!("k, {what}"));
        }
    }
}

#[test]
fn attention_in_order_equals_permute_then_restore() {
    let _lock = same_kernel();
    let dev = gpu();
    let perm = window_permutation(5, 16, 24, 60); // 1980 tokens, 16 blocks of 128
    let order = cuda::DeviceTokenOrder::upload(&perm, &dev).unwrap();
    let shape = (2, 3, perm.len(), 128);
    let (q, _) = blhd_view(&dev, shape, DType::BF16, 44);
    let (k, _) = blhd_view(&dev, shape, DType::BF16, 45);
    let (v, _) = blhd_view(&dev, shape, DType::BF16, 46);
    let tail = 60 + 16 * 24; // text and the first frame (the sink) stay dense
    let mask_in_order =
        cuda::predict_block_mask_in_order(&q, &k, Some(&order), 128, 0.7, tail).unwrap();
    let permuted = |t: &Tensor| perm.apply(t).unwrap();
    let (qp, kp, vp) = (permuted(&q), permuted(&k), permuted(&v));
    let mask = cuda::predict_block_mask(&qp, &kp, 128, 0.7, tail).unwrap();
    assert_eq!(
        mask_in_order.to_host().unwrap(),
        mask.to_host().unwrap(),
        "the mask of the sequence in order"
    );
    assert!(mask.density().unwrap() < 0.9);
    let scale = 1.0 / 128f64.sqrt();
    let want = perm
        .restore(&cuda::block_sparse_attention_device(&qp, &kp, &vp, &mask, scale).unwrap())
        .unwrap();
    let run = |layout| {
        cuda::block_sparse_attention_in_order(&q, &k, &v, &mask_in_order, &order, scale, layout)
            .unwrap()
    };
    assert_bit_equal(
        &run(OutputLayout::Bhld),
        &want,
        "in order, [B, H, L, D] out",
    );
    let tokens_major = run(OutputLayout::Blhd);
    assert_eq!(tokens_major.dims4().unwrap(), (2, perm.len(), 3, 128));
    assert_bit_equal(
        &tokens_major.transpose(1, 2).unwrap(),
        &want,
        "in order, [B, L, H, D] out",
    );
    // The portable kernel (no gather: permuted copies inside) gives the same result.
    std::env::set_var(cuda::NO_WGMMA_ENV, "1");
    let portable = run(OutputLayout::Bhld);
    let portable_want = perm
        .restore(&cuda::block_sparse_attention_device(&qp, &kp, &vp, &mask, scale).unwrap())
        .unwrap();
    std::env::remove_var(cuda::NO_WGMMA_ENV);
    assert_bit_equal(&portable, &portable_want, "portable kernel, in order");
}

/// Selection rule on the host from the same scores: keep-th largest, ties kept, forced tail.
fn select_on_host(
    scores: &[Vec<f32>],
    blocks: usize,
    keep: usize,
    first_forced: usize,
) -> Vec<Vec<u32>> {
    scores
        .iter()
        .enumerate()
        .map(|(r, row)| {
            if r % blocks >= first_forced {
                return (0..blocks as u32).collect();
            }
            let mut sorted = row.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let threshold = sorted[keep - 1];
            (0..blocks)
                .filter(|&j| j >= first_forced || row[j] >= threshold)
                .map(|j| j as u32)
                .collect()
        })
        .collect()
}

/// The device mask of q and k against [`select_on_host`] over the same (unscaled) block scores.
fn check_selection_rule(q: &Tensor, k: &Tensor, bs: usize, sparsity: f64, tail: usize) {
    let (b, h, l, _) = q.dims4().unwrap();
    let blocks = l.div_ceil(bs);
    let mask = cuda::predict_block_mask(q, k, bs, sparsity, tail)
        .unwrap()
        .to_host()
        .unwrap();
    // The same scores the device used (block means + cuBLAS), selected on the host.
    let qm = cuda::block_means(q, bs).unwrap();
    let km = cuda::block_means(k, bs).unwrap();
    let scores = qm.matmul(&km.t().unwrap()).unwrap();
    let scores = scores
        .reshape((b * h * blocks, blocks))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let keep = ((blocks as f64 * (1.0 - sparsity) - 1e-9).ceil().max(1.0) as usize).min(blocks);
    let first_forced = if tail == 0 { blocks } else { (l - tail) / bs };
    let want = select_on_host(&scores, blocks, keep, first_forced);
    let expected = BlockMask::from_rows(b, h, bs, blocks, blocks, &want).unwrap();
    assert_eq!(mask, expected, "L {l}, sparsity {sparsity}, tail {tail}");
    if sparsity == 0.0 {
        assert_eq!(mask.density(), 1.0);
    }
}

#[test]
fn device_mask_prediction_follows_the_selection_rule() {
    let dev = gpu();
    let up = |shape, seed| {
        random(shape, seed)
            .to_dtype(DType::BF16)
            .unwrap()
            .to_device(&dev)
            .unwrap()
    };
    // 16 blocks a row, then 587 (a 14B-like row: 19 rounds of 32 key blocks per warp).
    for (shape, bs) in [((2, 3, 2000, 64), 128), ((1, 2, 75_100, 128), 128)] {
        let (q, k) = (up(shape, 15), up(shape, 16));
        for (sparsity, tail) in [(0.75, 0), (0.8, 300), (0.0, 0)] {
            check_selection_rule(&q, &k, bs, sparsity, tail);
        }
    }
    // Ties: k's blocks all alike, so every score of a row is the same and each row keeps all.
    let q = up((1, 2, 2000, 64), 17);
    let k = Tensor::ones((1, 2, 2000, 64), DType::BF16, &dev).unwrap();
    check_selection_rule(&q, &k, 128, 0.8, 0);
    let mask = cuda::predict_block_mask(&q, &k, 128, 0.8, 0).unwrap();
    assert_eq!(mask.density().unwrap(), 1.0, "ties are kept");
}

#[test]
fn device_mask_drives_attention_like_its_host_copy() {
    let _lock = same_kernel();
    let dev = gpu();
    let up = |seed| {
        random((1, 2, 1000, 128), seed)
            .to_dtype(DType::BF16)
            .unwrap()
            .to_device(&dev)
            .unwrap()
    };
    let (q, k, v) = (up(17), up(18), up(19));
    let device_mask = cuda::predict_block_mask(&q, &k, 128, 0.6, 0).unwrap();
    let host_mask = device_mask.to_host().unwrap();
    // 8 blocks at sparsity 0.6 keep ceil(3.2) = 4 per row (random scores: no ties).
    assert!((host_mask.density() - 0.5).abs() < 1e-12);
    assert!((device_mask.density().unwrap() - host_mask.density()).abs() < 1e-12);
    let a = cuda::block_sparse_attention_device(&q, &k, &v, &device_mask, 0.088).unwrap();
    let b = cuda::block_sparse_attention(&q, &k, &v, &host_mask, 0.088).unwrap();
    assert_eq!(rel_err(&a, &b), 0.0);
    // Compacted: only the kept entries, the same mask and the same attention.
    let compact = device_mask.clone().compacted().unwrap();
    assert_eq!(compact.indices.dim(0).unwrap(), host_mask.indices.len());
    assert_eq!(compact.to_host().unwrap(), host_mask);
    let c = cuda::block_sparse_attention_device(&q, &k, &v, &compact, 0.088).unwrap();
    assert_bit_equal(&c, &a, "compacted mask");
    // Packed to bits and back (the form cached between steps): the same mask and attention.
    let unpacked = device_mask.packed().unwrap().unpacked().unwrap();
    assert_eq!(unpacked.to_host().unwrap(), host_mask);
    let u = cuda::block_sparse_attention_device(&q, &k, &v, &unpacked, 0.088).unwrap();
    assert_bit_equal(&u, &a, "mask packed and unpacked");
}

#[test]
fn masks_packed_to_bits_unpack_to_the_same_csr() {
    let dev = gpu();
    // Rows of 70 key blocks (three words, the last partly used), empty rows, and full ones.
    for (blocks, keep, seed) in [(70, 20, 60), (70, 70, 61), (33, 5, 62), (591, 160, 63)] {
        let mask = random_mask(2, 3, 64, blocks, keep, seed);
        let device = cuda::DeviceBlockMask::upload(&mask, &dev).unwrap();
        let packed = device.packed().unwrap();
        assert_eq!(packed.bits.dims(), &[2 * 3 * blocks, blocks.div_ceil(32)]);
        let back = packed.unpacked().unwrap().to_host().unwrap();
        assert_eq!(back, mask, "{blocks} key blocks, keep {keep}");
    }
}

#[test]
fn unsupported_inputs_are_errors_not_panics() {
    let dev = gpu();
    let f32s = random((1, 1, 64, 128), 20).to_device(&dev).unwrap();
    assert!(
        cuda::flash_attention(&f32s, &f32s, &f32s, 1.0).is_err(),
        "f32 is not a kernel dtype"
    );
    let d96 = random((1, 1, 64, 96), 21)
        .to_dtype(DType::BF16)
        .unwrap()
        .to_device(&dev)
        .unwrap();
    assert!(
        cuda::flash_attention(&d96, &d96, &d96, 1.0).is_err(),
        "head_dim 96"
    );
    let ok = random((1, 2, 256, 64), 22)
        .to_dtype(DType::BF16)
        .unwrap()
        .to_device(&dev)
        .unwrap();
    let wrong_heads = BlockMask::dense(1, 3, 128, 2, 2);
    assert!(cuda::block_sparse_attention(&ok, &ok, &ok, &wrong_heads, 1.0).is_err());
    let odd_block = BlockMask::dense(1, 2, 96, 3, 3);
    assert!(cuda::block_sparse_attention(&ok, &ok, &ok, &odd_block, 1.0).is_err());
    let cpu = random((1, 2, 256, 64), 23);
    assert!(
        cuda::flash_attention(&cpu, &cpu, &cpu, 1.0).is_err(),
        "CPU tensors"
    );
    let text = random((1, 2, 77, 64), 24)
        .to_dtype(DType::BF16)
        .unwrap()
        .to_device(&dev)
        .unwrap();
    assert!(
        cuda::flash_attention(&ok, &text, &text, 1.0).is_err(),
        "flash_attention is self-attention: Lk must equal Lq"
    );
    assert!(
        cuda::block_sparse_attention(&ok, &text, &text, &BlockMask::dense(1, 2, 128, 2, 2), 1.0)
            .is_err(),
        "block-sparse attention with Lk != Lq"
    );
    assert!(
        cuda::cross_attention(&ok, &text, &ok, 1.0, OutputLayout::Bhld).is_err(),
        "k and v of different lengths"
    );
    let three_heads = random((1, 3, 77, 64), 25)
        .to_dtype(DType::BF16)
        .unwrap()
        .to_device(&dev)
        .unwrap();
    assert!(
        cuda::cross_attention(&ok, &three_heads, &three_heads, 1.0, OutputLayout::Bhld).is_err(),
        "k/v with other heads than q"
    );
    let no_keys = text.narrow(2, 0, 0).unwrap();
    assert!(
        cuda::cross_attention(&ok, &no_keys, &no_keys, 1.0, OutputLayout::Bhld).is_err(),
        "zero keys"
    );
    assert!(
        cuda::cross_attention(&ok, &text, &text, 1.0, OutputLayout::Bhld).is_ok(),
        "the same q with matching 77-token k/v runs"
    );
}

/// Timings through candle at one Wan2.1-1.3B self-attention (480p × 81 frames): run with
/// `--ignored --nocapture` on the GPU machine. Median of 10 after 3 warm-ups, device synchronised.
#[test]
#[ignore]
fn bench_full_size_through_candle() {
    let _lock = same_kernel();
    let dev = gpu();
    let (b, h, l, d) = (1, 12, 32_760, 128);
    // Fresh random values per tensor (the device generator advances on every call).
    let up = |_seed: u64| {
        Tensor::randn(0f32, 1.0, (b, h, l, d), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap()
    };
    let (q, k, v) = (up(1), up(2), up(3));
    let scale = 1.0 / (d as f64).sqrt();
    let time = |name: &str, flops: f64, f: &mut dyn FnMut()| {
        for _ in 0..3 {
            f();
        }
        dev.synchronize().unwrap();
        let mut times: Vec<f64> = (0..10)
            .map(|_| {
                let start = std::time::Instant::now();
                f();
                dev.synchronize().unwrap();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let ms = times[5];
        let tflops = if flops > 0.0 {
            format!("{:7.1} TFLOP/s", flops / (ms * 1e-3) / 1e12)
        } else {
            String::new()
        };
        println!("candle {name:48} {ms:8.3} ms {tflops}");
    };
    let dense_flops = 4.0 * (l * l * d * h * b) as f64;
    time("flash_attention dense", dense_flops, &mut || {
        cuda::flash_attention(&q, &k, &v, scale).unwrap();
    });
    std::env::set_var(cuda::NO_WGMMA_ENV, "1");
    time(
        "flash_attention dense, mma.sync kernel",
        dense_flops,
        &mut || {
            cuda::flash_attention(&q, &k, &v, scale).unwrap();
        },
    );
    std::env::remove_var(cuda::NO_WGMMA_ENV);
    time(
        "predict_block_mask (sparsity 0.8, tail 1560)",
        0.0,
        &mut || {
            cuda::predict_block_mask(&q, &k, 128, 0.8, 1560).unwrap();
        },
    );
    let mask = cuda::predict_block_mask(&q, &k, 128, 0.8, 1560).unwrap();
    let density = mask.density().unwrap();
    time(
        &format!(
            "block_sparse_attention_device ({:.1}% kept)",
            density * 100.0
        ),
        dense_flops * density,
        &mut || {
            cuda::block_sparse_attention_device(&q, &k, &v, &mask, scale).unwrap();
        },
    );
    let host_mask = mask.to_host().unwrap();
    time(
        "block_sparse_attention (host mask, uploads CSR)",
        dense_flops * density,
        &mut || {
            cuda::block_sparse_attention(&q, &k, &v, &host_mask, scale).unwrap();
        },
    );
    let strided = |t: &Tensor| {
        t.transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .transpose(1, 2)
            .unwrap()
    };
    let (qs, ks, vs) = (strided(&q), strided(&k), strided(&v));
    time(
        "flash_attention dense, [B,L,H,D] memory",
        dense_flops,
        &mut || {
            cuda::flash_attention(&qs, &ks, &vs, scale).unwrap();
        },
    );
    time(
        "flash_attention dense, [B,L,H,D] in and out",
        dense_flops,
        &mut || {
            cuda::flash_attention_with_layout(&qs, &ks, &vs, scale, OutputLayout::Blhd).unwrap();
        },
    );
    // Cross-attention over 512 text tokens, q/k/v views of [B, L, H, D] memory, [B, L, H, D] out.
    let text = |_seed: u64| {
        Tensor::randn(0f32, 1.0, (b, 512, h, d), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
    };
    let (kt, vt) = (text(4), text(5));
    let cross_flops = 4.0 * (l * 512 * d * h * b) as f64;
    time(
        "cross_attention Lk 512, [B,L,H,D] out",
        cross_flops,
        &mut || {
            cuda::cross_attention(&qs, &kt, &vt, scale, OutputLayout::Blhd).unwrap();
        },
    );
    std::env::set_var(cuda::NO_WGMMA_ENV, "1");
    time(
        "cross_attention Lk 512, mma.sync kernel",
        cross_flops,
        &mut || {
            cuda::cross_attention(&qs, &kt, &vt, scale, OutputLayout::Blhd).unwrap();
        },
    );
    std::env::remove_var(cuda::NO_WGMMA_ENV);
}

/// Leaves NaN where the next device allocation of `elems` values of `dtype` will most likely land
/// (the freed buffer goes back to the stream's memory pool): a kernel that skips an element of
/// its fresh output then shows a NaN instead of a stale plausible value.
fn poison_next_alloc(dev: &Device, elems: usize, dtype: DType) {
    let nan = Tensor::full(f32::NAN, elems, dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    dev.synchronize().unwrap();
    drop(nan);
}

fn all_finite(t: &Tensor) -> bool {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite())
}

fn random_vec(n: usize, mean: f32, spread: f32, seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data: Vec<f32> = (0..n)
        .map(|_| mean + rng.random_range(-spread..spread))
        .collect();
    Tensor::from_vec(data, n, &Device::Cpu).unwrap()
}

/// The VAE's channel norm in plain candle ops, f32 on the CPU: u = x + input_bias; u / max(‖u‖_C,
/// floor) · scale · γ + β; then SiLU. x `[N, C, H, W]` f32.
fn channel_norm_reference(
    x: &Tensor,
    gamma: &Tensor,
    beta: Option<&Tensor>,
    input_bias: Option<&Tensor>,
    scale: f64,
    silu: bool,
) -> Tensor {
    let c = x.dim(1).unwrap();
    let per_channel = |t: &Tensor| t.reshape((1, c, 1, 1)).unwrap();
    let u = match input_bias {
        Some(b) => x.broadcast_add(&per_channel(b)).unwrap(),
        None => x.clone(),
    };
    let norm = u
        .sqr()
        .unwrap()
        .sum_keepdim(1)
        .unwrap()
        .sqrt()
        .unwrap()
        .maximum(1e-12)
        .unwrap();
    let mut y = (u.broadcast_div(&norm).unwrap() * scale)
        .unwrap()
        .broadcast_mul(&per_channel(gamma))
        .unwrap();
    if let Some(b) = beta {
        y = y.broadcast_add(&per_channel(b)).unwrap();
    }
    if silu {
        y = y.silu().unwrap();
    }
    y
}

/// rainfusion's one-pass channel RMS norm (the Wan VAE's norm, with its optional bias, a
/// preceding conv's bias and the SiLU that follows) against candle ops in f32 on the same
/// rounded inputs: bf16, f16, f32; C from 3 to 1000 (shared-memory tiles of 128 down to 8
/// pixels); odd pixel counts and tails; a pixel of zeros (the norm's floor); a strided input.
#[test]
fn channel_rms_norm_matches_candle_ops() {
    let dev = gpu();
    let shapes = [
        (2, 96, 5, 7),
        (1, 384, 45, 47),
        (3, 13, 1, 1),
        (1, 192, 17, 9),
        (2, 3, 31, 33),
        (1, 1000, 3, 5),
    ];
    for (si, &(n, c, h, w)) in shapes.iter().enumerate() {
        let gamma = random_vec(c, 1.0, 0.5, 100 + si as u64);
        let beta = random_vec(c, 0.0, 0.3, 200 + si as u64);
        let in_bias = random_vec(c, 0.0, 0.5, 300 + si as u64);
        let scale = (c as f64).sqrt();
        // pixel (0, 0) of image 0 all zeros in every channel
        let x = random((n, c, h, w), 400 + si as u64)
            .slice_assign(
                &[0..1, 0..c, 0..1, 0..1],
                &Tensor::zeros((1, c, 1, 1), DType::F32, &Device::Cpu).unwrap(),
            )
            .unwrap();
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            let xr = rounded(&x, dtype);
            let xd = x.to_dtype(dtype).unwrap().to_device(&dev).unwrap();
            for (with_beta, with_in_bias, silu) in [
                (false, false, false),
                (true, false, false),
                (false, true, true),
                (true, true, true),
                (false, false, true),
            ] {
                let beta_h = with_beta.then_some(&beta);
                // the zero pixel only stays zero without an input bias
                let in_bias_h = with_in_bias.then_some(&in_bias);
                let on_dev = |t: Option<&Tensor>| t.map(|t| t.to_device(&dev).unwrap());
                let (gamma_d, beta_d, in_bias_d) = (
                    gamma.to_device(&dev).unwrap(),
                    on_dev(beta_h),
                    on_dev(in_bias_h),
                );
                poison_next_alloc(&dev, n * c * h * w, dtype);
                let y = cuda::fused::channel_rms_norm(
                    &xd,
                    &gamma_d,
                    beta_d.as_ref(),
                    in_bias_d.as_ref(),
                    scale,
                    1e-12,
                    silu,
                )
                .unwrap();
                assert_eq!(y.dims(), xd.dims());
                assert_eq!(y.dtype(), dtype);
                let what = format!(
                    "{dtype:?} {:?} beta {with_beta} input bias {with_in_bias} silu {silu}",
                    (n, c, h, w)
                );
                assert!(all_finite(&y), "{what}: an element not written (NaN)");
                let reference = channel_norm_reference(&xr, &gamma, beta_h, in_bias_h, scale, silu);
                let err = rel_err(&y, &reference);
                let tol = match dtype {
                    DType::F32 => 1e-5,
                    DType::F16 => 2e-3,
                    _ => 1e-2,
                };
                assert!(err < tol, "{what}: relative error {err:.2e}");
                if !with_in_bias {
                    // the zero pixel: β (or SiLU(β), or 0) exactly as the reference computes it
                    let pick = |t: &Tensor| {
                        t.to_device(&Device::Cpu)
                            .unwrap()
                            .to_dtype(DType::F32)
                            .unwrap()
                            .narrow(0, 0, 1)
                            .unwrap()
                            .narrow(2, 0, 1)
                            .unwrap()
                            .narrow(3, 0, 1)
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                    };
                    let zero_err = (pick(&y)
                        - pick(&reference)
                            .to_dtype(dtype)
                            .unwrap()
                            .to_dtype(DType::F32)
                            .unwrap())
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                    assert!(zero_err <= 1e-2, "{what}: zero pixel off by {zero_err}");
                }
            }
        }
    }
    // a strided view (channels narrowed out of a wider tensor) is read as its logical values
    let wide = random((2, 40, 9, 11), 500).to_dtype(DType::BF16).unwrap();
    let view = wide.to_device(&dev).unwrap().narrow(1, 4, 32).unwrap();
    let gamma = random_vec(32, 1.0, 0.5, 501);
    let y = cuda::fused::channel_rms_norm(
        &view,
        &gamma.to_device(&dev).unwrap(),
        None,
        None,
        32f64.sqrt(),
        1e-12,
        false,
    )
    .unwrap();
    let reference = channel_norm_reference(
        &wide.narrow(1, 4, 32).unwrap().to_dtype(DType::F32).unwrap(),
        &gamma,
        None,
        None,
        32f64.sqrt(),
        false,
    );
    let err = rel_err(&y, &reference);
    assert!(err < 1e-2, "strided input: relative error {err:.2e}");
}

/// A conv's bias add (with and without the residual that follows it) against candle ops:
/// bf16, f16, f32; rows longer than one CTA's 2048 pixels, with tails.
#[test]
fn channel_bias_add_matches_candle_ops() {
    let dev = gpu();
    for (si, &(n, c, h, w)) in [(2, 5, 7, 9), (1, 96, 37, 71), (3, 1, 1, 1), (1, 7, 64, 64)]
        .iter()
        .enumerate()
    {
        let bias = random_vec(c, 0.0, 1.0, 600 + si as u64);
        let x = random((n, c, h, w), 700 + si as u64);
        let r = random((n, c, h, w), 800 + si as u64);
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            let (xr, rr) = (rounded(&x, dtype), rounded(&r, dtype));
            let xd = x.to_dtype(dtype).unwrap().to_device(&dev).unwrap();
            let rd = r.to_dtype(dtype).unwrap().to_device(&dev).unwrap();
            let bias_d = bias.to_device(&dev).unwrap();
            for with_residual in [false, true] {
                poison_next_alloc(&dev, n * c * h * w, dtype);
                let y = cuda::fused::channel_bias_add(&xd, &bias_d, with_residual.then_some(&rd))
                    .unwrap();
                assert_eq!(y.dims(), xd.dims());
                assert_eq!(y.dtype(), dtype);
                let what = format!("{dtype:?} {:?} residual {with_residual}", (n, c, h, w));
                assert!(all_finite(&y), "{what}: an element not written (NaN)");
                let mut reference = xr
                    .broadcast_add(&bias.reshape((1, c, 1, 1)).unwrap())
                    .unwrap();
                if with_residual {
                    reference = (reference + &rr).unwrap();
                }
                let err = rel_err(&y, &reference);
                let tol = match dtype {
                    DType::F32 => 1e-6,
                    DType::F16 => 1e-3,
                    _ => 5e-3,
                };
                assert!(err < tol, "{what}: relative error {err:.2e}");
            }
        }
    }
}

#[test]
fn channel_kernels_reject_bad_inputs() {
    let dev = gpu();
    let x = random((1, 8, 4, 4), 900)
        .to_dtype(DType::BF16)
        .unwrap()
        .to_device(&dev)
        .unwrap();
    let gamma = Tensor::ones(8, DType::F32, &dev).unwrap();
    let norm = |x: &Tensor, gamma: &Tensor, beta: Option<&Tensor>| {
        cuda::fused::channel_rms_norm(x, gamma, beta, None, 1.0, 1e-12, false)
    };
    assert!(norm(&x, &gamma, None).is_ok());
    let short = Tensor::ones(7, DType::F32, &dev).unwrap();
    assert!(norm(&x, &short, None).is_err(), "gamma of the wrong length");
    assert!(
        norm(&x, &gamma, Some(&short)).is_err(),
        "beta of the wrong length"
    );
    let gamma16 = gamma.to_dtype(DType::BF16).unwrap();
    assert!(norm(&x, &gamma16, None).is_err(), "gamma must be f32");
    let x64 = x.to_dtype(DType::F64).unwrap();
    assert!(norm(&x64, &gamma, None).is_err(), "f64 input");
    let cpu = x.to_device(&Device::Cpu).unwrap();
    assert!(
        norm(&cpu, &gamma.to_device(&Device::Cpu).unwrap(), None).is_err(),
        "CPU input"
    );
    let flat = x.flatten_all().unwrap();
    assert!(norm(&flat, &gamma, None).is_err(), "no channel axis");
    let wide = Tensor::zeros((1, 30_000, 2), DType::F32, &dev).unwrap();
    let gamma_wide = Tensor::ones(30_000, DType::F32, &dev).unwrap();
    assert!(
        norm(&wide, &gamma_wide, None).is_err(),
        "more channels than one CTA's shared memory holds"
    );
    assert!(
        cuda::fused::channel_bias_add(&x, &short, None).is_err(),
        "bias length"
    );
    let other = x.narrow(2, 0, 2).unwrap();
    assert!(
        cuda::fused::channel_bias_add(&x, &gamma, Some(&other)).is_err(),
        "residual of another shape"
    );
}

/// `[B, L]` u8 validity flags on the CPU from per-sample rules.
fn key_flags(rows: &[Vec<bool>]) -> Tensor {
    let flat: Vec<u8> = rows.iter().flatten().map(|&x| x as u8).collect();
    Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
}

#[test]
fn key_masked_attention_gathers_valid_keys_on_cuda() {
    let _lock = same_kernel();
    let dev = gpu();
    let (b, h, l, d) = (3, 2, 333, 128);
    let (q, k, v) = (
        rounded(&random((b, h, l, d), 31), DType::BF16),
        rounded(&random((b, h, l, d), 32), DType::BF16),
        rounded(&random((b, h, l, d), 33), DType::BF16),
    );
    // A valid prefix, holes, and a sample with no valid key (zeros out).
    let rows = vec![
        (0..l).map(|j| j < 250).collect::<Vec<_>>(),
        (0..l).map(|j| j % 5 != 2).collect(),
        vec![false; l],
    ];
    let flags = key_flags(&rows);
    let scale = 1.0 / (d as f64).sqrt();
    let want = rainfusion::key_masked_attention(&q, &k, &v, Some(&flags), scale).unwrap();
    let up = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_device(&dev).unwrap();
    let got = rainfusion::key_masked_attention(&up(&q), &up(&k), &up(&v), Some(&flags), scale)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let err = rel_err(&got, &want);
    println!("key-masked attention, CUDA bf16 vs CPU f32: {err:.2e}");
    assert!(err < 2e-2, "{err}");
    let last = got.get(2).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(last.to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn joint_attention_runs_the_fused_kernel_and_matches_the_cpu_path() {
    use rainfusion::joint::joint_block_sparse_attention_generic;
    use rainfusion::{joint_block_sparse_attention, predict_joint_video_mask, JointSparsity};
    let _lock = same_kernel();
    let dev = gpu();
    // 3 frames of 16 × 21 tokens (1008: a partial last block of 64), 77 text tokens.
    let layout = rainfusion::VideoLayout {
        frames: 3,
        height: 16,
        width: 21,
        text_tokens: 77,
    };
    let (b, h, d) = (2, 2, 128);
    let l = layout.total_tokens();
    let (q, k, v) = (
        rounded(&random((b, h, l, d), 41), DType::BF16),
        rounded(&random((b, h, l, d), 42), DType::BF16),
        rounded(&random((b, h, l, d), 43), DType::BF16),
    );
    let rows: Vec<Vec<bool>> = [60usize, 13]
        .iter()
        .map(|&n| (0..77).map(|j| j < n).collect())
        .collect();
    let flags = key_flags(&rows);
    let scale = 1.0 / (d as f64).sqrt();
    for first_frame_sink in [true, false] {
        let settings = JointSparsity {
            sparsity: 0.7,
            block_size: 64,
            first_frame_sink,
            ..JointSparsity::default()
        };
        let video = predict_joint_video_mask(&q, &k, &layout, &settings).unwrap();
        assert!(video.density() < 0.9, "density {}", video.density());
        let want =
            joint_block_sparse_attention(&q, &k, &v, &layout, Some(&flags), &video, scale).unwrap();
        let up = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_device(&dev).unwrap();
        let got = joint_block_sparse_attention(
            &up(&q),
            &up(&k),
            &up(&v),
            &layout,
            Some(&flags),
            &video,
            scale,
        )
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
        let err = rel_err(&got, &want);
        // The candle-ops path on the GPU (what Metal would run), in f32.
        let on_gpu = |t: &Tensor| t.to_device(&dev).unwrap();
        let generic = joint_block_sparse_attention_generic(
            &on_gpu(&q),
            &on_gpu(&k),
            &on_gpu(&v),
            &layout,
            Some(&flags),
            &video,
            scale,
        )
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
        let err_generic = rel_err(&generic, &want);
        println!(
            "joint attention (sink {first_frame_sink}, density {:.3}): fused bf16 {err:.2e}, \
             generic f32 on the GPU {err_generic:.2e}",
            video.density()
        );
        assert!(err < 2e-2, "fused: {err}");
        assert!(err_generic < 1e-5, "generic: {err_generic}");
    }
}

/// cuBLASLt's fp8 GEMM (`cuda::linear_fp8`): the activations rounded to e4m3 by their absolute
/// maximum, the weight fp8 with a per-tensor scale, against the f32 product of the same fp8
/// weight and the unrounded activations. The bound is the activations' rounding: e4m3 keeps 3
/// mantissa bits (relative steps up to 2⁻⁴), so the product's relative error is a few percent.
#[test]
fn fp8_linear_matches_the_f32_product() {
    let dev = gpu();
    let (rows, input, out) = (300, 256, 96);
    let x = random((1, 1, rows, input), 11)
        .reshape((rows, input))
        .unwrap();
    let w = random((1, 1, out, input), 12)
        .reshape((out, input))
        .unwrap()
        .to_dtype(DType::F8E4M3)
        .unwrap();
    let scale = 0.05f32;
    let w_f32 = (w.to_dtype(DType::F32).unwrap() * scale as f64).unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let x_in = rounded(&x, dtype);
        let want = x_in.matmul(&w_f32.t().unwrap()).unwrap();
        let x_gpu = x_in.to_dtype(dtype).unwrap().to_device(&dev).unwrap();
        let w_gpu = w.to_device(&dev).unwrap();
        let s_gpu = Tensor::new(&[scale], &dev).unwrap();
        let got = cuda::linear_fp8(&x_gpu, &w_gpu, Some(&s_gpu)).unwrap();
        assert_eq!(got.dims(), &[rows, out]);
        assert_eq!(got.dtype(), dtype);
        let got = got
            .to_dtype(DType::F32)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap();
        let err = rel_err(&got, &want);
        eprintln!("fp8 linear {dtype:?}: relative error {err:.3e} against the f32 product");
        assert!(err < 4e-2, "{dtype:?}: {err:.3e}");
        // Without a scale the product is 1/scale times larger: the scale is applied.
        let unscaled = cuda::linear_fp8(&x_gpu, &w_gpu, None).unwrap();
        let unscaled = (unscaled.to_dtype(DType::F32).unwrap() * scale as f64)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap();
        let err = rel_err(&unscaled, &want);
        assert!(err < 4e-2, "{dtype:?} without a scale: {err:.3e}");
    }
    // Bad inputs are errors: a bf16 weight, widths that are not multiples of 16, f32 rows.
    let x_gpu = x.to_dtype(DType::BF16).unwrap().to_device(&dev).unwrap();
    let w_bf16 = w.to_dtype(DType::BF16).unwrap().to_device(&dev).unwrap();
    assert!(cuda::linear_fp8(&x_gpu, &w_bf16, None).is_err());
    let w_odd = w.narrow(0, 0, 90).unwrap().to_device(&dev).unwrap();
    assert!(cuda::linear_fp8(&x_gpu, &w_odd, None).is_err());
    let x_f32 = x.to_device(&dev).unwrap();
    assert!(cuda::linear_fp8(&x_f32, &w.to_device(&dev).unwrap(), None).is_err());
}

/// The generic path (mask prediction and block-sparse attention from candle ops only: what
/// Metal runs) on CUDA tensors, against the CPU: the same mask as the host predictor of the same
/// inputs on the CPU, and attention within f32 (and bf16) bounds of the CPU reference.
#[test]
fn the_candle_ops_path_runs_on_the_gpu_like_the_cpu() {
    let dev = gpu();
    let (b, h, l, d, bs) = (1, 3, 1500, 64, 128);
    let (q, k, v) = (
        random((b, h, l, d), 70),
        random((b, h, l, d), 71),
        random((b, h, l, d), 72),
    );
    let on_gpu = |t: &Tensor| t.to_device(&dev).unwrap();
    let (qg, kg, vg) = (on_gpu(&q), on_gpu(&k), on_gpu(&v));
    let cpu_mask = rainfusion::predict_block_mask(&q, &k, bs, 0.7, 200).unwrap();
    let gpu_mask = rainfusion::predict_block_mask(&qg, &kg, bs, 0.7, 200).unwrap();
    assert_eq!(gpu_mask, cpu_mask, "mask predicted by candle ops on CUDA");
    let scale = 1.0 / (d as f64).sqrt();
    let want = sparse_reference(&q, &k, &v, &cpu_mask, scale);
    let got = rainfusion::generic::block_sparse_attention_generic(&qg, &kg, &vg, &gpu_mask, scale)
        .unwrap();
    let err = rel_err(&got.to_device(&Device::Cpu).unwrap(), &want);
    eprintln!("generic block-sparse attention, f32 on CUDA: relative error {err:.2e}");
    assert!(err < 1e-5, "f32: {err}");
    let bf16 = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
    let got = rainfusion::generic::block_sparse_attention_generic(
        &bf16(&qg),
        &bf16(&kg),
        &bf16(&vg),
        &gpu_mask,
        scale,
    )
    .unwrap();
    let err = rel_err(
        &got.to_dtype(DType::F32)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap(),
        &want,
    );
    eprintln!("generic block-sparse attention, bf16 on CUDA: relative error {err:.2e}");
    assert!(err < 2e-2, "bf16: {err}");
}
