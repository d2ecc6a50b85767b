//! Token permutations that make every attention block spatially (or spatio-temporally) compact.
//!
//! A video's tokens arrive in raster `(f, h, w)` order. Cut into 128-token blocks as they are,
//! a block is a thin strip of 2–3 image rows, and its mean (which drives mask prediction) mixes
//! far-apart content. Re-ordering tokens window by window makes each block a small square
//! region, so one pooled score describes it well.
//!
//! The permuted sequence is:
//!
//! ```text
//! [ windows of the body frames ][ frame 0 (raster), if first_frame_sink ][ text tokens ]
//! ```
//!
//! Frame 0 is the "first-frame sink": every query attends to it and it attends to everything.
//! Moving it next to the text (as the RainFusion 2.0 paper does) makes sink and text one dense
//! band at the end of the sequence, so it costs whole blocks instead of scattered partial ones.

use std::str::FromStr;

use candle_core::{DType, Device, Storage, Tensor, WithDType};

use crate::{Error, Result, VideoLayout};

/// Side of the square spatial tile, in tokens.
pub const TILE_SIDE: usize = 8;

/// How body frames are cut into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Window {
    /// 1×8×8 tiles within each frame: frame → tile row → tile column → raster inside the tile.
    /// A 128-token block is two horizontally adjacent tiles of one frame.
    #[default]
    Tile,
    /// 2×8×8 windows over pairs of consecutive frames: frame pair → tile row → tile column →
    /// frame → raster inside the tile. A 128-token block is one window.
    Spatiotemporal,
}

impl FromStr for Window {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tile" => Ok(Self::Tile),
            "spatiotemporal" => Ok(Self::Spatiotemporal),
            other => Err(Error::InvalidConfig(format!(
                "unknown window '{other}' (expected 'tile' or 'spatiotemporal')"
            ))),
        }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tile => "tile",
            Self::Spatiotemporal => "spatiotemporal",
        })
    }
}

/// A permutation of a sequence's tokens and its exact inverse.
///
/// `forward[p]` is the original position of the token placed at permuted position `p`;
/// `inverse[o]` is the permuted position of the token at original position `o`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPermutation {
    pub forward: Vec<u32>,
    pub inverse: Vec<u32>,
}

impl TokenPermutation {
    /// The permutation that moves nothing.
    pub fn identity(tokens: usize) -> Result<Self> {
        Self::from_forward((0..checked_u32(tokens)?).collect())
    }

    /// Builds the inverse of `forward`, checking that `forward` is a permutation of `0..len`.
    pub fn from_forward(forward: Vec<u32>) -> Result<Self> {
        checked_u32(forward.len())?;
        let mut inverse = vec![u32::MAX; forward.len()];
        for (p, &o) in forward.iter().enumerate() {
            match inverse.get_mut(o as usize) {
                Some(slot) if *slot == u32::MAX => *slot = p as u32,
                _ => {
                    return Err(Error::InvalidConfig(format!(
                        "token order is not a permutation: position {o} is out of range or repeated"
                    )))
                }
            }
        }
        Ok(Self { forward, inverse })
    }

    /// The window permutation of `layout`'s video tokens; text tokens stay at the end in order.
    pub fn for_layout(
        layout: &VideoLayout,
        window: Window,
        first_frame_sink: bool,
    ) -> Result<Self> {
        let total = layout.total_tokens();
        checked_u32(total)?;
        let (frames, height, width) = (layout.frames, layout.height, layout.width);
        let frame_tokens = layout.frame_tokens();
        let mut order: Vec<u32> = Vec::with_capacity(total);
        let sink = first_frame_sink && frames > 0 && frame_tokens > 0;
        let body: Vec<usize> = (usize::from(sink)..frames).collect();
        let group = match window {
            Window::Tile => 1,
            Window::Spatiotemporal => 2,
        };
        for frames_in_window in body.chunks(group) {
            push_windows(&mut order, frames_in_window, height, width);
        }
        if sink {
            order.extend((0..frame_tokens).map(|t| t as u32));
        }
        order.extend((layout.video_tokens()..total).map(|t| t as u32));
        Self::from_forward(order)
    }

    /// Number of tokens permuted.
    pub fn len(&self) -> usize {
        self.forward.len()
    }

    pub fn is_empty(&self) -> bool {
        self.forward.is_empty()
    }

    /// True when the permutation moves nothing.
    pub fn is_identity(&self) -> bool {
        self.forward
            .iter()
            .enumerate()
            .all(|(p, &o)| p == o as usize)
    }

