#!/usr/bin/env python3
"""A 4-step distilled-style run of the tiny pipeline with a LoRA, and diffusers' LCM step, for vdit's few-step
end-to-end tests.

Needs tests/fixtures/tiny_pipeline (gen_tiny_pipeline.py). Writes tests/fixtures/lora/:
  tiny_pipeline_lightx2v.safetensors  a random LoRA of the tiny transformer in lightx2v's published form
                                      (`diffusion_model.` + lora_A / lora_B, `.diff_b` bias deltas), rank 4
  tiny_pipeline_reference.safetensors
      noise, final_latents, video   diffusers' WanPipeline with that LoRA (load_lora_weights, strength 1),
                                    guidance 1.0 (no negative pass), 4 steps at lightx2v's step list
                                    [1000, 750, 500, 250] with shift 5: FlowMatchEulerDiscreteScheduler(shift=5)
                                    given sigmas t/1000 (diffusers then shifts them and shows the model 1000*sigma)
      timesteps, sigmas             that schedule as diffusers computed it
      lcm_sample, lcm_velocity, lcm_noise_k, lcm_out_k
                                    FlowMatchLCMScheduler(shift=5) on the same sigmas: its step() on a random
                                    sample and velocity for every k, with the fresh noise it drew (captured by
                                    replaying its generator), and what it returned

And for the two-expert (Wan2.2 A14B-shaped) tiny model of tests/fixtures/wan22_two_expert:
  two_expert_high.safetensors, two_expert_low.safetensors
                                      random LoRAs of the high- and the low-noise expert, lightx2v form
  two_expert_reference.safetensors    noise, final_latents: WanPipeline with the first loaded into `transformer` and
                                      the second into `transformer_2` (load_lora_weights(load_into_transformer_2=True)),
                                      the same 4-step list, shift 5, Euler, guidance 1 on both experts (t = 1000 and
                                      937.5 run on the high-noise expert, 833.3 and 625 on the low-noise one)

Run from the repository root:  python3 scripts/reference/gen_lora_pipeline.py
"""
import json
import os
import sys

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchLCMScheduler, WanPipeline
from safetensors.torch import load_file, save_file

BASE = os.path.join("tests", "fixtures", "tiny_pipeline")
OUT = os.path.join("tests", "fixtures", "lora")
STEP_LIST = [1000.0, 750.0, 500.0, 250.0]
SHIFT = 5.0
RANK = 4


class StepListEuler(FlowMatchEulerDiscreteScheduler):
    """Euler on a fixed step list: WanPipeline asks for N steps; this hands the scheduler the sigmas."""

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        super().set_timesteps(sigmas=[t / 1000.0 for t in STEP_LIST], device=device)


def make_lora(transformer, gen):
    sd = {}
    for i, _ in enumerate(transformer.blocks):
        for attn, orig in (("attn1", "self_attn"), ("attn2", "cross_attn")):
            for d, o in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "o")):
                w = transformer.get_submodule(f"blocks.{i}.{attn}.{d}").weight
                out_f, in_f = w.shape
                sd[f"diffusion_model.blocks.{i}.{orig}.{o}.lora_A.weight"] = torch.randn(RANK, in_f, generator=gen) / in_f**0.5
                sd[f"diffusion_model.blocks.{i}.{orig}.{o}.lora_B.weight"] = 0.5 * torch.randn(out_f, RANK, generator=gen) / RANK**0.5
                sd[f"diffusion_model.blocks.{i}.{orig}.{o}.diff_b"] = 0.05 * torch.randn(out_f, generator=gen)
        for d, o in (("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2")):
            w = transformer.get_submodule(f"blocks.{i}.{d}").weight
            out_f, in_f = w.shape
            sd[f"diffusion_model.blocks.{i}.{o}.lora_A.weight"] = torch.randn(RANK, in_f, generator=gen) / in_f**0.5
            sd[f"diffusion_model.blocks.{i}.{o}.lora_B.weight"] = 0.5 * torch.randn(out_f, RANK, generator=gen) / RANK**0.5
            # Every layer has its bias delta, as in the published files (PEFT then gives every layer a LoRA bias).
            sd[f"diffusion_model.blocks.{i}.{o}.diff_b"] = 0.05 * torch.randn(out_f, generator=gen)
    return sd


