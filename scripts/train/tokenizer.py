"""Word-level tokenizer for the synthetic world's caption grammar.

Ids: 0 `<pad>`, 1 `</s>` (EOS, appended to every sequence by the post-processor, as umT5's tokenizer does),
2 `<unk>`, then the grammar's words. Lower-cased, split on whitespace and punctuation. The saved
tokenizer.json is read by transformers' PreTrainedTokenizerFast and by the Rust `tokenizers` crate.
"""

from __future__ import annotations

import json
import os

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel

from world import WORDS

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def build_tokenizer() -> Tokenizer:
    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, 1)]
    )
    tok.add_special_tokens([PAD, EOS, UNK])
    return tok


def save_tokenizer(out_dir: str) -> None:
    """tokenizer.json + the transformers side files into `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    build_tokenizer().save(os.path.join(out_dir, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": PAD,
        "eos_token": EOS,
        "unk_token": UNK,
        "model_max_length": 512,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"pad_token": PAD, "eos_token": EOS, "unk_token": UNK}, f, indent=2)


if __name__ == "__main__":
    import sys

    save_tokenizer(sys.argv[1])