    /// Reorders dimension 2 of `x` (`[B, H, L, D]`) into permuted order.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        self.gather(x, &self.forward)
    }

    /// Undoes [`apply`](Self::apply): dimension 2 of `x` back to the original order.
    pub fn restore(&self, x: &Tensor) -> Result<Tensor> {
        self.gather(x, &self.inverse)
    }

    fn gather(&self, x: &Tensor, positions: &[u32]) -> Result<Tensor> {
        let tokens = x.dim(2)?;
        if tokens != positions.len() {
            return Err(Error::LayoutMismatch {
                layout_tokens: positions.len(),
                tensor_tokens: tokens,
            });
        }
        if self.is_identity() {
            return Ok(x.clone());
        }
        if x.device().is_cpu() && x.rank() == 4 {
            // candle's CPU index_select costs about a quarter of a sparse attention call at
            // 80% sparsity here; a parallel row copy costs a few percent of that.
            match x.dtype() {
                DType::F32 => return gather_rows_cpu::<f32>(x, positions),
                DType::BF16 => return gather_rows_cpu::<half::bf16>(x, positions),
                DType::F16 => return gather_rows_cpu::<half::f16>(x, positions),
                _ => {}
            }
        }
        // index_select works on every candle backend; the index upload is L·4 bytes.
        let index = Tensor::from_slice(positions, positions.len(), x.device())?;
        select_tokens(x, &index)
    }
}

/// `out[:, :, p, :] = x[:, :, index[p], :]` for x `[B, H, L, D]` on any device; index: u32 `[L]`
/// on x's device.
pub(crate) fn select_tokens(x: &Tensor, index: &Tensor) -> Result<Tensor> {
    if x.rank() == 4 && x.transpose(1, 2)?.is_contiguous() {
        // A [B, H, L, D] view of [B, L, H, D] memory (what the fused DiT block hands over):
        // gather whole tokens in that memory and return the same kind of view, one copy
        // instead of two (the attention kernels read such views in place).
        return Ok(x.transpose(1, 2)?.index_select(index, 1)?.transpose(1, 2)?);
    }
    // (candle's index_select needs a contiguous source)
    Ok(x.contiguous()?.index_select(index, 2)?)
}

/// `out[b, h, p, :] = x[b, h, positions[p], :]` for a CPU tensor `[B, H, L, D]`.
fn gather_rows_cpu<T: WithDType>(x: &Tensor, positions: &[u32]) -> Result<Tensor> {
    use rayon::prelude::*;
    let (b, h, l, d) = x.dims4()?;
    let mut out = vec![T::from_f64(0.0); b * h * l * d];
    let x = x.contiguous()?;
    let (guard, layout) = x.storage_and_layout();
    let Storage::Cpu(cpu) = &*guard else {
        return Err(Error::InvalidConfig("expected a CPU tensor".into()));
    };
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::InvalidConfig("permutation input is not contiguous".into()))?;
    let data = &cpu.as_slice::<T>()?[start..end];
    if l * d > 0 {
        out.par_chunks_mut(l * d)
            .enumerate()
            .for_each(|(bh, out_head)| {
                let head = &data[bh * l * d..(bh + 1) * l * d];
                for (row, &from) in out_head.chunks_exact_mut(d).zip(positions) {
                    let from = from as usize * d;
                    row.copy_from_slice(&head[from..from + d]);
                }
            });
    }
    drop(guard);
    Ok(Tensor::from_vec(out, (b, h, l, d), &Device::Cpu)?)
}

/// Tokens at the end of the permuted sequence that must stay dense: frame 0 (when it is a
/// sink) and the text tokens.
pub fn dense_tail_tokens(layout: &VideoLayout, first_frame_sink: bool) -> usize {
    let sink = if first_frame_sink && layout.frames > 0 {
        layout.frame_tokens()
    } else {
        0
    };
    sink + layout.text_tokens
}

