//! The Wan diffusion transformer (`WanModel` / `WanTransformer3DModel`) of Wan2.1 and Wan2.2
//! (T2V-A14B experts, TI2V-5B): latents, timesteps and text in, flow velocity out.
//!
//! ```text
//! latents [B,C,F,H,W] ─patchify─► [B,L,C·pt·ph·pw] ─patch linear─► x [B,L,dim] (f32 residual)
//! timesteps [B] ─sinusoid─► time MLP ─► e [B,dim] ─SiLU·Linear─► e0 [B,6,dim]      (f32)
//!   or [B,L] (one per token, Wan2.2 TI2V)  ─► e [B,L,dim], e0 [B,L,6,dim] (made per distinct t)
//! context [B,Lt,text_dim] ─Linear·gelu_tanh·Linear─► text [B,Lt,dim]
//! image [B,Li,image_dim] (Wan2.1 I2V/FLF2V) ─(+pos)·LN·Linear·gelu·Linear·LN─► image [B,Li,dim]
//! x ─blocks(e0, text, RoPE)─► LN·(1+scale)+shift (head table + e) ─Linear─► unpatchify ─► [B,C',F,H,W]
//! ```

use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use rainfusion::{SelfAttention, VideoLayout};

use crate::error::{ModelError, Result};
use crate::lora::LoraSet;
use crate::parallel::split::{HeadSplit, SequenceSplit};
use crate::parallel::ulysses::UlyssesAttention;
use crate::parallel::Communicator;
use crate::queue_drain::{drain_between_blocks, DrainDefault, BLOCK_SYNC_MIN_STREAM_BYTES};
use crate::wan::block::{BlockContext, TimeModulation, WanBlock};
use crate::wan::block_store::{block_source, BlockPlacement, BlockStore};
use crate::wan::config::{has_image_embedder, WanConfig};
use crate::wan::image_embedding::ImageEmbedding;
use crate::wan::keys::{CheckpointKeys, KeyDialect};
use crate::wan::layers::{layer_norm, modulate, Linear, WeightSource};
use crate::wan::rope::WanRope;
use crate::weights::{RandomWeightFormat, WeightFiles};

pub use crate::wan::block_store::STREAM_FP8_ENV;

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
    /// Wan2.1 I2V / FLF2V: CLIP image tokens → model width; `None` without image input.
    image_embedding: Option<ImageEmbedding>,
    /// The blocks, on the compute device or streamed from the host (see [`BlockPlacement`]).
    blocks: BlockStore,
    /// Head modulation table [1, 2, dim] f32 (shift, scale), added to e (not e0).
    head_modulation: Tensor,
    head: Linear, // f32, dim → out·pt·ph·pw
    rope: WanRope,
    /// RoPE tables of the last token grid: the sampler calls forward ~100 times on one grid.
    rope_cache: Mutex<Option<RopeTables>>,
}

/// cos and sin tables ([L, head_dim/2] f32 each) for one token grid (frames, height, width).
type RopeTables = ([usize; 3], Tensor, Tensor);

/// The time path's two outputs: e for the output head and e0 for the blocks.
struct TimeEmbedding {
    /// Per sample: e [B, dim] f32. Per token: e for each distinct timestep, [K, dim] f32 (the
    /// token → timestep index is in `modulation`).
    e: Tensor,
    modulation: TimeModulation,
}

impl std::fmt::Debug for WanTransformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WanTransformer")
            .field("cfg", &self.cfg)
            .field("dtype", &self.dtype)
            .field("device", &self.device)
            .field("blocks", &self.blocks.placement())
            .finish_non_exhaustive()
    }
}

