"""Conversion, its own step: input shards (files, or the shards of a Hub dataset) -> tokenized row shards in a folder
(local path or fsspec URL) that training memory-maps without loading.

One job per input shard, run by a pool of ``num_proc`` processes; a job holds one shard's rows in RAM at most and
writes ``<split>/<i>.ids.npy``, ``.lengths.npy`` (and ``.docs.npy`` when packing) atomically (temp name + rename),
then its marker ``done/<i>.json`` last. A restarted conversion keeps every shard whose marker exists, so an
interruption costs at most the shards in flight. Each output shard depends only on its input shard, so the folder is
byte-identical whatever ``num_proc``. ``manifest.json`` (written last) lists the shards, their rows and tokens; its
presence means the folder is complete.

Folder layout::

    spec.json                 what was converted (inputs, tokenizer fingerprint, seq_len, mode, held-out rule)
    tokenizer/                the tokenizer's files (training loads it from here)
    train/00000.ids.npy       (rows, seq_len) uint16/int32 token ids, [PAD]-padded
    train/00000.lengths.npy   (rows,) int32 real tokens per row
    train/00000.docs.npy      (rows, seq_len) uint8 1-based document ids (pack mode only)
    valid/00000.*             held-out rows (documents whose text hash falls under valid_fraction, or valid inputs)
    done/00000.json           a job's marker: documents read, rows/tokens/documents per split
    manifest.json             the finished folder's index
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import sys
import tempfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from typing import Iterator, Optional

import numpy as np

from ...errors import DataError
from .sources import doc_hash_bucket, iter_documents_from_files, iter_hub_documents
from ..tokenizer import single_threaded_tokenizers
from .store import DocumentEncoder, tokenizer_fingerprint

FORMAT = "mosaic-bert-tokenized-shards"
FORMAT_VERSION = 1
_BATCH_DOCS = 1000


# ------------------------------------------------------------------------------------------------ the output folder
class Folder:
    """A local folder or an fsspec URL, with atomic writes (temp name in the same folder, then rename)."""

    def __init__(self, url: str):
        import fsspec
        from fsspec.implementations.local import LocalFileSystem
        self.url = str(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.local = isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if not self.local else os.path.join(self.root, rel)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read_json(self, rel: str):
        with self.fs.open(self.path(rel), "rb") as f:
            return json.loads(f.read().decode())

    def remove(self, rel: str):
        if self.exists(rel):
            self.fs.rm(self.path(rel))

    def write(self, rel: str, data: bytes | None = None, array: np.ndarray | None = None):
        """Write ``data`` (or ``array`` as .npy) to ``rel`` atomically: a reader sees the old file or the whole new one."""
        final = self.path(rel)
        tmp = final + f".tmp-{os.getpid()}"
        if self.local:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            with open(tmp, "wb") as f:
                if array is not None:
                    np.save(f, array, allow_pickle=False)
                else:
                    f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            return
        if array is not None:
            buf = io.BytesIO()
            np.save(buf, array, allow_pickle=False)
            data = buf.getvalue()
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, final)

    def write_json(self, rel: str, obj):
        self.write(rel, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


# ------------------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class InputShard:
    """One unit of work: a local file, or shard ``index`` of ``count`` of a Hub dataset split (streamed).
    ``role``: ``both`` (documents split into train / held-out by text hash), ``train`` or ``valid``."""
    kind: str                      # file | hub
    source: str                    # path, or Hub dataset name
    role: str = "both"
    fmt: str = "auto"
    text_column: str = "text"
    config: Optional[str] = None   # Hub config (e.g. "en")
    split: Optional[str] = None    # Hub split
    index: int = 0
    count: int = 1

    def documents(self) -> Iterator[str]:
        if self.kind == "hub":
            yield from iter_hub_documents(self.source, self.config, self.split, self.text_column,
                                          shard=(self.count, self.index))
            return
        yield from iter_documents_from_files([self.source], self.fmt, self.text_column)


def file_shards(files: list[str], valid_files: list[str], fmt: str = "auto", text_column: str = "text") -> list[InputShard]:
    """One input shard per file; with ``valid_files`` the held-out rows come from those only."""
    role = "train" if valid_files else "both"
    return ([InputShard("file", os.path.abspath(p), role, fmt, text_column) for p in files] +
            [InputShard("file", os.path.abspath(p), "valid", fmt, text_column) for p in valid_files])


def hub_shards(name: str, config: Optional[str], train_split: str, valid_split: Optional[str], text_column: str = "text",
               max_shards: Optional[int] = None) -> list[InputShard]:
    """The data files of a Hub dataset's splits (e.g. allenai/c4 en: 1024 train, 8 validation), one job each."""
    import datasets
    out = []
    for split, role in ((train_split, "train"), (valid_split, "valid")):
        if split is None:
            continue
        try:
            n = datasets.load_dataset(name, config, split=split, streaming=True).n_shards
        except Exception as e:  # noqa: BLE001 - any failure to resolve the dataset is the user's to fix
            raise DataError(f"Cannot open the Hub dataset {name} ({config}, split {split}): {type(e).__name__}: "
                            f"{str(e)[:300]}. Check the name/config/split and the network, or convert local files.") from e
        k = n if (max_shards is None or role == "valid") else min(n, max_shards)
        out += [InputShard("hub", name, role, "hub", text_column, config, split, i, n) for i in range(k)]
    return out


