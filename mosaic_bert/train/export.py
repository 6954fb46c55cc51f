"""Model card generation and upload of a pretrained folder (Hugging Face Hub, or a local target dir)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import ExportError
from .metrics import plot_curve
from .model import model_family

# run artefacts that are not part of the published model
EXCLUDE = ("checkpoints", "runs", ".tmp*", "*.tmp", "events.out.tfevents*", "trainer_state.json", "summary.json",
           ".run.lock", ".run-holder.json")


def _data_description(d: dict) -> str:
    if d["hub_name"]:
        return (f"`{d['hub_name']}`" + (f" (config `{d['hub_config']}`)" if d["hub_config"] else "") +
                f", first {d['max_train_docs']} documents, streamed")
    if d["train_files"] is None:
        return ("the Python documentation shipped with CPython (pydoc topics and standard-library docstrings), "
                "cleaned and deduplicated, with a 4% held-out split")
    files = [d["train_files"]] if isinstance(d["train_files"], str) else d["train_files"]
    return ", ".join(f"`{os.path.basename(str(f))}`" for f in files)


def _local_path(v: str) -> bool:
    return os.path.isabs(v) or v.startswith("~") or (os.sep in v and os.path.exists(v))


def public_recipe(recipe) -> dict:
    """The recipe as published (recipe.json, model card): paths of this machine reduced to their file or folder
    name, no cache folder. The checkpoints keep the full recipe (needed to resume)."""
    def scrub(v):
        if isinstance(v, dict):
            return {k: scrub(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [scrub(x) for x in v]
        return os.path.basename(os.path.normpath(v)) if isinstance(v, str) and _local_path(v) else v
    d = scrub(recipe.to_dict())
    d["data"]["cache_dir"] = None
    return d


def check_no_local_paths(folder, files: list[Path]) -> None:
    """Refuse to publish text files that name this machine's paths (the folder's own, or the home folder)."""
    folder = Path(folder).resolve()
    needles = [str(folder.parent), str(Path.home())]
    for f in files:
        if f.suffix not in (".json", ".jsonl", ".md", ".txt", ".yaml"):
            continue
        text = f.read_text(errors="replace")
        found = [n for n in needles if len(n) > 1 and n in text]
        if found:
            raise ExportError(f"{f.name} names a local path ({found[0]}): it would be published. Remove the path "
                              f"from {f} (recipe.json: keep file names only), then publish again.")


def _card_head(name: str, m: dict, summary: dict) -> list[str]:
    family = model_family(m["family"])
    load = ", trust_remote_code=True)" if family.remote_code else ")"
    return [
        "---", "library_name: transformers", "pipeline_tag: fill-mask", f"tags: {family.card_tags}", "---", "",
        f"# {name}", "",
        family.card_intro + "pretrained with masked language modelling by `mosaic_bert.train.trainer`.", "",
        "```python", "from transformers import AutoModelForMaskedLM, AutoTokenizer",
        'model = AutoModelForMaskedLM.from_pretrained("<this folder or repo>"' + load,
        'tokenizer = AutoTokenizer.from_pretrained("<this folder or repo>", trust_remote_code=True)', "```", "",
        "## Model", "", "| hidden | layers | heads | intermediate | vocab | parameters |", "|---|---|---|---|---|---|",
        f"| {m['hidden_size']} | {m['num_hidden_layers']} | {m['num_attention_heads']} | {m['intermediate_size']} | "
        f"{summary.get('vocab_size') or 'see config.json'} | {summary.get('params', 0) / 1e6:.1f}M |", "",
    ]


def _card_data(d: dict, tok: dict, summary: dict) -> list[str]:
    train = (summary.get("data") or {}).get("train", {})
    vocab = (f"`{tok['name_or_path']}`." if tok["name_or_path"] else
             f"a {tok['vocab_size']}-token uncased WordPiece vocabulary trained on the same data.")
    return ["## Data", "", f"Trained on {_data_description(d)}. Tokenizer: " + vocab,
            f"Sequences of at most {d['max_seq_len']} tokens, mode `{d['mode']}`; "
            f"{train.get('rows', '?')} training rows, {train.get('tokens', '?')} tokens.", ""]


def _card_recipe(t: dict, summary: dict, records: list[dict]) -> list[str]:
    perf = [x for x in records if "tokens_per_s" in x][-5:]
    tps = f"{sum(x['tokens_per_s'] for x in perf) / len(perf):,.0f}" if perf else "n/a"
    procs = f", {summary['num_processes']} processes" if summary.get("num_processes", 1) > 1 else ""
    return [
        "## Training recipe", "",
        f"- {summary.get('steps')} optimizer steps of global batch {t['global_batch_size']} "
        f"({summary.get('samples_seen', 0):,} samples, {summary.get('tokens_seen', 0):,} tokens)",
        f"- MLM masking {t['mlm_probability']:.0%} (80% [MASK], 10% random, 10% unchanged); evaluation at "
        f"{t['eval_mlm_probability']:.0%}",
        f"- Decoupled AdamW: lr {t['lr']}, betas {tuple(t['betas'])}, eps {t['eps']}, weight decay {t['weight_decay']} "
        f"(decoupled, {'not on biases/LayerNorm' if t['no_decay_bias_and_norm'] else 'all parameters'})",
        f"- Linear warmup {t['warmup']} then linear decay to {t['alpha_f']}x; grad-norm clip {t['grad_clip_norm']}; "
        f"precision {summary.get('precision', t['mixed_precision'])}{procs}",
        f"- Seed {t['seed']}; last-window throughput {tps} tokens/s", "",
    ]


def _card_results(summary: dict) -> list[str]:
    evals = [e for e in (summary.get("first_eval"), summary.get("last_eval")) if e]
    if not evals:
        return ["## Results", "", "No held-out evaluation was run (train.eval_samples=0).", "",
                "![loss curve](loss_curve.png)", "", "Full recipe: `recipe.json`; per-step metrics: `metrics.jsonl`.", ""]
    lines = ["## Results (held-out split)", "", "| | MLM loss | masked accuracy |", "|---|---|---|"]
    for e in evals:
        lines.append(f"| step {e['step']} | {e['eval_loss']:.4f} | {e['eval_accuracy']:.4f} |")
    return lines + ["", "![loss curve](loss_curve.png)", "",
                    "Full recipe: `recipe.json`; per-step metrics: `metrics.jsonl`.", ""]


def write_model_card(out_dir, recipe, summary: dict, records: list[dict]) -> Path:
    """``README.md`` of a pretrained folder: usage, model, data, recipe and held-out results."""
    r = public_recipe(recipe)
    lines = (_card_head(recipe.name, r["model"], summary) + _card_data(r["data"], r["tokenizer"], summary) +
             _card_recipe(r["train"], summary, records) + _card_results(summary))
    path = Path(out_dir) / "README.md"
    path.write_text("\n".join(lines))
    return path


def result_message(summary: dict) -> str:
    fe, le = summary["first_eval"], summary["last_eval"]
    if not (fe and le):
        return f"[pretrain] {summary['steps']} steps ({summary['wall_time_s']:.0f} s wall)"
    return (f"[pretrain] held-out MLM loss {fe['eval_loss']:.4f} -> {le['eval_loss']:.4f}, masked accuracy "
            f"{fe['eval_accuracy']:.4f} -> {le['eval_accuracy']:.4f} after {summary['steps']} steps "
            f"({summary['wall_time_s']:.0f} s wall)")


def declared_max_length(config) -> int | None:
    """The input length the model declares: ALiBi's `alibi_starting_size` (longer inputs run, extrapolated, with a
    warning) or learned positions' `max_position_embeddings` (None without a config: getattr's default)."""
    return getattr(config, "alibi_starting_size", None) or getattr(config, "max_position_embeddings", None)


def export_run(out_dir, model, tokenizer, recipe, summary: dict, records: list[dict]):
    """The finished run's folder: weights (+ remote code), tokenizer, recipe, loss curve, model card, summary."""
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    length = declared_max_length(getattr(model, "config", None))
    if length:  # a trained WordPiece vocabulary knows no length (1e30): `truncation=True` would do nothing
        tokenizer.model_max_length = length
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "recipe.json").write_text(json.dumps(public_recipe(recipe), indent=1, default=str))
    plot_curve(records, out_dir / "loss_curve.png", f"{recipe.name}: {recipe.model.family} BERT MLM pretraining")
    write_model_card(out_dir, recipe, summary, records)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))


