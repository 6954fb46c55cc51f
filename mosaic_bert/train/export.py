"""Model card generation and upload of a pretrained folder (Hugging Face Hub, or a local target dir)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

# run artefacts that are not part of the published model
EXCLUDE = ("checkpoints", "runs", ".tmp*", "*.tmp", "events.out.tfevents*", "trainer_state.json", "summary.json")


def write_model_card(out_dir, recipe, summary: dict, records: list[dict]) -> Path:
    r = recipe.to_dict()
    m, d, t, tok = r["model"], r["data"], r["train"], r["tokenizer"]
    fe, le = summary.get("first_eval") or {}, summary.get("last_eval") or {}
    meta = summary.get("data") or {}
    if d["hub_name"]:
        data_desc = f"`{d['hub_name']}`" + (f" (config `{d['hub_config']}`)" if d["hub_config"] else "") + \
                    f", first {d['max_train_docs']} documents, streamed"
    elif d["train_files"] is None:
        data_desc = "the Python documentation shipped with CPython (pydoc topics and standard-library docstrings), " \
                    "cleaned and deduplicated, with a 4% held-out split"
    else:
        data_desc = ", ".join(f"`{os.path.basename(str(f))}`" for f in ([d["train_files"]] if isinstance(d["train_files"], str) else d["train_files"]))
    is_mosaic = m["family"] == "mosaic"
    perf = [x for x in records if "tokens_per_s" in x]
    tps = f"{sum(x['tokens_per_s'] for x in perf[-5:]) / len(perf[-5:]):,.0f}" if perf else "n/a"
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: fill-mask",
        "tags: [bert, mosaic-bert, fill-mask, alibi]" if is_mosaic else "tags: [bert, fill-mask]",
        "---",
        "",
        f"# {recipe.name}",
        "",
        ("A MosaicBERT (ALiBi attention, unpadded sequences, GeGLU feed-forward; Portes et al., NeurIPS 2023) "
         if is_mosaic else "A BERT (transformers `BertForMaskedLM`) ") +
        "pretrained with masked language modelling by `mosaic_bert.train.trainer`.",
        "",
        "```python",
        "from transformers import AutoModelForMaskedLM, AutoTokenizer",
        'model = AutoModelForMaskedLM.from_pretrained("<this folder or repo>"' + (", trust_remote_code=True)" if is_mosaic else ")"),
        'tokenizer = AutoTokenizer.from_pretrained("<this folder or repo>")',
        "```",
        "",
        "## Model",
        "",
        "| hidden | layers | heads | intermediate | vocab | parameters |",
        "|---|---|---|---|---|---|",
        f"| {m['hidden_size']} | {m['num_hidden_layers']} | {m['num_attention_heads']} | {m['intermediate_size']} | "
        f"{summary.get('vocab_size') or 'see config.json'} | {summary.get('params', 0) / 1e6:.1f}M |",
        "",
        "## Data",
        "",
        f"Trained on {data_desc}. Tokenizer: " +
        (f"`{tok['name_or_path']}`." if tok["name_or_path"] else f"a {tok['vocab_size']}-token uncased WordPiece vocabulary trained on the same data."),
        f"Sequences of at most {d['max_seq_len']} tokens, mode `{d['mode']}`; "
        f"{meta.get('train', {}).get('rows', '?')} training rows, {meta.get('train', {}).get('tokens', '?')} tokens.",
        "",
        "## Training recipe",
        "",
        f"- {summary.get('steps')} optimizer steps of global batch {t['global_batch_size']} "
        f"({summary.get('samples_seen', 0):,} samples, {summary.get('tokens_seen', 0):,} tokens)",
        f"- MLM masking {t['mlm_probability']:.0%} (80% [MASK], 10% random, 10% unchanged); evaluation at {t['eval_mlm_probability']:.0%}",
        f"- Decoupled AdamW: lr {t['lr']}, betas {tuple(t['betas'])}, eps {t['eps']}, weight decay {t['weight_decay']} "
        f"(decoupled, {'not on biases/LayerNorm' if t['no_decay_bias_and_norm'] else 'all parameters'})",
        f"- Linear warmup {t['warmup']} then linear decay to {t['alpha_f']}x; grad-norm clip {t['grad_clip_norm']}; precision {summary.get('precision', t['mixed_precision'])}"
        f"{', ' + str(summary['num_processes']) + ' processes' if summary.get('num_processes', 1) > 1 else ''}",
        f"- Seed {t['seed']}; last-window throughput {tps} tokens/s",
        "",
        "## Results (held-out split)",
        "",
        "| | MLM loss | masked accuracy |",
        "|---|---|---|",
    ]
    if fe:
        lines.append(f"| step {fe['step']} | {fe['eval_loss']:.4f} | {fe['eval_accuracy']:.4f} |")
    if le:
        lines.append(f"| step {le['step']} | {le['eval_loss']:.4f} | {le['eval_accuracy']:.4f} |")
    lines += ["", "![loss curve](loss_curve.png)", "",
              "Full recipe: `recipe.json`; per-step metrics: `metrics.jsonl`.", ""]
    path = Path(out_dir) / "README.md"
    path.write_text("\n".join(lines))
    return path


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
        raise FileNotFoundError(f"{folder} is not a model folder (missing {', '.join(missing)}). Pass the output_dir of "
                                f"a finished pretraining run.")


def push_folder(folder, repo_id: str | None = None, revision: str | None = None, private: bool = False,
                local_target: str | None = None, commit_message: str = "Upload MosaicBERT", token: str | None = None):
    """Upload ``folder`` (minus checkpoints and logs) to the Hub, or copy it to ``local_target``."""
    check_publishable(folder)
    files = files_to_publish(folder)
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
        raise ValueError("repo_id is needed to upload to the Hub (or pass a local target directory).")
    from huggingface_hub import HfApi
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision, commit_message=commit_message,
                             ignore_patterns=[f"{p}/**" if "*" not in p else p for p in EXCLUDE] + list(EXCLUDE))
    return str(getattr(info, "commit_url", info))
