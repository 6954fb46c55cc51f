"""Pretraining data: documents (``sources``, the embedded ``corpus``) -> tokenized row shards (``convert``, as its own
step with scripts/prepare_data.py or on the fly into the run's cache; ``store`` encodes) -> memory-mapped splits
(``shards``) -> deterministic, resumable microbatches (``order``, ``loader``)."""

from dataclasses import dataclass
from pathlib import Path

from ...errors import DataError
from .convert import Folder, InputShard, convert, file_shards, hub_shards, is_converted
from .corpus import build_python_docs_corpus, default_cache_dir
from .loader import BatchPlan, TrainLoader, TrainMicrobatches, eval_batches, make_batch
from .order import global_rows, permute
from .shards import TokenizedSplit, local_copy
from .sources import (detect_format, iter_documents_from_files, iter_hub_documents,
                      iter_text_documents, resolve_files, resolve_sources, take)
from .streaming import StreamingTrainLoader, build_streaming_data
from .store import DocumentEncoder, build_or_load_cache, summary, tokenize_documents, tokenizer_fingerprint

__all__ = ["BatchPlan", "DataError", "DocumentEncoder", "Folder", "InputShard", "PretrainingData", "TokenizedSplit",
           "StreamingTrainLoader", "TrainLoader", "TrainMicrobatches", "build_data", "build_or_load_cache", "build_python_docs_corpus",
           "convert", "default_cache_dir", "detect_format", "eval_batches", "file_shards",
           "global_rows", "hub_shards", "is_converted", "iter_documents_from_files", "iter_hub_documents",
           "iter_text_documents", "make_batch", "open_converted", "permute", "resolve_files", "resolve_sources", "take",
           "tokenize_documents", "tokenizer_fingerprint"]


@dataclass
class PretrainingData:
    tokenizer: object
    train: TokenizedSplit   # None with data.streaming=true: ``stream`` opens the train data instead
    valid: TokenizedSplit   # with data.streaming=true: held-out rows in memory (streaming.HeldOutRows)
    meta: dict           # rows, documents, tokens per split (the manifest without its shard lists)
    stream: object = None   # data.streaming=true: open_stream() -> the whole train stream (StreamingTrainLoader's)


def _folder_tokenizer(url: str, local: Path):
    """The tokenizer saved in a converted folder (downloaded once into ``local`` when the folder is remote)."""
    from transformers import AutoTokenizer
    src = Folder(url)
    if src.local:
        return AutoTokenizer.from_pretrained(src.path("tokenizer"))
    local.mkdir(parents=True, exist_ok=True)
    for p in src.fs.ls(src.path("tokenizer"), detail=False):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        with src.fs.open(p, "rb") as f:
            (local / name).write_bytes(f.read())
    return AutoTokenizer.from_pretrained(str(local))


def open_converted(data_cfg, tok_cfg, cache_root: Path) -> PretrainingData:
    """A folder made by scripts/prepare_data.py: checked against the recipe, then mapped; nothing is tokenized."""
    from transformers import AutoTokenizer
    url = str(data_cfg.train_files)
    manifest = Folder(url).read_json("manifest.json")
    if (manifest["seq_len"], manifest["mode"]) != (data_cfg.max_seq_len, data_cfg.mode):
        raise DataError(f"{url} was converted with seq_len {manifest['seq_len']} and mode {manifest['mode']}, the recipe "
                        f"asks for data.max_seq_len={data_cfg.max_seq_len} data.mode={data_cfg.mode}: set "
                        f"data.max_seq_len={manifest['seq_len']} data.mode={manifest['mode']}, or convert again.")
    remote = cache_root / "remote"    # the splits and the tokenizer share one local copy: local_copy(url, remote)
    if tok_cfg.name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(tok_cfg.name_or_path)
        if tokenizer_fingerprint(tokenizer) != manifest["tokenizer_fingerprint"]:
            raise DataError(f"{url} was tokenized with another tokenizer than tokenizer.name_or_path="
                            f"{tok_cfg.name_or_path}: set tokenizer.name_or_path=null (use the folder's own "
                            f"tokenizer/) or convert again with this tokenizer.")
    else:
        tokenizer = _folder_tokenizer(url, local_copy(url, remote) / "tokenizer")
    return PretrainingData(tokenizer, TokenizedSplit(url, "train", remote), TokenizedSplit(url, "valid", remote),
                           summary(manifest))


def build_data(data_cfg, tok_cfg, accelerator, log=print) -> PretrainingData:
    """A converted folder (``data.train_files`` naming one, local or an fsspec URL) is read as it is: no process
    tokenizes. Otherwise: corpus (when no data is named) -> tokenizer -> the data converted on the fly into the run's
    cache by the main process of the main node while the others wait, then read by all (``data.cache_dir`` must be on
    a filesystem every node shares; otherwise convert once with scripts/prepare_data.py to a shared or remote path)."""
    from ..tokenizer import load_or_train_tokenizer
    cache_root = Path(data_cfg.cache_dir) if data_cfg.cache_dir else default_cache_dir()
    if getattr(data_cfg, "streaming", False):
        s = build_streaming_data(data_cfg, tok_cfg, accelerator, cache_root, log=log)
        return PretrainingData(s["tokenizer"], None, s["valid"], s["meta"], stream=s["stream"])
    if is_converted(data_cfg.train_files):
        return open_converted(data_cfg, tok_cfg, cache_root)
    if isinstance(data_cfg.train_files, str) and Folder(data_cfg.train_files).exists("spec.json"):
        raise DataError(f"{data_cfg.train_files} is a conversion that did not finish (no manifest.json): run the same "
                        f"scripts/prepare_data.py command again (finished shards are kept), then train.")
    corpus = None
    with accelerator.main_process_first():
        if data_cfg.train_files is None and data_cfg.hub_name is None:
            corpus = build_python_docs_corpus(cache_root / "pydocs-corpus", valid_fraction=data_cfg.valid_fraction, log=log)
        tokenizer = load_or_train_tokenizer(tok_cfg, data_cfg, corpus, cache_root, log=log)
        folder, meta = build_or_load_cache(data_cfg, tokenizer, log=log, is_main=accelerator.is_main_process,
                                           default_corpus=corpus)
    return PretrainingData(tokenizer, TokenizedSplit(folder, "train"), TokenizedSplit(folder, "valid"), meta)
