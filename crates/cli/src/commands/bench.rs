//! `vdit bench`: timings of the attention kernels, the transformer forward and the VAE decode on
//! random inputs and random weights at the real sizes (no checkpoint needed).
//!
//! ```text
//! vdit bench attention    q, k, v [B,H,L,D] ─► dense / block-sparse kernel per density, mask prediction
//! vdit bench transformer  random Wan weights ─► one forward per iteration (dense or RainFusion);
//!                         --preset hunyuanvideo-1.5: the HunyuanVideo 1.5 8.3B forward
//! vdit bench vae          random Wan VAE decoder ─► one decode per iteration;
//!                         --vae hunyuanvideo-1.5: the HunyuanVideo 1.5 VAE decoder
//! vdit bench pipeline     a model folder ─► the whole `vdit generate` run, --runs times (first, warm)
//! vdit bench              attention, transformer, vae at their defaults (the issue's benchmark table)
//! ```
//!
//! Each case runs `--warmup` untimed iterations, then `--iters` timed ones, each ended by
//! `device.synchronize()`; the table reports the median and the fastest. `bench pipeline` instead
//! times each run once, stage by stage (loads apart from compute), with the peak memory.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use rainfusion::predict::kept_per_row;
use rainfusion::{
    block_sparse_attention, dense_self_attention, predict_block_mask, BlockMask, DenseAttention,
    DenseSteps, RainFusionAttention, RainFusionConfig, SelfAttention, Window,
};
use vdit_models::hunyuan15::transformer::{
    HunyuanVideo15Config, HunyuanVideo15Inputs, HunyuanVideo15Transformer,
};
use vdit_models::hunyuan15::vae::{
    HunyuanVaeTiling, HunyuanVideo15VaeConfig, HunyuanVideo15VaeDecoder,
};
use vdit_models::profile::{peak_resident_bytes, reset_peak_resident, DevicePeakSampler};
use vdit_models::taehv::{TaehvConfig, TaehvDecoder};
use vdit_models::wan::transformer::WanTransformer;
use vdit_models::wan::vae::{VaeTiling, WanVaeConfig, WanVaeDecoder, WanVaeEncoder};
use vdit_models::wan::WanConfig;

use vdit_pipeline::memory::{self, RunShape, TransformerShape};
use vdit_pipeline::offload::{choose_offload, OffloadChoice, OffloadMode, OffloadNeeds};
use vdit_pipeline::options::Choice;
use vdit_pipeline::output::write_json_atomic;
use vdit_pipeline::registry::Registry;
use vdit_pipeline::settings::{
    self, dtype_name, resolve_device, resolve_dtype, DeviceKind, GenerateOptions,
};
use vdit_pipeline::stages;
use vdit_pipeline::{Result, VditError};

use crate::args::bench::{
    AttentionBench, BenchArgs, BenchAttention, BenchTarget, BenchWeights, PipelineBench, PresetArg,
    TransformerBench, VaeArg, VaeBench,
};

/// One timed case: a row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// `attention`, `mask prediction`, `transformer` or `vae`.
    pub bench: String,
    /// The case's settings in words (`dense`, `density 0.20`, `rainfusion 0.8`, ...).
    pub case: String,
    /// Shape of the work (`B1 H12 L32760 D128`, ...).
    pub shape: String,
    pub median_s: f64,
    pub min_s: f64,
    /// Every timed iteration, seconds.
    pub samples_s: Vec<f64>,
    /// Effective attention TFLOP/s (4·L²·D·H·B·density / median), attention rows only.
    pub tflops: Option<f64>,
    /// Fraction of attention blocks computed (1 = dense), where it applies.
    pub density: Option<f64>,
    /// Peak resident memory of the process so far, bytes (CPU runs: the kernel's high-water mark).
    pub peak_host_bytes: Option<u64>,
    /// Peak device memory in use during the timed iterations, bytes (CUDA runs: the device's
    /// used memory sampled every 0.2 ms on a side thread, so a peak shorter than that can be missed;
    /// includes the context and anything else on the device).
    pub peak_device_bytes: Option<u64>,
    /// Device memory in use before the first warm-up iteration, bytes (CUDA runs: the weights,
    /// the context and the libraries' workspaces), so that `peak_device_bytes` minus this is
    /// what the work itself held at its peak.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resident_device_bytes: Option<u64>,
    /// CUDA runs: the peak bytes held by live allocations of candle's memory pool during the
    /// timed iterations (PyTorch's `max_memory_allocated`; weights included, the context and
    /// the libraries' own allocations not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_allocated_peak_bytes: Option<u64>,
    /// CUDA runs: the peak bytes the pool held from the device over the same iterations
    /// (PyTorch's `max_memory_reserved`): above the allocated peak by what the pool kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_reserved_peak_bytes: Option<u64>,
    /// Transformer rows: where the blocks were (`none`: resident; `blocks`: streamed from the
    /// host, one copy per block per forward).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offload: Option<&'static str>,
    /// Pipeline rows: peak device memory in use during the run above what was in use before it,
    /// bytes (sampled every 2 ms; the key torch_bench.py's rows use).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_gpu_bytes: Option<u64>,
    /// Pipeline rows: the run stage by stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<PipelineStages>,
}

/// One pipeline run, seconds; the keys torch_bench.py's pipeline rows carry, then our own detail.
/// The five stage keys after `imports_s` are compute only (loads are in `load_s`), so
/// `imports_s + load_s + encode_s + denoise_s + decode_s + write_s <= total_s` (the rest is
/// settings, preflight and the sidecar).
#[derive(Debug, Clone, Serialize)]
pub struct PipelineStages {
    /// First run: the process's start-up before the run (from process start to the run's
    /// first stage); 0 for later runs.
    pub imports_s: f64,
    /// Every network load (text encoder + transformers + VAE).
    pub load_s: f64,
    pub encode_s: f64,
    pub denoise_s: f64,
    /// The VAE decode with each chunk converted and handed to the mp4 encoder.
    pub decode_s: f64,
    /// Waiting for the mp4 encoder after the last chunk.
    pub write_s: f64,
    /// The run as the user waits for it (with `imports_s` on the first run).
    pub total_s: f64,
    pub text_encoder_load_s: f64,
    /// Every expert's load, summed.
    pub transformer_load_s: f64,
    pub vae_load_s: f64,
    /// From the run's start (the first stage) to the end of the first sampling step.
    pub first_step_s: f64,
    /// Mean of the sampling steps.
    pub seconds_per_step: f64,
    /// Part of `decode_s`: the decoded chunks turned into frame bytes, with the wait for the
    /// device work behind each.
    pub decode_to_bytes_s: f64,
    /// Part of `decode_s`: waiting for the mp4 encoder to take a chunk.
    pub decode_push_s: f64,
}

/// The whole run: settings and one row per case.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub vdit_version: &'static str,
    /// Optional backends compiled into this build (`cuda`, `cudnn`, `metal`); empty on a CPU-only build.
    pub build_features: &'static [&'static str],
    pub device: &'static str,
    pub dtype: &'static str,
    pub warmup: usize,
    pub iters: usize,
    pub rows: Vec<BenchRow>,
}

