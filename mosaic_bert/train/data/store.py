"""Documents -> tokenized rows (``DocumentEncoder``), and the run's cache: the data section converted on the fly
(``convert.py``, the same conversion as scripts/prepare_data.py) into ``cache_dir/tok-<hash>``, keyed by (data
identity, tokenizer vocabulary, seq_len, mode). Reading it (``shards.py``) needs only numpy memory maps, so the
training loop never waits on tokenization.

Modes: ``truncate`` (one row per document), ``chunk`` (a document split over rows), ``pack`` (several documents per
row, first-fit over a few open rows; ``attention_mask`` then holds 1-based document ids, which MosaicBERT reads).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ...errors import DataError
from .corpus import default_cache_dir
from .sources import resolve_sources

CACHE_VERSION = 3
_CHUNK_ROWS = 65536
_MAX_OPEN_ROWS = 16   # packing: rows still accepting documents
_MAX_DOCS_PER_ROW = 255


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    items = sorted(vocab.items(), key=lambda kv: kv[1])
    h = hashlib.sha256(json.dumps(items).encode())
    h.update(json.dumps([type(tokenizer).__name__, getattr(tokenizer, "do_lower_case", None),
                         tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id]).encode())
    return h.hexdigest()[:16]


class RowWriter:
    """Accumulates fixed-length rows (padded ids, lengths, optional document ids) in numpy chunks."""

    def __init__(self, seq_len: int, pad_id: int, dtype, with_docs: bool):
        self.seq_len, self.pad_id, self.dtype, self.with_docs = seq_len, pad_id, dtype, with_docs
        self.ids_chunks, self.len_chunks, self.doc_chunks = [], [], []
        self._ids, self._lens, self._docs = [], [], []

    def add(self, tokens: list[int], docs: Optional[list[int]] = None):
        row = np.full(self.seq_len, self.pad_id, dtype=self.dtype)
        row[: len(tokens)] = tokens
        self._ids.append(row)
        self._lens.append(len(tokens))
        if self.with_docs:
            d = np.zeros(self.seq_len, dtype=np.uint8)
            d[: len(docs)] = docs
            self._docs.append(d)
        if len(self._ids) >= _CHUNK_ROWS:
            self.flush()

    def flush(self):
        if self._ids:
            self.ids_chunks.append(np.stack(self._ids))
            self.len_chunks.append(np.asarray(self._lens, dtype=np.int32))
            if self.with_docs:
                self.doc_chunks.append(np.stack(self._docs))
            self._ids, self._lens, self._docs = [], [], []

    def arrays(self) -> Optional[dict]:
        self.flush()
        if not self.ids_chunks:
            return None
        out = {"ids": np.concatenate(self.ids_chunks), "lengths": np.concatenate(self.len_chunks)}
        if self.with_docs:
            out["docs"] = np.concatenate(self.doc_chunks)
        return out


class RowPacker:
    """First-fit packing of [CLS] ... [SEP] pieces into rows, over at most ``_MAX_OPEN_ROWS`` open rows
    (deterministic); a row is closed when nearly full or when it is the oldest of too many."""

    def __init__(self, writer: RowWriter):
        self.writer, self.seq_len = writer, writer.seq_len
        self.open: list[tuple[list[int], list[int]]] = []

    def add(self, piece: list[int]):
        for toks, ids in self.open:
            if len(toks) + len(piece) <= self.seq_len and ids[-1] < _MAX_DOCS_PER_ROW:
                toks.extend(piece)
                ids.extend([ids[-1] + 1] * len(piece))
                break
        else:
            self.open.append((list(piece), [1] * len(piece)))
        for row in [r for r in self.open if len(r[0]) >= self.seq_len - 4]:
            self.open.remove(row)
            self.writer.add(*row)
        while len(self.open) > _MAX_OPEN_ROWS:
            self.writer.add(*self.open.pop(0))

    def close(self):
        for row in self.open:
            self.writer.add(*row)
        self.open = []


_FIRST_CUT_CHARS = 6   # truncate mode: characters per usable token tried first (English averages ~4.5)
_SAFE_CUT_CHARS = 128  # ... and the bound that always suffices (a WordPiece token covers at most 100 characters)


def _check_special_tokens(tokenizer):
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None or tokenizer.pad_token_id is None:
        raise DataError("The tokenizer needs [CLS], [SEP] and [PAD] tokens for BERT pretraining: use a BERT "
                        "tokenizer (tokenizer.name_or_path) or let the trainer train one (tokenizer.name_or_path=null).")


def _prefix(doc: str, chars: int) -> str:
    """``doc`` cut at the last whitespace before ``chars`` (whole words only, so the prefix's tokens are the
    document's first tokens); the whole document when it is short or has no whitespace there."""
    if len(doc) <= chars:
        return doc
    cut = doc.rfind(" ", 0, chars + 1)
    return doc[:cut] if cut > 0 else doc[:chars]


class DocumentEncoder:
    """Documents (in batches) -> [CLS] piece [SEP] rows in a RowWriter (packed in ``pack`` mode). Truncate mode
    tokenizes only a prefix of each document: first the words in ``body x 6`` characters, and again with ``body x
    128`` characters for the few documents whose short prefix gave fewer than ``body`` tokens; the rows equal those
    of tokenizing whole documents."""

    def __init__(self, tokenizer, seq_len: int, mode: str):
        _check_special_tokens(tokenizer)
        self.tokenizer, self.mode, self.body = tokenizer, mode, seq_len - 2
        self.cls, self.sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        dtype = np.uint16 if len(tokenizer) <= 65535 else np.int32
        self.writer = RowWriter(seq_len, tokenizer.pad_token_id, dtype, with_docs=(mode == "pack"))
        self.sink = RowPacker(self.writer) if mode == "pack" else self.writer
        self.documents = 0

    def _encode(self, texts: list[str]) -> list[list[int]]:
        trunc = self.mode == "truncate"
        return self.tokenizer(texts, add_special_tokens=False, truncation=trunc, max_length=self.body if trunc else None,
                              return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    def add(self, docs: list[str]):
        if self.mode == "truncate":
            first = [_prefix(d, self.body * _FIRST_CUT_CHARS) for d in docs]
            enc = self._encode(first)
            again = [i for i, (d, f, t) in enumerate(zip(docs, first, enc)) if len(t) < self.body and len(f) < len(d)]
            if again:
                for i, t in zip(again, self._encode([_prefix(docs[i], self.body * _SAFE_CUT_CHARS) for i in again])):
                    enc[i] = t
        else:
            enc = self._encode(docs)
        for toks in enc:
            if not toks:
                continue
            self.documents += 1
            pieces = [toks[:self.body]] if self.mode == "truncate" else \
                [toks[i:i + self.body] for i in range(0, len(toks), self.body)]
            for p in pieces:
                self.sink.add([self.cls] + p + [self.sep])

    def finish(self) -> tuple[Optional[dict], int]:
        """({"ids": (N, seq_len), "lengths": (N,), ["docs": (N, seq_len) uint8 document ids]} or None, documents)."""
        if self.mode == "pack":
            self.sink.close()
        return self.writer.arrays(), self.documents


def tokenize_documents(docs: Iterable[str], tokenizer, seq_len: int, mode: str, batch_docs: int = 1000):
    """-> ({"ids": (N, seq_len), "lengths": (N,), ["docs": (N, seq_len) uint8 document ids]} or None, documents)."""
    enc, batch = DocumentEncoder(tokenizer, seq_len, mode), []
    for d in docs:
        batch.append(d)
        if len(batch) >= batch_docs:
            enc.add(batch)
            batch = []
    if batch:
        enc.add(batch)
    return enc.finish()


def data_identity(cfg, files: list[str], valid_files: list[str]) -> dict:
    def stat(p):
        st = os.stat(p)
        return [os.path.abspath(p), st.st_size, int(st.st_mtime)]
    return {
        "train": [stat(p) for p in files], "valid": [stat(p) for p in valid_files],
        "hub": [cfg.hub_name, cfg.hub_config, cfg.hub_train_split, cfg.hub_valid_split] if cfg.hub_name else None,
        "format": cfg.format, "text_column": cfg.text_column, "max_train_docs": cfg.max_train_docs,
        "max_valid_docs": cfg.max_valid_docs, "valid_fraction": cfg.valid_fraction,
    }


def _num_proc(cfg, files: list[str]) -> int:
    """data.num_proc, or (0) one process per core for a Hub dataset or local inputs over 64 MB in several files, else
    1 (a pool is not worth it for small data)."""
    if getattr(cfg, "num_proc", 0):
        return int(cfg.num_proc)
    if cfg.hub_name is not None:   # many data files, read over the network
        return os.cpu_count() or 1
    size = sum(os.path.getsize(f) for f in files) if files else 0
    return max(1, min(os.cpu_count() or 1, len(files))) if size > 64 << 20 else 1


def _write_lengths(folder: Path):
    """``train_lengths.npy``: every train row's length in one array (benchmarks/pretrain_bare_loop.py reads it),
    written through a memory map shard by shard."""
    from .shards import TokenizedSplit
    split = TokenizedSplit(folder, "train")
    tmp = folder / f".train_lengths.npy.tmp-{os.getpid()}"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int32, shape=(len(split),))
    for k in range(len(split.shards)):
        out[split.offsets[k]:split.offsets[k + 1]] = split.shard(k)[1]
    out.flush()
    del out
    os.replace(tmp, folder / "train_lengths.npy")


def summary(manifest: dict) -> dict:
    """The manifest without its shard lists: rows, documents, tokens per split (the run summary's data section)."""
    return {k: ({kk: vv for kk, vv in v.items() if kk != "shards"} if k in ("train", "valid") else v)
            for k, v in manifest.items() if k != "identity"}


def build_or_load_cache(cfg, tokenizer, log=print, is_main: bool = True, default_corpus: Optional[dict] = None):
    """Convert the data section ``cfg`` once (scripts/prepare_data.py's conversion, run on the fly) into
    ``cache_dir/tok-<hash>``; returns (folder, meta). Only the main process converts (wrap the call in
    ``accelerator.main_process_first()``); the others read the folder, which must then be on a shared filesystem.
    An interrupted conversion resumes from its finished shards."""
    from .convert import convert, file_shards, hub_shards, is_converted
    files, valid_files = resolve_sources(cfg, default_corpus)
    key_obj = {"v": CACHE_VERSION, "data": data_identity(cfg, files, valid_files), "tok": tokenizer_fingerprint(tokenizer),
               "seq_len": cfg.max_seq_len, "mode": cfg.mode}
    key = hashlib.sha256(json.dumps(key_obj, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir() / "tokenized"
    folder = root / f"tok-{key}"
    if is_converted(str(folder)) and (folder / "train_lengths.npy").exists():
        return folder, summary(json.loads((folder / "manifest.json").read_text()))
    if not is_main:
        raise DataError(f"The tokenized cache {folder} is missing on a non-main process: processes must share a "
                        f"filesystem. Fix: set data.cache_dir to a folder every process (every node) can read, or "
                        f"convert once with scripts/prepare_data.py and set data.train_files to its output folder.")
    log(f"[data] tokenizing into {folder} (mode={cfg.mode}, max_seq_len={cfg.max_seq_len}) ...")
    if cfg.hub_name is not None:
        inputs = hub_shards(cfg.hub_name, cfg.hub_config, cfg.hub_train_split, cfg.hub_valid_split, cfg.text_column)
    else:
        inputs = file_shards(files, valid_files, cfg.format, cfg.text_column)
    root.mkdir(parents=True, exist_ok=True)
    manifest = convert(inputs, str(folder), tokenizer, cfg.max_seq_len, cfg.mode, cfg.valid_fraction,
                       num_proc=_num_proc(cfg, files + valid_files), max_train_docs=cfg.max_train_docs,
                       max_valid_docs=cfg.max_valid_docs if (valid_files or cfg.hub_name) else None,
                       log=lambda *a: None)
    _write_lengths(folder)
    meta = summary(manifest)
    log(f"[data] cache ready: {meta['train']['rows']} train rows ({meta['train']['tokens']:,} tokens from "
        f"{meta['train']['documents']} docs), {meta['valid']['rows']} held-out rows")
    return folder, meta