def _ignored(name: str) -> bool:
    import fnmatch
    return any(fnmatch.fnmatch(name, pat) for pat in EXCLUDE)


def files_to_publish(folder) -> list[Path]:
    folder = Path(folder)
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(_ignored(part) for part in rel.parts) or not p.is_file():
            continue
        out.append(p)
    return out


def check_publishable(folder) -> None:
    folder = Path(folder)
    missing = [f for f in ("config.json",) if not (folder / f).exists()]
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise ExportError(f"{folder} is not a model folder (missing {', '.join(missing)}). Pass the output_dir of "
                                f"a finished pretraining run.")


def push_folder(folder, repo_id: str | None = None, revision: str | None = None, private: bool = False,
                local_target: str | None = None, commit_message: str = "Upload MosaicBERT", token: str | None = None):
    """Upload ``folder`` (minus checkpoints and logs) to the Hub, or copy it to ``local_target``."""
    check_publishable(folder)
    files = files_to_publish(folder)
    check_no_local_paths(folder, files)
    if local_target:
        dest = Path(local_target)
        if revision:
            dest = dest / revision
        tmp = dest.parent / f".tmp-{dest.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        for f in files:
            target = tmp / f.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
        (tmp / ".upload.json").write_text(json.dumps({"repo_id": repo_id, "revision": revision, "private": private,
                                                      "files": [str(f.relative_to(folder)) for f in files]}, indent=1))
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        return str(dest)
    if not repo_id:
        raise ExportError("repo_id is needed to upload to the Hub: pass one (user/name), or a local target directory.")
    from huggingface_hub import HfApi
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision, commit_message=commit_message,
                             ignore_patterns=[f"{p}/**" if "*" not in p else p for p in EXCLUDE] + list(EXCLUDE))
    return str(getattr(info, "commit_url", info))