/// Appends the window order of `frames` (1 or 2 frames cut together) of a `height × width` grid.
///
/// Ragged grids: the full-tile region (`⌊h/8⌋·8 × ⌊w/8⌋·8`) comes first in windows, then the
/// leftover bottom rows (full width, raster, frame after frame), then the leftover right columns
/// of the full-tile rows (raster, frame after frame). Grids smaller than a tile are all leftover.
fn push_windows(order: &mut Vec<u32>, frames: &[usize], height: usize, width: usize) {
    let main_height = height / TILE_SIDE * TILE_SIDE;
    let main_width = width / TILE_SIDE * TILE_SIDE;
    let token = |f: usize, y: usize, x: usize| ((f * height + y) * width + x) as u32;
    for tile_y in (0..main_height).step_by(TILE_SIDE) {
        for tile_x in (0..main_width).step_by(TILE_SIDE) {
            for &f in frames {
                for y in tile_y..tile_y + TILE_SIDE {
                    order.extend((tile_x..tile_x + TILE_SIDE).map(|x| token(f, y, x)));
                }
            }
        }
    }
    for &f in frames {
        for y in main_height..height {
            order.extend((0..width).map(|x| token(f, y, x)));
        }
    }
    for &f in frames {
        for y in 0..main_height {
            order.extend((main_width..width).map(|x| token(f, y, x)));
        }
    }
}

