"""The command lines (``scripts/*.py`` call these): ``main`` = pretraining (``[recipe] [section.key=value ...]
[--resume [PATH] | --overwrite] [--print-recipe]``: parse, run the Trainer, show a fill-mask example of the exported folder),
``train_tokenizer_main`` and ``push_to_hub_main``. User-fixable errors exit with status 2 and the fix."""

from __future__ import annotations

import argparse
import os
import re
import sys

import torch

from ..errors import MosaicBertError
from .config import load_recipe


def fill_masks(folder: str, texts: list[str], top_k: int = 5) -> list[list[tuple[str, float]]]:
    """The exported folder's top-k tokens for the [MASK] in each text, loaded the way users load it (remote code)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)  # our own model_type: it asks otherwise
    model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
    answers = []
    for text in texts:
        enc = tok(text.replace("[MASK]", tok.mask_token), return_tensors="pt", truncation=True)
        with torch.no_grad():
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        pos = (enc["input_ids"][0] == tok.mask_token_id).nonzero()[0, 0]
        top = logits[0, pos, : len(tok)].float().softmax(-1).topk(top_k)
        answers.append([(tok.convert_ids_to_tokens(int(i)), float(p)) for p, i in zip(top.values, top.indices)])
    return answers


_ANSWER = re.compile(r"\{([^{}]+)\}")


def fill_mask_demo(folder: str, examples) -> list[str]:
    """Lines showing the top answers for each example. An example is a sentence with ``[MASK]``, or with the
    expected word in braces (``a mutable sequence (such as a {list})``): that word is masked and the line says
    whether the top answer is it; a last line counts the hits."""
    examples = [examples] if isinstance(examples, str) else list(examples)
    expected = [m.group(1).strip().lower() if (m := _ANSWER.search(e)) else None for e in examples]
    masked = [_ANSWER.sub("[MASK]", e, count=1) for e in examples]
    lines, hits = [], 0
    for text, want, preds in zip(masked, expected, fill_masks(folder, masked)):
        right = want is not None and preds[0][0] == want
        hits += right
        verdict = "" if want is None else ("   right" if right else f"   (held-out text: {want})")
        lines.append(f"[fill-mask] {text}\n            -> " + ", ".join(f"{t} ({p:.2f})" for t, p in preds) + verdict)
    graded = sum(w is not None for w in expected)
    if graded:
        lines.append(f"[fill-mask] top answer = the held-out word for {hits} of {graded} sentences")
    return lines


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Pretrain a MosaicBERT (or HF BERT) with MLM. With no arguments: a small "
                                 "MosaicBERT on the Python docs, on CPU, in a few minutes.")
    ap.add_argument("args", nargs="*", help="optional recipe (YAML path or shipped name), then section.key=value "
                    "overrides (e.g. train.lr=1e-4)")
    ap.add_argument("--resume", nargs="?", const="latest", default=None,
                    help="resume from the latest checkpoint of train.output_dir, or from PATH")
    ap.add_argument("--overwrite", action="store_true",
                    help="start a new run in a train.output_dir that holds an earlier one: the earlier run is moved "
                    "aside to <output_dir>.previous-<time> (never deleted)")
    ap.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
    ns = ap.parse_args(argv)
    if ns.resume and ns.overwrite:
        ap.error("--resume continues the run in train.output_dir and --overwrite starts a new one there: pass one")
    recipes = [a for a in ns.args if "=" not in a]
    if len(recipes) > 1:
        ap.error(f"unexpected argument {recipes[1]!r} (one recipe file, then key=value overrides)")
    return ns, (recipes[0] if recipes else None), [a for a in ns.args if "=" in a]


def _show_fill_mask(folder: str, examples):
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) != 0:
        return
    try:
        print("\n".join(fill_mask_demo(folder, examples)), flush=True)
    except (OSError, ValueError, RuntimeError) as e:  # a demo of the exported folder: never fail the run on it
        print(f"[fill-mask] skipped: {type(e).__name__}: {e}", flush=True)


def main(argv=None, callbacks=()) -> int:
    """Exit status: 0 done; 2 a user-fixable error (the message says the fix); 143 / 130 stopped by SIGTERM /
    SIGINT after saving a checkpoint at the step boundary (continue with --resume; a second signal exits at once
    with the same status, without a checkpoint)."""
    ns, recipe_path, overrides = parse_args(argv)
    try:
        recipe = load_recipe(recipe_path, overrides)
        if ns.print_recipe:
            import yaml
            print(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
            return 0
        from .trainer import Trainer
        summary = Trainer(recipe, resume=ns.resume, overwrite=ns.overwrite, callbacks=callbacks).fit()
    except MosaicBertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted before training started: nothing to save", file=sys.stderr)
        return 130
    if summary.get("stopped_by"):
        return summary["exit_code"]
    if recipe.train.fill_mask_example:
        _show_fill_mask(summary["output_dir"], recipe.train.fill_mask_example)
    return 0


def train_tokenizer_main(argv=None, description: str = "Train an uncased WordPiece vocabulary.") -> int:
    from .data.sources import iter_documents_from_files, iter_hub_documents, resolve_files, take
    from .tokenizer import train_wordpiece
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="text/jsonl/parquet files or globs (.xz/.gz ok)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab-size", type=int, default=30522)
    ap.add_argument("--max-docs", type=int, default=None)
    ap.add_argument("--format", default="auto")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--hub", default=None, help="Hub dataset name (streamed)")
    ap.add_argument("--hub-config", default=None)
    ap.add_argument("--cased", action="store_true")
    a = ap.parse_args(argv)
    if not a.hub and not a.files:
        ap.error("give files or --hub")
    try:
        docs = (iter_hub_documents(a.hub, a.hub_config, "train", a.text_column) if a.hub else
                iter_documents_from_files(resolve_files(a.files, "files"), a.format, a.text_column))
        train_wordpiece(take(docs, a.max_docs), a.vocab_size, a.out, lowercase=not a.cased)
    except MosaicBertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def push_to_hub_main(argv=None, description: str = "Upload a pretrained folder to the Hub.") -> int:
    from .export import push_folder
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="output_dir of a finished pretraining run")
    ap.add_argument("repo_id", nargs="?", help="Hub repo id, e.g. user/mosaic-bert-mydomain")
    ap.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    ap.add_argument("--private", action="store_true")
    ap.add_argument("--local-target", default=None, help="copy the publishable files to this folder instead of uploading")
    ap.add_argument("--message", default="Upload MosaicBERT")
    a = ap.parse_args(argv)
    try:
        where = push_folder(a.folder, a.repo_id, a.revision, a.private, a.local_target, a.message)
    except MosaicBertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"uploaded {a.folder} -> {where}")
    return 0
