"""Documents -> tokenized rows on disk, and back.

The cache is a folder of ``.npy`` arrays per split (rows of ``max_seq_len`` token ids, their lengths, and document
ids when packing), keyed by a hash of (data identity, tokenizer vocabulary, seq_len, mode) and written atomically by
one process. Reading it needs only numpy (memory-mapped), so the training loop never waits on tokenization.

Modes: ``truncate`` (one row per document), ``chunk`` (a document split over rows), ``pack`` (several documents per
row, first-fit over a few open rows; ``attention_mask`` then holds 1-based document ids, which MosaicBERT reads).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ...errors import DataError
from .corpus import default_cache_dir
from .sources import document_streams, resolve_sources

CACHE_VERSION = 2
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


def tokenize_documents(docs: Iterable[str], tokenizer, seq_len: int, mode: str, batch_docs: int = 1000):
    """-> ({"ids": (N, seq_len), "lengths": (N,), ["docs": (N, seq_len) uint8 document ids]} or None, documents)."""
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    if cls_id is None or sep_id is None or pad_id is None:
        raise DataError("The tokenizer needs [CLS], [SEP] and [PAD] tokens for BERT pretraining: use a BERT "
                        "tokenizer (tokenizer.name_or_path) or let the trainer train one (tokenizer.name_or_path=null).")
    dtype = np.uint16 if len(tokenizer) <= 65535 else np.int32
    writer = RowWriter(seq_len, pad_id, dtype, with_docs=(mode == "pack"))
    sink = RowPacker(writer) if mode == "pack" else writer
    body, n_docs, batch = seq_len - 2, 0, []
    # truncate keeps a document's first `body` tokens: the characters past body x 128 (a WordPiece token covers at
    # most 100 characters of a word plus its spacing) are never used, so a huge one-line file is not tokenized whole
    cut = body * 128 if mode == "truncate" else None

    def encode(batch):
        enc = tokenizer(batch, add_special_tokens=False, truncation=(mode == "truncate"),
                        max_length=body if mode == "truncate" else None, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]
        for toks in (t for t in enc if t):
            pieces = [toks[:body]] if mode == "truncate" else [toks[i:i + body] for i in range(0, len(toks), body)]
            for p in pieces:
                sink.add([cls_id] + p + [sep_id])
        return sum(1 for t in enc if t)

    for d in docs:
        batch.append(d[:cut] if cut else d)
        if len(batch) >= batch_docs:
            n_docs, batch = n_docs + encode(batch), []
    if batch:
        n_docs += encode(batch)
    if mode == "pack":
        sink.close()
    return writer.arrays(), n_docs


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


class TokenizedSplit:
    """Memory-mapped rows of one split."""

    def __init__(self, folder: Path, split: str):
        self.ids = np.load(folder / f"{split}_ids.npy", mmap_mode="r")
        self.lengths = np.load(folder / f"{split}_lengths.npy", mmap_mode="r")
        p = folder / f"{split}_docs.npy"
        self.docs = np.load(p, mmap_mode="r") if p.exists() else None

    def __len__(self):
        return self.ids.shape[0]

    @property
    def seq_len(self):
        return self.ids.shape[1]

    def rows(self, idx: np.ndarray):
        """(ids, document ids or 0/1 attention, lengths) of rows ``idx`` as int64 arrays."""
        idx = np.asarray(idx)
        ids = np.asarray(self.ids[idx], dtype=np.int64)
        lengths = np.asarray(self.lengths[idx])
        if self.docs is not None:
            docs = np.asarray(self.docs[idx], dtype=np.int64)
        else:
            docs = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
        return ids, docs, lengths


def _write_cache(folder: Path, meta: dict, splits: dict) -> dict:
    """Write ``splits`` ({name: (arrays, documents)}) and meta.json to a temp folder, then rename it into place."""
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for split, (arrs, n_docs) in splits.items():
        for name, arr in arrs.items():
            np.save(tmp / f"{split}_{name}.npy", arr)
        meta[split] = {"rows": int(arrs["ids"].shape[0]), "documents": int(n_docs), "tokens": int(arrs["lengths"].sum()),
                       "mean_tokens_per_row": float(arrs["lengths"].mean())}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def build_or_load_cache(cfg, tokenizer, log=print, is_main: bool = True, default_corpus: Optional[dict] = None):
    """Tokenize the data section ``cfg`` once into ``cache_dir/tok-<hash>``; returns (folder, meta). Only the main
    process may build it (wrap the call in ``accelerator.main_process_first()``)."""
    files, valid_files = resolve_sources(cfg, default_corpus)
    key_obj = {"v": CACHE_VERSION, "data": data_identity(cfg, files, valid_files), "tok": tokenizer_fingerprint(tokenizer),
               "seq_len": cfg.max_seq_len, "mode": cfg.mode}
    key = hashlib.sha256(json.dumps(key_obj, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir() / "tokenized"
    folder = root / f"tok-{key}"
    if (folder / "meta.json").exists():
        return folder, json.loads((folder / "meta.json").read_text())
    if not is_main:
        raise DataError(f"The tokenized cache {folder} is missing on a non-main process: processes must share a "
                        f"filesystem. Fix: set data.cache_dir to a folder every process can read.")
    log(f"[data] tokenizing into {folder} (mode={cfg.mode}, max_seq_len={cfg.max_seq_len}) ...")
    train_docs, valid_docs = document_streams(cfg, files, valid_files)
    train = tokenize_documents(train_docs, tokenizer, cfg.max_seq_len, cfg.mode)   # first: fills a hash-held-out list
    valid = tokenize_documents(valid_docs, tokenizer, cfg.max_seq_len, cfg.mode)
    if train[0] is None:
        raise DataError(f"The training data {files or cfg.hub_name} holds no text documents after reading. Check the "
                        f"file contents and data.format / data.text_column.")
    if valid[0] is None:
        raise DataError(f"The held-out split is empty ({train[1]:,} training documents read, data.valid_fraction="
                        f"{cfg.valid_fraction}): raise data.valid_fraction, pass data.valid_files, or give more "
                        f"documents (a file with no blank line and a single line is one document).")
    root.mkdir(parents=True, exist_ok=True)
    meta = _write_cache(folder, {"key": key, "key_obj": key_obj, "seq_len": cfg.max_seq_len, "mode": cfg.mode},
                        {"train": train, "valid": valid})
    log(f"[data] cache ready: {meta['train']['rows']} train rows ({meta['train']['tokens']:,} tokens from "
        f"{train[1]} docs), {meta['valid']['rows']} held-out rows")
    return folder, meta