# ------------------------------------------------------------------------------------------------ one job
@dataclass(frozen=True)
class Spec:
    """What defines the rows (everything but the inputs)."""
    seq_len: int
    mode: str
    valid_fraction: float
    tokenizer: str          # fingerprint


def _shard_name(i: int) -> str:
    return f"{i:05d}"


def _split_stats(arrs: Optional[dict], n_docs: int) -> dict:
    if arrs is None:
        return {"rows": 0, "tokens": 0, "documents": int(n_docs)}
    return {"rows": int(arrs["ids"].shape[0]), "tokens": int(arrs["lengths"].sum()), "documents": int(n_docs)}


_WORKER_TOKENIZER: dict = {}


def _load_tokenizer(tok_dir: str):
    if tok_dir not in _WORKER_TOKENIZER:
        from transformers import AutoTokenizer
        _WORKER_TOKENIZER[tok_dir] = AutoTokenizer.from_pretrained(tok_dir)
    return _WORKER_TOKENIZER[tok_dir]


def convert_shard(out_url: str, i: int, shard: InputShard, spec: Spec, tokenizer, max_docs: Optional[int] = None) -> dict:
    """Tokenize input shard ``i`` into ``<split>/<i>.*.npy`` of ``out_url``; returns (and writes last) its marker."""
    if isinstance(tokenizer, str):
        tokenizer = _load_tokenizer(tokenizer)
    out = Folder(out_url)
    splits = {"train": DocumentEncoder(tokenizer, spec.seq_len, spec.mode),
              "valid": DocumentEncoder(tokenizer, spec.seq_len, spec.mode)}
    batches: dict = {"train": [], "valid": []}
    read = 0
    with single_threaded_tokenizers():   # one core per job: num_proc is the parallelism
        for doc in shard.documents():
            if max_docs is not None and read >= max_docs:
                break
            read += 1
            if shard.role == "both":
                split = "valid" if doc_hash_bucket(doc) < spec.valid_fraction else "train"
            else:
                split = shard.role
            batches[split].append(doc)
            if len(batches[split]) >= _BATCH_DOCS:
                splits[split].add(batches[split])
                batches[split] = []
        for split, b in batches.items():
            if b:
                splits[split].add(b)
    marker = {"index": i, "input": asdict(shard), "max_docs": max_docs, "documents_read": read, "spec": asdict(spec)}
    name = _shard_name(i)
    for split, enc in splits.items():
        arrs, n_docs = enc.finish()
        marker[split] = _split_stats(arrs, n_docs)
        for kind in ("ids", "lengths", "docs"):
            if arrs is not None and kind in arrs:
                out.write(f"{split}/{name}.{kind}.npy", array=arrs[kind])
            else:
                out.remove(f"{split}/{name}.{kind}.npy")   # left by an earlier, other conversion of this shard
        del arrs
    out.write_json(f"done/{name}.json", marker)
    return marker


def _job(args) -> dict:
    return convert_shard(*args)


# ------------------------------------------------------------------------------------------------ the whole folder
def _done_marker(out: Folder, i: int, shard: InputShard, spec: Spec, max_docs: Optional[int]) -> Optional[dict]:
    rel = f"done/{_shard_name(i)}.json"
    if not out.exists(rel):
        return None
    try:
        m = out.read_json(rel)
    except (OSError, ValueError):
        return None
    if m.get("input") != asdict(shard) or m.get("spec") != asdict(spec) or m.get("max_docs") != max_docs:
        return None
    for split in ("train", "valid"):
        kinds = ("ids", "lengths", "docs") if spec.mode == "pack" else ("ids", "lengths")
        if m[split]["rows"] and not all(out.exists(f"{split}/{_shard_name(i)}.{k}.npy") for k in kinds):
            return None
    return m


