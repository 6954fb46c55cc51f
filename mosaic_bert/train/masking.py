"""BERT masked-language-model masking (the transformers MLM collator's 80/10/10 rule), made resumable.

Each token's random draws are a pure function of ``(seed, sample_key, position, stream)`` through a
counter-based hash (splitmix64), instead of a stateful RNG. The sample key is the sample's global
index in the run, so the masks do not depend on how a global batch is split over processes and
accumulation steps, or on where a run was resumed: a resumed or a 2-process run masks exactly what a
straight 1-process run masks.

Rule (as ``DataCollatorForLanguageModeling``): each non-special token is selected with probability
``mlm_probability``; a selected token becomes ``[MASK]`` with probability 0.8, a uniformly random
token id from the tokenizer's vocabulary with probability 0.1, and stays unchanged with probability
0.1. Labels are the original ids at selected positions and -100 elsewhere. Special tokens
([CLS], [SEP], [PAD], ...) are never selected.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import RecipeError

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
_STREAM_SELECT, _STREAM_ACTION, _STREAM_TOKEN = 1, 2, 3


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + _M1
        z = (z ^ (z >> np.uint64(30))) * _M2
        z = (z ^ (z >> np.uint64(27))) * _M3
        return z ^ (z >> np.uint64(31))


def hash_uniform(seed: int, keys: np.ndarray, seq_len: int, stream: int) -> np.ndarray:
    """Uniform [0, 1) floats of shape (len(keys), seq_len), a pure function of the inputs."""
    keys = np.asarray(keys, dtype=np.int64).astype(np.uint64)
    base = _splitmix64(np.array([(int(seed) & 0xFFFFFFFF) * 1000003 + stream], dtype=np.uint64))
    h = _splitmix64(base ^ keys)  # (B,)
    pos = np.arange(seq_len, dtype=np.uint64)
    h = _splitmix64(h[:, None] ^ _splitmix64(pos + np.uint64(0x5851F42D4C957F2D))[None, :])
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


class MLMMasker:
    """Deterministic 80/10/10 masking; call with token ids (B, S) and per-sample keys (B,)."""

    def __init__(self, mask_token_id: int, special_ids, random_vocab_size: int, mlm_probability: float, seed: int,
                 mask_replace_prob: float = 0.8, random_replace_prob: float = 0.1):
        self.mask_token_id = int(mask_token_id)
        self.special_ids = np.array(sorted(set(int(i) for i in special_ids)), dtype=np.int64)
        self.random_vocab_size = int(random_vocab_size)
        self.p = float(mlm_probability)
        self.seed = int(seed)
        self.p_mask = mask_replace_prob
        self.p_random = random_replace_prob

    @classmethod
    def from_tokenizer(cls, tokenizer, mlm_probability: float, seed: int) -> "MLMMasker":
        if tokenizer.mask_token_id is None:
            raise RecipeError("The tokenizer has no mask token; MLM pretraining needs one. Fix: use a BERT tokenizer "
                              "(tokenizer.name_or_path) or let the trainer train one (tokenizer.name_or_path=null).")
        return cls(tokenizer.mask_token_id, tokenizer.all_special_ids, len(tokenizer), mlm_probability, seed)

    def __call__(self, input_ids: np.ndarray, keys: np.ndarray):
        ids = np.asarray(input_ids, dtype=np.int64)
        b, s = ids.shape
        special = np.isin(ids, self.special_ids)
        u_sel = hash_uniform(self.seed, keys, s, _STREAM_SELECT)
        u_act = hash_uniform(self.seed, keys, s, _STREAM_ACTION)
        u_tok = hash_uniform(self.seed, keys, s, _STREAM_TOKEN)
        selected = (u_sel < self.p) & ~special
        labels = np.where(selected, ids, -100)
        out = ids.copy()
        to_mask = selected & (u_act < self.p_mask)
        to_random = selected & (u_act >= self.p_mask) & (u_act < self.p_mask + self.p_random)
        out[to_mask] = self.mask_token_id
        rand_tokens = np.minimum((u_tok * self.random_vocab_size).astype(np.int64), self.random_vocab_size - 1)
        out[to_random] = rand_tokens[to_random]
        return torch.from_numpy(out), torch.from_numpy(labels)
