#!/usr/bin/env python3
"""Small random-weight TAEHV decoders and their decodes by TAEHV's own PyTorch code (taehv.py).

TAEHV's reference implementation is not vendored here. Get taehv.py from
https://github.com/madebyollin/taehv (the file `taehv.py` at the repository root; fixtures were
made with commit 1f14a56) and pass its path:

    python3 scripts/reference/gen_taehv.py /path/to/taehv.py
    # or: TAEHV_PY=/path/to/taehv.py python3 scripts/reference/gen_taehv.py

Run from the repository root. Writes tests/fixtures/taehv/:
  taew2_1_small.safetensors   a 16-latent-channel decoder (taew2_1 layout, patch 1) under the
                              published key names (`decoder.{i}.*`, TAEHV's nn.Sequential
                              positions); encoder tensors left out. Its temporal grow layer at
                              decoder.7 is stored with twice the rows the model uses, as TAEHV's
                              loader allows (`patch_tgrow_layers` keeps the last rows).
  taew2_1_case.safetensors    `latents` [1, 16, 4, 4, 5] and `video` [1, 3, 13, 32, 40]
  taew2_2_small.safetensors   a 48-latent-channel decoder (taew2_2 layout: patch 2, pixel shuffle)
  taew2_2_case.safetensors    `latents` [1, 48, 3, 3, 4] and `video` [1, 3, 9, 48, 64]

`latents` are what the diffusion model samples (normalised; TAEHV applies no mean/std) in vdit's
[B, C, F, H, W] layout; `video` is TAEHV's `decode_video` (NTCHW in [0, 1], first frames trimmed)
turned into the layout and range of vdit's full VAE decoder: [B, 3, F, H, W] in [-1, 1].

The layer layout is TAEHV's own: the reference module is loaded from its source with one change,
the decoder widths `[256, 128, 64, 64]` replaced by small ones so the files stay well under 1 MB.
Weights are random (the final conv scaled so that few outputs hit the [0, 1] clamp); all f32.
"""
import os
import sys
import types

import torch
from safetensors.torch import save_file

OUT = os.path.join("tests", "fixtures", "taehv")
REAL_WIDTHS = "n_f = [256, 128, 64, 64]"
SMALL_WIDTHS = "n_f = [16, 12, 8, 8]"


def load_reference(path):
    """taehv.py as a module, with the base decoder's widths made small."""
    with open(path) as f:
        source = f.read()
    if source.count(REAL_WIDTHS) != 1:
        sys.exit(f"{path}: expected exactly one `{REAL_WIDTHS}` (another taehv.py version?)")
    module = types.ModuleType("taehv_small")
    module.__file__ = path
    exec(compile(source.replace(REAL_WIDTHS, SMALL_WIDTHS), path, "exec"), module.__dict__)
    return module


def randomize_(decoder, gen):
    """Convs ~ N(0, 2/fan_in) (ReLU gain), biases small."""
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)


def calibrate_output_(ref, model, latents):
    """Scale the last conv so the pre-clamp output is about 0.5 ± 0.2: a random decoder would
    otherwise put many values on the clamp, where any two implementations agree trivially."""
    last = model.decoder[-1]
    with torch.no_grad():
        raw = ref.apply_model_with_memblocks(model.decoder, latents, True, False)
        last.weight.mul_(0.2 / raw.std().item())
        last.bias.fill_(0.5)


def make_case(ref, name, latent_channels, patch_size, latent_shape, grow_rows_factor, seed):
    gen = torch.Generator().manual_seed(seed)
    model = ref.TAEHV(checkpoint_path=None, latent_channels=latent_channels, patch_size=patch_size)
    model.eval()
    randomize_(model.decoder, gen)
    # vdit layout [B, C, F, H, W] -> TAEHV's NTCHW. Scaled past 1 so the tanh input clamp matters.
    latents = 1.5 * torch.randn(latent_shape, generator=gen)
    latents_ntchw = latents.permute(0, 2, 1, 3, 4).contiguous()
    calibrate_output_(ref, model, latents_ntchw)

    state = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith("decoder.")}
    if grow_rows_factor > 1:
        # A stored temporal grow layer with more rows than the model uses: TAEHV's loader keeps
        # the last ones. Load through that path so the reference uses what it would.
        key = "decoder.7.conv.weight"
        rows, cols = state[key].shape[:2]
        state[key] = torch.randn((rows * grow_rows_factor, cols, 1, 1), generator=gen) * cols**-0.5
        full = model.state_dict()
        full.update(state)
        model.load_state_dict(model.patch_tgrow_layers(full))

    with torch.no_grad():
        frames = model.decode_video(latents_ntchw, parallel=True, show_progress_bar=False)
        # The sequential (frame by frame) path must agree: both are TAEHV's.
        frames_seq = model.decode_video(latents_ntchw, parallel=False, show_progress_bar=False)
    assert (frames - frames_seq).abs().max() < 1e-5, "TAEHV's parallel and sequential decodes differ"
    clamped = ((frames == 0) | (frames == 1)).float().mean().item()
    video = (frames * 2 - 1).permute(0, 2, 1, 3, 4).contiguous()

    save_file(state, os.path.join(OUT, f"{name}_small.safetensors"))
    save_file({"latents": latents.contiguous(), "video": video},
              os.path.join(OUT, f"{name}_case.safetensors"))
    print(f"{name}: latents {list(latents.shape)} -> video {list(video.shape)}, "
          f"{clamped:.1%} of outputs on the clamp, {sum(v.numel() for v in state.values())} weights")


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TAEHV_PY")
    if not path:
        sys.exit(__doc__)
    ref = load_reference(path)
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    make_case(ref, "taew2_1", 16, 1, (1, 16, 4, 4, 5), grow_rows_factor=2, seed=1)
    make_case(ref, "taew2_2", 48, 2, (1, 48, 3, 3, 4), grow_rows_factor=1, seed=2)


if __name__ == "__main__":
    main()