def _run(out: Folder, jobs: list[tuple[int, InputShard]], spec: Spec, tok_dir: str, num_proc: int, cap: Optional[int],
         log, markers: dict, pool_box: list):
    """Convert ``jobs`` (in order; markers already on disk are kept). With a document ``cap``, no job is started once
    the finished ones hold ``cap`` documents (the caller then keeps the prefix of shards that holds them)."""
    todo = []
    for i, shard in jobs:
        m = _done_marker(out, i, shard, spec, None)
        if m is not None:
            markers[i] = m
        else:
            todo.append((i, shard))
    if todo and len(todo) < len(jobs):
        log(f"[prepare] resuming: {len(jobs) - len(todo)} of {len(jobs)} shards already converted")

    group = {i for i, _ in jobs}

    def capped():
        return cap is not None and sum(m["documents_read"] for i, m in markers.items() if i in group) >= cap

    def report(m):
        log(f"[prepare] shard {m['index']:5d}: {m['documents_read']:,} docs -> {m['train']['rows']:,} train / "
            f"{m['valid']['rows']:,} held-out rows ({len(markers)}/{len(jobs)})")

    if num_proc <= 1 or len(todo) <= 1:
        for i, shard in todo:
            if capped():
                break
            markers[i] = convert_shard(out.url, i, shard, spec, tok_dir)
            report(markers[i])
        return
    if not pool_box:
        # fork (as torch's DataLoader): workers start in milliseconds; each runs the tokenizer on one thread
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        ctx = get_context("fork" if sys.platform.startswith("linux") else "spawn")
        pool_box.append(ProcessPoolExecutor(max_workers=num_proc, mp_context=ctx))
    pool = pool_box[0]
    queue, running = list(todo), set()
    while queue or running:
        while queue and len(running) < num_proc and not capped():
            i, shard = queue.pop(0)
            running.add(pool.submit(_job, (out.url, i, shard, spec, tok_dir)))
        if not running:
            break
        finished, running = wait(running, return_when=FIRST_COMPLETED)
        for f in finished:
            m = f.result()
            markers[m["index"]] = m
            report(m)


def _keep_prefix(out: Folder, jobs, spec, tok_dir, cap, markers, log) -> list[int]:
    """The shards (in order) that hold the first ``cap`` documents; the last one is re-converted with a cap."""
    keep, total = [], 0
    for i, shard in jobs:
        if cap is not None and total >= cap:
            break
        m = markers[i]
        if cap is not None and total + m["documents_read"] > cap:
            m2 = _done_marker(out, i, shard, spec, cap - total) or convert_shard(out.url, i, shard, spec, tok_dir, cap - total)
            markers[i] = m = m2
            log(f"[prepare] shard {i}: cut to its first {cap - total:,} documents (the document cap)")
        keep.append(i)
        total += m["documents_read"]
    return keep


def _open_output(out: Folder, ident: dict, tokenizer):
    """Claim ``out`` for the conversion ``ident`` (refusing a folder that holds anything else), drop temp files of a
    killed run, and save the tokenizer's files into ``tokenizer/``."""
    if out.exists("spec.json") and out.read_json("spec.json") != ident:
        raise DataError(f"{out.url} holds another conversion (other inputs, tokenizer, seq_len, mode or caps; see its "
                        f"spec.json). Nothing was changed: pass another output folder, or delete that one to redo it.")
    if out.local:
        os.makedirs(out.root, exist_ok=True)
    if not out.exists("spec.json") and out.fs.exists(out.root) and out.fs.ls(out.root):
        raise DataError(f"{out.url} is not empty and holds no conversion: pass an empty or new output folder.")
    out.write_json("spec.json", ident)
    for sub in ("train", "valid", "done", "tokenizer"):   # temp files of a killed conversion (ours, never complete)
        if out.exists(sub):
            for p in out.fs.ls(out.path(sub), detail=False):
                if ".tmp-" in p.rsplit("/", 1)[-1]:
                    out.fs.rm(p)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:   # a call's truncation/padding lingers in the fast tokenizer's saved state
        backend.no_truncation()
        backend.no_padding()
    with tempfile.TemporaryDirectory(prefix="mosaic-bert-tok-") as tok_dir:
        tokenizer.save_pretrained(tok_dir)
        for fname in sorted(os.listdir(tok_dir)):
            with open(os.path.join(tok_dir, fname), "rb") as f:
                out.write(f"tokenizer/{fname}", f.read())


