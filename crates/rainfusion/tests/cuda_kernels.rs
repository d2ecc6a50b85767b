//! The CUDA kernels against the CPU reference (feature `cuda`, needs a GPU; CI builds without
//! the feature, so this file compiles to nothing there).
//!
//! Run on a GPU machine: `cargo test --release -p rainfusion --features cuda --test cuda_kernels`.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use rainfusion::{cuda, dense_attention, BlockMask};
use rand::{Rng, SeedableRng};

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA device")
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
    let a = a
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let b = b
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let diff = (&a - &b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let norm = b
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    (diff / norm).sqrt()
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

#[test]
fn dense_mask_equals_no_mask() {
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
    // CPU: mean over each run of 128 tokens, the last over its 45 real tokens.
    let parts: Vec<Tensor> = (0..3)
        .map(|blk| {
            let len = 128.min(301 - blk * 128);
            x.narrow(2, blk * 128, len)
                .unwrap()
                .mean_keepdim(2)
                .unwrap()
        })
        .collect();
    let want = Tensor::cat(&parts, 2).unwrap();
    assert!(rel_err(&got, &want) < 1e-6);
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

#[test]
fn device_mask_prediction_follows_the_selection_rule() {
    let dev = gpu();
    let (b, h, l, d, bs) = (2, 3, 2000, 64, 128);
    let q = random((b, h, l, d), 15)
        .to_dtype(DType::BF16)
        .unwrap()
        .to_device(&dev)
        .unwrap();
    let k = random((b, h, l, d), 16)
        .to_dtype(DType::BF16)
        .unwrap()
        .to_device(&dev)
        .unwrap();
    let blocks = l.div_ceil(bs); // 16
    for (sparsity, tail) in [(0.75, 0), (0.8, 300), (0.0, 0)] {
        let mask = cuda::predict_block_mask(&q, &k, bs, sparsity, tail)
            .unwrap()
            .to_host()
            .unwrap();
        // The same scores the device used (block means + cuBLAS), selected on the host.
        let qm = cuda::block_means(&q, bs).unwrap();
        let km = cuda::block_means(&k, bs).unwrap();
        let scores = (qm.matmul(&km.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        let scores = scores
            .reshape((b * h * blocks, blocks))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let keep = ((blocks as f64 * (1.0 - sparsity) - 1e-9).ceil().max(1.0) as usize).min(blocks);
        let first_forced = if tail == 0 { blocks } else { (l - tail) / bs };
        let want = select_on_host(&scores, blocks, keep, first_forced);
        let expected = BlockMask::from_rows(b, h, bs, blocks, blocks, &want).unwrap();
        assert_eq!(mask, expected, "sparsity {sparsity}, tail {tail}");
        if sparsity == 0.0 {
            assert_eq!(mask.density(), 1.0);
        }
    }
}

#[test]
fn device_mask_drives_attention_like_its_host_copy() {
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
}

/// Timings through candle at one Wan2.1-1.3B self-attention (480p × 81 frames): run with
/// `--ignored --nocapture` on the GPU machine. Median of 10 after 3 warm-ups, device synchronised.
#[test]
#[ignore]
fn bench_full_size_through_candle() {
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
}
