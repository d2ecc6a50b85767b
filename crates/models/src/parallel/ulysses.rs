//! Ulysses sequence parallelism around one attention call. Each rank holds its range of the
//! tokens ([`SequenceSplit`]) with every head. Before attention, an all-to-all trades heads for
//! tokens: each rank then holds the whole sequence for its group of heads ([`HeadSplit`]), so
//! attention (dense, or RainFusion's mask prediction and block-sparse kernels) runs per head
//! unchanged. After it, the inverse all-to-all gives each rank its tokens back with every head.
//! Two all-to-alls of q, k, v and one of the output per layer; each moves (P − 1)/P of the
//! tensor.

use candle_core::Tensor;
use rainfusion::{SelfAttention, VideoLayout};

use super::split::{HeadSplit, SequenceSplit};
use super::Communicator;
use crate::error::{ModelError, Result};

/// `[B, H, L_r, D]` (this rank's tokens, every head) → `[B, H / P, L, D]` (every token, this
/// rank's heads), tokens in rank order.
pub fn tokens_to_heads(comm: &dyn Communicator, x: &Tensor) -> Result<Tensor> {
    let heads = HeadSplit::new(x.dim(1)?, comm.size())?;
    let parts = (0..comm.size())
        .map(|rank| {
            let (first, count) = heads.range(rank);
            Ok(x.narrow(1, first, count)?.contiguous()?)
        })
        .collect::<Result<Vec<_>>>()?;
    let received = comm.all_to_all(parts)?; // rank i's tokens, my heads
    Ok(Tensor::cat(&received, 2)?)
}

/// The inverse of [`tokens_to_heads`]: `[B, H / P, L, D]` → `[B, H, L_r, D]` with this rank's
/// range of `split`.
pub fn heads_to_tokens(
    comm: &dyn Communicator,
    y: &Tensor,
    split: &SequenceSplit,
) -> Result<Tensor> {
    if y.dim(2)? != split.total || split.size != comm.size() {
        return Err(ModelError::InvalidInput(format!(
            "heads to tokens: {} tokens over {} ranks expected, got {:?} over {}",
            split.total,
            split.size,
            y.dims(),
            comm.size()
        )));
    }
    let parts = (0..comm.size())
        .map(|rank| {
            let (start, len) = split.range(rank);
            Ok(y.narrow(2, start, len)?.contiguous()?)
        })
        .collect::<Result<Vec<_>>>()?;
    let received = comm.all_to_all(parts)?; // my tokens, rank i's heads
    Ok(Tensor::cat(&received, 1)?)
}

/// Attention over the whole sequence from each rank's share of it: q, k, v `[B, H, L_r, D]`
/// (this rank's range of `split`) → `[B, H, L_r, D]`. `attend` sees `[B, H / P, L, D]` and
/// must return the same shape.
pub fn ulysses_attention(
    comm: &dyn Communicator,
    split: &SequenceSplit,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attend: impl FnOnce(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (start, len) = split.range(comm.rank());
    if q.dim(2)? != len {
        return Err(ModelError::InvalidInput(format!(
            "rank {} holds tokens {start}..{} ({len}), but q has {}",
            comm.rank(),
            start + len,
            q.dim(2)?
        )));
    }
    let (q, k, v) = (
        tokens_to_heads(comm, q)?,
        tokens_to_heads(comm, k)?,
        tokens_to_heads(comm, v)?,
    );
    let out = attend(&q, &k, &v)?;
    heads_to_tokens(comm, &out, split)
}

/// A [`SelfAttention`] policy run under Ulysses: the transformer's blocks hand it this rank's
/// tokens (q, k, v `[B, H, L_r, D]`); it trades them for the whole sequence of this rank's
/// heads, lets `inner` attend over the whole `layout` (RainFusion predicts its masks there, per
/// head, as on one device), and trades back.
pub struct UlyssesAttention<'a> {
    inner: &'a mut dyn SelfAttention,
    comm: &'a dyn Communicator,
    split: SequenceSplit,
}

impl<'a> UlyssesAttention<'a> {
    pub fn new(
        inner: &'a mut dyn SelfAttention,
        comm: &'a dyn Communicator,
        split: SequenceSplit,
    ) -> Self {
        Self { inner, comm, split }
    }
}

/// A model error as an attention error (the trait's error type).
fn attention_error(e: ModelError) -> rainfusion::Error {
    match e {
        ModelError::Candle(e) => rainfusion::Error::Candle(e),
        other => rainfusion::Error::InvalidConfig(other.to_string()),
    }
}

