"""Reading a converted folder without loading it: a split is the concatenation of its shards (in manifest order);
a row's shard comes from the cumulative row counts (O(shards) memory), and a shard's arrays are memory-mapped the
first time a row of it is asked for, so a process maps only the shards it reads.

A remote folder (an fsspec URL such as ``s3://bucket/c4-128``) is read through a local copy: each shard a process
reads is downloaded once, atomically, into ``local_copy(url, local_cache)`` (several processes of a node may share
it)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import numpy as np

from ...errors import DataError
from .convert import FORMAT, Folder


def attention_from_lengths(lengths: np.ndarray, width: int) -> np.ndarray:
    """(rows, width) int64 0/1 attention: 1 on each row's first ``lengths`` positions (rows without document ids)."""
    return (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)


def local_copy(url: str, cache: Optional[str] = None) -> Path:
    """The local folder mirroring remote folder ``url`` (shards, tokenizer/): one per URL under ``cache``
    (default $TMPDIR/mosaic_bert_remote), so two folders never share files."""
    base = Path(cache) if cache else Path(os.environ.get("TMPDIR", "/tmp")) / "mosaic_bert_remote"
    return base / hashlib.sha256(url.encode()).hexdigest()[:16]


class TokenizedSplit:
    """The rows of one split of a converted folder: ``len``, ``seq_len``, ``rows(idx)``; memory-maps lazily."""

    def __init__(self, folder, split: str, local_cache: Optional[str] = None):
        self.url, self.split = str(folder), split
        src = Folder(self.url)
        if not src.exists("manifest.json"):
            raise DataError(f"{self.url} is not a finished converted folder (no manifest.json): run "
                            f"`python scripts/prepare_data.py ... --out {self.url}` (an interrupted one resumes).")
        manifest = src.read_json("manifest.json")
        if manifest.get("format") != FORMAT:
            raise DataError(f"{self.url}/manifest.json is not a {FORMAT} manifest: convert the data again with "
                            f"scripts/prepare_data.py.")
        self.manifest = manifest
        self.mode, self._seq_len = manifest["mode"], int(manifest["seq_len"])
        self.shards = [s["name"] for s in manifest[split]["shards"]]
        self.offsets = np.cumsum([0] + [s["rows"] for s in manifest[split]["shards"]]).astype(np.int64)
        self.local_root = Path(src.root) if src.local else None
        if self.local_root is None:
            self.local_root = local_copy(self.url, local_cache)
            self._remote = self.url
        else:
            self._remote = None
        self._maps: dict = {}

    def __getstate__(self):   # DataLoader workers get the index, never the mapped pages
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def seq_len(self) -> int:
        return self._seq_len

    @property
    def mapped_shards(self) -> int:
        return len(self._maps)

    def _file(self, rel: str) -> Path:
        local = self.local_root / rel
        if self._remote is not None and not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(local.name + f".tmp-{os.getpid()}")
            src = Folder(self._remote)
            src.fs.get_file(src.path(rel), str(tmp))
            os.replace(tmp, local)
        return local

    def shard(self, k: int) -> tuple:
        """(ids, lengths, docs or None) of shard ``k``, memory-mapped on first use."""
        if k not in self._maps:
            name = f"{self.split}/{self.shards[k]}"
            load = lambda kind: np.load(self._file(f"{name}.{kind}.npy"), mmap_mode="r", allow_pickle=False)
            self._maps[k] = (load("ids"), load("lengths"), load("docs") if self.mode == "pack" else None)
        return self._maps[k]

    def locate(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, row within the shard) of global rows ``idx``."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"rows out of range [0, {len(self)})")
        k = np.searchsorted(self.offsets, idx, side="right") - 1
        return k, idx - self.offsets[k]

    def rows(self, idx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, document ids or 0/1 attention, lengths) of rows ``idx`` as int64 arrays, in the order of ``idx``."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        k, local = self.locate(idx)
        ids = np.empty((idx.size, self._seq_len), dtype=np.int64)
        lengths = np.empty(idx.size, dtype=np.int64)
        docs = np.empty_like(ids) if self.mode == "pack" else None
        for s in np.unique(k):
            sel = np.flatnonzero(k == s)
            order = np.argsort(local[sel], kind="stable")   # ascending reads within a shard
            sel, rows = sel[order], local[sel][order]
            a_ids, a_len, a_docs = self.shard(int(s))
            ids[sel] = a_ids[rows]
            lengths[sel] = a_len[rows]
            if docs is not None:
                docs[sel] = a_docs[rows]
        if docs is None:
            docs = attention_from_lengths(lengths, self._seq_len)
        return ids, docs, lengths
