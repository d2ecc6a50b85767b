//! `HunyuanVideo15Transformer`: latents (+ condition latents and mask), timestep, the Qwen prompt
//! states, the ByT5 glyph states and (image-to-video) SigLIP image tokens in, velocity out.

use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, D};
use rainfusion::{DenseAttention, SelfAttention, VideoLayout};

use crate::error::{ModelError, Result};
use crate::hunyuan15::transformer::block::{BlockContext, DualStreamBlock};
use crate::hunyuan15::transformer::config::HunyuanVideo15Config;
use crate::hunyuan15::transformer::embeddings::{
    timestep_features, ConditionType, ConditionTypeEmbedding, GlyphProjection, ImageProjection,
    PatchEmbedding, TimestepMlp,
};
use crate::hunyuan15::transformer::packing::{pack, valid_positions, Rows};
use crate::hunyuan15::transformer::refiner::TokenRefiner;
use crate::hunyuan15::transformer::rope::HunyuanRope;
use crate::queue_drain::{drain_between_blocks, DrainDefault};
use crate::wan::block_store::{block_source, BlockPlacement, BlockStore};
use crate::wan::layers::{layer_norm, modulate, Linear, WeightSource};
use crate::weights::{KeyMap, WeightFiles};

/// Epsilon of the output head's LayerNorm.
const HEAD_NORM_EPS: f64 = 1e-6;

/// The inputs of one forward pass. B is the batch (e.g. 2 for a conditional / unconditional pair).
#[derive(Debug, Clone, Copy)]
pub struct HunyuanVideo15Inputs<'a> {
    /// `[B, in_channels, F, H, W]`: noisy latents, condition latents and the condition mask
    /// concatenated on channels (32 + 32 + 1 at the real size; text-to-video: the last 33 zero).
    pub latents: &'a Tensor,
    /// `[B]` or `[1]` (shared), in 0..1000.
    pub timesteps: &'a Tensor,
    /// Qwen2.5-VL prompt states `[B, Lp, text_embed_dim]`.
    pub prompt: &'a Tensor,
    /// `[B, Lp]`, 1 on prompt tokens and 0 on padding; each sample needs at least one token.
    pub prompt_mask: &'a Tensor,
    /// ByT5 glyph-text states `[B, Lg, text_embed_2_dim]` (zeros when the prompt quotes no text).
    pub glyph: &'a Tensor,
    /// `[B, Lg]`, 1 on glyph tokens and 0 on padding (all 0 when there is no glyph text).
    pub glyph_mask: &'a Tensor,
    /// Image-to-video: SigLIP tokens `[B or 1, Li, image_embed_dim]`. `None` (or all zeros, as
    /// diffusers' text-to-video pipeline passes) is text-to-video: the image tokens are then
    /// padding the reference masks out, and vdit drops them.
    pub image: Option<&'a Tensor>,
}

/// The HunyuanVideo 1.5 diffusion transformer (`HunyuanVideo15Transformer3DModel`).
///
/// ```text
/// latents [B,C,F,H,W] ─patches─► video [B,Lv,dim] (f32 residual)
/// t ─sinusoid─► Linear·SiLU·Linear ─► temb [B,dim]
/// prompt [B,Lp,3584] ─pack valid─► token refiner(t, mask) ─► + cond_type[0]
/// glyph [B,Lg,1472] ─LN·MLP─► + cond_type[1];  image [B,Li,1152] ─LN·MLP·LN─► + cond_type[2]
/// text = per sample [valid image; valid glyph; valid prompt], zero-padded (mask) to the longest
/// (video, text) ─dual-stream blocks(temb, RoPE on video, joint masked attention)─► video
/// video ─LN·(1+scale)+shift (temb)─► Linear ─unpatch─► velocity [B,out,F,H,W] f32
/// ```
pub struct HunyuanVideo15Transformer {
    cfg: HunyuanVideo15Config,
    dtype: DType,
    device: Device,
    patch: PatchEmbedding,
    time: TimestepMlp,
    refiner: TokenRefiner,
    glyph: GlyphProjection,
    image: ImageProjection,
    condition_type: ConditionTypeEmbedding,
    /// On the device, or on the host and copied in one at a time (`--offload blocks`).
    blocks: BlockStore<DualStreamBlock>,
    /// `norm_out.linear`: SiLU(temb) → (scale, shift), f32.
    head_modulation: Linear,
    proj_out: Linear, // f32
    rope: HunyuanRope,
    /// RoPE tables of the last token grid: a sampler calls forward many times on one grid.
    rope_cache: Mutex<Option<([usize; 3], Tensor, Tensor)>>,
}