impl BenchReport {
    /// The results as one markdown table.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "vdit bench on {} ({}), median of {} after {} warm-up\n\n",
            self.device, self.dtype, self.iters, self.warmup
        );
        out.push_str("| bench | case | shape | median | min | TFLOP/s | density | peak memory |\n");
        out.push_str("|---|---|---|---|---|---|---|---|\n");
        for row in self.rows.iter().filter(|r| r.stages.is_none()) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                row.bench,
                row.case,
                row.shape,
                format_seconds(row.median_s),
                format_seconds(row.min_s),
                row.tflops.map_or("-".into(), format_tflops),
                row.density.map_or("-".into(), |d| format!("{d:.3}")),
                match (row.peak_device_bytes, row.peak_host_bytes) {
                    (Some(bytes), _) => {
                        let mut notes = Vec::new();
                        if let Some(before) = row.resident_device_bytes {
                            notes.push(format!("{} before", format_gib(before)));
                        }
                        if let (Some(a), Some(r)) =
                            (row.pool_allocated_peak_bytes, row.pool_reserved_peak_bytes)
                        {
                            notes.push(format!(
                                "pool: {} allocated, {} reserved",
                                format_gib(a),
                                format_gib(r)
                            ));
                        }
                        if notes.is_empty() {
                            format!("{} device", format_gib(bytes))
                        } else {
                            format!("{} device ({})", format_gib(bytes), notes.join("; "))
                        }
                    }
                    (None, Some(bytes)) => format!("{} host", format_gib(bytes)),
                    (None, None) => "-".into(),
                },
            );
        }
        let staged: Vec<&BenchRow> = self.rows.iter().filter(|r| r.stages.is_some()).collect();
        if !staged.is_empty() {
            out = if staged.len() == self.rows.len() {
                format!(
                    "vdit bench pipeline on {} ({}): each run once, seconds\n",
                    self.device, self.dtype
                )
            } else {
                out + "\n"
            };
            out.push_str(&pipeline_markdown(&staged));
        }
        out
    }
}

/// The stage table of pipeline rows.
fn pipeline_markdown(rows: &[&BenchRow]) -> String {
    let mut out = String::from(
        "\n| run | shape | total | start-up | text encoder load | encode | transformer load | \
         denoise | s/step | first step at | VAE load | decode | write wait | peak memory |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for row in rows {
        let Some(st) = &row.stages else { continue };
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            row.case,
            row.shape,
            st.total_s,
            st.imports_s,
            st.text_encoder_load_s,
            st.encode_s,
            st.transformer_load_s,
            st.denoise_s,
            st.seconds_per_step,
            st.first_step_s,
            st.vae_load_s,
            st.decode_s,
            st.write_s,
            match (row.peak_gpu_bytes, row.peak_host_bytes) {
                (Some(bytes), _) => format!("{} device (above the run's start)", format_gib(bytes)),
                (None, Some(bytes)) => format!("{} host (peak RSS, VmHWM)", format_gib(bytes)),
                (None, None) => "-".into(),
            },
        );
    }
    out
}

/// Runs what `args` asks for and returns the report (also written to `--json` when given).
pub fn run(args: &BenchArgs) -> Result<BenchReport> {
    // Before any timing: the --json file may be replaced only if it is a vdit report.
    if let Some(path) = &args.json {
        vdit_pipeline::output::check_report_outputs(path, &[], args.overwrite)?;
    }
    let kind = resolve_device(args.device).map_err(VditError::InvalidSetting)?;
    let dtype = resolve_dtype(args.dtype, kind);
    let device = kind.device()?;
    let timer = Timer {
        device: device.clone(),
        warmup: args.warmup,
        iters: args.iters,
    };
    let mut rows = Vec::new();
    let (mut warmup, mut iters) = (args.warmup, args.iters);
    match &args.target {
        Some(BenchTarget::Pipeline(p)) => {
            rows.extend(bench_pipeline(p, args)?);
            (warmup, iters) = (0, 1);
        }
        Some(BenchTarget::Attention(a)) => rows.extend(bench_attention(a, dtype, &timer)?),
        Some(BenchTarget::Transformer(t)) => rows.push(bench_transformer(t, dtype, &timer)?),
        Some(BenchTarget::Vae(v)) => rows.extend(bench_vae(v, dtype, &timer)?),
        None => {
            // The full-size suite takes minutes on a GPU and hours on a CPU: a CPU run must
            // name what to time.
            if let Some(refusal) = suite_refusal(kind) {
                return Err(VditError::InvalidSetting(refusal));
            }
            // The issue's table: attention, the 1.3B forward dense and at 0.8, the VAE decode.
            let total = 4;
            let progress = |i: usize, what: &str| eprintln!("bench {i}/{total}: {what}");
            progress(1, "attention kernels, 32,760 tokens");
            rows.extend(bench_attention(&AttentionBench::default(), dtype, &timer)?);
            let dense = TransformerBench::default();
            progress(2, "Wan2.1-1.3B transformer forward, dense, 832x480x81");
            rows.push(bench_transformer(&dense, dtype, &timer)?);
            let sparse = TransformerBench {
                attention: BenchAttention::Rainfusion,
                ..dense
            };
            progress(
                3,
                "Wan2.1-1.3B transformer forward, RainFusion 0.8, 832x480x81",
            );
            rows.push(bench_transformer(&sparse, dtype, &timer)?);
            progress(4, "Wan2.1 VAE decode, 81 frames at 832x480");
            rows.extend(bench_vae(&VaeBench::default(), dtype, &timer)?);
        }
    }
    let report = BenchReport {
        vdit_version: env!("CARGO_PKG_VERSION"),
        build_features: vdit_pipeline::output::build_features(),
        device: kind.name(),
        dtype: dtype_name(dtype),
        warmup,
        iters,
        rows,
    };
    if let Some(path) = &args.json {
        write_json_atomic(path, &report)?;
    }
    Ok(report)
}

/// Refuses a bench whose inputs cannot fit on `device` (see `vdit_pipeline::memory`), before
/// anything is allocated: one line naming the flags to change.
fn refuse_if_too_big(device: &Device, need: u128, flags: &str) -> Result<()> {
    let available = match device {
        Device::Cpu => memory::cpu_available_bytes(),
        _ => memory::device_available_bytes(),
    };
    const NO_DEVICE_HAS: u128 = 4_000_000_000_000;
    let limit = available.map_or(NO_DEVICE_HAS, |a| (a as u128).min(NO_DEVICE_HAS));
    if need > limit {
        return Err(VditError::InvalidSetting(format!(
            "{flags}: this bench needs about {} of memory but {}; use smaller sizes",
            memory::human_bytes(need),
            match available {
                Some(a) => format!(
                    "the device has {} available",
                    memory::human_bytes(a as u128)
                ),
                None => "no device has that much".into(),
            }
        )));
    }
    Ok(())
}

/// Why `vdit bench` with no target does not run on `device` (the full-size suite on a CPU would
/// take hours), with the commands that do; `None` on a GPU.
pub fn suite_refusal(device: DeviceKind) -> Option<String> {
    (device == DeviceKind::Cpu).then(|| {
        "vdit bench with no target times the full-size GPU suite (Wan2.1-1.3B at 832x480x81), \
         which takes hours on a CPU: run it with --device cuda, or time CPU sizes, e.g. \
         `vdit bench attention --tokens 4096`, `vdit bench transformer --preset tiny --size 256x256 \
         --frames 17`, `vdit bench vae --latent 5x32x32 --base-dim 32`"
            .to_string()
    })
}

/// Runs a closure `warmup + iters` times, synchronising the device after each, and keeps the
/// wall times of the last `iters`.
struct Timer {
    device: Device,
    warmup: usize,
    iters: usize,
}

struct Timing {
    samples: Vec<f64>,
    peak_device_bytes: Option<u64>,
    resident_device_bytes: Option<u64>,
    pool_peaks: Option<vdit_models::profile::PoolPeaks>,
}

impl Timing {
    fn median(&self) -> f64 {
        let mut sorted = self.samples.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        if n % 2 == 1 {
            sorted[n / 2]
        } else {
            0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
        }
    }

    fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

impl Timer {
    fn time(&self, mut step: impl FnMut() -> Result<()>) -> Result<Timing> {
        self.device.synchronize()?;
        let resident_device_bytes = vdit_models::profile::device_used_bytes(&self.device);
        for _ in 0..self.warmup {
            step()?;
            self.device.synchronize()?;
        }
        // Stage timings (VDIT_PROFILE=1) cover the timed iterations only.
        vdit_models::profile::reset();
        let mut samples = Vec::with_capacity(self.iters);
        let sampler = DevicePeakSampler::start(&self.device, Duration::from_micros(200));
        let pool_reset = vdit_models::profile::reset_pool_peaks(&self.device);
        for _ in 0..self.iters {
            // Queued work from before must not be charged to this iteration.
            self.device.synchronize()?;
            let start = Instant::now();
            step()?;
            self.device.synchronize()?;
            samples.push(start.elapsed().as_secs_f64());
        }
        if let Some(stages) = vdit_models::profile::report() {
            eprintln!(
                "stage timings over {} iteration(s) ({}=1, device synchronised around each stage):\n{stages}",
                self.iters,
                vdit_models::profile::PROFILE_ENV
            );
            vdit_models::profile::reset();
        }
        Ok(Timing {
            samples,
            peak_device_bytes: sampler.and_then(DevicePeakSampler::stop),
            resident_device_bytes,
            pool_peaks: pool_reset
                .then(|| vdit_models::profile::pool_peaks(&self.device))
                .flatten(),
        })
    }

    fn row(&self, bench: &str, case: String, shape: String, timing: &Timing) -> BenchRow {
        BenchRow {
            bench: bench.into(),
            case,
            shape,
            median_s: timing.median(),
            min_s: timing.min(),
            samples_s: timing.samples.clone(),
            tflops: None,
            density: None,
            peak_host_bytes: self.device.is_cpu().then(peak_resident_bytes).flatten(),
            peak_device_bytes: timing.peak_device_bytes,
            resident_device_bytes: timing.resident_device_bytes,
            pool_allocated_peak_bytes: timing.pool_peaks.map(|p| p.allocated),
            pool_reserved_peak_bytes: timing.pool_peaks.map(|p| p.reserved),
            offload: None,
            peak_gpu_bytes: None,
            stages: None,
        }
    }
}

/// Times the attention entry points the pipeline calls: [`dense_self_attention`] for density 1,
/// [`block_sparse_attention`] with a random mask otherwise, and [`predict_block_mask`].
fn bench_attention(a: &AttentionBench, dtype: DType, timer: &Timer) -> Result<Vec<BenchRow>> {
    let device = &timer.device;
    // q, k, v and the output, f32 on the host first.
    let values = [a.batch, a.heads, a.tokens, a.head_dim]
        .iter()
        .fold(1u128, |acc, &n| acc.saturating_mul(n as u128));
    refuse_if_too_big(device, values.saturating_mul(4 * 4 * 2), "--tokens/--heads")?;
    let shape = (a.batch, a.heads, a.tokens, a.head_dim);
    // Drawn on the host from the seed (not every backend can seed its generator): uniform with
    // unit variance.
    let random = |seed: u64| -> Result<Tensor> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let bound = 3f32.sqrt();
        let n = a.batch * a.heads * a.tokens * a.head_dim;
        let values: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
        Ok(Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)
    };
    let (q, k, v) = (random(a.seed)?, random(a.seed + 1)?, random(a.seed + 2)?);
    let scale = 1.0 / (a.head_dim as f64).sqrt();
    let shape_name = format!("B{} H{} L{} D{}", a.batch, a.heads, a.tokens, a.head_dim);
    // Dense attention does 4·L²·D multiply-adds per head (QKᵀ and PV, 2 flops each).
    let dense_flops = 4.0 * (a.tokens as f64).powi(2) * (a.head_dim * a.heads * a.batch) as f64;

    let mut rows = Vec::new();
    for &density in &a.densities {
        let (case, timing, kept) = if density >= 1.0 {
            let timing = timer.time(|| {
                dense_self_attention(&q, &k, &v, scale)?;
                Ok(())
            })?;
            ("dense".to_string(), timing, 1.0)
        } else {
            let mask = random_block_mask(a, density)?;
            let timing = time_block_sparse(timer, &q, &k, &v, &mask, scale)?;
            (format!("block-sparse {density}"), timing, mask.density())
        };
        let mut row = timer.row("attention", case, shape_name.clone(), &timing);
        row.tflops = Some(dense_flops * kept / row.median_s / 1e12);
        row.density = Some(kept);
        rows.push(row);
    }

    // Mask prediction as RainFusion runs it (block means, block scores, top-k), at sparsity 0.8:
    // on CUDA the device predictor (the mask stays on the GPU), elsewhere the host one. The
    // density is read once, outside the timed calls: RainFusion never reads a mask back.
    let sparsity = 0.8;
    let mut density = None;
    let timing = timer.time(|| {
        #[cfg(feature = "cuda")]
        if rainfusion::cuda::is_supported(&q, a.block_size) {
            let mask = rainfusion::cuda::predict_block_mask(&q, &k, a.block_size, sparsity, 0)?;
            if density.is_none() {
                density = Some(mask.density()?); // the first call: untimed unless --warmup 0
            }
            return Ok(());
        }
        let mask = predict_block_mask(&q, &k, a.block_size, sparsity, 0)?;
        density = Some(mask.density());
        Ok(())
    })?;
    let mut row = timer.row(
        "mask prediction",
        format!("sparsity {sparsity}, block {}", a.block_size),
        shape_name,
        &timing,
    );
    row.density = density;
    rows.push(row);
    Ok(rows)
}

/// Times block-sparse attention over `mask`. On CUDA the mask is uploaded once, before timing,
/// as RainFusion keeps its masks on the device; elsewhere the host kernel reads it directly.
fn time_block_sparse(
    timer: &Timer,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BlockMask,
    scale: f64,
) -> Result<Timing> {
    #[cfg(feature = "cuda")]
    if rainfusion::cuda::is_supported(q, mask.block_size) {
        let device_mask = rainfusion::cuda::DeviceBlockMask::upload(mask, q.device())?;
        return timer.time(|| {
            rainfusion::cuda::block_sparse_attention_device(q, k, v, &device_mask, scale)?;
            Ok(())
        });
    }
    timer.time(|| {
        block_sparse_attention(q, k, v, mask, scale)?;
        Ok(())
    })
}

/// A mask keeping `ceil(density · key_blocks)` key blocks per query block: the diagonal block
/// and a uniformly random choice of the others.
fn random_block_mask(a: &AttentionBench, density: f64) -> Result<BlockMask> {
    let blocks = a.tokens.div_ceil(a.block_size);
    let keep = kept_per_row(blocks, 1.0 - density);
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed ^ density.to_bits());
    let rows: Vec<Vec<u32>> = (0..a.batch * a.heads * blocks)
        .map(|r| {
            let diagonal = (r % blocks) as u32;
            let mut others: Vec<u32> = (0..blocks as u32).filter(|&b| b != diagonal).collect();
            // Partial Fisher-Yates: the first keep-1 entries become a uniform sample.
            for i in 0..keep.saturating_sub(1) {
                let j = rng.random_range(i..others.len());
                others.swap(i, j);
            }
            others.truncate(keep.saturating_sub(1));
            others.push(diagonal);
            others.sort_unstable();
            others
        })
        .collect();
    Ok(BlockMask::from_rows(
        a.batch,
        a.heads,
        a.block_size,
        blocks,
        blocks,
        &rows,
    )?)
}