def _manifest(out: Folder, ident: dict, spec: Spec, kept: list[int], markers: dict) -> dict:
    """Delete shards converted past a document cap, then index the kept ones (checked non-empty) in manifest.json."""
    for i in sorted(set(markers) - set(kept)):
        for split in ("train", "valid"):
            for kind in ("ids", "lengths", "docs"):
                out.remove(f"{split}/{_shard_name(i)}.{kind}.npy")
        out.remove(f"done/{_shard_name(i)}.json")
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "identity": ident, "seq_len": spec.seq_len,
                "mode": spec.mode, "tokenizer_fingerprint": spec.tokenizer,
                "documents_read": sum(markers[i]["documents_read"] for i in kept)}
    for split in ("train", "valid"):
        shards = [{"name": _shard_name(i), **markers[i][split]} for i in sorted(kept) if markers[i][split]["rows"]]
        rows, tokens = sum(s["rows"] for s in shards), sum(s["tokens"] for s in shards)
        manifest[split] = {"shards": shards, "rows": rows, "tokens": tokens,
                           "documents": sum(s["documents"] for s in shards),
                           "mean_tokens_per_row": tokens / rows if rows else 0.0}
    if manifest["train"]["rows"] == 0:
        raise DataError(f"The training inputs hold no text documents after reading ({manifest['documents_read']:,} "
                        f"read). Check the file contents and the format / text column.")
    if manifest["valid"]["rows"] == 0:
        raise DataError(f"The held-out split is empty ({manifest['documents_read']:,} documents read, valid_fraction="
                        f"{spec.valid_fraction}): raise valid_fraction, pass held-out files, or give more documents.")
    out.write_json("manifest.json", manifest)
    return manifest


def convert(inputs: list[InputShard], out_url: str, tokenizer, seq_len: int, mode: str, valid_fraction: float = 0.02,
            num_proc: int = 1, max_train_docs: Optional[int] = None, max_valid_docs: Optional[int] = None,
            log=print) -> dict:
    """Convert ``inputs`` into ``out_url`` (see the module doc); returns the manifest. Finished shards of an
    interrupted conversion are kept. ``max_*_docs`` cap the documents read from the train / valid inputs, in input
    order (held-out documents of ``both`` inputs count as read)."""
    if mode not in ("truncate", "chunk", "pack"):
        raise DataError(f"mode must be truncate, chunk or pack, got {mode!r}.")
    if seq_len < 8:
        raise DataError(f"seq_len must be >= 8 ([CLS], [SEP] and tokens to mask), got {seq_len}.")
    if not inputs:
        raise DataError("Nothing to convert: no input files (or Hub shards) were given.")
    out = Folder(out_url)
    spec = Spec(int(seq_len), mode, float(valid_fraction), tokenizer_fingerprint(tokenizer))
    ident = {"format": FORMAT, "version": FORMAT_VERSION, "spec": asdict(spec), "inputs": [asdict(s) for s in inputs],
             "max_train_docs": max_train_docs, "max_valid_docs": max_valid_docs}
    if out.exists("manifest.json"):
        done = out.read_json("manifest.json")
        if done.get("identity") == ident:
            log(f"[prepare] {out.url} is already converted")
            return done
    _open_output(out, ident, tokenizer)
    jobs, markers, kept, pool_box = list(enumerate(inputs)), {}, [], []
    tok_ref, tmp_tok = tokenizer, None   # what _run's jobs load: pool workers get a local folder
    if num_proc > 1 and out.local:
        tok_ref = out.path("tokenizer")
    elif num_proc > 1:
        tmp_tok = tempfile.TemporaryDirectory(prefix="mosaic-bert-tok-")
        tokenizer.save_pretrained(tmp_tok.name)
        tok_ref = tmp_tok.name
    try:
        for role, cap in (("train", max_train_docs), ("valid", max_valid_docs)):
            group = [(i, s) for i, s in jobs if (s.role in ("both", "train")) == (role == "train")]
            _run(out, group, spec, tok_ref, num_proc, cap, log, markers, pool_box)
            kept += _keep_prefix(out, group, spec, tokenizer, cap, markers, log)
    finally:
        for p in pool_box:
            p.shutdown(cancel_futures=True)
        if tmp_tok is not None:
            tmp_tok.cleanup()
    manifest = _manifest(out, ident, spec, kept, markers)
    log(f"[prepare] done: {out.url}: {manifest['train']['rows']:,} train rows ({manifest['train']['tokens']:,} tokens) "
        f"in {len(manifest['train']['shards'])} shards, {manifest['valid']['rows']:,} held-out rows")
    return manifest


def is_converted(url) -> bool:
    """Whether ``url`` is a finished conversion folder (its manifest names this format)."""
    if url is None or isinstance(url, (list, tuple)):
        return False
    try:
        out = Folder(str(url))
        return out.exists("manifest.json") and out.read_json("manifest.json").get("format") == FORMAT
    except (OSError, ValueError, ImportError):
        return False