impl std::fmt::Debug for HunyuanVideo15Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HunyuanVideo15Transformer")
            .field("cfg", &self.cfg)
            .field("dtype", &self.dtype)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl HunyuanVideo15Transformer {
    /// Loads a diffusers `transformer/` folder (config.json + safetensors, sharded or not).
    /// Linear layers run in `dtype` (f32, bf16 or f16); norms, the time path, the modulation and
    /// the output head in f32.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg = HunyuanVideo15Config::from_json_file(&path.join("config.json"))?;
        let files = Arc::new(WeightFiles::open(path)?);
        Self::load_files(&files, &cfg, dtype, device)
    }

    /// [`Self::load`] from opened weight files and a config.
    pub fn load_files(
        files: &Arc<WeightFiles>,
        cfg: &HunyuanVideo15Config,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::load_placed(files, cfg, dtype, device, BlockPlacement::Resident)
    }

    /// [`Self::load_files`] with the dual-stream blocks placed as `placement` says: streamed,
    /// they are read into host memory and each is copied to `device` just before it runs
    /// (as the Wan transformer's, see [`crate::wan::block_store`]).
    pub fn load_placed(
        files: &Arc<WeightFiles>,
        cfg: &HunyuanVideo15Config,
        dtype: DType,
        device: &Device,
        placement: BlockPlacement,
    ) -> Result<Self> {
        let src = WeightSource::new(files.clone(), KeyMap::identity(), device.clone());
        Self::build(&src, cfg, dtype, device, placement)
    }

    /// Where the dual-stream blocks live.
    pub fn block_placement(&self) -> BlockPlacement {
        self.blocks.placement()
    }

    /// Blocks copied to the compute device since load (streamed placement only).
    pub fn block_fetches(&self) -> u64 {
        self.blocks.fetches()
    }

    /// A transformer of `cfg`'s shape with random weights drawn on `device` (see
    /// [`crate::weights::RandomWeights`]): for benchmarks at the real size without a checkpoint.
    pub fn random(cfg: &HunyuanVideo15Config, dtype: DType, device: &Device) -> Result<Self> {
        Self::random_placed(cfg, dtype, device, BlockPlacement::Resident)
    }

    /// [`Self::random`] with the blocks placed as `placement` says (streamed: on the host).
    pub fn random_placed(
        cfg: &HunyuanVideo15Config,
        dtype: DType,
        device: &Device,
        placement: BlockPlacement,
    ) -> Result<Self> {
        Self::build(
            &WeightSource::random(device.clone()),
            cfg,
            dtype,
            device,
            placement,
        )
    }

    fn build(
        src: &WeightSource,
        cfg: &HunyuanVideo15Config,
        dtype: DType,
        device: &Device,
        placement: BlockPlacement,
    ) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(ModelError::InvalidInput(format!(
                "run dtype {dtype:?} is not supported (use f32, bf16 or f16)"
            )));
        }
        cfg.validate().map_err(ModelError::InvalidInput)?;
        if cfg.use_meanflow {
            return Err(ModelError::InvalidInput(
                "MeanFlow transformers (use_meanflow: the super-resolution models, with a second \
                 timestep) are not supported yet"
                    .into(),
            ));
        }
        let dim = cfg.dim();
        let axes = [
            cfg.rope_axes_dim[0],
            cfg.rope_axes_dim[1],
            cfg.rope_axes_dim[2],
        ];
        Ok(Self {
            cfg: cfg.clone(),
            dtype,
            device: device.clone(),
            patch: PatchEmbedding::load(src, cfg, dtype)?,
            time: TimestepMlp::load(src, "time_embed.timestep_embedder", dim)?,
            refiner: TokenRefiner::load(src, cfg, dtype)?,
            glyph: GlyphProjection::load(src, cfg, dtype)?,
            image: ImageProjection::load(src, cfg, dtype)?,
            condition_type: ConditionTypeEmbedding::load(src, dim)?,
            blocks: {
                // streamed blocks are read onto the host directly, never through the device
                let block_src = block_source(src, placement, device);
                let blocks = (0..cfg.num_layers)
                    .map(|i| DualStreamBlock::load(&block_src, i, cfg, dtype))
                    .collect::<Result<_>>()?;
                BlockStore::new(placement, blocks, device)
            },
            head_modulation: src.linear("norm_out.linear", dim, 2 * dim, DType::F32)?,
            proj_out: src.linear("proj_out", dim, cfg.patch_out_features(), DType::F32)?,
            rope: HunyuanRope::new(axes, cfg.rope_theta),
            rope_cache: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &HunyuanVideo15Config {
        &self.cfg
    }

    /// The run dtype of the linear layers (the residual streams are always f32).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One pass → velocity `[B, out_channels, F, H, W]` f32, with dense joint attention over the
    /// video and the valid text tokens (see [`crate::hunyuan15::transformer`]).
    pub fn forward(&self, inputs: &HunyuanVideo15Inputs) -> Result<Tensor> {
        self.forward_with_attention(inputs, &mut DenseAttention)
    }

    /// [`forward`](Self::forward) with each block's joint attention delegated to `attention`
    /// (RainFusion's policy: sparse video blocks, dense text band, padded text excluded).
    pub fn forward_with_attention(
        &self,
        inputs: &HunyuanVideo15Inputs,
        attention: &mut dyn SelfAttention,
    ) -> Result<Tensor> {
        let (batch, grid) = self.check_inputs(inputs)?;
        let dev = &self.device;
        let latents = inputs.latents.to_device(dev)?;
        let mut video = self.patch.forward(&latents, self.dtype)?; // [B, Lv, dim] f32

        let t: Vec<f32> = inputs.timesteps.to_dtype(DType::F32)?.to_vec1()?;
        let t: Vec<f32> = (0..batch)
            .map(|b| t[if t.len() == 1 { 0 } else { b }])
            .collect();
        let features = timestep_features(&t, dev)?; // [B, 256]
        let temb = self.time.forward(&features)?; // [B, dim]

        // Prompt: packed to its valid tokens, refined, tagged.
        let prompt_keep = valid_positions(inputs.prompt_mask)?;
        if let Some(b) = prompt_keep.iter().position(Vec::is_empty) {
            return Err(ModelError::InvalidInput(format!(
                "prompt_mask of sample {b} has no valid token (the reference divides by zero)"
            )));
        }
        let prompt = inputs.prompt.to_device(dev)?;
        let prompt = pack(&[Rows {
            tokens: &prompt,
            keep: &prompt_keep,
        }])?;
        let refined = self
            .refiner
            .forward(&prompt.tokens, prompt.valid.as_ref(), &features)?;
        let refined = self.condition_type.tag(&refined, ConditionType::Prompt)?;

        let glyph = self.glyph.forward(&inputs.glyph.to_device(dev)?)?;
        let glyph = self.condition_type.tag(&glyph, ConditionType::Glyph)?;
        let glyph_keep = valid_positions(inputs.glyph_mask)?;

        let image = match inputs.image {
            Some(image)
                if image
                    .abs()?
                    .max_all()?
                    .to_dtype(DType::F32)?
                    .to_scalar::<f32>()?
                    != 0.0 =>
            {
                let tokens = self.image.forward(&image.to_device(dev)?)?;
                let (b, li, dim) = tokens.dims3()?;
                let tokens = if b == batch {
                    tokens
                } else {
                    tokens.broadcast_as((batch, li, dim))?.contiguous()?
                };
                Some(self.condition_type.tag(&tokens, ConditionType::Image)?)
            }
            _ => None,
        };
        let image_keep: Vec<Vec<u32>> = match &image {
            Some(tokens) => vec![(0..tokens.dim(1)? as u32).collect(); batch],
            None => Vec::new(),
        };
        // The refined prompt is already packed: sample b's valid rows are its first ones.
        let prompt_rows: Vec<Vec<u32>> = prompt
            .counts
            .iter()
            .map(|&c| (0..c as u32).collect())
            .collect();
        let mut streams = Vec::with_capacity(3);
        if let Some(tokens) = &image {
            streams.push(Rows {
                tokens,
                keep: &image_keep,
            });
        }
        streams.push(Rows {
            tokens: &glyph,
            keep: &glyph_keep,
        });
        streams.push(Rows {
            tokens: &refined,
            keep: &prompt_rows,
        });
        let text = pack(&streams)?;

        let (rope_cos, rope_sin) = self.rope_tables(grid)?;
        let ctx = BlockContext {
            temb: &temb,
            rope_cos: &rope_cos,
            rope_sin: &rope_sin,
            layout: VideoLayout {
                text_tokens: text.tokens.dim(1)?,
                ..VideoLayout::new(grid[0], grid[1], grid[2])
            },
            text_valid: text.valid.as_ref(),
        };
        let mut text_tokens = text.tokens;
        // Off unless VDIT_BLOCK_SYNC=1: at 1280×720×121, batch 1, on the H100 it kept the same peak
        // (37.27 → 37.36 GiB of device memory in use) and cost time (17.9 → 20.2 s a forward;
        // scripts/gpu/NOTES.md, "Stored weights dequantised on the device").
        let drain = drain_between_blocks(&video, DrainDefault::Off);
        for layer in 0..self.blocks.len() {
            // streamed: this block's copy is freed at the end of the iteration
            let block = self.blocks.fetch(layer)?;
            let (v, t) = block.forward(&video, &text_tokens, &ctx, layer, attention)?;
            video = v;
            text_tokens = t;
            if drain {
                video.device().synchronize()?;
            }
        }

        // Output head: AdaLN (scale first, then shift) and the projection.
        let m = self.head_modulation.forward(&temb.silu()?)?.unsqueeze(1)?; // [B, 1, 2·dim]
        let parts = m.chunk(2, D::Minus1)?;
        let x = modulate(&layer_norm(&video, HEAD_NORM_EPS)?, &parts[1], &parts[0])?;
        let out = self.proj_out.forward(&x)?; // [B, Lv, out·pt·ph·pw] f32
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
        let (cos, sin) = self.rope.tables(grid, &self.device)?;
        *cache = Some((grid, cos.clone(), sin.clone()));
        Ok((cos, sin))
    }

    /// `[B, L, C·pt·ph·pw]`, each token's values ordered (c, pt, ph, pw) → `[B, C, F, H, W]`.
    fn unpatchify(&self, tokens: &Tensor, [f, h, w]: [usize; 3]) -> Result<Tensor> {
        let b = tokens.dim(0)?;
        let [pt, ph, pw] = self.cfg.patch();
        let c = self.cfg.out_channels;
        let x = tokens
            .reshape(vec![b, f, h, w, c, pt, ph, pw])?
            .permute(vec![0, 4, 1, 5, 2, 6, 3, 7])? // [B, C, f, pt, h, ph, w, pw]
            .contiguous()?;
        Ok(x.reshape((b, c, f * pt, h * ph, w * pw))?)
    }

    /// Checks every input's shape; returns the batch and the token grid (frames, rows, columns).
    fn check_inputs(&self, inputs: &HunyuanVideo15Inputs) -> Result<(usize, [usize; 3])> {
        let bad = |msg: String| Err(ModelError::InvalidInput(msg));
        let cfg = &self.cfg;
        let Ok((b, c, frames, height, width)) = inputs.latents.dims5() else {
            return bad(format!(
                "latents must be [B, {}, F, H, W], got {:?}",
                cfg.in_channels,
                inputs.latents.dims()
            ));
        };
        let [pt, ph, pw] = cfg.patch();
        if c != cfg.in_channels
            || b == 0
            || frames == 0
            || height == 0
            || width == 0
            || frames % pt != 0
            || height % ph != 0
            || width % pw != 0
        {
            return bad(format!(
                "latents {:?}: expected [B, {}, F, H, W] with F, H, W non-zero multiples of the \
                 patch {:?}",
                inputs.latents.dims(),
                cfg.in_channels,
                cfg.patch()
            ));
        }
        match inputs.timesteps.dims() {
            [n] if *n == b || *n == 1 => {}
            other => return bad(format!("timesteps must be [{b}] or [1], got {other:?}")),
        }
        let stream = |name: &str, x: &Tensor, mask: &Tensor, width: usize| -> Result<()> {
            match (x.dims3(), mask.dims2()) {
                (Ok((xb, l, xw)), Ok((mb, ml))) if xb == b && xw == width && mb == b && ml == l => {
                    Ok(())
                }
                _ => Err(ModelError::InvalidInput(format!(
                    "{name} must be [{b}, L, {width}] with a [{b}, L] mask, got {:?} and {:?}",
                    x.dims(),
                    mask.dims()
                ))),
            }
        };
        stream(
            "prompt",
            inputs.prompt,
            inputs.prompt_mask,
            cfg.text_embed_dim,
        )?;
        stream(
            "glyph",
            inputs.glyph,
            inputs.glyph_mask,
            cfg.text_embed_2_dim,
        )?;
        if let Some(image) = inputs.image {
            match image.dims3() {
                Ok((ib, li, iw)) if (ib == b || ib == 1) && li > 0 && iw == cfg.image_embed_dim => {
                }
                _ => {
                    return bad(format!(
                        "image must be [{b} or 1, Li, {}], got {:?}",
                        cfg.image_embed_dim,
                        image.dims()
                    ))
                }
            }
        }
        Ok((b, [frames / pt, height / ph, width / pw]))
    }
}
