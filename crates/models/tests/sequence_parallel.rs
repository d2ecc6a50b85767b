//! Sequence parallelism (Ulysses) on the CPU: the Wan transformer run as two ranks of an
//! in-process group (one thread each, `vdit_models::parallel::LocalGroup`), each holding half
//! of the tokens through the blocks, gives the one-device forward and diffusers' output. The
//! NCCL communicator and the GPU runs are not written yet (issue 22); this checks the token
//! split, the RoPE rows, the all-to-alls around attention and the final gather.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rainfusion::DenseAttention;
use vdit_models::parallel::{Communicator, LocalGroup};
use vdit_models::wan::{WanConfig, WanTransformer};
use vdit_models::weights::WeightFiles;

mod common;
use common::{fixture, load_io, relative_error};

/// The fixture's forward as one rank of `comm`'s group, dense attention.
fn forward_as_rank(
    model: &WanTransformer,
    io: &HashMap<String, Tensor>,
    comm: &dyn Communicator,
) -> vdit_models::error::Result<Tensor> {
    model.forward_sequence_parallel(
        &io["latents"],
        &io["timesteps"],
        &io["context"],
        None,
        &mut DenseAttention,
        comm,
    )
}

#[test]
fn two_ranks_give_the_one_device_forward() {
    let dir = fixture("heads2x32");
    let files = Arc::new(WeightFiles::open(&dir).unwrap());
    let cfg = WanConfig::from_json_file(&dir.join("config.json")).unwrap();
    let io = load_io(&dir, &Device::Cpu);
    let model = WanTransformer::load(&files, &cfg, DType::F32, &Device::Cpu).unwrap();
    let one = model
        .forward(
            &io["latents"],
            &io["timesteps"],
            &io["context"],
            &mut DenseAttention,
        )
        .unwrap();
    for world in [1, 2] {
        let outputs = LocalGroup::run(world, |comm| {
            forward_as_rank(&model, &io, &comm)
                .unwrap_or_else(|e| panic!("rank {}: {e}", comm.rank()))
        });
        for (rank, out) in outputs.iter().enumerate() {
            let err = relative_error(out, &one);
            assert!(
                err <= 1e-5,
                "{world} ranks, rank {rank} vs one device: {err:.3e}"
            );
            let err = relative_error(out, &io["velocity"]);
            assert!(
                err <= 1e-4,
                "{world} ranks, rank {rank} vs diffusers: {err:.3e}"
            );
        }
    }
}

#[test]
fn heads_that_do_not_divide_are_refused_before_any_work() {
    let dir = fixture("heads2x32");
    let files = Arc::new(WeightFiles::open(&dir).unwrap());
    let cfg = WanConfig::from_json_file(&dir.join("config.json")).unwrap();
    let io = load_io(&dir, &Device::Cpu);
    let model = WanTransformer::load(&files, &cfg, DType::F32, &Device::Cpu).unwrap();
    let errors = LocalGroup::run(3, |comm| {
        forward_as_rank(&model, &io, &comm).unwrap_err().to_string()
    });
    for e in errors {
        assert!(
            e.contains("2 attention heads") && e.contains("over 3 devices"),
            "{e}"
        );
    }
}
