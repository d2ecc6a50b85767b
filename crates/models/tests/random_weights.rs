//! Random-weight networks for benchmarks (`vdit bench`): the weights have the scales promised
//! (so deep stacks stay finite), the networks run at toy sizes with the shapes of the real ones,
//! and impossible configs are errors.

use candle_core::{DType, Device, Shape, Tensor};
use rainfusion::DenseAttention;
use vdit_models::wan::vae::{WanVaeConfig, WanVaeDecoder};
use vdit_models::wan::{WanConfig, WanTransformer};
use vdit_models::weights::RandomWeights;

fn mean_and_std(t: &Tensor) -> (f64, f64) {
    let v = t
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    (mean, var.sqrt())
}

fn random(name: &str, dims: &[usize]) -> Tensor {
    RandomWeights::tensor(name, &Shape::from(dims), DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn random_weights_have_fan_in_scaled_matrices_and_unit_norm_scales() {
    // Matrices and kernels: N(0, 1/fan_in), fan_in = all axes but the first.
    let (mean, std) = mean_and_std(&random("blocks.0.ffn.net.2.weight", &[256, 1024]));
    assert!(
        mean.abs() < 3e-3 && (std * 32.0 - 1.0).abs() < 0.05,
        "{mean} {std}"
    );
    let (_, std) = mean_and_std(&random("decoder.conv_in.weight", &[64, 16, 3, 3, 3]));
    assert!((std * (16.0f64 * 27.0).sqrt() - 1.0).abs() < 0.05, "{std}");
    // Norm scales around 1, biases around 0, whatever trailing unit axes they are stored with.
    for (name, dims, want) in [
        ("norm2.weight", &[4096][..], 1.0),
        ("decoder.mid_block.norm.gamma", &[4096, 1, 1][..], 1.0),
        ("proj_out.bias", &[4096][..], 0.0),
    ] {
        let (mean, std) = mean_and_std(&random(name, dims));
        assert!(
            (mean - want).abs() < 0.01 && (std - 0.1).abs() < 0.01,
            "{name}: {mean} {std}"
        );
    }
    let bf16 = RandomWeights::tensor("w", &Shape::from((8, 8)), DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(bf16.dtype(), DType::BF16);
}

fn toy_config() -> WanConfig {
    WanConfig {
        num_heads: 2,
        head_dim: 16,
        num_layers: 2,
        ffn_dim: 64,
        text_dim: 32,
        freq_dim: 32,
        ..WanConfig::t2v_1_3b()
    }
}

#[test]
fn random_transformer_runs_with_the_real_input_and_output_shapes() {
    let cfg = toy_config();
    let device = Device::Cpu;
    for dtype in [DType::F32, DType::BF16] {
        let model = WanTransformer::random(&cfg, dtype, &device).unwrap();
        let latents = Tensor::randn(0f32, 1.0, (2, 16, 2, 4, 6), &device).unwrap();
        let timesteps = Tensor::new(&[900f32, 100.0], &device).unwrap();
        let context = Tensor::randn(0f32, 1.0, (2, 5, 32), &device).unwrap();
        let out = model
            .forward(&latents, &timesteps, &context, &mut DenseAttention)
            .unwrap();
        assert_eq!(out.dims(), &[2, 16, 2, 4, 6]);
        assert_eq!(out.dtype(), DType::F32);
        let (_, std) = mean_and_std(&out);
        assert!(std.is_finite() && std > 0.0, "{dtype:?}: std {std}");
    }
}

#[test]
fn random_networks_refuse_impossible_configs() {
    let odd_heads = WanConfig {
        head_dim: 5,
        ..toy_config()
    };
    let err = WanTransformer::random(&odd_heads, DType::F32, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("head_dim 5"), "{err}");
    let err = WanTransformer::random(&toy_config(), DType::U8, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("not supported"), "{err}");
    let no_stages = WanVaeConfig {
        dim_mult: vec![],
        ..WanVaeConfig::wan2_1()
    };
    assert!(WanVaeDecoder::random(&no_stages, DType::F32, &Device::Cpu).is_err());
}

#[test]
fn random_vae_decodes_to_the_real_video_shape() {
    let cfg = WanVaeConfig {
        base_dim: 8,
        ..WanVaeConfig::wan2_1()
    };
    let decoder = WanVaeDecoder::random(&cfg, DType::F32, &Device::Cpu).unwrap();
    let latents = Tensor::randn(0f32, 1.0, (1, 16, 2, 4, 4), &Device::Cpu).unwrap();
    let video = decoder.decode(&latents, None).unwrap();
    assert_eq!(video.dims(), &[1, 3, 5, 32, 32]);
    let max = video
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        max.is_finite() && max <= 1.0,
        "clamped video, max |x| {max}"
    );
}

/// `decode_with_chunks` hands over 1 frame, then 4 per later latent frame, in order, clamped,
/// and together they are `decode`'s video; tiled, it hands over the whole (tiled) video once; an
/// error from the consumer stops the decode.
#[test]
fn chunked_decode_gives_the_frames_of_decode_as_they_come() {
    use vdit_models::wan::vae::VaeTiling;
    for cfg in [
        WanVaeConfig {
            base_dim: 8,
            ..WanVaeConfig::wan2_1()
        },
        WanVaeConfig {
            base_dim: 8,
            decoder_base_dim: Some(8),
            ..WanVaeConfig::wan2_2()
        },
    ] {
        let decoder = WanVaeDecoder::random(&cfg, DType::F32, &Device::Cpu).unwrap();
        let latents = Tensor::randn(0f32, 3.0, (1, cfg.z_dim, 3, 4, 6), &Device::Cpu).unwrap();
        let whole = decoder.decode(&latents, None).unwrap();
        let mut chunks = Vec::new();
        decoder
            .decode_with_chunks(&latents, None, &mut |chunk| {
                chunks.push(chunk.clone());
                Ok(())
            })
            .unwrap();
        let frames: Vec<usize> = chunks.iter().map(|c| c.dim(2).unwrap()).collect();
        assert_eq!(frames, [1, 4, 4], "{}", cfg.family());
        let joined = Tensor::cat(&chunks, 2).unwrap();
        let diff = (joined - &whole)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{}: chunks differ from decode", cfg.family());

        // Tiles smaller than the latent: one call with the blended video.
        let tiling = Some(VaeTiling {
            tile: (2, 4),
            overlap: 1,
        });
        let tiled = decoder.decode(&latents, tiling).unwrap();
        let mut calls = Vec::new();
        decoder
            .decode_with_chunks(&latents, tiling, &mut |chunk| {
                calls.push(chunk.clone());
                Ok(())
            })
            .unwrap();
        assert_eq!(calls.len(), 1);
        let diff = (&calls[0] - &tiled)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{}: tiled chunk differs", cfg.family());

        let mut seen = 0;
        let err = decoder
            .decode_with_chunks(&latents, None, &mut |_| {
                seen += 1;
                Err(vdit_models::ModelError::InvalidInput("writer full".into()))
            })
            .unwrap_err();
        assert!(err.to_string().contains("writer full"), "{err}");
        assert_eq!(seen, 1, "the decode stopped at the first error");
    }
}
