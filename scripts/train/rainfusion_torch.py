"""RainFusion 2.0's block mask as vdit computes it (crates/rainfusion), in PyTorch.

Used by train.py (`--sparse-train`: the transformer also learns to give the dense answer under the
sparse mask) and by scripts/eval/sparse_probe.py (where sparse attention loses quality). The layout
follows crates/rainfusion/src/layout.rs for grids of whole 8x8 tiles: frame 0 moves to the end of
the sequence and stays dense (the first-frame sink); the other frames are cut into 1x8x8 tiles
(`tile`) or 2x8x8 windows over frame pairs (`spatiotemporal`), and blocks are runs of `block`
consecutive tokens in that order. Selection is predict.rs's: block-mean q and k, scores scaled by
1/sqrt(d), the top ceil(blocks * (1 - sparsity)) key blocks per query block (ties kept), plus the
forced rows and columns of the sink.
"""

from __future__ import annotations

import contextlib
import math

import torch

TILE = 8


def permutation(frames: int, height: int, width: int, window: str = "tile", sink: bool = True) -> torch.Tensor:
    """Permuted position -> raster token index."""
    if height % TILE or width % TILE:
        raise ValueError(f"only grids of whole {TILE}x{TILE} tiles are handled (got {height}x{width})")
    if window not in ("tile", "spatiotemporal"):
        raise ValueError(f"unknown window '{window}'")
    per_frame = height * width
    video = list(range(1, frames)) if sink else list(range(frames))
    groups = [[t] for t in video] if window == "tile" else [video[i:i + 2] for i in range(0, len(video), 2)]
    order = []
    for group in groups:
        for tile_row in range(height // TILE):
            for tile_col in range(width // TILE):
                for t in group:
                    for y in range(TILE):
                        row = tile_row * TILE + y
                        order.extend(t * per_frame + row * width + tile_col * TILE + x for x in range(TILE))
    if sink:
        order.extend(range(per_frame))
    return torch.tensor(order)


def kept_per_row(blocks: int, sparsity: float) -> int:
    """predict.rs's kept_per_row: ceil(blocks * (1 - sparsity)), at least 1."""
    return max(1, min(blocks, math.ceil(blocks * (1 - sparsity) - 1e-9)))


def top_k_rows(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Per row keeps the `keep` largest scores and ties."""
    kth = scores.topk(keep, dim=-1).values[..., -1:]
    return scores >= kth


class Layout:
    """A latent token grid (frames, height, width) cut into blocks for the sparse mask."""

    def __init__(self, grid: tuple[int, int, int], block: int = 128, window: str = "tile", device=None):
        t, h, w = grid
        self.grid, self.block, self.window = grid, block, window
        self.tokens, self.frame_tokens = t * h * w, h * w
        if self.tokens % block or self.frame_tokens % block:
            raise ValueError(f"block size {block} must divide the frame's {self.frame_tokens} tokens")
        self.perm = permutation(t, h, w, window).to(device)
        self.inverse = torch.argsort(self.perm)
        self.blocks = self.tokens // block
        self.forced_from = (self.tokens - self.frame_tokens) // block
        self.block_of_token = self.inverse // block  # raster token -> its block

    def permute(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, L, D] raster order -> permuted order."""
        return x[:, :, self.perm]

    def block_means(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, L, D] permuted -> [B, H, blocks, D]."""
        return x.reshape(*x.shape[:2], self.blocks, self.block, x.shape[-1]).mean(3)

    def block_mask(self, q: torch.Tensor, k: torch.Tensor, sparsity: float, scores: torch.Tensor | None = None,
                   self_block: bool = False) -> torch.Tensor:
        """q, k: [B, H, L, D] permuted -> [B, H, blocks, blocks] bool (True = computed).

        `scores` replaces the block-mean scores (e.g. true attention mass: an oracle); `self_block` also keeps
        each query block's own key block."""
        if scores is None:
            scores = self.block_scores(q, k)
        keep = self.key_blocks(scores, kept_per_row(self.blocks, sparsity))
        if self_block:
            keep |= torch.eye(self.blocks, dtype=torch.bool, device=keep.device)
        keep[..., self.forced_from:, :] = True
        return keep

    def block_scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """q, k: [B, H, L, D] permuted -> [B, H, blocks, blocks]: RainFusion's block-mean scores q̂·k̂/√d."""
        return self.block_means(q) @ self.block_means(k).transpose(-1, -2) / math.sqrt(q.shape[-1])

    def key_blocks(self, scores: torch.Tensor, keep: int) -> torch.Tensor:
        """[..., blocks] scores per query block -> bool: its `keep` best key blocks (and ties) plus the sink's."""
        chosen = top_k_rows(scores, keep)
        chosen[..., self.forced_from:] = True
        return chosen

    def token_mask(self, block_mask: torch.Tensor) -> torch.Tensor:
        """[B, H, blocks, blocks] -> [B, H, L, L] bool over tokens in raster order."""
        idx = self.block_of_token
        return block_mask[:, :, idx][:, :, :, idx]


def patch_self_attention(tokens: int, handler) -> None:
    """Routes diffusers' Wan self-attention over a grid of `tokens` tokens through `handler(query, key, value,
    attend)`, where q, k, v are [B, L, H, D] and `attend(query, key, value, attn_mask=None)` is diffusers'
    own attention; cross-attention and other sequence lengths stay untouched."""
    import diffusers.models.transformers.transformer_wan as wan

    original = wan.dispatch_attention_fn

    def dispatch(query, key, value, attn_mask=None, **kw):
        if attn_mask is not None or not query.shape[1] == key.shape[1] == tokens:
            return original(query, key, value, attn_mask=attn_mask, **kw)

        def attend(q, k, v, attn_mask=None):
            return original(q, k, v, attn_mask=attn_mask, **kw)

        return handler(query, key, value, attend)

    wan.dispatch_attention_fn = dispatch


class SparseTraining:
    """Makes diffusers' Wan self-attention run under RainFusion's mask while `active` (raster token order;
    the mask is predicted from the detached q and k of each call)."""

    def __init__(self, grid: tuple[int, int, int], device, block: int = 128, window: str = "tile"):
        self.layout = Layout(grid, block, window, device)
        self.sparsity: float | None = None
        patch_self_attention(self.layout.tokens, self.attend)

    def attend(self, query, key, value, attend):
        """[B, L, H, D] each: dense outside `active`, else under the mask predicted from q and k."""
        if self.sparsity is None:
            return attend(query, key, value)
        with torch.no_grad():
            q = self.layout.permute(query.detach().transpose(1, 2).float())
            k = self.layout.permute(key.detach().transpose(1, 2).float())
            mask = self.layout.token_mask(self.layout.block_mask(q, k, self.sparsity))
        return attend(query, key, value, attn_mask=mask)

    @contextlib.contextmanager
    def active(self, sparsity: float):
        self.sparsity = sparsity
        try:
            yield
        finally:
            self.sparsity = None


class AttentionConcentration:
    """Measures, inside diffusers' Wan self-attention over one grid, how much of a query row's attention mass
    lands in the key blocks that RainFusion 2.0 at `sparsity` would keep, keeping the autograd graph so that
    a shortfall can join the training loss. Attention itself stays dense and unchanged: this shapes the dense
    model's attention, it never runs the sparse path.

    `select` says how the kept blocks are chosen (plus the first-frame sink either way): "mass", the `keep`
    heaviest key blocks of the query block by true attention mass (the best any predictor could do);
    "predicted", the blocks RainFusion's own predictor picks, top `keep` of the block-mean scores
    q̂·k̂/√d (as `Layout.block_mask`), so the term also rewards attention that the block means can find.

    While `recording`, every self-attention call appends a [B, H, R] tensor of kept mass to `kept`, over
    R = `query_blocks` x `rows` query rows drawn from random non-sink query blocks."""

    SELECTIONS = ("mass", "predicted")

    def __init__(self, grid: tuple[int, int, int], device, sparsity: float = 0.8, query_blocks: int = 2,
                 rows: int = 64, block: int = 128, window: str = "tile", select: str = "mass"):
        self.layout = Layout(grid, block, window, device)
        if rows > block:
            raise ValueError(f"rows per query block ({rows}) exceed the block size ({block})")
        if select not in self.SELECTIONS:
            raise ValueError(f"block selection '{select}' is not one of {', '.join(self.SELECTIONS)}")
        self.select = select
        self.keep = kept_per_row(self.layout.blocks, sparsity)
        self.query_blocks, self.rows = query_blocks, rows
        self.recording = False
        self.kept: list[torch.Tensor] = []
        patch_self_attention(self.layout.tokens, self.attend)

    def attend(self, query, key, value, attend):
        out = attend(query, key, value)
        if self.recording:
            self.kept.append(self.kept_mass(query, key))
        return out

    def kept_mass(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """query, key: [B, L, H, D] raster order -> [B, H, R] kept mass per sampled query row."""
        lay = self.layout
        device = query.device
        blocks = torch.randperm(lay.forced_from, device=device)[: self.query_blocks]
        offsets = torch.randperm(lay.block, device=device)[: self.rows]
        positions = (blocks[:, None] * lay.block + offsets[None, :]).reshape(-1)  # permuted, block-major
        with torch.autocast(device.type, enabled=False):
            q = query[:, lay.perm[positions]].transpose(1, 2).float()  # [B, H, R, D]
            k = key.transpose(1, 2).float()  # [B, H, L, D]
            probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # [B, H, R, L]
            mass = probs[..., lay.perm].reshape(*probs.shape[:3], lay.blocks, lay.block).sum(-1)  # [B, H, R, nb]
            # The selection is made per query block (all its rows share one set of key blocks, as in the
            # engine's mask) and is not differentiated.
            if self.select == "mass":
                scores = mass.detach().reshape(*mass.shape[:2], len(blocks), self.rows, lay.blocks).mean(3)
            else:
                # The engine's scores over all 128 tokens of every block; the sampled query blocks' rows.
                q_all = lay.permute(query.detach().transpose(1, 2).float())
                scores = lay.block_scores(q_all, lay.permute(k.detach()))[:, :, blocks]  # [B, H, nq, nb]
            chosen = lay.key_blocks(scores, self.keep).repeat_interleave(self.rows, dim=2)  # [B, H, R, nb]
            return (mass * chosen).sum(-1)

    @contextlib.contextmanager
    def record(self):
        self.recording, self.kept = True, []
        try:
            yield
        finally:
            self.recording = False


def check_concentration(select: str = "mass", seed: int = 0) -> float:
    """AttentionConcentration.kept_mass against the mass summed from the whole attention matrix, on a small grid
    with all rows of the sampled query blocks; the reference picks the blocks by mean true mass ("mass") or
    takes them from `Layout.block_mask`, the engine's mask ("predicted"). Returns the largest difference."""
    torch.manual_seed(seed)
    layout = Layout((5, 16, 16), block=128)
    probe = AttentionConcentration.__new__(AttentionConcentration)
    probe.layout, probe.keep, probe.select = layout, kept_per_row(layout.blocks, 0.8), select
    probe.query_blocks, probe.rows = 2, layout.block
    query, key = torch.randn(1, layout.tokens, 2, 8), 3 * torch.randn(1, layout.tokens, 2, 8)
    state = torch.random.get_rng_state()
    kept = probe.kept_mass(query, key)
    torch.random.set_rng_state(state)  # the same query blocks and rows again
    blocks = torch.randperm(layout.forced_from)[:2]
    offsets = torch.randperm(layout.block)[: layout.block]
    q, k = layout.permute(query.transpose(1, 2)), layout.permute(key.transpose(1, 2))
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    mass = probs.reshape(1, 2, layout.blocks, layout.block, layout.blocks, layout.block).sum(-1)
    engine_mask = layout.block_mask(q, k, 0.8)  # [1, H, nb, nb]
    worst = 0.0
    for i, b in enumerate(blocks):
        if select == "mass":
            chosen = top_k_rows(mass[:, :, b].mean(2), probe.keep)
            chosen[..., layout.forced_from:] = True
        else:
            chosen = engine_mask[:, :, b]
        expected = (mass[:, :, b][:, :, offsets] * chosen[:, :, None]).sum(-1)
        got = kept[:, :, i * layout.block:(i + 1) * layout.block]
        worst = max(worst, float((expected - got).abs().max()))
    return worst


if __name__ == "__main__":
    failed = False
    for select in AttentionConcentration.SELECTIONS:
        difference = check_concentration(select)
        print(f"kept mass ({select} selection) vs the whole attention matrix: largest difference {difference:.2e}")
        failed |= not difference < 1e-5
    raise SystemExit(1 if failed else 0)