def lcm_trajectory(gen):
    scheduler = FlowMatchLCMScheduler(num_train_timesteps=1000, shift=SHIFT)
    scheduler.set_timesteps(sigmas=[t / 1000.0 for t in STEP_LIST])
    shape = (1, 4, 3, 4, 4)
    sample = torch.randn(shape, generator=gen)
    velocity = torch.randn(shape, generator=gen)
    out = {"lcm_sample": sample, "lcm_velocity": velocity, "lcm_sigmas": scheduler.sigmas.clone()}
    noise_gen = torch.Generator().manual_seed(7)
    for k, t in enumerate(scheduler.timesteps):
        replay = torch.Generator().set_state(noise_gen.get_state())
        out[f"lcm_noise_{k}"] = torch.randn(shape, generator=replay)
        out[f"lcm_out_{k}"] = scheduler.step(velocity, t, sample, generator=noise_gen, return_dict=False)[0]
    return out


def main():
    gen = torch.Generator().manual_seed(20261206)
    os.makedirs(OUT, exist_ok=True)
    pipe = WanPipeline.from_pretrained(os.path.join(BASE, "model"))
    pipe.scheduler = StepListEuler(num_train_timesteps=1000, shift=SHIFT)
    lora_path = os.path.join(OUT, "tiny_pipeline_lightx2v.safetensors")
    save_file({k: v.contiguous() for k, v in make_lora(pipe.transformer, gen).items()}, lora_path)
    pipe.load_lora_weights(lora_path, adapter_name="distill")

    ref = load_file(os.path.join(BASE, "reference.safetensors"))
    settings = json.load(open(os.path.join(BASE, "reference.json")))
    common = dict(prompt=settings["prompt"], height=settings["height"], width=settings["width"],
                  num_frames=settings["num_frames"], num_inference_steps=len(STEP_LIST), guidance_scale=1.0,
                  max_sequence_length=settings["max_sequence_length"])
    with torch.no_grad():
        latents = pipe(latents=ref["noise"].clone(), output_type="latent", **common).frames
        video = pipe(latents=ref["noise"].clone(), output_type="pt", **common).frames
    tensors = {
        "noise": ref["noise"],
        "final_latents": latents,
        "video": video.float(),
        "timesteps": pipe.scheduler.timesteps.float(),
        "sigmas": pipe.scheduler.sigmas.float(),
    }
    tensors.update(lcm_trajectory(gen))
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "tiny_pipeline_reference.safetensors"))
    print("timesteps", tensors["timesteps"].tolist(), "sigmas", tensors["sigmas"].tolist(), file=sys.stderr)
    two_experts(gen)


def two_experts(gen):
    base = os.path.join("tests", "fixtures", "wan22_two_expert")
    pipe = WanPipeline.from_pretrained(os.path.join(base, "model"))
    pipe.scheduler = StepListEuler(num_train_timesteps=1000, shift=SHIFT)
    high = os.path.join(OUT, "two_expert_high.safetensors")
    low = os.path.join(OUT, "two_expert_low.safetensors")
    save_file({k: v.contiguous() for k, v in make_lora(pipe.transformer, gen).items()}, high)
    save_file({k: v.contiguous() for k, v in make_lora(pipe.transformer_2, gen).items()}, low)
    pipe.load_lora_weights(high, adapter_name="high")
    pipe.load_lora_weights(low, adapter_name="low", load_into_transformer_2=True)
    ref = load_file(os.path.join(base, "reference.safetensors"))
    settings = json.load(open(os.path.join(base, "reference.json")))
    with torch.no_grad():
        latents = pipe(prompt=settings["prompt"], height=settings["height"], width=settings["width"],
                       num_frames=settings["num_frames"], num_inference_steps=len(STEP_LIST), guidance_scale=1.0,
                       guidance_scale_2=1.0, max_sequence_length=settings["max_sequence_length"],
                       latents=ref["noise"].clone(), output_type="latent").frames
    save_file({"noise": ref["noise"].contiguous(), "final_latents": latents.contiguous()},
              os.path.join(OUT, "two_expert_reference.safetensors"))


if __name__ == "__main__":
    main()