/// The transformer config the flags describe: a preset with any explicit overrides.
fn transformer_config(t: &TransformerBench) -> Result<WanConfig> {
    let mut cfg = match t.preset {
        PresetArg::Tiny => WanConfig {
            num_heads: 2,
            head_dim: 16,
            num_layers: 2,
            ffn_dim: 64,
            text_dim: 32,
            freq_dim: 32,
            ..WanConfig::t2v_1_3b()
        },
        preset => WanConfig::preset(preset.name()).ok_or_else(|| {
            VditError::InvalidSetting(format!("no transformer preset {}", preset.name()))
        })?,
    };
    cfg.num_heads = t.heads.unwrap_or(cfg.num_heads);
    cfg.head_dim = t.head_dim.unwrap_or(cfg.head_dim);
    cfg.num_layers = t.layers.unwrap_or(cfg.num_layers);
    cfg.ffn_dim = t.ffn_dim.unwrap_or(cfg.ffn_dim);
    // The image tokens are projected to the model width, whatever the overrides make it.
    cfg.added_kv_proj_dim = cfg.added_kv_proj_dim.map(|_| cfg.num_heads * cfg.head_dim);
    cfg.validate()
        .map_err(|e| VditError::InvalidSetting(format!("transformer flags: {e}")))?;
    Ok(cfg)
}

/// Times one forward of a random-weight transformer on random latents, timesteps and text.
fn bench_transformer(t: &TransformerBench, dtype: DType, timer: &Timer) -> Result<BenchRow> {
    if t.preset == PresetArg::HunyuanVideo15 {
        return bench_hunyuan15(t, dtype, timer);
    }
    if t.glyph_len.is_some() {
        return Err(VditError::InvalidSetting(format!(
            "--glyph-len: {} has no glyph text input (hunyuanvideo-1.5 only)",
            t.preset.name()
        )));
    }
    // Wan runs the two halves of classifier-free guidance as one batch; every prompt is padded
    // to 512 text rows.
    let batch = t.batch.unwrap_or(2);
    let text_len = t.text_len.unwrap_or(512);
    let device = &timer.device;
    let cfg = transformer_config(t)?;
    let (default_size, default_frames) = t.preset.default_video();
    let (width, height) = t.size.unwrap_or(default_size);
    let (width, height) = (width as usize, height as usize);
    let frames = t.frames.unwrap_or(default_frames);
    // Wan's VAEs compress 4× in time (plus the first frame) and 8× (Wan2.2's TI2V VAE: 16×) in
    // space.
    let scale = t.preset.spatial_compression();
    if !height.is_multiple_of(scale) || !width.is_multiple_of(scale) {
        return Err(VditError::InvalidSetting(format!(
            "--size {width}x{height}: {} needs multiples of {scale}",
            t.preset.name()
        )));
    }
    let grid = [(frames - 1) / 4 + 1, height / scale, width / scale];
    let [pt, ph, pw] = cfg.patch_size;
    if !grid[0].is_multiple_of(pt) || !grid[1].is_multiple_of(ph) || !grid[2].is_multiple_of(pw) {
        return Err(VditError::InvalidSetting(format!(
            "--size/--frames: latent grid {grid:?} is not a multiple of the patch size {:?}",
            cfg.patch_size
        )));
    }
    let shape = RunShape {
        width: width as u64,
        height: height as u64,
        frames: frames as u64,
        latent: [
            cfg.in_channels as u64,
            grid[0] as u64,
            grid[1] as u64,
            grid[2] as u64,
        ],
        tokens: (grid[0] / pt * (grid[1] / ph)) as u64 * (grid[2] / pw) as u64,
        batch: batch as u64,
        transformer: TransformerShape {
            dim: (cfg.num_heads * cfg.head_dim) as u64,
            ffn_dim: cfg.ffn_dim as u64,
            layers: cfg.num_layers as u64,
        },
        weight_bytes: 0,
        dtype_bytes: dtype.size_in_bytes() as u64,
        vae_tiling: false,
        steps: 1,
    };
    refuse_if_too_big(device, shape.memory().transformer, "--size/--frames")?;
    let offload = bench_offload(t, &shape, dtype, device)?;
    let model = WanTransformer::random_placed(
        &cfg,
        dtype,
        device,
        t.weights.format(),
        offload.block_placement(),
    )?;
    let latents = Tensor::randn(
        0f32,
        1.0,
        (batch, cfg.in_channels, grid[0], grid[1], grid[2]),
        device,
    )?;
    let timesteps = Tensor::full(500f32, batch, device)?;
    let context = Tensor::randn(0f32, 1.0, (batch, text_len, cfg.text_dim), device)?;
    let mut attention = transformer_attention(t, cfg.num_layers)?;
    // Image-to-video models also attend to the CLIP image tokens: [B, 257 (FLF2V 514), 1280].
    let image = match cfg.image_dim {
        Some(image_dim) => Some(Tensor::randn(
            0f32,
            1.0,
            (batch, cfg.pos_embed_seq_len.unwrap_or(257), image_dim),
            device,
        )?),
        None => None,
    };
    let timing = timer.time(|| {
        // Every forward is a fresh sparse step: masks are predicted, not reused.
        attention.begin_step(0, 1);
        model.forward_with_image(
            &latents,
            &timesteps,
            &context,
            image.as_ref(),
            attention.as_mut(),
        )?;
        Ok(())
    })?;
    let mut case = attention_case(t);
    if t.weights != BenchWeights::Dense {
        case.push_str(&format!(", {} weights", t.weights.name()));
    }
    if offload == OffloadMode::Blocks {
        case.push_str(", offload blocks");
    }
    // A streamed model copies every block once per forward: the proof it streamed.
    let expected_fetches = (timer.warmup + timer.iters) as u64 * cfg.num_layers as u64;
    if offload == OffloadMode::Blocks && model.block_fetches() != expected_fetches {
        return Err(VditError::InvalidSetting(format!(
            "--offload blocks: {} block copies for {expected_fetches} block runs",
            model.block_fetches()
        )));
    }
    let tokens = grid[0] / pt * (grid[1] / ph) * (grid[2] / pw);
    // The preset's name ends the shape, so rows of different models differ.
    let shape = format!(
        "{}L×{}H×{}d B{} {}x{}x{} (L{tokens}, text {}) {}",
        cfg.num_layers,
        cfg.num_heads,
        cfg.head_dim,
        batch,
        width,
        height,
        frames,
        text_len,
        t.preset.name()
    );
    let mut row = timer.row("transformer", case, shape, &timing);
    row.density = Some(attention.effective_density());
    row.offload = Some(offload.name());
    Ok(row)
}

/// The bench's `--offload`, resolved: one transformer, so `experts` is `none`; `auto` as
/// `vdit generate` chooses it, with the random weights' bytes (dense in `dtype`; GGUF blocks
/// counted at the dtype's size, an overestimate) and the device's free memory.
fn bench_offload(
    t: &TransformerBench,
    shape: &RunShape,
    dtype: DType,
    device: &Device,
) -> Result<OffloadMode> {
    Ok(match t.offload {
        OffloadChoice::None | OffloadChoice::Experts => OffloadMode::None,
        OffloadChoice::Blocks => OffloadMode::Blocks,
        OffloadChoice::Auto => {
            let params = shape
                .transformer
                .block_params()
                .saturating_mul(shape.transformer.layers as u128)
                .saturating_add(shape.transformer.non_block_params());
            let with_weights = RunShape {
                weight_bytes: params
                    .saturating_mul(dtype.size_in_bytes() as u128)
                    .min(u64::MAX as u128) as u64,
                ..*shape
            };
            let needs = OffloadNeeds::of(&with_weights, 1);
            let (mode, reason) = choose_offload(
                device.is_cpu(),
                memory::device_free_bytes(device),
                false,
                &needs,
            );
            eprintln!("offload      {mode} (auto: {reason})");
            mode
        }
    })
}

