"""Tiny random-init models for tests and benchmarks: test and benchmark support, not pipeline code.

No rule, script or library module imports this. `write_tiny_roberta` saves a small RoBERTa with its own
byte-level BPE tokenizer as a model directory that loads like a hub checkpoint, so the text extractor
and fine-tuning run offline in seconds.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from ercpipe.io.atomic import atomic_dir


def write_tiny_roberta(out_dir: str | Path, corpus: Sequence[str], *, hidden_size: int = 32, layers: int = 3,
                       heads: int = 2, intermediate_size: int | None = None, vocab_size: int = 400,
                       max_length: int = 512, seed: int = 0) -> Path:
    """A small random-init RoBERTa + byte-level BPE tokenizer trained on `corpus`, saved as a model directory.

    It loads exactly like a hub RoBERTa (AutoTokenizer / AutoModel by path); for tests, benchmarks and
    offline dry runs of the pipeline. The features mean nothing until the model is fine-tuned.
    (hidden_size=1024, layers=24, heads=16, intermediate_size=4096 has roberta-large's shape, apart
    from the vocabulary, for speed measurements.)
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(corpus), vocab_size=vocab_size, min_frequency=1, special_tokens=specials)
    vocab = bpe.get_vocab()
    # Merges serialize as ["a b", ...] or [["a", "b"], ...] depending on the tokenizers version.
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    config = RobertaConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=intermediate_size or 2 * hidden_size,
                           max_position_embeddings=max_length + 2, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RobertaModel(config)  # with the pooler, like hub checkpoints
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
