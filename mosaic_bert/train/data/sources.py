"""Where documents come from: local files and globs (plain text, also ``.xz``/``.gz``/``.bz2``; ``.jsonl``/
``.json``/``.parquet``/``.csv`` through ``datasets``), Hub datasets streamed by name, or the embedded Python-docs
corpus. Everything here yields plain strings, one per document; nothing here tokenizes.

Plain text: documents are blank-line-separated blocks (the Wikipedia dump layout: title line, one paragraph per
line), or one per line when a file has no blank line (``format: lines`` forces one per line).
"""

from __future__ import annotations

import bz2
import glob
import gzip
import hashlib
import io
import itertools
import logging
import lzma
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from ...errors import DataError

logger = logging.getLogger(__name__)

TEXT_FORMATS = ("text", "wiki", "lines")
COMPRESSED = {".xz": lzma.open, ".lzma": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}
_NO_BLANK_LINE_YET = 1000  # lines without a blank one before a text file is read one document per line
_SNIFF_BYTES = 1 << 16     # the head of a text file checked for binary content / another encoding
_MAX_UNDECODABLE = 0.01    # share of undecodable bytes in that head above which a file is refused


def take(docs: Iterable[str], n: Optional[int]) -> Iterator[str]:
    """The first ``n`` documents (all of them when ``n`` is None)."""
    return iter(docs) if n is None else itertools.islice(docs, n)


def resolve_files(spec, what: str = "data.train_files") -> list[str]:
    """Paths, globs or folders -> a sorted list of non-empty files; a clear error for anything that matches nothing."""
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


def _strip_compression(path: str) -> tuple[str, Optional[Callable]]:
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


def check_text_file(path: str) -> None:
    """Refuse a "text" file that is binary (NUL bytes) or mostly not UTF-8, judged on its (decompressed) head."""
    _, opener = _strip_compression(path)
    with (opener or open)(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if b"\x00" in head:
        raise DataError(f"{path} looks binary (NUL bytes in its first {len(head):,} bytes), not text. Remove it from "
                        f"data.train_files / data.valid_files; for jsonl, parquet or csv data give the file that "
                        f"extension or set data.format.")
    bad = head.decode("utf-8", errors="replace").count("\ufffd")
    if bad > _MAX_UNDECODABLE * len(head):
        raise DataError(f"{path} is not UTF-8 text: {bad:,} undecodable bytes in its first {len(head):,}. Convert it "
                        f"to UTF-8 (e.g. iconv -f latin1 -t utf-8) or remove it from data.train_files / "
                        f"data.valid_files.")


def _counted(lines: Iterable[str], path: str) -> Iterator[str]:
    """``lines`` unchanged; at the end, a warning with the count of undecodable bytes (read as U+FFFD)."""
    bad = 0
    for line in lines:
        bad += line.count("\ufffd")
        yield line
    if bad:
        logger.warning("%s: %d undecodable bytes (not UTF-8) were read as U+FFFD; convert the file to UTF-8 to train "
                       "on its real text", path, bad)


def _blocks(lines: Iterable[str]) -> Iterator[str]:
    """Blank-line-separated blocks joined with a space; one document per line while no blank line has been seen."""
    block: list[str] = []
    saw_blank = False
    for line in lines:
        s = line.strip()
        if s:
            block.append(s)
            if not saw_blank and len(block) > _NO_BLANK_LINE_YET:
                yield from block
                block = []
        else:
            saw_blank = True
            if block:
                yield " ".join(block)
                block = []
    if block:
        yield from ([" ".join(block)] if saw_blank else block)


def iter_text_documents(path: str, fmt: str = "text") -> Iterator[str]:
    """``lines``: one document per non-empty line. ``text``/``wiki``: blank-line-separated blocks. A binary or
    mostly non-UTF-8 file is refused; a few undecodable bytes are counted and warned about."""
    check_text_file(path)
    with _open_text(path) as f:
        lines = _counted(f, path)
        if fmt == "lines":
            yield from (s for s in (line.strip() for line in lines) if s)
        else:
            yield from _blocks(lines)


def _iter_json_lines(path: str, text_column: str) -> Iterator[str]:
    """JSON Lines (C4's ``.json.gz`` layout) read line by line: ~5x faster than a streamed ``datasets`` table."""
    import json
    with _open_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
            except ValueError as e:
                raise DataError(f"{path}, line {n}: not JSON ({e}). Fix or remove the file; one JSON object per line "
                                f"is expected.") from None
            if not isinstance(ex, dict) or text_column not in ex:
                cols = list(ex) if isinstance(ex, dict) else type(ex).__name__
                raise DataError(f"{path}: no column '{text_column}' (columns: {cols}). Set data.text_column.")
            t = ex[text_column]
            if t and t.strip():
                yield t


def _is_json_lines(path: str) -> bool:
    with _open_text(path) as f:
        first = f.readline().strip()
    return first.startswith("{") and first.endswith("}")


def _iter_table_documents(path: str, fmt: str, text_column: str) -> Iterator[str]:
    if fmt == "json" and _is_json_lines(path):
        yield from _iter_json_lines(path, text_column)
        return
    try:
        import datasets
    except ImportError as e:  # pragma: no cover
        raise DataError(f"Reading {fmt} files needs the 'datasets' package (pip install datasets).") from e
    for ex in datasets.load_dataset(fmt, data_files=[path], split="train", streaming=True):
        if text_column not in ex:
            raise DataError(f"{path}: no column '{text_column}' (columns: {list(ex)}). Set data.text_column.")
        t = ex[text_column]
        if t and t.strip():
            yield t


def iter_documents_from_files(files: list[str], fmt: str, text_column: str) -> Iterator[str]:
    for path in files:
        f = detect_format(path) if fmt == "auto" else fmt
        if f in TEXT_FORMATS:
            yield from iter_text_documents(path, "lines" if f == "lines" else "text")
        else:
            yield from _iter_table_documents(path, f, text_column)


def iter_hub_documents(name: str, config: Optional[str], split: str, text_column: str,
                       shard: Optional[tuple[int, int]] = None) -> Iterator[str]:
    """Documents of a Hub dataset split, streamed; ``shard=(count, index)``: only that contiguous share of its data
    files (``count`` = the dataset's ``n_shards``: one file)."""
    import datasets  # streaming: nothing downloaded beyond what is read
    ds = datasets.load_dataset(name, config, split=split, streaming=True)
    if shard is not None:
        ds = ds.shard(num_shards=shard[0], index=shard[1], contiguous=True)
    for ex in ds:
        t = ex.get(text_column)
        if t and t.strip():
            yield t


def doc_hash_bucket(doc: str) -> float:
    """A uniform [0, 1) number from the document's text: the held-out split does not depend on file order."""
    h = hashlib.blake2b(doc.encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def resolve_sources(cfg, default_corpus: Optional[dict]) -> tuple[list[str], list[str]]:
    """(train files, held-out files) of a data section; both empty for a Hub dataset."""
    if cfg.hub_name is not None:   # converted shard by shard (data.max_train_docs: optional cap)
        return [], []
    if cfg.train_files is None:
        if default_corpus is None:
            raise DataError("No training data: set data.train_files (paths/globs) or data.hub_name.")
        return [default_corpus["train"]], [default_corpus["valid"]]
    valid = resolve_files(cfg.valid_files, "data.valid_files") if cfg.valid_files else []
    return resolve_files(cfg.train_files, "data.train_files"), valid