/// Qwen2.5-VL prompt rows diffusers' HunyuanVideo 1.5 pipeline pads every prompt to (after the
/// template's system part is cut off).
const HUNYUAN15_PROMPT_ROWS: usize = 1000;
/// ByT5 glyph rows the pipeline pads to.
const HUNYUAN15_GLYPH_ROWS: usize = 256;
/// Valid prompt rows when `--text-len` is not given: a long rewritten prompt (~190 words).
const HUNYUAN15_DEFAULT_PROMPT_TOKENS: usize = 256;

/// The HunyuanVideo 1.5 config the flags describe: the 8.3B text-to-video shape with any explicit
/// overrides (`--ffn-dim` sets the MLP ratio; a new head width spreads RoPE over its axes).
fn hunyuan15_config(t: &TransformerBench) -> Result<HunyuanVideo15Config> {
    let mut cfg = HunyuanVideo15Config::t2v_8_3b();
    cfg.num_attention_heads = t.heads.unwrap_or(cfg.num_attention_heads);
    cfg.num_layers = t.layers.unwrap_or(cfg.num_layers);
    if let Some(head_dim) = t.head_dim {
        cfg.attention_head_dim = head_dim;
        // The released split is 16 + 56 + 56 of 128: about an eighth to time, the rest shared
        // by rows and columns, every axis even.
        let mut frames = (head_dim / 8).max(2) & !1;
        while frames < head_dim && (head_dim - frames) % 4 != 0 {
            frames += 2;
        }
        let side = head_dim.saturating_sub(frames) / 2;
        cfg.rope_axes_dim = vec![frames, side, side];
    }
    if let Some(ffn_dim) = t.ffn_dim {
        cfg.mlp_ratio = ffn_dim as f64 / cfg.dim() as f64;
    }
    cfg.validate()
        .map_err(|e| VditError::InvalidSetting(format!("transformer flags: {e}")))?;
    Ok(cfg)
}

/// Token counts of one HunyuanVideo 1.5 forward per sample: video tokens and the valid prompt
/// and glyph tokens (the ones vdit attends over; text-to-video has no image tokens).
#[derive(Debug, Clone, Copy)]
struct Hunyuan15Tokens {
    video: usize,
    prompt: usize,
    glyph: usize,
}

/// Floating-point operations of one forward per sample (multiply-adds × 2), counting the work on
/// valid tokens only (what the model needs; diffusers also carries the padding, masked):
///
/// ```text
/// N = video + prompt + glyph                       (joint sequence of every block)
/// blocks  = layers · (2·N·(4·dim² + 2·dim·mlp)     (each token's q, k, v, out and MLP, in its
///                                                   own stream's weights: 2·params·tokens)
///                     + 4·N²·head_dim·heads)       (joint attention: QKᵀ and PV)
/// refiner = 2·prompt·text_dim·dim + refiner_layers · (2·prompt·(4·dim² + 2·dim·mlp)
///                                                     + 4·prompt²·dim)
/// glyph   = 2·glyph·(text2_dim·h + h² + h·dim)     (h = the ByT5 projection width)
/// io      = 2·video·dim·(in·p + out·p)             (patch embedding and output head, p = patch volume)
/// ```
///
/// The per-sample modulation and timestep layers (one row each) are left out.
fn hunyuan15_flops(cfg: &HunyuanVideo15Config, tokens: Hunyuan15Tokens) -> f64 {
    let dim = cfg.dim() as f64;
    let mlp = cfg.mlp_dim() as f64;
    let linear_per_token = 4.0 * dim * dim + 2.0 * dim * mlp;
    let n = (tokens.video + tokens.prompt + tokens.glyph) as f64;
    let blocks = cfg.num_layers as f64 * (2.0 * n * linear_per_token + 4.0 * n * n * dim);
    let lp = tokens.prompt as f64;
    let refiner = 2.0 * lp * cfg.text_embed_dim as f64 * dim
        + cfg.num_refiner_layers as f64 * (2.0 * lp * linear_per_token + 4.0 * lp * lp * dim);
    let h = cfg.byt5_projection_dim as f64;
    let glyph = 2.0 * tokens.glyph as f64 * (cfg.text_embed_2_dim as f64 * h + h * h + h * dim);
    let io = 2.0
        * tokens.video as f64
        * dim
        * (cfg.patch_in_features() + cfg.patch_out_features()) as f64;
    blocks + refiner + glyph + io
}

/// Parameters of the network, approximately (biases and norms left out): for the memory check.
fn hunyuan15_parameters(cfg: &HunyuanVideo15Config) -> u64 {
    let dim = cfg.dim() as u64;
    let mlp = cfg.mlp_dim() as u64;
    // Per stream: q, k, v, out, the MLP and the six modulation rows.
    let stream = 4 * dim * dim + 2 * dim * mlp + 6 * dim * dim;
    let blocks = cfg.num_layers as u64 * 2 * stream;
    let refiner = cfg.text_embed_dim as u64 * dim
        + cfg.num_refiner_layers as u64 * (4 * dim * dim + 2 * dim * mlp + 2 * dim * dim);
    let h = cfg.byt5_projection_dim as u64;
    let glyph = cfg.text_embed_2_dim as u64 * h + h * h + h * dim;
    let image = cfg.image_embed_dim as u64 * (cfg.image_embed_dim as u64 + dim);
    let io = dim * (cfg.patch_in_features() + cfg.patch_out_features()) as u64 + 4 * dim * dim;
    blocks + refiner + glyph + image + io
}

/// Times one forward of a random-weight HunyuanVideo 1.5 transformer (text-to-video) on the
/// inputs diffusers' pipeline hands it: latents `[B, 65, F, H, W]` (noise, condition latents,
/// mask), a timestep, Qwen prompt states `[B, 1000, 3584]` with `--text-len` valid rows, ByT5
/// glyph states `[B, 256, 1472]` with `--glyph-len` valid rows, no image tokens.
/// The self-attention policy of a transformer row: dense, or RainFusion at `--sparsity` in
/// blocks of `--block-size`, every forward a fresh sparse step (masks predicted, not reused).
fn transformer_attention(t: &TransformerBench, layers: usize) -> Result<Box<dyn SelfAttention>> {
    Ok(match t.attention {
        BenchAttention::Dense => Box::new(DenseAttention),
        BenchAttention::Rainfusion => {
            let config = RainFusionConfig {
                sparsity: t.sparsity,
                block_size: t.block_size,
                window: Window::Tile,
                dense_steps: DenseSteps::Count(0),
                mask_refresh: 1,
                dense_layers: 0,
                first_frame_sink: true,
            };
            let invalid =
                |e: rainfusion::Error| VditError::InvalidSetting(format!("rainfusion flags: {e}"));
            config.validate().map_err(invalid)?;
            Box::new(RainFusionAttention::new(config, layers).map_err(invalid)?)
        }
    })
}

/// The row's case: `dense` or `rainfusion S`.
fn attention_case(t: &TransformerBench) -> String {
    match t.attention {
        BenchAttention::Dense => "dense".to_string(),
        BenchAttention::Rainfusion => format!("rainfusion {}", t.sparsity),
    }
}

