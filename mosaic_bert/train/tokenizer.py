"""The tokenizer of a run: a named/local one from the recipe, or an uncased BERT WordPiece vocabulary trained on the
run's own training documents (cached by a hash of the data and vocab size)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterable, Optional

from ..errors import RecipeError
from .config import config_hash
from .data.sources import iter_documents_from_files, iter_hub_documents, resolve_files, take

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@contextlib.contextmanager
def single_threaded_tokenizers():
    """The Rust tokenizer on one thread while inside (TOKENIZERS_PARALLELISM=false), restored after."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def _canonical_vocab(trained: dict) -> dict:
    """Specials, then single characters, then the rest alphabetically: ids do not depend on training order."""
    rest = sorted((t for t in trained if t not in SPECIAL_TOKENS), key=lambda t: (len(t.replace("##", "", 1)) > 1, t))
    return {t: i for i, t in enumerate(SPECIAL_TOKENS + rest)}


def train_wordpiece(docs: Iterable[str], vocab_size: int, out_dir: str | os.PathLike, lowercase: bool = True,
                    min_frequency: int = 2, log=print):
    """Train a BERT WordPiece vocabulary with ``tokenizers`` and save it (atomically) as a transformers tokenizer.

    Counting is single-threaded and ids are ordered canonically for less run-to-run variation; ``tokenizers`` still
    breaks some count ties differently between runs, so a trained vocabulary is cached and reused."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, clean_text=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=SPECIAL_TOKENS, continuing_subword_prefix="##")
    with single_threaded_tokenizers():
        tok.train_from_iterator(docs, trainer=trainer)
    tokenizer = BertTokenizer(vocab=_canonical_vocab(tok.get_vocab()), do_lower_case=lowercase)
    out = Path(out_dir)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log(f"[tokenizer] trained WordPiece vocab of {len(tokenizer)} tokens -> {out}")
    return tokenizer


def _training_documents(tok_cfg, data_cfg, corpus: Optional[dict]):
    """(identity of the documents, a function returning them) for training a vocabulary."""
    d = data_cfg
    if d.hub_name:
        ident = [d.hub_name, d.hub_config, d.hub_train_split]
        return ident, lambda: take(iter_hub_documents(d.hub_name, d.hub_config, d.hub_train_split, d.text_column),
                                   tok_cfg.training_docs)
    files = [corpus["train"]] if (d.train_files is None and corpus) else resolve_files(d.train_files, "data.train_files")
    ident = [[os.path.abspath(f), os.path.getsize(f), int(os.path.getmtime(f))] for f in files]
    return ident, lambda: take(iter_documents_from_files(files, d.format, d.text_column), tok_cfg.training_docs)


def load_or_train_tokenizer(tok_cfg, data_cfg, corpus: Optional[dict], cache_root: Path, log=print):
    """The tokenizer section's tokenizer; with no ``name_or_path``, a WordPiece vocabulary trained on the data
    section's training documents (reused from ``cache_root/tokenizers`` when already trained)."""
    from transformers import AutoTokenizer
    if tok_cfg.name_or_path:
        try:
            return AutoTokenizer.from_pretrained(tok_cfg.name_or_path)
        except (OSError, ValueError) as e:
            raise RecipeError(f"Could not load tokenizer '{tok_cfg.name_or_path}' ({type(e).__name__}: {e}). Pass a "
                              f"local folder (e.g. ../shared/tokenizers/bert-base-uncased) or train one: "
                              f"tokenizer.name_or_path=null.") from e
    ident, docs = _training_documents(tok_cfg, data_cfg, corpus)
    folder = cache_root / "tokenizers" / f"wordpiece-{tok_cfg.vocab_size}-{config_hash([ident, tok_cfg.training_docs])}"
    if not (folder / "tokenizer_config.json").exists():
        train_wordpiece(docs(), tok_cfg.vocab_size, folder, log=log)
    return AutoTokenizer.from_pretrained(str(folder))