impl SelfAttention for UlyssesAttention<'_> {
    fn attend(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        layout: &VideoLayout,
    ) -> rainfusion::Result<Tensor> {
        let inner = &mut *self.inner;
        ulysses_attention(self.comm, &self.split, q, k, v, |q, k, v| {
            Ok(inner.attend(layer, q, k, v, layout)?)
        })
        .map_err(attention_error)
    }

    fn attend_joint(
        &mut self,
        _: usize,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &VideoLayout,
        _: Option<&Tensor>,
    ) -> rainfusion::Result<Tensor> {
        Err(rainfusion::Error::InvalidConfig(
            "sequence parallelism does not split joint text-and-video attention yet".into(),
        ))
    }

    fn begin_step(&mut self, step: usize, num_steps: usize) {
        self.inner.begin_step(step, num_steps);
    }

    fn effective_density(&self) -> f64 {
        self.inner.effective_density()
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;
    use crate::parallel::LocalGroup;
    use rainfusion::reference::max_abs_diff;

    /// softmax(q·kᵀ/√d)·v in f32, q, k, v `[B, H, L, D]`.
    fn reference_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let scale = 1.0 / (q.dim(3)? as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        Ok(candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)?)
    }

    /// Runs `world` ranks on threads, each attending from its token range, and returns the
    /// ranks' outputs joined along the tokens.
    fn parallel_attention(q: &Tensor, k: &Tensor, v: &Tensor, world: usize) -> Tensor {
        let split = SequenceSplit::new(q.dim(2).unwrap(), world).unwrap();
        let outputs = LocalGroup::run(world, |comm| {
            let (start, len) = split.range(comm.rank());
            let local = |t: &Tensor| t.narrow(2, start, len).unwrap();
            ulysses_attention(&comm, &split, &local(q), &local(k), &local(v), |q, k, v| {
                // every token of the whole sequence is here, and only this rank's heads
                assert_eq!(q.dim(2)?, split.total);
                assert_eq!(q.dim(1)?, 6 / world);
                reference_attention(q, k, v)
            })
            .unwrap()
        });
        Tensor::cat(&outputs, 2).unwrap()
    }

    #[test]
    fn ulysses_attention_equals_attention_over_the_whole_sequence() {
        let dev = Device::Cpu;
        // 6 heads, 11 tokens: uneven token ranges for 2 and 3 ranks
        let draw = || Tensor::randn(0f32, 1.0, (2, 6, 11, 8), &dev).unwrap();
        let (q, k, v) = (draw(), draw(), draw());
        let full = reference_attention(&q, &k, &v).unwrap();
        for world in [1, 2, 3, 6] {
            let got = parallel_attention(&q, &k, &v, world);
            let diff = max_abs_diff(&got, &full).unwrap();
            assert!(diff < 1e-5, "{world} ranks: {diff}");
        }
    }

    #[test]
    fn rainfusion_runs_on_each_ranks_heads_unchanged() {
        // Mask prediction works per head (block means of that head's q and k over the whole
        // sequence), so predicting and attending on a rank's heads after the all-to-all gives
        // those heads exactly what the single-device run gives them.
        let dev = Device::Cpu;
        let draw = || Tensor::randn(0f32, 1.0, (1, 4, 64, 16), &dev).unwrap();
        let (q, k, v) = (draw(), draw(), draw());
        let scale = 0.25;
        let sparse = |q: &Tensor, k: &Tensor, v: &Tensor| -> Result<Tensor> {
            let mask = rainfusion::predict_block_mask(q, k, 8, 0.5, 0)?;
            assert!(mask.density() < 1.0);
            Ok(rainfusion::block_sparse_attention(q, k, v, &mask, scale)?)
        };
        let whole = sparse(&q, &k, &v).unwrap();
        let split = SequenceSplit::new(64, 2).unwrap();
        let outputs = LocalGroup::run(2, |comm| {
            let (start, len) = split.range(comm.rank());
            let local = |t: &Tensor| t.narrow(2, start, len).unwrap();
            ulysses_attention(&comm, &split, &local(&q), &local(&k), &local(&v), sparse).unwrap()
        });
        let joined = Tensor::cat(&outputs, 2).unwrap();
        let diff = max_abs_diff(&joined, &whole).unwrap();
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn the_all_to_alls_are_inverse() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 2.0 * 4.0 * 7.0 * 3.0, &dev)
            .unwrap()
            .reshape((2, 4, 7, 3))
            .unwrap();
        let split = SequenceSplit::new(7, 2).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        LocalGroup::run(2, |comm| {
            let (start, len) = split.range(comm.rank());
            let mine = x.narrow(2, start, len).unwrap();
            let by_heads = tokens_to_heads(&comm, &mine).unwrap();
            // every token, this rank's two heads
            let expected = x.narrow(1, 2 * comm.rank(), 2).unwrap();
            assert_eq!(flat(&by_heads), flat(&expected));
            let back = heads_to_tokens(&comm, &by_heads, &split).unwrap();
            assert_eq!(flat(&back), flat(&mine));
        });
    }

    #[test]
    fn heads_that_do_not_divide_are_refused() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 6, 8, 4), DType::F32, &dev).unwrap();
        let errors = LocalGroup::run(4, |comm| {
            tokens_to_heads(&comm, &x.narrow(2, 2 * comm.rank(), 2).unwrap())
                .unwrap_err()
                .to_string()
        });
        assert!(
            errors.iter().all(|e| e.contains("6 attention heads")),
            "{errors:?}"
        );
    }
}