fn bench_hunyuan15(t: &TransformerBench, dtype: DType, timer: &Timer) -> Result<BenchRow> {
    let preset = t.preset.name();
    if t.weights != BenchWeights::Dense {
        return Err(VditError::InvalidSetting(format!(
            "--weights {}: quantised random weights are not built for {preset} yet; use --weights dense",
            t.weights.name()
        )));
    }
    let device = &timer.device;
    let cfg = hunyuan15_config(t)?;
    // The pipeline runs the conditional and unconditional branches as separate forwards.
    let batch = t.batch.unwrap_or(1);
    let prompt_tokens = t.text_len.unwrap_or(HUNYUAN15_DEFAULT_PROMPT_TOKENS);
    let glyph_tokens = t.glyph_len.unwrap_or(0);
    if prompt_tokens > HUNYUAN15_PROMPT_ROWS || glyph_tokens > HUNYUAN15_GLYPH_ROWS {
        return Err(VditError::InvalidSetting(format!(
            "--text-len {prompt_tokens} / --glyph-len {glyph_tokens}: {preset}'s pipeline pads \
             to {HUNYUAN15_PROMPT_ROWS} prompt and {HUNYUAN15_GLYPH_ROWS} glyph tokens"
        )));
    }
    let (default_size, default_frames) = t.preset.default_video();
    let (width, height) = t.size.unwrap_or(default_size);
    let (width, height) = (width as usize, height as usize);
    let frames = t.frames.unwrap_or(default_frames);
    // The VAE compresses 4× in time (plus the first frame) and 16× in space.
    let scale = t.preset.spatial_compression();
    if !height.is_multiple_of(scale) || !width.is_multiple_of(scale) {
        return Err(VditError::InvalidSetting(format!(
            "--size {width}x{height}: {preset} needs multiples of {scale}"
        )));
    }
    let grid = [(frames - 1) / 4 + 1, height / scale, width / scale];
    let [pt, ph, pw] = cfg.patch();
    if !grid[0].is_multiple_of(pt) || !grid[1].is_multiple_of(ph) || !grid[2].is_multiple_of(pw) {
        return Err(VditError::InvalidSetting(format!(
            "--size/--frames: latent grid {grid:?} is not a multiple of the patch size {:?}",
            cfg.patch()
        )));
    }
    // `auto` loads it whole here: the bench times the residency asked for (`vdit generate`
    // estimates this family's memory for `auto`).
    let offload = match t.offload {
        OffloadChoice::Blocks => OffloadMode::Blocks,
        _ => OffloadMode::None,
    };
    let tokens = Hunyuan15Tokens {
        video: grid[0] / pt * (grid[1] / ph) * (grid[2] / pw),
        prompt: prompt_tokens,
        glyph: glyph_tokens,
    };
    let need = RunShape {
        width: width as u64,
        height: height as u64,
        frames: frames as u64,
        latent: [
            cfg.in_channels as u64,
            grid[0] as u64,
            grid[1] as u64,
            grid[2] as u64,
        ],
        tokens: (tokens.video + tokens.prompt + tokens.glyph) as u64,
        batch: batch as u64,
        transformer: TransformerShape {
            dim: cfg.dim() as u64,
            ffn_dim: cfg.mlp_dim() as u64,
            layers: cfg.num_layers as u64,
        },
        // The 8.3B weights are most of it: counted here, unlike the Wan rows (streamed: about
        // two blocks' worth on the device).
        weight_bytes: match offload {
            OffloadMode::Blocks => hunyuan15_parameters(&cfg) / cfg.num_layers.max(1) as u64 * 2,
            _ => hunyuan15_parameters(&cfg),
        }
        .saturating_mul(dtype.size_in_bytes() as u64),
        dtype_bytes: dtype.size_in_bytes() as u64,
        vae_tiling: false,
        steps: 1,
    }
    .memory()
    .transformer;
    refuse_if_too_big(device, need, "--size/--frames/--layers")?;

    let model =
        HunyuanVideo15Transformer::random_placed(&cfg, dtype, device, offload.block_placement())?;
    let latents = Tensor::randn(
        0f32,
        1.0,
        (batch, cfg.in_channels, grid[0], grid[1], grid[2]),
        device,
    )?;
    let timesteps = Tensor::full(500f32, batch, device)?;
    // Padded text as the pipeline hands it: the valid rows first, then padding (mask 0).
    let prompt = Tensor::randn(
        0f32,
        1.0,
        (batch, HUNYUAN15_PROMPT_ROWS, cfg.text_embed_dim),
        device,
    )?;
    let glyph = Tensor::randn(
        0f32,
        1.0,
        (batch, HUNYUAN15_GLYPH_ROWS, cfg.text_embed_2_dim),
        device,
    )?;
    let valid_prefix = |valid: usize, rows: usize| -> Result<Tensor> {
        let row: Vec<f32> = (0..rows).map(|i| f32::from(u8::from(i < valid))).collect();
        Ok(Tensor::new(row.as_slice(), device)?
            .unsqueeze(0)?
            .repeat((batch, 1))?)
    };
    let prompt_mask = valid_prefix(tokens.prompt, HUNYUAN15_PROMPT_ROWS)?;
    let glyph_mask = valid_prefix(tokens.glyph, HUNYUAN15_GLYPH_ROWS)?;
    let inputs = HunyuanVideo15Inputs {
        latents: &latents,
        timesteps: &timesteps,
        prompt: &prompt,
        prompt_mask: &prompt_mask,
        glyph: &glyph,
        glyph_mask: &glyph_mask,
        image: None,
    };
    let mut attention = transformer_attention(t, cfg.num_layers)?;
    let timing = timer.time(|| {
        attention.begin_step(0, 1);
        model.forward_with_attention(&inputs, attention.as_mut())?;
        Ok(())
    })?;
    // The preset's name ends the shape, as for the Wan rows.
    let shape = format!(
        "{}L×{}H×{}d B{batch} {width}x{height}x{frames} (L{}, text {}+{}) {preset}",
        cfg.num_layers,
        cfg.num_attention_heads,
        cfg.attention_head_dim,
        tokens.video,
        tokens.prompt,
        tokens.glyph,
    );
    let mut case = attention_case(t);
    if offload == OffloadMode::Blocks {
        // A streamed model copies every block once per forward: the proof it streamed.
        let expected = (timer.warmup + timer.iters) as u64 * cfg.num_layers as u64;
        if model.block_fetches() != expected {
            return Err(VditError::InvalidSetting(format!(
                "--offload blocks: {} block copies for {expected} block runs",
                model.block_fetches()
            )));
        }
        case.push_str(", offload blocks");
    }
    let mut row = timer.row("transformer", case, shape, &timing);
    row.offload = Some(offload.name());
    // The dense forward's FLOPs: a sparse row's TFLOP/s is its effective (dense-equivalent) rate.
    row.tflops = Some(batch as f64 * hunyuan15_flops(&cfg, tokens) / row.median_s / 1e12);
    row.density = Some(attention.effective_density());
    Ok(row)
}

/// Times one decode of a random-weight Wan2.1 or Wan2.2 VAE decoder on random latents; with
/// `--tiny`, then TAEHV's decoder for the same latents (a second row). HunyuanVideo 1.5's VAE:
/// [`bench_hunyuan15_vae`].
/// The memory estimate of a VAE decode of `latent` `[C, F, H, W]` into `video` (width, height,
/// frames), times the batch: the Wan VAE's calibration (`memory::RunShape`), activations per output
/// pixel and frame.
fn vae_decode_need(v: &VaeBench, dtype: DType, latent: [u64; 4], video: (u64, u64, u64)) -> u128 {
    let (width, height, frames) = video;
    RunShape {
        width,
        height,
        frames,
        latent,
        tokens: 0,
        batch: v.batch as u64,
        transformer: TransformerShape::WAN21_1_3B,
        weight_bytes: 0,
        dtype_bytes: dtype.size_in_bytes() as u64,
        vae_tiling: v.tiling,
        steps: 0,
    }
    .memory()
    .vae_decode
    .saturating_mul(v.batch as u128)
}

