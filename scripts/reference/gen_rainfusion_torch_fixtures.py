"""Fixtures that tie scripts/train/rainfusion_torch.py (the PyTorch RainFusion mask used by `train.py
--sparse-train` and scripts/eval/sparse_probe.py) to the engine's crates/rainfusion: for a few grids, the
token permutation and the block mask that the PyTorch code predicts from random q and k.
crates/rainfusion/tests/torch_emulation.rs checks that the Rust permutation and predict_block_mask agree.
Run from the repository root:

    python scripts/reference/gen_rainfusion_torch_fixtures.py
"""

import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "train"))
from rainfusion_torch import Layout  # noqa: E402

OUT = "tests/fixtures/rainfusion_torch/masks.safetensors"
# name: (grid, block, window, sparsity)
CASES = {
    "tile_13x16x16_b128_s08": ((13, 16, 16), 128, "tile", 0.8),
    "st_13x16x16_b128_s05": ((13, 16, 16), 128, "spatiotemporal", 0.5),
    "tile_5x16x16_b64_s09": ((5, 16, 16), 64, "tile", 0.9),
}


def main() -> None:
    torch.manual_seed(0)
    tensors = {}
    for name, (grid, block, window, sparsity) in CASES.items():
        lay = Layout(grid, block, window)
        q = torch.randn(1, 2, lay.tokens, 4)  # [B, H, L, D] raster order
        k = torch.randn(1, 2, lay.tokens, 4)
        mask = lay.block_mask(lay.permute(q), lay.permute(k), sparsity)
        tensors[f"{name}.grid"] = torch.tensor([*grid, block], dtype=torch.int64)
        tensors[f"{name}.sparsity"] = torch.tensor([sparsity], dtype=torch.float64)
        tensors[f"{name}.forward"] = lay.perm.to(torch.int64)
        tensors[f"{name}.q"] = q
        tensors[f"{name}.k"] = k
        tensors[f"{name}.mask"] = mask.to(torch.uint8)
        print(f"{name}: {lay.blocks} blocks, density {mask.float().mean():.3f}")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT)
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
