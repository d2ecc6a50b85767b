//! The Wan2.1 text-to-video diffusion transformer (`WanModel` / `WanTransformer3DModel`):
//! latents, timestep and text in, flow velocity out.
//!
//! ```text
//! latents [B,16,F,H,W] ─patchify─► [B,L,16·pt·ph·pw] ─patch linear─► x [B,L,dim] (f32 residual)
//! timesteps [B] ─sinusoid─► time MLP ─► e [B,dim] ─SiLU·Linear─► e0 [B,6,dim]      (f32)
//! context [B,Lt,text_dim] ─Linear·gelu_tanh·Linear─► text [B,Lt,dim]
//! x ─blocks(e0, text, RoPE)─► LN·(1+scale)+shift (head table + e) ─Linear─► unpatchify ─► [B,16,F,H,W]
//! ```

use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use rainfusion::{SelfAttention, VideoLayout};

use crate::error::{ModelError, Result};
use crate::wan::block::{BlockContext, WanBlock};
use crate::wan::config::WanConfig;
use crate::wan::keys::{CheckpointKeys, KeyDialect};
use crate::wan::layers::{layer_norm, modulate, Linear, WeightSource};
use crate::wan::rope::WanRope;
use crate::weights::WeightFiles;

pub struct WanTransformer {
    cfg: WanConfig,
    dtype: DType,
    device: Device,
    /// Conv3d with kernel = stride = patch, as a linear map on flattened patches (c, pt, ph, pw).
    patch_embedding: Linear,
    time_linear_1: Linear, // f32
    time_linear_2: Linear, // f32
    time_proj: Linear,     // f32, dim → 6·dim
    text_linear_1: Linear,
    text_linear_2: Linear,
    blocks: Vec<WanBlock>,
    /// Head modulation table [1, 2, dim] f32 (shift, scale), added to e (not e0).
    head_modulation: Tensor,
    head: Linear, // f32, dim → out·pt·ph·pw
    rope: WanRope,
    /// RoPE tables of the last token grid: the sampler calls forward ~100 times on one grid.
    rope_cache: Mutex<Option<RopeTables>>,
}

/// cos and sin tables ([L, head_dim/2] f32 each) for one token grid (frames, height, width).
type RopeTables = ([usize; 3], Tensor, Tensor);

