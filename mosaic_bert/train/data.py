"""Pretraining data: documents -> tokenized on-disk cache -> deterministic, resumable microbatches.

Sources
  * local files and globs: plain text (``.txt``, also ``.xz``/``.gz``/``.bz2``), where documents are
    blank-line-separated blocks (the Wikipedia dump format: title line, one paragraph per line) or one
    per line; ``.jsonl``/``.json``/``.parquet``/``.csv`` through ``datasets`` (column ``text_column``);
  * Hub datasets by name through ``datasets`` streaming (e.g. ``allenai/c4``, config ``en``);
  * nothing: the embedded Python-documentation corpus (:mod:`mosaic_bert.train.corpus`).

The tokenized cache is a folder of ``.npy`` arrays (rows of ``max_seq_len`` token ids, lengths, and
document ids when packing), keyed by a hash of (data identity, tokenizer vocabulary, seq_len, mode),
written atomically by one process. Reading it needs only numpy (memory-mapped), so the training loop
never waits on tokenization.

Order: the sample at global index ``g`` (``g = step * global_batch + offset``) is row
``perm(seed, epoch)[g % N]`` with ``epoch = g // N``: a pure function of the seed, so a resumed run
starts exactly at the next unseen sample, and process ``p``'s accumulation step ``a`` of a step
takes offsets ``[(a * P + p) * mb, (a * P + p + 1) * mb)``.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

from .masking import MLMMasker
from ..errors import DataError

CACHE_VERSION = 2
TEXT_SUFFIXES = (".txt", ".text", ".md", ".raw")
COMPRESSED = {".xz": lzma.open, ".lzma": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}


# --------------------------------------------------------------------------------------------- files
def resolve_files(spec, what: str = "data.train_files") -> list[str]:
    if spec is None:
        return []
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    out: list[str] = []
    for item in items:
        item = os.path.expanduser(str(item))
        matches = sorted(glob.glob(item)) if any(c in item for c in "*?[") else ([item] if os.path.exists(item) else [])
        if os.path.isdir(item):
            matches = sorted(str(p) for p in Path(item).rglob("*") if p.is_file() and not p.name.startswith("."))
        if not matches:
            raise DataError(f"{what}: '{item}' matches no file. Check the path (globs like data/*.txt.xz are "
                            f"allowed), or leave {what} unset to use the embedded Python-docs corpus.")
        for m in matches:
            if os.path.getsize(m) == 0:
                raise DataError(f"{what}: '{m}' is empty (0 bytes). Remove it from the list or point to a file with text.")
        out.extend(matches)
    return out


def _strip_compression(path: str) -> tuple[str, Optional[callable]]:
    base, ext = os.path.splitext(path)
    if ext.lower() in COMPRESSED:
        return base, COMPRESSED[ext.lower()]
    return path, None


def detect_format(path: str) -> str:
    base, _ = _strip_compression(path)
    ext = os.path.splitext(base)[1].lower()
    return {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(ext, "text")


def _open_text(path: str):
    _, opener = _strip_compression(path)
    if opener is None:
        return open(path, "r", encoding="utf-8", errors="replace")
    return io.TextIOWrapper(opener(path, "rb"), encoding="utf-8", errors="replace")


def iter_text_documents(path: str, fmt: str = "text") -> Iterator[str]:
    """``lines``: one document per non-empty line. ``text``/``wiki``: blank-line-separated blocks (lines joined
    with a space); a file without any blank line is read one document per line."""
    with _open_text(path) as f:
        if fmt == "lines":
            for line in f:
                line = line.strip()
                if line:
                    yield line
            return
        block: list[str] = []
        saw_blank = False
        for line in f:
            s = line.strip()
            if s:
                block.append(s)
                if not saw_blank and len(block) > 1000:
                    # no blank-line structure so far: fall back to one document per line
                    yield from block
                    block = []
            else:
                saw_blank = True
                if block:
                    yield " ".join(block)
                    block = []
        if block:
            if saw_blank:
                yield " ".join(block)
            else:
                yield from block


def iter_documents_from_files(files: list[str], fmt: str, text_column: str) -> Iterator[str]:
    for path in files:
        f = detect_format(path) if fmt == "auto" else fmt
        if f in ("text", "wiki", "lines"):
            yield from iter_text_documents(path, "lines" if f == "lines" else "text")
        else:
            try:
                import datasets
            except ImportError as e:  # pragma: no cover
                raise DataError(f"Reading {f} files needs the 'datasets' package (pip install datasets).") from e
            ds = datasets.load_dataset(f, data_files=[path], split="train", streaming=True)
            for ex in ds:
                if text_column not in ex:
                    raise DataError(f"{path}: no column '{text_column}' (columns: {list(ex)}). Set data.text_column.")
                t = ex[text_column]
                if t and t.strip():
                    yield t


def iter_hub_documents(name: str, config: Optional[str], split: str, text_column: str) -> Iterator[str]:
    import datasets  # real Hub path: streaming, nothing downloaded beyond what is read
    ds = datasets.load_dataset(name, config, split=split, streaming=True)
    for ex in ds:
        t = ex.get(text_column)
        if t and t.strip():
            yield t


def _doc_hash_bucket(doc: str) -> float:
    h = hashlib.blake2b(doc.encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def _take(it: Iterable[str], n: Optional[int]) -> Iterator[str]:
    for i, x in enumerate(it):
        if n is not None and i >= n:
            return
        yield x


# ------------------------------------------------------------------------------------- tokenization
def tokenizer_fingerprint(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    items = sorted(vocab.items(), key=lambda kv: kv[1])
    h = hashlib.sha256(json.dumps(items).encode())
    h.update(json.dumps([type(tokenizer).__name__, getattr(tokenizer, "do_lower_case", None),
                         tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id]).encode())
    return h.hexdigest()[:16]


class _RowWriter:
    """Accumulates fixed-length rows in numpy chunks."""

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
        if len(self._ids) >= 65536:
            self.flush()

    def flush(self):
        if self._ids:
            self.ids_chunks.append(np.stack(self._ids))
            self.len_chunks.append(np.asarray(self._lens, dtype=np.int32))
            if self.with_docs:
                self.doc_chunks.append(np.stack(self._docs))
            self._ids, self._lens, self._docs = [], [], []

    def arrays(self):
        self.flush()
        if not self.ids_chunks:
            return None
        out = {"ids": np.concatenate(self.ids_chunks), "lengths": np.concatenate(self.len_chunks)}
        if self.with_docs:
            out["docs"] = np.concatenate(self.doc_chunks)
        return out


def tokenize_documents(docs: Iterable[str], tokenizer, seq_len: int, mode: str, batch_docs: int = 1000):
    """Returns {"ids": (N, seq_len), "lengths": (N,), ["docs": (N, seq_len) uint8 document ids]} and doc count."""
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    if cls_id is None or sep_id is None or pad_id is None:
        raise DataError("The tokenizer needs [CLS], [SEP] and [PAD] tokens for BERT pretraining.")
    dtype = np.uint16 if len(tokenizer) <= 65535 else np.int32
    w = _RowWriter(seq_len, pad_id, dtype, with_docs=(mode == "pack"))
    body = seq_len - 2
    open_rows: list[tuple[list[int], list[int]]] = []  # pack: first-fit over a few open rows (deterministic)
    n_docs = 0
    max_open = 16

    def pack(piece):
        for toks, ids in open_rows:
            if len(toks) + len(piece) <= seq_len and ids[-1] < 255:
                k = ids[-1] + 1
                toks.extend(piece)
                ids.extend([k] * len(piece))
                break
        else:
            open_rows.append((list(piece), [1] * len(piece)))
        full = [r for r in open_rows if len(r[0]) >= seq_len - 4]
        for r in full:
            open_rows.remove(r)
            w.add(*r)
        while len(open_rows) > max_open:
            w.add(*open_rows.pop(0))

    batch: list[str] = []

    def run(batch):
        nonlocal n_docs
        enc = tokenizer(batch, add_special_tokens=False, truncation=(mode == "truncate"),
                        max_length=body if mode == "truncate" else None, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]
        for toks in enc:
            if not toks:
                continue
            n_docs += 1
            pieces = [toks[:body]] if mode == "truncate" else [toks[i:i + body] for i in range(0, len(toks), body)]
            for p in pieces:
                piece = [cls_id] + p + [sep_id]
                if mode == "pack":
                    pack(piece)
                else:
                    w.add(piece)

    for d in docs:
        batch.append(d)
        if len(batch) >= batch_docs:
            run(batch)
            batch = []
    if batch:
        run(batch)
    for r in open_rows:
        w.add(*r)
    return w.arrays(), n_docs


def _data_identity(cfg, files: list[str], valid_files: list[str]) -> dict:
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
        idx = np.asarray(idx)
        ids = np.asarray(self.ids[idx], dtype=np.int64)
        lengths = np.asarray(self.lengths[idx])
        if self.docs is not None:
            docs = np.asarray(self.docs[idx], dtype=np.int64)
        else:
            docs = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
        return ids, docs, lengths


def build_or_load_cache(cfg, tokenizer, log=print, is_main: bool = True, default_corpus: Optional[dict] = None):
    """Tokenize the data once into ``cache_dir/tok-<hash>``; returns (folder, meta). Only call the building
    branch on one process (wrap with ``accelerator.main_process_first()``)."""
    from .corpus import default_cache_dir

    hub = cfg.hub_name is not None
    if hub:
        files, valid_files = [], []
        if cfg.max_train_docs is None:
            raise DataError(f"data.hub_name={cfg.hub_name} is streamed: set data.max_train_docs (documents to tokenize "
                            f"into the local cache, e.g. 2000000).")
    elif cfg.train_files is None and default_corpus is not None:
        files, valid_files = [default_corpus["train"]], [default_corpus["valid"]]
    else:
        if cfg.train_files is None:
            raise DataError("No training data: set data.train_files (paths/globs) or data.hub_name.")
        files = resolve_files(cfg.train_files, "data.train_files")
        valid_files = resolve_files(cfg.valid_files, "data.valid_files") if cfg.valid_files else []
    key_obj = {"v": CACHE_VERSION, "data": _data_identity(cfg, files, valid_files), "tok": tokenizer_fingerprint(tokenizer),
               "seq_len": cfg.max_seq_len, "mode": cfg.mode}
    key = hashlib.sha256(json.dumps(key_obj, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir() / "tokenized"
    folder = root / f"tok-{key}"
    if (folder / "meta.json").exists():
        return folder, json.loads((folder / "meta.json").read_text())
    if not is_main:
        raise RuntimeError(f"tokenized cache {folder} missing on a non-main process (shared filesystem needed)")

    log(f"[data] tokenizing into {folder} (mode={cfg.mode}, max_seq_len={cfg.max_seq_len}) ...")
    if hub:
        train_docs = _take(iter_hub_documents(cfg.hub_name, cfg.hub_config, cfg.hub_train_split, cfg.text_column), cfg.max_train_docs)
        valid_docs = _take(iter_hub_documents(cfg.hub_name, cfg.hub_config, cfg.hub_valid_split, cfg.text_column), cfg.max_valid_docs)
        train, n_train = tokenize_documents(train_docs, tokenizer, cfg.max_seq_len, cfg.mode)
        valid, n_valid = tokenize_documents(valid_docs, tokenizer, cfg.max_seq_len, cfg.mode)
    elif valid_files:
        train, n_train = tokenize_documents(_take(iter_documents_from_files(files, cfg.format, cfg.text_column), cfg.max_train_docs),
                                            tokenizer, cfg.max_seq_len, cfg.mode)
        valid, n_valid = tokenize_documents(_take(iter_documents_from_files(valid_files, cfg.format, cfg.text_column), cfg.max_valid_docs),
                                            tokenizer, cfg.max_seq_len, cfg.mode)
    else:
        # held-out split by a hash of each document: independent of file order, identical on every machine
        held: list[str] = []

        def train_iter():
            for d in _take(iter_documents_from_files(files, cfg.format, cfg.text_column), cfg.max_train_docs):
                if _doc_hash_bucket(d) < cfg.valid_fraction and (cfg.max_valid_docs is None or len(held) < cfg.max_valid_docs):
                    held.append(d)
                else:
                    yield d
        train, n_train = tokenize_documents(train_iter(), tokenizer, cfg.max_seq_len, cfg.mode)
        valid, n_valid = tokenize_documents(held, tokenizer, cfg.max_seq_len, cfg.mode)
    if train is None:
        raise DataError(f"The training data {files or cfg.hub_name} holds no text documents after reading. Check the "
                        f"file contents and data.format / data.text_column.")
    if valid is None:
        raise DataError("The held-out split is empty: raise data.valid_fraction, or pass data.valid_files.")
    tmp = root / f".tmp-tok-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta = {"key": key, "key_obj": key_obj, "seq_len": cfg.max_seq_len, "mode": cfg.mode}
    for split, arrs, n_docs in (("train", train, n_train), ("valid", valid, n_valid)):
        for name, arr in arrs.items():
            np.save(tmp / f"{split}_{name}.npy", arr)
        meta[split] = {"rows": int(arrs["ids"].shape[0]), "documents": int(n_docs), "tokens": int(arrs["lengths"].sum()),
                       "mean_tokens_per_row": float(arrs["lengths"].mean())}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"[data] cache ready: {meta['train']['rows']} train rows ({meta['train']['tokens']:,} tokens from "
        f"{n_train} docs), {meta['valid']['rows']} held-out rows")
    return folder, meta


# ------------------------------------------------------------------------------------ batching/order
@lru_cache(maxsize=4)
def _perm(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([int(seed), int(epoch), 0x5EED]).permutation(n)


def global_rows(seed: int, n: int, g: np.ndarray) -> np.ndarray:
    """Rows for global sample indices ``g`` (a pure function of seed; shuffled anew each epoch)."""
    g = np.asarray(g, dtype=np.int64)
    epochs = g // n
    out = np.empty_like(g)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = _perm(seed, int(e), n)[g[sel] % n]
    return out


def make_batch(split: TokenizedSplit, rows: np.ndarray, keys: np.ndarray, masker: MLMMasker, trim: bool = True) -> dict:
    ids, docs, lengths = split.rows(rows)
    if trim:
        width = int(lengths.max())
        ids, docs = ids[:, :width], docs[:, :width]
    input_ids, labels = masker(ids, keys)
    return {"input_ids": input_ids, "attention_mask": torch.from_numpy(docs), "labels": labels}


class TrainMicrobatches(torch.utils.data.Dataset):
    """Item i is this process's i-th microbatch from ``start_step`` on (map-style, so DataLoader workers keep order)."""

    def __init__(self, split: TokenizedSplit, masker: MLMMasker, seed: int, start_step: int, total_steps: int,
                 global_batch: int, microbatch: int, accum: int, num_processes: int, rank: int, trim: bool = True):
        self.split, self.masker, self.seed = split, masker, seed
        self.start, self.total = start_step, total_steps
        self.G, self.mb, self.accum, self.P, self.rank = global_batch, microbatch, accum, num_processes, rank
        self.trim = trim

    def __len__(self):
        return max(0, (self.total - self.start) * self.accum)

    def indices(self, i: int) -> np.ndarray:
        step, a = self.start + i // self.accum, i % self.accum
        off = step * self.G + (a * self.P + self.rank) * self.mb
        return np.arange(off, off + self.mb, dtype=np.int64)

    def __getitem__(self, i: int) -> dict:
        g = self.indices(i)
        rows = global_rows(self.seed, len(self.split), g)
        batch = make_batch(self.split, rows, g, self.masker, self.trim)
        batch["step"] = self.start + i // self.accum
        return batch


