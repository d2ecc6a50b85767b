"""A full-size model folder of random weights, in the diffusers layout, for timing whole runs on the GPU
machine (which has no network and so no real checkpoints).

Every network has its real shapes and diffusers' / transformers' own random initialisation, stored in bf16:
umT5-XXL (5.7 B parameters, about 11.4 GB), the transformer(s) and the VAE, with a small word-level tokenizer
(the tokenizer's size does not change the encoder's cost: prompts are padded to 512 tokens). Both
`vdit generate -m DIR` and diffusers' `WanPipeline.from_pretrained(DIR)` load the same files, so loading
is timed from the same bytes (the page cache holds them after this script wrote them).

    python3 scripts/gpu/make_random_model.py DIR [--model wan2.1-t2v-1.3b] [--fp8]

Models: wan2.1-t2v-1.3b (the default), wan2.2-ti2v-5b, wan2.2-t2v-a14b (two 14B experts, `transformer/` and
`transformer_2/`, with `boundary_ratio` 0.875). The networks are initialised on the GPU when one is there (seconds
instead of minutes on the CPU). `--fp8` stores the transformers' block linear weights as plain `float8_e4m3fn`
(everything else bf16), in shards of at most 5 GB: the A14B folder then fits the GPU machine's 64 GB disk (two bf16
experts and umT5-XXL would take 69 GB).
"""
import argparse
import json
import os
import time

import torch

UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6,
                tie_word_embeddings=False)

TRANSFORMERS = {
    "wan2.1-t2v-1.3b": dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                            out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                            rope_max_seq_len=1024),
    "wan2.2-t2v-a14b": dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                            out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40,
                            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                            rope_max_seq_len=1024),
    "wan2.2-ti2v-5b": dict(patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48,
                           out_channels=48, text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30,
                           cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                           rope_max_seq_len=1024),
}

# diffusers' AutoencoderKLWan defaults are the Wan2.1 VAE; the Wan2.2 VAE differs in these fields.
VAES = {
    "wan2.1-t2v-1.3b": dict(),
    "wan2.2-t2v-a14b": dict(),
    "wan2.2-ti2v-5b": dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, patch_size=2,
                           in_channels=12, out_channels=12, scale_factor_spatial=16,
                           latents_mean=[0.0] * 48, latents_std=[1.0] * 48),
}

# Words for the tokenizer: any small vocabulary will do for timing.
WORDS = ("a cat walks on the grass realistic style red blue green circle square moving left right up down "
         "bright colors overexposed static blurred details subtitles worst quality low").split()


def make_tokenizer(out):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)
    fast.save_pretrained(os.path.join(out, "tokenizer"))


def save(module, out, name):
    start = time.time()
    module.to(torch.bfloat16).save_pretrained(os.path.join(out, name), safe_serialization=True)
    print(f"{name:<14} {sum(p.numel() for p in module.parameters()) / 1e9:6.2f} B params, "
          f"saved in {time.time() - start:.1f} s", flush=True)


def save_fp8(module, out, name, shard_bytes=5 * 10**9):
    """The block linear weights (2-D `blocks.*.weight`) as float8_e4m3fn, the rest bf16, in shards with a
    diffusers-style index."""
    from safetensors.torch import save_file
    start = time.time()
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    module.save_config(folder)
    shards, current, size = [], {}, 0
    for key, value in module.state_dict().items():
        fp8 = key.startswith("blocks.") and key.endswith(".weight") and value.dim() == 2
        value = value.to(torch.float8_e4m3fn if fp8 else torch.bfloat16).contiguous().cpu()
        nbytes = value.numel() * value.element_size()
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = value
        size += nbytes
    shards.append(current)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        file = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(folder, file))
        for key, value in shard.items():
            weight_map[key] = file
            total += value.numel() * value.element_size()
    with open(os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    print(f"{name:<14} {sum(p.numel() for p in module.parameters()) / 1e9:6.2f} B params, fp8 blocks, "
          f"{total / 1e9:.1f} GB in {len(shards)} shards, saved in {time.time() - start:.1f} s", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--model", default="wan2.1-t2v-1.3b", choices=sorted(TRANSFORMERS))
    p.add_argument("--fp8", action="store_true", help="block linear weights of the transformers as float8_e4m3fn")
    args = p.parse_args()
    experts = ["transformer", "transformer_2"] if args.model == "wan2.2-t2v-a14b" else ["transformer"]
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    make_tokenizer(args.out)
    with torch.device(device):
        save(UMT5EncoderModel(UMT5Config(**UMT5_XXL)).eval(), args.out, "text_encoder")
        torch.cuda.empty_cache()
        for name in experts:
            torch.set_default_dtype(torch.bfloat16)  # a 14B expert in f32 would take 57 GB of the GPU
            module = WanTransformer3DModel(**TRANSFORMERS[args.model]).to(torch.bfloat16).eval()
            torch.set_default_dtype(torch.float32)
            (save_fp8 if args.fp8 else save)(module, args.out, name)
            del module
            torch.cuda.empty_cache()
        save(AutoencoderKLWan(**VAES[args.model]).eval(), args.out, "vae")
    shift = 5.0
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                            flow_shift=shift).save_pretrained(os.path.join(args.out, "scheduler"))
    index = {
        "_class_name": "WanPipeline", "_diffusers_version": __import__("diffusers").__version__,
        "boundary_ratio": 0.875 if len(experts) == 2 else None,
        "expand_timesteps": args.model == "wan2.2-ti2v-5b",
        "scheduler": ["diffusers", "UniPCMultistepScheduler"], "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": ["diffusers", "WanTransformer3DModel"] if len(experts) == 2 else [None, None],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    with open(os.path.join(args.out, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    print(f"wrote {args.out} ({args.model}, random weights, {'fp8 blocks' if args.fp8 else 'bf16'})")


if __name__ == "__main__":
    main()
