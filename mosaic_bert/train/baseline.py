"""The paper's baseline, transformers' `BertForMaskedLM` (learned positions, padded attention, GELU MLP), as a model
adapter: everything the trainer needs to know about it is here."""

from __future__ import annotations

from .flops import padded_batch_stats
from .model import config_kwargs


class HFBertFamily:
    """Same interface as `model.MosaicBertFamily`."""
    remote_code = False
    reads_document_ids = False  # a 0/1 attention_mask only: no packed rows
    card_tags = "[bert, fill-mask]"
    card_intro = "A BERT (transformers `BertForMaskedLM`) "
    sync_free_layout = None  # padded inputs only

    def build(self, section, tokenizer_len: int, pad_token_id: int):
        import transformers

        from ..modeling import BertConfig
        known = set(transformers.BertConfig().to_dict())
        mosaic_only = set(BertConfig().to_dict()) - known   # alibi_starting_size, attention_backend, ...
        kwargs = {k: v for k, v in config_kwargs(section, tokenizer_len, pad_token_id).items() if k not in mosaic_only}
        return transformers.BertForMaskedLM(transformers.BertConfig(**kwargs))

    @staticmethod
    def batch_stats(batch: dict) -> tuple[int, int, int]:
        return padded_batch_stats(batch)

    @staticmethod
    def masked_logits(logits, selected):
        return logits[selected]  # (batch, seq, vocab) -> (masked positions, vocab)