impl WanTransformer {
    /// Loads the transformer from a checkpoint in any of the three key dialects (diffusers,
    /// original Wan, ComfyUI-prefixed), detected from the key names. Stored f32/bf16/f16 weights
    /// are cast: matmul weights to `dtype`, norms, tables and the time path and head to f32.
    /// From a GGUF file, block-quantised linear weights stay quantised (candle's quantised
    /// matmul, output in `dtype`); every other GGUF tensor is dequantised and cast as above.
    pub fn load(
        files: &Arc<WeightFiles>,
        cfg: &WanConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::load_with_lora(files, cfg, dtype, device, None)
    }

    /// [`Self::load`] with LoRA updates (made against [`crate::wan::keys::lora_targets`] of
    /// `cfg`), merged or kept apart as the set's mode says.
    pub fn load_with_lora(
        files: &Arc<WeightFiles>,
        cfg: &WanConfig,
        dtype: DType,
        device: &Device,
        lora: Option<Arc<LoraSet>>,
    ) -> Result<Self> {
        Self::load_placed(files, cfg, dtype, device, lora, BlockPlacement::Resident)
    }

    /// [`Self::load_with_lora`] with the blocks placed as `placement` says: streamed, every
    /// block's weights are read straight into host memory (never to `device` first) and copied
    /// to `device` one block at a time during the forward pass.
    pub fn load_placed(
        files: &Arc<WeightFiles>,
        cfg: &WanConfig,
        dtype: DType,
        device: &Device,
        lora: Option<Arc<LoraSet>>,
        placement: BlockPlacement,
    ) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(ModelError::InvalidInput(format!(
                "run dtype {dtype:?} is not supported (use f32, bf16 or f16)"
            )));
        }
        let keys = CheckpointKeys::detect(files)?;
        cfg.validate().map_err(ModelError::InvalidInput)?;
        // Without this check a checkpoint with an image path would load under a text-to-video
        // config with its image weights silently unused (both have every other tensor).
        match (cfg.has_image_input(), has_image_embedder(files)) {
            (false, true) => {
                return Err(ModelError::UnsupportedCheckpoint {
                    files: files.files_description(),
                    reason: "the checkpoint has image-to-video weights (an image embedder and \
                             image cross-attention: Wan2.1 I2V or FLF2V) but the config has no \
                             image_dim; use the checkpoint's own config.json"
                        .into(),
                })
            }
            (true, false) => {
                return Err(ModelError::UnsupportedCheckpoint {
                    files: files.files_description(),
                    reason: format!(
                        "the config describes image cross-attention (image_dim {:?}) but the \
                         checkpoint has no image embedder; Wan2.2 I2V-A14B has none, and its \
                         original config.json says model_type \"i2v\" like Wan2.1 I2V's: read \
                         it with WanConfig::from_json_file_for or WanTransformer::open",
                        cfg.image_dim
                    ),
                })
            }
            _ => {}
        }
        let src = WeightSource::new(files.clone(), keys.key_map(), device.clone()).with_lora(lora);
        Self::build(&src, cfg, dtype, device, placement)
    }

    /// A transformer of `cfg`'s shape with random weights drawn on `device` (see
    /// [`crate::weights::RandomWeights`]): for benchmarks at the real size without a checkpoint.
    pub fn random(cfg: &WanConfig, dtype: DType, device: &Device) -> Result<Self> {
        Self::random_placed(
            cfg,
            dtype,
            device,
            RandomWeightFormat::RunDtype,
            BlockPlacement::Resident,
        )
    }

    /// [`Self::random`] with the linear weights stored as `format` says and the blocks placed
    /// as `placement` says (streamed: each tensor drawn on `device`, then moved to the host, one
    /// at a time): for benchmarks of each weight format and of block streaming.
    pub fn random_placed(
        cfg: &WanConfig,
        dtype: DType,
        device: &Device,
        format: RandomWeightFormat,
        placement: BlockPlacement,
    ) -> Result<Self> {
        cfg.validate().map_err(ModelError::InvalidInput)?;
        let src = WeightSource::random_stored(device.clone(), format);
        Self::build(&src, cfg, dtype, device, placement)
    }

    fn build(
        src: &WeightSource,
        cfg: &WanConfig,
        dtype: DType,
        device: &Device,
        placement: BlockPlacement,
    ) -> Result<Self> {
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

        // Streamed blocks are read onto their home device directly: a 14B model's blocks never
        // pass through the compute device at load.
        let block_src = block_source(src, placement, device);
        let blocks = (0..cfg.num_layers)
            .map(|i| WanBlock::load(&block_src, i, cfg, dtype))
            .collect::<Result<Vec<_>>>()?;
        let blocks = BlockStore::new(placement, blocks, device);
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
            image_embedding: ImageEmbedding::load(src, cfg, dtype)?,
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
        let cfg = Self::config_for(path, &files)?;
        Self::load(&files, &cfg, dtype, device)
    }

    /// The config of the transformer at `path` (whose weights are `files`): its config.json, or
    /// one inferred from the tensor shapes (see [`Self::open`]).
    pub fn config_for(path: &Path, files: &WeightFiles) -> Result<WanConfig> {
        let config_path = if path.is_dir() {
            Some(path.join("config.json"))
        } else {
            path.parent().map(|d| d.join("config.json"))
        };
        let from_file = match config_path.filter(|p| p.is_file()) {
            // Next to a single file the config may belong to something else: only use it if it is ours.
            Some(p) if path.is_dir() => Some(WanConfig::from_json_file_for(&p, files)?),
            Some(p) => WanConfig::from_json_file_for(&p, files).ok(),
            None => None,
        };
        Ok(match from_file {
            Some(cfg) => cfg,
            None => {
                let keys = CheckpointKeys::detect(files)?;
                WanConfig::infer(files, &keys.prefix, keys.dialect == KeyDialect::Original)?
            }
        })
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

    /// Where the blocks live (see [`BlockPlacement`]).
    pub fn block_placement(&self) -> BlockPlacement {
        self.blocks.placement()
    }

    /// Blocks copied from the host to the compute device since load (0 when resident): one per
    /// block per forward pass that ran the blocks.
    pub fn block_fetches(&self) -> u64 {
        self.blocks.fetches()
    }

    /// Whether streamed blocks are copied on a second CUDA stream, overlapped with the previous
    /// block's compute (false when resident, on the CPU, or with `VDIT_OFFLOAD_SYNC=1`).
    pub fn block_copies_overlapped(&self) -> bool {
        self.blocks.overlapped()
    }

    /// Latent channels the transformer reads (16 for Wan2.1 and the Wan2.2 A14B experts, 48 for
    /// Wan2.2 TI2V-5B): a pipeline checks its VAE against this.
    pub fn in_channels(&self) -> usize {
        self.cfg.in_channels
    }

    /// Latent channels of the velocity it returns.
    pub fn out_channels(&self) -> usize {
        self.cfg.out_channels
    }

    /// latents [B, in_channels, F, H, W] (F, H, W multiples of the patch size), timesteps in
    /// 0..1000, context [B, Lt, text_dim] (any Lt; the pipeline pads to 512) → velocity
    /// [B, out_channels, F, H, W] f32. Self-attention is delegated to `attention`. For models
    /// with image input (Wan2.1 I2V / FLF2V) use [`Self::forward_with_image`]; this is that with
    /// no image.
    ///
    /// The timesteps' rank picks the conditioning:
    /// - `[B]` (or `[1]`, shared): one timestep per sample, as Wan2.1 and the Wan2.2 A14B experts.
    /// - `[B, L]` (or `[1, L]`, shared): one per latent token (diffusers' `expand_timesteps`, used
    ///   by Wan2.2 TI2V-5B), with L = F/pt · H/ph · W/pw tokens in (frame, row, column) raster
    ///   order (see [`WanConfig::token_grid`]); e.g. t = 0 on the first latent frame's tokens
    ///   of an image-conditioned run. Every block's modulation and the head's shift and scale are
    ///   then per token; on CUDA the blocks run as candle ops instead of the fused kernels.
    pub fn forward(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        attention: &mut dyn SelfAttention,
    ) -> Result<Tensor> {
        self.forward_with_image(latents, timesteps, context, None, attention)
    }

    /// [`Self::forward`] with the image tokens of Wan2.1 I2V / FLF2V: `image` [B or 1, Li,
    /// image_dim], the CLIP vision tower's penultimate hidden states (Li = 257 for ViT-H/14 at
    /// 224²; FLF2V: the first image's tokens then the last image's, Li = `pos_embed_seq_len` =
    /// 514). A shared `[1, Li, image_dim]` serves the whole batch (e.g. a guidance pair). Required
    /// exactly when the config has `image_dim` (see [`WanConfig::has_image_input`]): Wan2.2 I2V
    /// and TI2V see the image only through the latents.
    pub fn forward_with_image(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        image: Option<&Tensor>,
        attention: &mut dyn SelfAttention,
    ) -> Result<Tensor> {
        let (batch, grid) = self.check_inputs(latents, timesteps, context)?;
        let [f, h, w] = grid;
        let context = context.to_device(&self.device)?;
        let x = self.embed_patches(latents, grid)?;

        // Time path, all f32: e for the head, e0 for the blocks, per sample or per token.
        let time = self.time_embedding(timesteps, batch, f * h * w)?;

        let x = self.run_blocks(x, &context, image, batch, grid, &time, attention, None)?;
        self.head_output(&x, HeadInputs { time, grid })
    }

    /// Patch embedding: latents `[B, C, F, H, W]` (any device) → tokens `[B, L, dim]` f32.
    fn embed_patches(&self, latents: &Tensor, grid: [usize; 3]) -> Result<Tensor> {
        let latents = latents.to_device(&self.device)?;
        let patches = self.patchify(&latents.to_dtype(self.dtype)?, grid)?;
        Ok(self
            .patch_embedding
            .forward(&patches)?
            .to_dtype(DType::F32)?)
    }

    /// [`Self::forward_with_image`] as one rank of a sequence-parallel group (Ulysses): every
    /// rank embeds the whole latent, keeps its range of the tokens through the blocks (with its
    /// rows of the RoPE tables), attends through [`UlyssesAttention`] around `attention`, and
    /// gathers the tokens again for the head. Every rank returns the whole velocity
    /// `[B, C', F, H, W]` f32; it equals the one-device forward up to the order of float sums.
    /// `comm.size()` must divide the heads; one timestep per sample (per-token timesteps,
    /// Wan2.2 TI2V, are not split yet).
    pub fn forward_sequence_parallel(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        image: Option<&Tensor>,
        attention: &mut dyn SelfAttention,
        comm: &dyn Communicator,
    ) -> Result<Tensor> {
        let (batch, grid) = self.check_inputs(latents, timesteps, context)?;
        let [f, h, w] = grid;
        let tokens = f * h * w;
        HeadSplit::new(self.cfg.num_heads, comm.size())?;
        let split = SequenceSplit::new(tokens, comm.size())?;
        let (start, len) = split.range(comm.rank());
        let context = context.to_device(&self.device)?;
        let x = self.embed_patches(latents, grid)?.narrow(1, start, len)?; // [B, L_r, dim]
        let time = self.time_embedding(timesteps, batch, tokens)?;
        if matches!(time.modulation, TimeModulation::PerToken { .. }) {
            return Err(ModelError::InvalidInput(
                "sequence parallelism takes one timestep per sample; per-token timesteps \
                 (Wan2.2 TI2V) are not split yet"
                    .into(),
            ));
        }
        let mut ulysses = UlyssesAttention::new(attention, comm, split);
        let x = self.run_blocks(
            x,
            &context,
            image,
            batch,
            grid,
            &time,
            &mut ulysses,
            Some((start, len)),
        )?;
        let x = Tensor::cat(&comm.all_gather(&x)?, 1)?; // [B, L, dim]
        self.head_output(&x, HeadInputs { time, grid })
    }

    /// The projected image tokens [B, Li, dim] (run dtype) for a model with image input, after
    /// checking that an image was given exactly when the model takes one.
    fn image_tokens(&self, image: Option<&Tensor>, batch: usize) -> Result<Option<Tensor>> {
        let bad = |msg: String| Err(ModelError::InvalidInput(msg));
        let (embedding, image) = match (&self.image_embedding, image) {
            (None, None) => return Ok(None),
            (None, Some(_)) => {
                return bad(
                    "this transformer takes no image embedding (no image_dim in its \
                            config; Wan2.2 I2V and TI2V take the image through the latents)"
                        .into(),
                )
            }
            (Some(_), None) => {
                return bad(format!(
                    "this transformer (image_dim {}) needs the image embedding: use \
                     forward_with_image with the CLIP vision tower's penultimate hidden states",
                    self.cfg.image_dim.unwrap_or_default()
                ))
            }
            (Some(embedding), Some(image)) => (embedding, image),
        };
        match image.dims3() {
            Ok((b, _, _)) if (b == batch || b == 1) && image.dtype().is_float() => {}
            _ => {
                return bad(format!(
                    "image embedding must be a float [{batch} or 1, Li, {}] tensor, got {:?} {:?}",
                    self.cfg.image_dim.unwrap_or_default(),
                    image.dtype(),
                    image.dims()
                ))
            }
        }
        let tokens = embedding.forward(&image.to_device(&self.device)?)?; // [b, Li, dim]
        let (b, rows, dim) = tokens.dims3()?;
        Ok(Some(if b == batch {
            tokens
        } else {
            tokens.broadcast_as((batch, rows, dim))?.contiguous()?
        }))
    }

    /// The time MLP and projection on `timesteps` ([B] / [1] per sample, [B, L] / [1, L] per
    /// token, checked by [`Self::check_inputs`]).
    fn time_embedding(
        &self,
        timesteps: &Tensor,
        batch: usize,
        tokens: usize,
    ) -> Result<TimeEmbedding> {
        let dim = self.cfg.dim();
        let embed = |values: &[f32]| -> Result<(Tensor, Tensor)> {
            let sinusoid = self.timestep_sinusoid(values)?; // [N, freq_dim]
            let e = self
                .time_linear_2
                .forward(&self.time_linear_1.forward(&sinusoid)?.silu()?)?; // [N, dim]
            let e0 = self
                .time_proj
                .forward(&e.silu()?)?
                .reshape((values.len(), 6, dim))?; // [N, 6, dim]
            Ok((e, e0))
        };
        let t = timesteps.to_dtype(DType::F32)?;
        if t.rank() == 1 {
            let t: Vec<f32> = t.to_vec1()?;
            let per_sample: Vec<f32> = (0..batch)
                .map(|b| t[if t.len() == 1 { 0 } else { b }])
                .collect();
            let (e, e0) = embed(&per_sample)?;
            return Ok(TimeEmbedding {
                e,
                modulation: TimeModulation::PerSample(e0),
            });
        }
        // Per token: embed each distinct value once (rows are independent, so this is exactly
        // the per-token computation) and keep, for each token, which value it has.
        let rows: Vec<Vec<f32>> = t.to_vec2()?;
        let mut distinct: Vec<f32> = Vec::new();
        let mut slot_of: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        let mut index: Vec<u32> = Vec::with_capacity(batch * tokens);
        for b in 0..batch {
            let row = &rows[if rows.len() == 1 { 0 } else { b }];
            for &value in row {
                let slot = *slot_of.entry(value.to_bits()).or_insert_with(|| {
                    distinct.push(value);
                    (distinct.len() - 1) as u32
                });
                index.push(slot);
            }
        }
        let (e, e0) = embed(&distinct)?;
        Ok(TimeEmbedding {
            e,
            modulation: TimeModulation::PerToken {
                values: e0,
                index: Tensor::from_vec(index, batch * tokens, &self.device)?,
                batch,
                tokens,
            },
        })
    }

    /// The output head's (shift, scale) = head table + e: [B, 1, dim] each per sample,
    /// [B, L, dim] each per token, f32.
    fn head_shift_scale(&self, time: &TimeEmbedding) -> Result<(Tensor, Tensor)> {
        let m = self.head_modulation.broadcast_add(&time.e.unsqueeze(1)?)?; // [B or K, 2, dim]
        match &time.modulation {
            TimeModulation::PerSample(_) => Ok((m.narrow(1, 0, 1)?, m.narrow(1, 1, 1)?)),
            TimeModulation::PerToken {
                index,
                batch,
                tokens,
                ..
            } => {
                let dim = self.cfg.dim();
                let gather = |row: usize| -> Result<Tensor> {
                    Ok(m.narrow(1, row, 1)?
                        .squeeze(1)?
                        .contiguous()?
                        .index_select(index, 0)?
                        .reshape((*batch, *tokens, dim))?)
                };
                Ok((gather(0)?, gather(1)?))
            }
        }
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
        let tokens = (frames / pt) * (height / ph) * (width / pw);
        let timesteps_ok = match timesteps.dims() {
            [n] => *n == b || *n == 1,
            [n, l] => (*n == b || *n == 1) && *l == tokens,
            _ => false,
        };
        if !timesteps_ok {
            return bad(format!(
                "timesteps must be [{b}] or [1] (per sample), or [{b}, {tokens}] or [1, {tokens}] \
                 (per latent token), got {:?}",
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

    /// [N, freq_dim] f32 for N timesteps: [cos(t·ω_i), sin(t·ω_i)], ω_i = 10000^(−i/half), cos
    /// first. Computed in f32 like diffusers (the original uses f64; the two differ by ~1e-5
    /// relative).
    fn timestep_sinusoid(&self, timesteps: &[f32]) -> Result<Tensor> {
        let half = self.cfg.freq_dim / 2;
        let log_base = -(10_000f32.ln());
        let freqs: Vec<f32> = (0..half)
            .map(|i| (log_base * i as f32 / half as f32).exp())
            .collect();
        let mut out = Vec::with_capacity(timesteps.len() * 2 * half);
        for &t in timesteps {
            out.extend(freqs.iter().map(|f| (t * f).cos()));
            out.extend(freqs.iter().map(|f| (t * f).sin()));
        }
        Ok(Tensor::from_vec(
            out,
            (timesteps.len(), 2 * half),
            &self.device,
        )?)
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

/// A step cache's view of one forward pass (`WanTransformer::forward_cached`): it sees the
/// time path's modulation and the blocks' input before the blocks run, and may answer with a
/// residual that stands in for them (the blocks are skipped, their input plus the residual goes
/// to the head); when the blocks run, it receives what they added.
pub trait BlockCache {
    /// `modulation`: the blocks' time modulation e0, `[B, 6, dim]` f32 per sample (per token:
    /// one row per distinct timestep, `[K, 6, dim]`); `input`: the blocks' input `[B, L, dim]`
    /// f32. `Some(residual)` (`[B, L, dim]` f32) skips the blocks.
    fn before_blocks(&mut self, modulation: &Tensor, input: &Tensor) -> Result<Option<Tensor>>;

    /// The blocks ran: `residual` = their output − their input, `[B, L, dim]` f32.
    fn after_blocks(&mut self, residual: &Tensor) -> Result<()>;
}

/// What the head needs besides the blocks' output, kept from the embedding of one pass.
struct HeadInputs {
    time: TimeEmbedding,
    grid: [usize; 3],
}

impl WanTransformer {
    /// [`Self::forward`] with a step cache at the blocks: `cache` sees their input and may skip
    /// them (see [`BlockCache`]). When it lets them run, the result is bitwise that of
    /// [`Self::forward`] (the same operations in the same order; the residual is only recorded).
    pub fn forward_cached(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        image: Option<&Tensor>,
        attention: &mut dyn SelfAttention,
        cache: &mut dyn BlockCache,
    ) -> Result<Tensor> {
        let (batch, grid) = self.check_inputs(latents, timesteps, context)?;
        let [f, h, w] = grid;
        let context = context.to_device(&self.device)?;
        let input = self.embed_patches(latents, grid)?; // [B, L, dim]
        let time = self.time_embedding(timesteps, batch, f * h * w)?;
        let modulation = match &time.modulation {
            TimeModulation::PerSample(e0) => e0,
            TimeModulation::PerToken { values, .. } => values,
        };
        let x = match cache.before_blocks(modulation, &input)? {
            Some(residual) => (&input + residual)?,
            None => {
                let x = self.run_blocks(
                    input.clone(),
                    &context,
                    image,
                    batch,
                    grid,
                    &time,
                    attention,
                    None,
                )?;
                cache.after_blocks(&(&x - &input)?)?;
                x
            }
        };
        self.head_output(&x, HeadInputs { time, grid })
    }

    /// The blocks on the embedded tokens `x` `[B, L, dim]` f32, with the text `context`
    /// `[B, Lt, text_dim]` projected to `[B, Lt, dim]` and the image tokens (models with image
    /// input) in the run dtype → `[B, L, dim]` f32. With `tokens` = (start, len), `x` holds only
    /// that range of the grid's tokens (a sequence-parallel rank's) and gets those RoPE rows.
    #[allow(clippy::too_many_arguments)]
    fn run_blocks(
        &self,
        x: Tensor,
        context: &Tensor,
        image: Option<&Tensor>,
        batch: usize,
        [f, h, w]: [usize; 3],
        time: &TimeEmbedding,
        attention: &mut dyn SelfAttention,
        tokens: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let text = self
            .text_linear_2
            .forward(&self.text_linear_1.forward(context)?.gelu()?)?;
        let image = self.image_tokens(image, batch)?;
        let (rope_cos, rope_sin) = self.rope_tables([f, h, w])?;
        let (rope_cos, rope_sin) = match tokens {
            Some((start, len)) => (
                rope_cos.narrow(0, start, len)?,
                rope_sin.narrow(0, start, len)?,
            ),
            None => (rope_cos, rope_sin),
        };
        let ctx = BlockContext {
            time_modulation: &time.modulation,
            text: &text,
            image: image.as_ref(),
            rope_cos: &rope_cos,
            rope_sin: &rope_sin,
            layout: VideoLayout::new(f, h, w),
        };
        let mut x = x;
        let sync = drain_between_blocks(
            &x,
            DrainDefault::FromStreamBytes(BLOCK_SYNC_MIN_STREAM_BYTES),
        );
        for index in 0..self.blocks.len() {
            // Streamed: the block's copy on the compute device is freed at the end of this
            // iteration, before the next one is fetched.
            let block = self.blocks.fetch(index)?;
            x = block.forward(x, &ctx, attention)?;
            if sync {
                x.device().synchronize()?;
            }
        }
        Ok(x)
    }

    /// The head on the blocks' output `x` `[B, L, dim]` f32 → velocity `[B, C', F, H, W]` f32.
    fn head_output(&self, x: &Tensor, head: HeadInputs) -> Result<Tensor> {
        let (shift, scale) = self.head_shift_scale(&head.time)?;
        let x = modulate(&layer_norm(x, self.cfg.eps)?, &shift, &scale)?;
        let out = self.head.forward(&x)?; // [B, L, out·pt·ph·pw] f32
        self.unpatchify(&out, head.grid)
    }
}