fn checked_u32(tokens: usize) -> Result<u32> {
    u32::try_from(tokens).map_err(|_| {
        Error::InvalidConfig(format!("{tokens} tokens do not fit 32-bit token indices"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn layout(frames: usize, height: usize, width: usize, text: usize) -> VideoLayout {
        VideoLayout {
            frames,
            height,
            width,
            text_tokens: text,
        }
    }

    /// (frame, row, col) of an original video token.
    fn coords(l: &VideoLayout, t: u32) -> (usize, usize, usize) {
        let t = t as usize;
        (
            t / l.frame_tokens(),
            t % l.frame_tokens() / l.width,
            t % l.width,
        )
    }

    fn check_round_trip(l: &VideoLayout, window: Window, sink: bool) {
        let p = TokenPermutation::for_layout(l, window, sink).unwrap();
        assert_eq!(p.len(), l.total_tokens());
        for (o, &pos) in p.inverse.iter().enumerate() {
            assert_eq!(p.forward[pos as usize] as usize, o);
        }
        // The dense tail is exactly frame 0 (when a sink) followed by the text, in order.
        let tail = dense_tail_tokens(l, sink);
        let start = l.total_tokens() - tail;
        let expected: Vec<u32> = if sink && l.frames > 0 {
            (0..l.frame_tokens() as u32)
                .chain(l.video_tokens() as u32..l.total_tokens() as u32)
                .collect()
        } else {
            (l.video_tokens() as u32..l.total_tokens() as u32).collect()
        };
        assert_eq!(&p.forward[start..], &expected[..]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn permutation_round_trips_on_random_grids(
            frames in 1usize..6, height in 1usize..27, width in 1usize..27, text in 0usize..5,
            spatiotemporal: bool, sink: bool,
        ) {
            let window = if spatiotemporal { Window::Spatiotemporal } else { Window::Tile };
            check_round_trip(&layout(frames, height, width, text), window, sink);
        }
    }

    #[test]
    fn wan_grids_round_trip() {
        for (f, h, w) in [(21, 30, 52), (21, 45, 80), (1, 3, 5), (2, 7, 7), (3, 8, 8)] {
            for window in [Window::Tile, Window::Spatiotemporal] {
                for sink in [false, true] {
                    check_round_trip(&layout(f, h, w, 0), window, sink);
                }
            }
        }
    }

    #[test]
    fn tile_blocks_are_two_adjacent_tiles_of_one_frame() {
        let l = layout(3, 16, 32, 0);
        let p = TokenPermutation::for_layout(&l, Window::Tile, false).unwrap();
        for block in p.forward.chunks(128) {
            let cs: Vec<_> = block.iter().map(|&t| coords(&l, t)).collect();
            let frame = cs[0].0;
            let (ys, xs): (Vec<_>, Vec<_>) = cs.iter().map(|c| (c.1, c.2)).unzip();
            assert!(cs.iter().all(|c| c.0 == frame));
            assert_eq!(ys.iter().max().unwrap() - ys.iter().min().unwrap(), 7);
            assert_eq!(xs.iter().max().unwrap() - xs.iter().min().unwrap(), 15);
        }
        // First tile is raster inside the 8×8 square at the origin.
        assert_eq!(&p.forward[..10], &[0, 1, 2, 3, 4, 5, 6, 7, 32, 33]);
    }

    #[test]
    fn spatiotemporal_blocks_are_two_frame_windows_after_the_sink() {
        let l = layout(5, 16, 24, 0);
        let p = TokenPermutation::for_layout(&l, Window::Spatiotemporal, true).unwrap();
        let body = 4 * l.frame_tokens();
        for block in p.forward[..body].chunks(128) {
            let cs: Vec<_> = block.iter().map(|&t| coords(&l, t)).collect();
            let mut frames: Vec<_> = cs.iter().map(|c| c.0).collect();
            frames.dedup();
            assert_eq!(frames.len(), 2, "one block spans two frames");
            assert!(frames[0] >= 1 && frames[1] == frames[0] + 1);
            let ys: Vec<_> = cs.iter().map(|c| c.1).collect();
            let xs: Vec<_> = cs.iter().map(|c| c.2).collect();
            assert_eq!(ys.iter().max().unwrap() - ys.iter().min().unwrap(), 7);
            assert_eq!(xs.iter().max().unwrap() - xs.iter().min().unwrap(), 7);
        }
    }

    #[test]
    fn ragged_frame_puts_leftover_rows_then_columns_last() {
        // 1 frame of 10×11: main 8×8 tile, then rows 8..10 (22 tokens), then columns 8..11 of rows 0..8.
        let l = layout(1, 10, 11, 0);
        let p = TokenPermutation::for_layout(&l, Window::Tile, false).unwrap();
        let rows: Vec<u32> = (88..110).collect();
        assert_eq!(&p.forward[64..86], &rows[..]);
        let cols: Vec<u32> = (0..8u32)
            .flat_map(|y| (8..11u32).map(move |x| y * 11 + x))
            .collect();
        assert_eq!(&p.forward[86..], &cols[..]);
    }

    #[test]
    fn apply_and_restore_move_tensor_rows() {
        let l = layout(3, 9, 10, 2);
        let p = TokenPermutation::for_layout(&l, Window::Spatiotemporal, true).unwrap();
        let n = l.total_tokens();
        let x = Tensor::arange(0f32, (2 * n * 3) as f32, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, n, 3))
            .unwrap();
        let y = p.apply(&x).unwrap();
        let rows = y
            .squeeze(0)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap()[0]
            .clone();
        for (pos, row) in rows.iter().enumerate() {
            assert_eq!(row[0] as usize, p.forward[pos] as usize * 3);
        }
        let back = p.restore(&y).unwrap();
        assert_eq!(
            back.squeeze(0).unwrap().to_vec3::<f32>().unwrap(),
            x.squeeze(0).unwrap().to_vec3::<f32>().unwrap()
        );
        assert!(p.apply(&x.narrow(2, 0, n - 1).unwrap()).is_err());
    }

    #[test]
    fn cpu_row_copy_matches_index_select_for_every_float_dtype() {
        let l = layout(2, 9, 11, 3);
        let p = TokenPermutation::for_layout(&l, Window::Tile, true).unwrap();
        let n = l.total_tokens();
        let x = Tensor::randn(0f32, 1.0, (2, 3, n, 5), &Device::Cpu).unwrap();
        let index = Tensor::from_slice(&p.forward, n, &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16, DType::F16, DType::F64] {
            let x = x.to_dtype(dtype).unwrap();
            let want = x.index_select(&index, 2).unwrap();
            let got = p.apply(&x).unwrap();
            assert_eq!(got.dtype(), dtype);
            let flat = |t: &Tensor| {
                t.to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            };
            assert_eq!(flat(&got), flat(&want));
            // Non-contiguous input too.
            let strided = x
                .transpose(0, 1)
                .unwrap()
                .contiguous()
                .unwrap()
                .transpose(0, 1)
                .unwrap();
            assert_eq!(flat(&p.apply(&strided).unwrap()), flat(&want));
            // A [B, H, L, D] view of [B, L, H, D] memory (the fused DiT block's q, k, v): gathered
            // as whole tokens, it comes back as the same kind of view, and restore undoes it.
            let tokens_major = x
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
                .transpose(1, 2)
                .unwrap();
            let got = p.apply(&tokens_major).unwrap();
            assert_eq!(flat(&got), flat(&want));
            assert_eq!(flat(&p.restore(&got).unwrap()), flat(&x));
            if dtype == DType::F64 {
                // (the float dtypes above take the CPU row copy; f64 takes the view path)
                assert!(got.transpose(1, 2).unwrap().is_contiguous());
            }
        }
    }

    #[test]
    fn from_forward_rejects_non_permutations() {
        assert!(TokenPermutation::from_forward(vec![0, 0]).is_err());
        assert!(TokenPermutation::from_forward(vec![0, 2]).is_err());
        assert!(TokenPermutation::identity(4).unwrap().is_identity());
        assert!("diagonal".parse::<Window>().is_err());
        assert_eq!(
            "Spatiotemporal".parse::<Window>().unwrap(),
            Window::Spatiotemporal
        );
    }
}
