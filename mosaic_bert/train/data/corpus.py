"""The embedded default corpus: English text that ships with every Python installation.

Sources (no download, no import of arbitrary modules):
  * ``pydoc_data.topics`` -- the language reference topics behind ``help()``;
  * docstrings of the standard library, read with ``ast`` from the ``.py`` sources
    (modules are parsed, never imported, so nothing is executed).

The text is cleaned (reST markup and doctest lines dropped, whitespace normalised), cut into
paragraph-sized documents, deduplicated by a normalised hash, and split deterministically into a
train and a held-out file (by hash of the document, so the split does not depend on file order).
Output: ``<cache>/train.txt`` and ``<cache>/valid.txt``, one document per line.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
import sysconfig
from pathlib import Path

from ...errors import DataError

CORPUS_VERSION = 1
_SKIP_DIRS = {"test", "tests", "site-packages", "dist-packages", "idlelib", "lib2to3", "__pycache__",
              "turtledemo", "ensurepip", "venv", "tkinter", "pydoc_data"}
_RST_ROLE = re.compile(r":[a-zA-Z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_BACKTICKS = re.compile(r"`+([^`]*)`+")
_WS = re.compile(r"\s+")
_WORD = re.compile(r"[A-Za-z]{2,}")


def default_cache_dir() -> Path:
    root = os.environ.get("MOSAIC_BERT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mosaic_bert")
    return Path(root)


def _clean_paragraph(par: str) -> str | None:
    lines = []
    for line in par.splitlines():
        s = line.strip()
        if not s:
            continue
        # doctest / code / directive / table lines carry little English
        if s.startswith((">>>", "...", ".. ", "+--", "+==", "===", "---", "***", "~~~", "|")):
            continue
        if line.startswith(("    ", "\t")) and len(lines) == 0 and not s[0].isalpha():
            continue
        lines.append(s)
    if not lines:
        return None
    text = " ".join(lines)
    text = _RST_ROLE.sub(r"\1", text)
    text = _BACKTICKS.sub(r"\1", text)
    text = text.replace("**", "").replace("::", ":")
    text = _WS.sub(" ", text).strip()
    words = text.split()
    if len(words) < 6:
        return None
    # mostly English words, not code or tables
    alpha = sum(1 for w in words if _WORD.fullmatch(w.strip(".,;:()'\"!?")))
    if alpha < 0.5 * len(words):
        return None
    return text


def _documents_from_text(text: str, max_words: int = 90):
    """Split a block of text into paragraph documents, merging short paragraphs up to max_words."""
    current: list[str] = []
    n = 0
    for par in re.split(r"\n\s*\n", text):
        cleaned = _clean_paragraph(par)
        if cleaned is None:
            continue
        w = len(cleaned.split())
        if current and n + w > max_words:
            yield " ".join(current)
            current, n = [], 0
        current.append(cleaned)
        n += w
    if current:
        yield " ".join(current)


def _stdlib_docstrings():
    stdlib = sysconfig.get_paths()["stdlib"]
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for fname in sorted(files):
            if not fname.endswith(".py"):
                continue
            try:
                src = Path(root, fname).read_text(encoding="utf-8")
                tree = ast.parse(src)
            except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=True)
                    if doc and len(doc) > 80:
                        yield doc


def iter_raw_texts():
    try:
        from pydoc_data.topics import topics
        for key in sorted(topics):
            yield topics[key]
    except ImportError:  # pragma: no cover - some minimal Pythons strip pydoc_data
        pass
    yield from _stdlib_docstrings()


def build_python_docs_corpus(out_dir: str | os.PathLike | None = None, valid_fraction: float = 0.02,
                             force: bool = False, log=print) -> dict:
    """Build (or reuse) the default corpus; returns {"train": path, "valid": path, ...stats}."""
    out = Path(out_dir) if out_dir else default_cache_dir() / f"pydocs-v{CORPUS_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}"
    meta_path = out / "meta.json"
    if meta_path.exists() and not force:
        meta = json.loads(meta_path.read_text())
        if Path(meta["train"]).exists() and Path(meta["valid"]).exists():
            return meta
    out.mkdir(parents=True, exist_ok=True)
    seen: set[bytes] = set()
    train, valid = [], []
    n_dupes = 0
    for text in iter_raw_texts():
        for doc in _documents_from_text(text):
            key = hashlib.blake2b(re.sub(r"[^a-z0-9]", "", doc.lower()).encode(), digest_size=12).digest()
            if key in seen:
                n_dupes += 1
                continue
            seen.add(key)
            bucket = int.from_bytes(key[:4], "little") / 2**32
            (valid if bucket < valid_fraction else train).append(doc)
    if not train or not valid:
        raise DataError("The Python documentation corpus came out empty: this Python installation has no "
                           "pydoc_data and no standard-library sources. Pass data.train_files=... instead.")
    tmp = out / ".tmp"
    tmp.mkdir(exist_ok=True)
    for name, docs in (("train", train), ("valid", valid)):
        (tmp / f"{name}.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
        os.replace(tmp / f"{name}.txt", out / f"{name}.txt")
    tmp.rmdir()
    meta = {
        "train": str(out / "train.txt"), "valid": str(out / "valid.txt"),
        "train_docs": len(train), "valid_docs": len(valid), "duplicates_dropped": n_dupes,
        "train_bytes": (out / "train.txt").stat().st_size, "python": sys.version.split()[0],
        "version": CORPUS_VERSION,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    log(f"[corpus] built Python-docs corpus: {len(train)} train / {len(valid)} held-out documents "
        f"({meta['train_bytes'] / 1e6:.1f} MB), {n_dupes} duplicates dropped -> {out}")
    return meta