fn bench_vae(v: &VaeBench, dtype: DType, timer: &Timer) -> Result<Vec<BenchRow>> {
    let device = &timer.device;
    let (mut cfg, default_latent, name) = match v.vae {
        // 81 frames at 832×480
        VaeArg::Wan21 => (WanVaeConfig::wan2_1(), [21, 60, 104], "Wan2.1"),
        // 121 frames at 1280×704
        VaeArg::Wan22 => (WanVaeConfig::wan2_2(), [31, 44, 80], "Wan2.2"),
        VaeArg::HunyuanVideo15 => return Ok(vec![bench_hunyuan15_vae(v, dtype, timer)?]),
    };
    if let Some(base_dim) = v.base_dim {
        cfg.base_dim = base_dim;
        cfg.decoder_base_dim = cfg.decoder_base_dim.map(|_| base_dim);
    }
    cfg.validate()
        .map_err(|e| VditError::InvalidSetting(format!("vae flags: {e}")))?;
    let [f, h, w] = v.latent.unwrap_or(default_latent);
    let scale = cfg.spatial_scale() as u64;
    let frames = (f as u64).saturating_sub(1).saturating_mul(4) + 1;
    let latent = [cfg.z_dim as u64, f as u64, h as u64, w as u64];
    let video = (
        (w as u64).saturating_mul(scale),
        (h as u64).saturating_mul(scale),
        frames,
    );
    refuse_if_too_big(
        device,
        vae_decode_need(v, dtype, latent, video),
        "--latent/--batch",
    )?;
    if v.encode {
        return Ok(vec![bench_vae_encode(
            &cfg,
            [f, h, w],
            name,
            v.batch,
            dtype,
            timer,
        )?]);
    }
    let decoder = WanVaeDecoder::random(&cfg, dtype, device)?;
    let latents = Tensor::randn(0f32, 1.0, (v.batch, cfg.z_dim, f, h, w), device)?;
    let tiling = v.tiling.then(VaeTiling::default);
    let timing = timer.time(|| {
        decoder.decode(&latents, tiling)?;
        Ok(())
    })?;
    let scale = cfg.spatial_scale();
    let shape = format!(
        "{name} B{} latent {f}x{h}x{w} → {} frames {}x{}",
        v.batch,
        cfg.video_frames(f),
        w * scale,
        h * scale
    );
    let case = if v.tiling { "tiled" } else { "whole frames" };
    let full = timer.row("vae", case.into(), shape.clone(), &timing);
    drop(decoder);
    if !v.tiny {
        return Ok(vec![full]);
    }
    // TAEHV at its published widths for these latents (random weights: the time does not depend
    // on the values).
    let tiny_cfg = TaehvConfig::for_latent_channels(cfg.z_dim).ok_or_else(|| {
        VditError::InvalidSetting(format!("--tiny: no TAEHV decoder for z {}", cfg.z_dim))
    })?;
    let tiny = TaehvDecoder::random(&tiny_cfg, dtype, device)?;
    let timing = timer.time(|| {
        tiny.decode(&latents)?;
        Ok(())
    })?;
    let file = TaehvConfig::published_file(cfg.z_dim).unwrap_or("TAEHV");
    let tiny_row = timer.row("vae", format!("tiny ({file})"), shape, &timing);
    eprintln!(
        "tiny decoder: {:.3} s against {:.3} s for the full VAE ({:.1}x faster)",
        tiny_row.median_s,
        full.median_s,
        full.median_s / tiny_row.median_s
    );
    Ok(vec![full, tiny_row])
}

/// HunyuanVideo 1.5's latent grid at 848×480×121: 1 + 120/4 frames, 480/16 × 848/16.
const HUNYUAN15_VAE_DEFAULT_LATENT: [usize; 3] = [31, 30, 53];

/// The published VAE's shallowest width; `--base-dim` scales every width by base/this.
const HUNYUAN15_VAE_BASE: usize = 128;

/// Times one decode of a random-weight HunyuanVideo 1.5 VAE decoder (diffusers'
/// `AutoencoderKLHunyuanVideo15` defaults, the released model's VAE) on random latents
/// `[B, 32, f, h, w]`: whole frames, or with `--tiling` diffusers' `enable_tiling()` tiles.
fn bench_hunyuan15_vae(v: &VaeBench, dtype: DType, timer: &Timer) -> Result<BenchRow> {
    let vae = "--vae hunyuanvideo-1.5";
    if v.encode {
        return Err(VditError::InvalidSetting(format!(
            "--encode: not built for {vae} (vdit has its decoder only)"
        )));
    }
    if v.tiny {
        return Err(VditError::InvalidSetting(format!(
            "--tiny: vdit has no TAEHV decoder for {vae}'s 32-channel latents"
        )));
    }
    let device = &timer.device;
    let mut cfg = HunyuanVideo15VaeConfig::default();
    if let Some(base_dim) = v.base_dim {
        for width in cfg.block_out_channels.iter_mut() {
            *width = *width * base_dim / HUNYUAN15_VAE_BASE;
        }
    }
    cfg.validate()
        .map_err(|e| VditError::InvalidSetting(format!("vae flags: {e}")))?;
    let [f, h, w] = v.latent.unwrap_or(HUNYUAN15_VAE_DEFAULT_LATENT);
    let (scale, frames) = (cfg.spatial_scale(), cfg.video_frames(f));
    // The Wan rows' rough estimate (activations per output pixel and frame), to refuse sizes far
    // beyond the device before anything is allocated; not a measured bound for this decoder.
    let latent = [cfg.latent_channels as u64, f as u64, h as u64, w as u64];
    let video = ((w * scale) as u64, (h * scale) as u64, frames as u64);
    refuse_if_too_big(
        device,
        vae_decode_need(v, dtype, latent, video),
        "--latent/--batch",
    )?;
    let tiling = v.tiling.then(|| HunyuanVaeTiling::for_spatial_scale(scale));
    if let Some(tiling) = tiling {
        tiling
            .validate(scale)
            .map_err(|e| VditError::InvalidSetting(format!("--tiling with --base-dim: {e}")))?;
    }
    let decoder = HunyuanVideo15VaeDecoder::random(&cfg, dtype, device)?;
    // [B, 32, f, h, w] → [B, 3, 1 + 4(f − 1), 16h, 16w]
    let latents = Tensor::randn(0f32, 1.0, (v.batch, cfg.latent_channels, f, h, w), device)?
        .to_dtype(dtype)?;
    let timing = timer.time(|| {
        decoder.decode(&latents, tiling)?;
        Ok(())
    })?;
    let shape = format!(
        "HunyuanVideo 1.5 B{} latent {f}x{h}x{w} → {frames} frames {}x{}",
        v.batch,
        w * scale,
        h * scale
    );
    let case = if v.tiling { "tiled" } else { "whole frames" };
    Ok(timer.row("vae", case.into(), shape, &timing))
}

/// Times one encode of a random-weight Wan VAE encoder: the video `[B, 3, F, H, W]` that the
/// latent grid `[f, h, w]` decodes to → its latent mean (what image-to-video encodes per run).
fn bench_vae_encode(
    cfg: &WanVaeConfig,
    [f, h, w]: [usize; 3],
    name: &str,
    batch: usize,
    dtype: DType,
    timer: &Timer,
) -> Result<BenchRow> {
    let device = &timer.device;
    let scale = cfg.spatial_scale();
    let frames = cfg.video_frames(f);
    let encoder = WanVaeEncoder::random(cfg, dtype, device)?;
    let video = Tensor::rand(-1f32, 1.0, (batch, 3, frames, h * scale, w * scale), device)?
        .to_dtype(dtype)?;
    let timing = timer.time(|| {
        encoder.encode_mean(&video)?;
        Ok(())
    })?;
    let shape = format!(
        "{name} B{batch} {frames} frames {}x{} → latent {f}x{h}x{w}",
        w * scale,
        h * scale
    );
    Ok(timer.row("vae-encode", "whole frames".into(), shape, &timing))
}

fn format_gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// When `main` began: the process's start-up as far as it can be timed finely (the kernel's
/// process start time has 10 ms resolution, and counts the time before `main`).
static MAIN_STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Called first thing in `main`.
pub fn mark_main_started() {
    MAIN_STARTED.get_or_init(Instant::now);
}

