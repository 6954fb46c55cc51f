"""The model a recipe trains, behind one small adapter interface: how to build it from the model section, how much
work a batch is for it (FLOPs), which logits belong to the masked positions, and how its model card reads.
MosaicBERT is the default; the transformers BERT baseline is the other adapter (`baseline.py`)."""

from __future__ import annotations

import dataclasses
import math

from ..errors import RecipeError
from .flops import unpadded_batch_stats


def round_vocab(n: int, multiple: int = 64) -> int:
    return int(math.ceil(n / multiple) * multiple)


def config_kwargs(section, tokenizer_len: int, pad_token_id: int) -> dict:
    """The model section as config keyword arguments, with the vocabulary and padding id taken from the tokenizer."""
    kwargs = {k: v for k, v in dataclasses.asdict(section).items() if k != "family"}
    vocab = round_vocab(tokenizer_len)
    if section.vocab_size is not None:
        if section.vocab_size < tokenizer_len:
            raise RecipeError(f"The tokenizer has {tokenizer_len} tokens but model.vocab_size={section.vocab_size}: ids "
                              f"past the embedding table would crash. Fix: set model.vocab_size={vocab} (or leave it "
                              f"unset to use the tokenizer's size rounded up to a multiple of 64).")
        vocab = section.vocab_size
    return {**kwargs, "vocab_size": vocab, "pad_token_id": pad_token_id}


class MosaicBertFamily:
    """`mosaic_bert.BertForMaskedLM`: unpadded attention, MLM head on the masked positions only, saved with its
    remote code."""
    remote_code = True
    reads_document_ids = True   # packed rows: attention_mask holds 1-based document ids
    card_tags = "[bert, mosaic-bert, fill-mask, alibi]"
    card_intro = "A MosaicBERT (ALiBi attention, unpadded sequences, GeGLU feed-forward; Portes et al., NeurIPS 2023) "

    def build(self, section, tokenizer_len: int, pad_token_id: int):
        from ..modeling import BertConfig, BertForMaskedLM
        try:
            config = BertConfig(**config_kwargs(section, tokenizer_len, pad_token_id))
        except ValueError as e:  # the model's own input checks: name the recipe section
            raise RecipeError(f"model section: {e}") from e
        return BertForMaskedLM(config)

    @staticmethod
    def batch_stats(batch: dict) -> tuple[int, int, int]:
        return unpadded_batch_stats(batch)

    # the inputs of `sync_free_layout` whose length (dim 0) changes with the batch (bucketed); every other input keeps
    # its shape for a given microbatch size and max_seq_len, and `max_length_q` is the padded length (a constant)
    dynamic_inputs = ("indices", "masked_positions")

    @staticmethod
    def sync_free_layout(batch: dict) -> dict:
        """The unpadding computed in the data loader with bucketed sizes (`bert_padding.bucketed_layout`): the
        compiled model then sees a few shapes, no data-dependent size and no host sync (the fast path)."""
        from ..modeling.bert_padding import bucketed_layout
        return bucketed_layout(batch["attention_mask"], batch["labels"])

    @staticmethod
    def masked_logits(logits, selected):
        return logits  # already (masked positions, vocab)


def model_family(name: str):
    """The adapter of ``model.family``: "mosaic" (the default) or "hf" (the transformers BERT baseline)."""
    from .baseline import HFBertFamily
    families = {"mosaic": MosaicBertFamily, "hf": HFBertFamily}
    if name not in families:
        raise RecipeError(f"model.family must be one of {', '.join(families)}, got '{name}'.")
    return families[name]()
