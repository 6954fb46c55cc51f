"""Pretraining data: documents (``sources``, the embedded ``corpus``) -> a tokenized on-disk cache (``store``) ->
deterministic, resumable microbatches (``loader``)."""

from dataclasses import dataclass
from pathlib import Path

from ...errors import DataError
from .corpus import build_python_docs_corpus, default_cache_dir
from .loader import BatchPlan, TrainLoader, TrainMicrobatches, eval_batches, global_rows, make_batch
from .sources import (detect_format, document_streams, iter_documents_from_files, iter_hub_documents,
                      iter_text_documents, resolve_files, resolve_sources, take)
from .store import TokenizedSplit, build_or_load_cache, tokenize_documents, tokenizer_fingerprint

__all__ = ["BatchPlan", "PretrainingData", "build_data", "DataError", "TokenizedSplit", "TrainLoader", "TrainMicrobatches", "build_or_load_cache",
           "build_python_docs_corpus", "default_cache_dir", "detect_format", "document_streams", "eval_batches",
           "global_rows", "iter_documents_from_files", "iter_hub_documents", "iter_text_documents", "make_batch",
           "resolve_files", "resolve_sources", "take", "tokenize_documents", "tokenizer_fingerprint"]


@dataclass
class PretrainingData:
    tokenizer: object
    train: TokenizedSplit
    valid: TokenizedSplit
    meta: dict           # the cache's meta.json: rows, documents, tokens per split


def build_data(data_cfg, tok_cfg, accelerator, log=print) -> PretrainingData:
    """Corpus (when no data is named) -> tokenizer -> tokenized cache, built by the main process first and then read
    by the others."""
    from ..tokenizer import load_or_train_tokenizer
    cache_root = Path(data_cfg.cache_dir) if data_cfg.cache_dir else default_cache_dir()
    corpus = None
    with accelerator.main_process_first():
        if data_cfg.train_files is None and data_cfg.hub_name is None:
            corpus = build_python_docs_corpus(cache_root / "pydocs-corpus", valid_fraction=data_cfg.valid_fraction, log=log)
        tokenizer = load_or_train_tokenizer(tok_cfg, data_cfg, corpus, cache_root, log=log)
        folder, meta = build_or_load_cache(data_cfg, tokenizer, log=log, is_main=True, default_corpus=corpus)
    return PretrainingData(tokenizer, TokenizedSplit(folder, "train"), TokenizedSplit(folder, "valid"), meta)