/// Seconds since this process started (Linux: its start time in /proc/self/stat against
/// /proc/uptime, 10 ms resolution).
fn process_age_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name's ")": state is field 3, starttime field 22.
    let start_ticks: f64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // USER_HZ is 100 on every Linux ABI the engine builds for.
    Some((uptime - start_ticks / 100.0).max(0.0))
}

/// Runs the whole pipeline `p.runs` times in this process, as `vdit generate` does (settings
/// resolved, then [`stages::generate`]), and gives one row per run.
fn bench_pipeline(p: &PipelineBench, args: &BenchArgs) -> Result<Vec<BenchRow>> {
    let registry = Registry::discover()?;
    // The temporary folder lives until the rows are made.
    let temp;
    let dir: PathBuf = match &p.output_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| VditError::InvalidSetting(format!("-o {}: {e}", dir.display())))?;
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir().map_err(|source| VditError::Write {
                path: std::env::temp_dir(),
                source,
            })?;
            temp.path().to_path_buf()
        }
    };
    // What the first run pays before its first stage: the process's start-up (and, here, the
    // registry and the temporary folder; `vdit generate` also reads the registry first).
    let since_main = MAIN_STARTED
        .get()
        .map_or(0.0, |t| t.elapsed().as_secs_f64());
    let startup_s = process_age_s().unwrap_or(0.0).max(since_main);
    let mut rows = Vec::with_capacity(p.runs);
    // With --keep-loaded, the networks of one run serve the next.
    let mut kept = stages::KeptNetworks::default();
    for run in 0..p.runs {
        let kept_note = if p.keep_loaded { ", networks kept" } else { "" };
        let case = match run {
            0 => "vdit first run".to_string(),
            1 => format!("vdit warm run{kept_note}"),
            n => format!("vdit warm run {n}{kept_note}"),
        };
        let mut options = GenerateOptions::new(p.prompt.clone());
        options.negative_prompt = p.negative_prompt.clone();
        options.size = p.size;
        options.frames = p.frames;
        options.steps = p.steps;
        options.guidance_scale = p.guidance_scale;
        options.shift = p.shift;
        options.seed = Some(p.seed);
        options.output = Some(dir.join(format!("run{}.mp4", run + 1)));
        options.device = args.device;
        options.dtype = args.dtype;
        options.model = Some(p.model.clone());
        options.offline = p.offline;
        options.t5_cpu = p.t5_cpu;
        options.offload = p.offload;
        options.vae_tiling = p.vae_tiling;
        options.attention = p.attention;
        options.sparsity = p.sparsity;
        options.dense_steps = p.dense_steps;
        options.sampler = p.sampler;
        options.timesteps = p.timesteps.clone();
        options.loras = p.loras.clone();
        options.lora_mode = p.lora_mode;
        options.step_cache = p.step_cache;
        options.cache_threshold = p.cache_threshold;
        options.cache_calibration = p.cache_calibration.clone();
        options.decoder = p.decoder;
        options.tiny_vae = p.tiny_vae.clone();
        options.overwrite = args.overwrite;

        eprintln!("== {case}");
        let start = Instant::now();
        let (settings, files) = settings::resolve(&options, &registry)?;
        let device = settings.device.device()?;
        device.synchronize()?;
        let baseline = vdit_models::profile::device_used_bytes(&device);
        let sampler = DevicePeakSampler::start(&device, Duration::from_millis(2));
        // Where the reset is refused, VmHWM is the process's peak so far (it still bounds the run).
        if device.is_cpu() {
            reset_peak_resident();
        }
        let report = if p.keep_loaded {
            stages::generate_keeping(&settings, &files, &mut kept)?
        } else {
            stages::generate(&settings, &files)?
        };
        device.synchronize()?;
        let wall = start.elapsed().as_secs_f64();
        let peak_device = sampler.and_then(DevicePeakSampler::stop);
        let imports_s = if run == 0 { startup_s } else { 0.0 };
        let t = &report.timings;
        let stages = PipelineStages {
            imports_s,
            load_s: t.load_s(),
            encode_s: t.encode_compute_s(),
            denoise_s: t.denoise_compute_s(),
            decode_s: t.decode_compute_s(),
            write_s: t.write_s,
            total_s: imports_s + wall,
            text_encoder_load_s: t.text_encoder_load_s,
            transformer_load_s: t.transformer_load_s,
            vae_load_s: t.vae_load_s,
            first_step_s: t.first_step_s,
            seconds_per_step: t.seconds_per_step,
            decode_to_bytes_s: t.decode_to_bytes_s,
            decode_push_s: t.decode_push_s,
        };
        let mut attention = settings.attention.mode.name().to_string();
        if settings.attention.mode != vdit_pipeline::options::AttentionMode::Dense {
            let _ = write!(attention, " {}", settings.attention.sparsity);
        }
        if settings.step_cache.mode != vdit_pipeline::options::StepCacheMode::None {
            let _ = write!(
                attention,
                ", {} {} ({})",
                settings.step_cache.mode.name(),
                settings.step_cache.threshold,
                report.step_cache
            );
        }
        if let vdit_pipeline::decoder::DecoderSettings::Tiny { .. } = settings.decoder {
            attention.push_str(", tiny decoder");
        }
        // The same words as torch_bench.py's pipeline rows, then the attention.
        let shape = format!(
            "{}x{}x{}, {} steps, guidance {}, {attention}",
            settings.width,
            settings.height,
            settings.frames,
            settings.steps,
            settings.guidance_scale
        );
        rows.push(BenchRow {
            bench: "pipeline".into(),
            case,
            shape,
            median_s: stages.total_s,
            min_s: stages.total_s,
            samples_s: vec![stages.total_s],
            tflops: None,
            density: Some(report.effective_density),
            peak_host_bytes: device.is_cpu().then(peak_resident_bytes).flatten(),
            peak_device_bytes: None,
            resident_device_bytes: baseline,
            pool_allocated_peak_bytes: None,
            pool_reserved_peak_bytes: None,
            offload: Some(settings.offload.mode.name()),
            peak_gpu_bytes: peak_device.map(|peak| peak.saturating_sub(baseline.unwrap_or(0))),
            stages: Some(stages),
        });
    }
    Ok(rows)
}

fn format_tflops(t: f64) -> String {
    if t >= 10.0 {
        format!("{t:.1}")
    } else {
        format!("{t:.4}")
    }
}

fn format_seconds(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else {
        format!("{:.3} ms", s * 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_masks_keep_the_diagonal_and_the_asked_fraction() {
        let a = AttentionBench {
            tokens: 1000,
            heads: 3,
            batch: 2,
            block_size: 64,
            ..AttentionBench::default()
        };
        let blocks = 1000usize.div_ceil(64);
        for density in [0.1, 0.25, 0.5] {
            let mask = random_block_mask(&a, density).unwrap();
            let keep = kept_per_row(blocks, 1.0 - density);
            for r in 0..mask.num_rows() {
                let row = mask.row_at(r);
                assert_eq!(row.len(), keep, "row {r} at density {density}");
                assert!(row.contains(&((r % blocks) as u32)), "diagonal of row {r}");
            }
        }
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        let odd = Timing {
            samples: vec![3.0, 1.0, 2.0],
            peak_device_bytes: None,
            resident_device_bytes: None,
            pool_peaks: None,
        };
        assert!(process_age_s().is_some_and(|age| age >= 0.0));
        assert_eq!((odd.median(), odd.min()), (2.0, 1.0));
        let even = Timing {
            samples: vec![4.0, 1.0, 2.0, 3.0],
            peak_device_bytes: None,
            resident_device_bytes: None,
            pool_peaks: None,
        };
        assert_eq!(even.median(), 2.5);
    }
}