impl std::fmt::Debug for WanTransformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WanTransformer")
            .field("cfg", &self.cfg)
            .field("dtype", &self.dtype)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl WanTransformer {
    /// Loads the transformer from a checkpoint in any of the three key dialects (diffusers,
    /// original Wan, ComfyUI-prefixed), detected from the key names. Stored f32/bf16/f16 weights
    /// are cast: matmul weights to `dtype`, norms, tables and the time path and head to f32.
    pub fn load(
        files: &Arc<WeightFiles>,
        cfg: &WanConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(ModelError::InvalidInput(format!(
                "run dtype {dtype:?} is not supported (use f32, bf16 or f16)"
            )));
        }
        let keys = CheckpointKeys::detect(files)?;
        let src = WeightSource::new(files.clone(), keys.key_map(), device.clone());
        Self::build(&src, cfg, dtype, device)
    }

    /// A transformer of `cfg`'s shape with random weights drawn on `device` (see
    /// [`crate::weights::RandomWeights`]): for benchmarks at the real size without a checkpoint.
    pub fn random(cfg: &WanConfig, dtype: DType, device: &Device) -> Result<Self> {
        cfg.validate().map_err(ModelError::InvalidInput)?;
        Self::build(&WeightSource::random(device.clone()), cfg, dtype, device)
    }

    fn build(src: &WeightSource, cfg: &WanConfig, dtype: DType, device: &Device) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(ModelError::InvalidInput(format!(
                "run dtype {dtype:?} is not supported (use f32, bf16 or f16)"
            )));
        }
        let dim = cfg.dim();
        let f32 = DType::F32;

        let [pt, ph, pw] = cfg.patch_size;
        let patch_weight = src
            .get(
                "patch_embedding.weight",
                &[dim, cfg.in_channels, pt, ph, pw],
                dtype,
            )?
            .reshape((dim, cfg.patch_in_features()))?;
        let patch_bias = src.get("patch_embedding.bias", &[dim], dtype)?;

        let blocks = (0..cfg.num_layers)
            .map(|i| WanBlock::load(src, i, cfg, dtype))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            dtype,
            device: device.clone(),
            patch_embedding: Linear::from_parts(patch_weight, patch_bias),
            time_linear_1: src.linear(
                "condition_embedder.time_embedder.linear_1",
                cfg.freq_dim,
                dim,
                f32,
            )?,
            time_linear_2: src.linear(
                "condition_embedder.time_embedder.linear_2",
                dim,
                dim,
                f32,
            )?,
            time_proj: src.linear("condition_embedder.time_proj", dim, 6 * dim, f32)?,
            text_linear_1: src.linear(
                "condition_embedder.text_embedder.linear_1",
                cfg.text_dim,
                dim,
                dtype,
            )?,
            text_linear_2: src.linear(
                "condition_embedder.text_embedder.linear_2",
                dim,
                dim,
                dtype,
            )?,
            blocks,
            head_modulation: src.get("scale_shift_table", &[1, 2, dim], f32)?,
            head: src.linear("proj_out", dim, cfg.patch_out_features(), f32)?,
            rope: WanRope::new(cfg.head_dim, cfg.rope_theta),
            rope_cache: Mutex::new(None),
        })
    }

    /// Opens a transformer from a directory (diffusers `transformer/` or an original Wan checkpoint
    /// directory, with its config.json) or a single safetensors / shard-index file. Without a
    /// usable config.json the config is inferred from the tensor shapes (head_dim 128 assumed).
    pub fn open(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let files = Arc::new(WeightFiles::open(path)?);
        let config_path = if path.is_dir() {
            Some(path.join("config.json"))
        } else {
            path.parent().map(|d| d.join("config.json"))
        };
        let from_file = match config_path.filter(|p| p.is_file()) {
            // Next to a single file the config may belong to something else: only use it if it is ours.
            Some(p) if path.is_dir() => Some(WanConfig::from_json_file(&p)?),
            Some(p) => WanConfig::from_json_file(&p).ok(),
            None => None,
        };
        let cfg = match from_file {
            Some(cfg) => cfg,
            None => {
                let keys = CheckpointKeys::detect(&files)?;
                WanConfig::infer(&files, &keys.prefix, keys.dialect == KeyDialect::Original)?
            }
        };
        Self::load(&files, &cfg, dtype, device)
    }

    pub fn config(&self) -> &WanConfig {
        &self.cfg
    }

    /// The run dtype of the matmuls (the residual stream is always f32).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// latents [B, in_channels, F, H, W] (F, H, W multiples of the patch size), timesteps [B] (or
    /// [1], shared) as in 0..1000, context [B, Lt, text_dim] (any Lt; the pipeline pads to 512)
    /// → velocity [B, out_channels, F, H, W] f32. Self-attention is delegated to `attention`.
    pub fn forward(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        attention: &mut dyn SelfAttention,
    ) -> Result<Tensor> {
        let (batch, grid) = self.check_inputs(latents, timesteps, context)?;
        let [f, h, w] = grid;
        let latents = latents.to_device(&self.device)?;
        let context = context.to_device(&self.device)?;

        // Patch embedding: [B, C, F, H, W] → [B, L, dim] f32.
        let patches = self.patchify(&latents.to_dtype(self.dtype)?, grid)?;
        let x = self
            .patch_embedding
            .forward(&patches)?
            .to_dtype(DType::F32)?;

        // Time path, all f32: e [B, dim] for the head, e0 [B, 6, dim] for the blocks.
        let sinusoid = self.timestep_sinusoid(timesteps, batch)?;
        let e = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&sinusoid)?.silu()?)?;
        let e0 = self
            .time_proj
            .forward(&e.silu()?)?
            .reshape((batch, 6, self.cfg.dim()))?;

        // Text: [B, Lt, text_dim] → [B, Lt, dim] in the run dtype.
        let text = self
            .text_linear_2
            .forward(&self.text_linear_1.forward(&context)?.gelu()?)?;

        let (rope_cos, rope_sin) = self.rope_tables(grid)?;
        let ctx = BlockContext {
            time_modulation: &e0,
            text: &text,
            rope_cos: &rope_cos,
            rope_sin: &rope_sin,
            layout: VideoLayout::new(f, h, w),
        };
        let mut x = x;
        for block in &self.blocks {
            x = block.forward(&x, &ctx, attention)?;
        }

        // Head: modulated LayerNorm with (shift, scale) = head table + e, then a linear to patches.
        let m = self.head_modulation.broadcast_add(&e.unsqueeze(1)?)?; // [B, 2, dim]
        let (shift, scale) = (m.narrow(1, 0, 1)?, m.narrow(1, 1, 1)?);
        let x = modulate(&layer_norm(&x, self.cfg.eps)?, &shift, &scale)?;
        let out = self.head.forward(&x)?; // [B, L, out·pt·ph·pw] f32
        self.unpatchify(&out, grid)
    }

    /// RoPE tables for `grid`, from the cache when the grid is the last one seen.
    fn rope_tables(&self, grid: [usize; 3]) -> Result<(Tensor, Tensor)> {
        // A poisoned lock only means another thread panicked mid-update; the cache is rebuilt.
        let mut cache = self.rope_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached, cos, sin)) = cache.as_ref() {
            if *cached == grid {
                return Ok((cos.clone(), sin.clone()));
            }
        }
        let [f, h, w] = grid;
        let (cos, sin) = self.rope.tables(f, h, w, &self.device)?;
        *cache = Some((grid, cos.clone(), sin.clone()));
        Ok((cos, sin))
    }

    /// Checks shapes; returns the batch size and the token grid (frames, height, width).
    fn check_inputs(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
    ) -> Result<(usize, [usize; 3])> {
        let bad = |msg: String| Err(ModelError::InvalidInput(msg));
        let cfg = &self.cfg;
        let Ok((b, c, frames, height, width)) = latents.dims5() else {
            return bad(format!(
                "latents must be [B, {}, F, H, W], got {:?}",
                cfg.in_channels,
                latents.dims()
            ));
        };
        if c != cfg.in_channels {
            return bad(format!(
                "latents have {c} channels, the model expects {}",
                cfg.in_channels
            ));
        }
        let [pt, ph, pw] = cfg.patch_size;
        if b == 0
            || frames == 0
            || height == 0
            || width == 0
            || frames % pt != 0
            || height % ph != 0
            || width % pw != 0
        {
            return bad(format!(
                "latent grid {frames}×{height}×{width} (batch {b}) must be non-empty multiples of the patch size {:?}",
                cfg.patch_size
            ));
        }
        if timesteps.rank() != 1 || !(timesteps.dim(0)? == b || timesteps.dim(0)? == 1) {
            return bad(format!(
                "timesteps must be [{b}] or [1], got {:?}",
                timesteps.dims()
            ));
        }
        match context.dims3() {
            Ok((cb, lt, td)) if cb == b && lt > 0 && td == cfg.text_dim => {}
            _ => {
                return bad(format!(
                    "context must be [{b}, Lt, {}], got {:?}",
                    cfg.text_dim,
                    context.dims()
                ))
            }
        }
        for (name, t) in [
            ("latents", latents),
            ("timesteps", timesteps),
            ("context", context),
        ] {
            if !t.dtype().is_float() {
                return bad(format!(
                    "{name} must be a float tensor, got {:?}",
                    t.dtype()
                ));
            }
        }
        Ok((b, [frames / pt, height / ph, width / pw]))
    }

    /// [B, freq_dim] f32: [cos(t·ω_i), sin(t·ω_i)], ω_i = 10000^(−i/half), cos first. Computed in
    /// f32 like diffusers (the original uses f64; the two differ by ~1e-5 relative).
    fn timestep_sinusoid(&self, timesteps: &Tensor, batch: usize) -> Result<Tensor> {
        let half = self.cfg.freq_dim / 2;
        let log_base = -(10_000f32.ln());
        let freqs: Vec<f32> = (0..half)
            .map(|i| (log_base * i as f32 / half as f32).exp())
            .collect();
        let t: Vec<f32> = timesteps.to_dtype(DType::F32)?.to_vec1()?;
        let mut out = Vec::with_capacity(batch * 2 * half);
        for b in 0..batch {
            let t = if t.len() == 1 { t[0] } else { t[b] };
            out.extend(freqs.iter().map(|f| (t * f).cos()));
            out.extend(freqs.iter().map(|f| (t * f).sin()));
        }
        Ok(Tensor::from_vec(out, (batch, 2 * half), &self.device)?)
    }

    /// [B, C, F, H, W] → [B, f·h·w, C·pt·ph·pw], tokens in (f, h, w) raster order, each patch
    /// flattened as (c, pt, ph, pw) to match the Conv3d weight layout.
    fn patchify(&self, latents: &Tensor, [f, h, w]: [usize; 3]) -> Result<Tensor> {
        let (b, c, ..) = latents.dims5()?;
        let [pt, ph, pw] = self.cfg.patch_size;
        let x = latents.reshape(vec![b, c, f, pt, h, ph, w, pw])?;
        let x = x.permute(vec![0, 2, 4, 6, 1, 3, 5, 7])?.contiguous()?; // [B, f, h, w, C, pt, ph, pw]
        Ok(x.reshape((b, f * h * w, c * pt * ph * pw))?)
    }

    /// [B, L, pt·ph·pw·C] with each token's values ordered (pt, ph, pw, c) → [B, C, F, H, W].
    fn unpatchify(&self, tokens: &Tensor, [f, h, w]: [usize; 3]) -> Result<Tensor> {
        let (b, ..) = tokens.dims3()?;
        let [pt, ph, pw] = self.cfg.patch_size;
        let c = self.cfg.out_channels;
        let x = tokens.reshape(vec![b, f, h, w, pt, ph, pw, c])?;
        let x = x.permute(vec![0, 7, 1, 4, 2, 5, 3, 6])?.contiguous()?; // [B, C, f, pt, h, ph, w, pw]
        Ok(x.reshape((b, c, f * pt, h * ph, w * pw))?)
    }
}