def eval_batches(split: TokenizedSplit, masker: MLMMasker, n_samples: int, microbatch: int, num_processes: int, rank: int):
    """Fixed held-out batches (first ``n_samples`` rows, fixed masks), strided over processes."""
    n = min(n_samples, len(split))
    starts = list(range(0, n, microbatch))
    for j, s in enumerate(starts):
        if j % num_processes != rank:
            continue
        rows = np.arange(s, min(s + microbatch, n))
        yield make_batch(split, rows, rows, masker)


# ----------------------------------------------------------------------------------------- tokenizer
def train_wordpiece(docs: Iterable[str], vocab_size: int, out_dir: str | os.PathLike, lowercase: bool = True,
                    min_frequency: int = 2, log=print):
    """Train an uncased BERT WordPiece vocabulary with ``tokenizers`` and save it as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, clean_text=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                        continuing_subword_prefix="##")
    # Less run-to-run variation: count single-threaded and order the ids canonically (specials, single characters,
    # then the rest alphabetically). tokenizers still breaks some count ties differently between runs (a token or
    # two of a 4k vocab), so a trained vocabulary is cached and reused; pass tokenizer.name_or_path to pin one.
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        tok.train_from_iterator(docs, trainer=trainer)
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old
    rest = sorted((t for t in tok.get_vocab() if t not in specials), key=lambda t: (len(t.replace("##", "", 1)) > 1, t))
    vocab = {t: i for i, t in enumerate(specials + rest)}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=lowercase)
    out = Path(out_dir)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log(f"[tokenizer] trained WordPiece vocab of {len(tokenizer)} tokens -> {out}")
    return tokenizer
