#!/usr/bin/env python3
"""Reference schedules and solver trajectories of diffusers' flow-matching schedulers.

Writes tests/fixtures/schedulers/:
  schedules.json    for every (sampler, shift, steps) in {unipc, euler} x {3, 5} x {10, 50}: the timesteps the
                    model sees and the sigmas (N + 1 values, the last one 0) as diffusers computes them
  <name>.safetensors  full `step()` trajectories: the start sample `x_0`, then for every step k the model output
                    `v_k` fed to `step()` and the sample `x_{k+1}` it returned. The model output is a deterministic
                    function of the current sample and timestep (see `fake_velocity`), so the history-dependent
                    UniPC corrector/predictor is exercised exactly as in a real run.

Schedulers, configured as Wan2.1's diffusers checkpoints ship them:
  UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=s) with the
  remaining defaults (solver_order 2, bh2, predict_x0, lower_order_final, final_sigmas_type "zero"), and
  FlowMatchEulerDiscreteScheduler(shift=s).

Run from the repository root:  python3 scripts/reference/gen_scheduler_fixtures.py
"""
import json
import os

import torch
from safetensors.torch import save_file
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

OUT = os.path.join("tests", "fixtures", "schedulers")
SHIFTS = [3.0, 5.0]
STEPS = [10, 50]
# [B, C, F, H, W]: batch 2 like a CFG pair, otherwise small.
SAMPLE_SHAPE = (2, 4, 3, 4, 4)
# Trajectories recorded (sampler, shift, steps); 50 steps only for the default sampler.
TRAJECTORIES = [("unipc", 3.0, 10), ("unipc", 5.0, 10), ("unipc", 5.0, 50), ("euler", 3.0, 10), ("euler", 5.0, 10)]


def make_scheduler(sampler, shift):
    if sampler == "unipc":
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       num_train_timesteps=1000, flow_shift=shift)
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def fake_velocity(x, t, target):
    """A smooth, x- and t-dependent stand-in for the transformer: pulls x towards `target`."""
    s = float(t) / 1000.0
    return (x - target) * (0.6 + 0.4 * s) + 0.1 * torch.sin(3.0 * x) * s


def main():
    os.makedirs(OUT, exist_ok=True)
    schedules = {}
    for sampler in ("unipc", "euler"):
        for shift in SHIFTS:
            for steps in STEPS:
                sched = make_scheduler(sampler, shift)
                sched.set_timesteps(steps)
                schedules[f"{sampler}_shift{shift:g}_steps{steps}"] = {
                    "sampler": sampler,
                    "shift": shift,
                    "steps": steps,
                    "timesteps": [float(t) for t in sched.timesteps.tolist()],
                    "sigmas": [float(s) for s in sched.sigmas.tolist()],
                }
    with open(os.path.join(OUT, "schedules.json"), "w") as f:
        json.dump(schedules, f, indent=1)

    gen = torch.Generator().manual_seed(7)
    for sampler, shift, steps in TRAJECTORIES:
        sched = make_scheduler(sampler, shift)
        sched.set_timesteps(steps)
        x = torch.randn(SAMPLE_SHAPE, generator=gen, dtype=torch.float32)
        target = 0.5 * torch.randn(SAMPLE_SHAPE, generator=gen, dtype=torch.float32)
        tensors = {"x_0": x.clone()}
        for k, t in enumerate(sched.timesteps):
            v = fake_velocity(x, t, target)
            x = sched.step(v, t, x, return_dict=False)[0]
            tensors[f"v_{k}"] = v.contiguous()
            tensors[f"x_{k + 1}"] = x.contiguous()
        name = f"{sampler}_shift{shift:g}_steps{steps}"
        save_file(tensors, os.path.join(OUT, f"{name}.safetensors"),
                  metadata={"sampler": sampler, "shift": str(shift), "steps": str(steps)})
        print("wrote", name)


if __name__ == "__main__":
    main()
