"""Pretraining loop: recipe -> tokenizer -> tokenized cache -> Accelerate training -> checkpoints -> HF folder.

Run with ``python scripts/pretrain.py [recipe.yaml] [section.key=value ...] [--resume [PATH]]`` or under
``accelerate launch``. Exactness of resume: the data order is a pure function of (seed, epoch), masks are a
pure function of (seed, global sample index), and torch's RNG is reseeded from (seed, step, microbatch) before
every microbatch, so a resumed run (or a run on another number of processes with the same global batch)
computes the same thing as a straight one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

from .data import (TokenizedSplit, TrainMicrobatches, build_or_load_cache, eval_batches, iter_documents_from_files,
                   iter_hub_documents, resolve_files, train_wordpiece, _take)
from .masking import MLMMasker
from .optim import build_optimizer, build_scheduler
from .config import (Recipe, check_batch, config_hash, duration_to_steps, load_recipe, warmup_steps)
from ..errors import DataError, RecipeError, ResumeError
from .flops import batch_stats, model_flop_params, peak_flops, step_flops

STATE_FILE = "trainer_state.json"


def _print(accelerator, *a):
    if accelerator is None or accelerator.is_main_process:
        print(*a, flush=True)


# ------------------------------------------------------------------------------------- model/tokenizer
def round_vocab(n: int, multiple: int = 64) -> int:
    return int(math.ceil(n / multiple) * multiple)


def build_model(recipe: Recipe, tokenizer_len: int, pad_token_id: int):
    m = recipe.model
    vocab = round_vocab(tokenizer_len)
    if m.vocab_size is not None:
        if m.vocab_size < tokenizer_len:
            raise RecipeError(f"The tokenizer has {tokenizer_len} tokens but model.vocab_size={m.vocab_size}: ids past "
                              f"the embedding table would crash. Fix: set model.vocab_size={vocab} (or leave it unset "
                              f"to use the tokenizer's size rounded up to a multiple of 64).")
        vocab = m.vocab_size
    kwargs = dict(vocab_size=vocab, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
                  num_attention_heads=m.num_attention_heads, intermediate_size=m.intermediate_size,
                  max_position_embeddings=m.max_position_embeddings, hidden_dropout_prob=m.hidden_dropout_prob,
                  attention_probs_dropout_prob=m.attention_probs_dropout_prob, pad_token_id=pad_token_id)
    kwargs.update(m.extra or {})
    if m.family == "mosaic":
        from ..modeling import BertConfig, BertForMaskedLM
        kwargs.update(alibi_starting_size=m.alibi_starting_size, attention_backend=m.attention_backend)
        return BertForMaskedLM(BertConfig(**kwargs))
    import transformers
    return transformers.BertForMaskedLM(transformers.BertConfig(**kwargs))


def load_or_train_tokenizer(recipe: Recipe, corpus: dict | None, cache_root: Path, log=print):
    from transformers import AutoTokenizer
    t = recipe.tokenizer
    if t.name_or_path:
        try:
            return AutoTokenizer.from_pretrained(t.name_or_path)
        except Exception as e:
            raise RecipeError(f"Could not load tokenizer '{t.name_or_path}' ({type(e).__name__}: {e}). Pass a local "
                              f"folder (e.g. ../shared/tokenizers/bert-base-uncased) or train one: tokenizer.name_or_path=null.") from e
    d = recipe.data
    if d.hub_name:
        ident = [d.hub_name, d.hub_config, d.hub_train_split]
        docs = lambda: _take(iter_hub_documents(d.hub_name, d.hub_config, d.hub_train_split, d.text_column), t.training_docs)
    else:
        files = [corpus["train"]] if (d.train_files is None and corpus) else resolve_files(d.train_files, "data.train_files")
        ident = [[os.path.abspath(f), os.path.getsize(f), int(os.path.getmtime(f))] for f in files]
        docs = lambda: _take(iter_documents_from_files(files, d.format, d.text_column), t.training_docs)
    folder = cache_root / "tokenizers" / f"wordpiece-{t.vocab_size}-{config_hash([ident, t.training_docs])}"
    if (folder / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(str(folder))
    train_wordpiece(docs(), t.vocab_size, folder, log=log)
    return AutoTokenizer.from_pretrained(str(folder))


# ------------------------------------------------------------------------------------- checkpoints
def list_checkpoints(out_dir: Path) -> list[Path]:
    d = out_dir / "checkpoints"
    if not d.exists():
        return []
    return sorted((p for p in d.iterdir() if p.name.startswith("step_") and (p / STATE_FILE).exists()),
                  key=lambda p: int(p.name.split("_")[1]))


def find_resume_checkpoint(resume: str, out_dir: Path) -> Path | None:
    if resume in (None, "", False):
        return None
    if resume in ("latest", "auto", True):
        ckpts = list_checkpoints(out_dir)
        if not ckpts:
            if resume == "auto":
                return None
            raise ResumeError(f"--resume: no checkpoint under {out_dir / 'checkpoints'}. Start without --resume, "
                              f"or pass the checkpoint folder: --resume PATH.")
        return ckpts[-1]
    p = Path(resume)
    if (p / "checkpoints").exists() and not (p / STATE_FILE).exists():
        ckpts = list_checkpoints(p)
        if ckpts:
            return ckpts[-1]
    if not (p / STATE_FILE).exists():
        raise ResumeError(f"--resume {resume}: not a checkpoint folder (no {STATE_FILE}). Pass a folder like "
                          f"{out_dir}/checkpoints/step_0001000 or a run folder.")
    return p


def check_resume_compatible(ckpt: Path, recipe: Recipe):
    state = json.loads((ckpt / STATE_FILE).read_text())
    old, new = state["fingerprint"], json.loads(json.dumps(recipe.fingerprint(), default=str))
    diffs = []
    for sec in new:
        for k in set(old.get(sec, {})) | set(new[sec]):
            if old.get(sec, {}).get(k) != new[sec].get(k):
                diffs.append(f"{sec}.{k}: checkpoint {old.get(sec, {}).get(k)!r} vs now {new[sec].get(k)!r}")
    if diffs:
        raise ResumeError(f"Cannot resume from {ckpt}: it was written by a different config:\n  " + "\n  ".join(sorted(diffs)) +
                          "\nFix: resume with the recipe and overrides that started the run (saved as recipe.json in "
                          "the checkpoint), or start a new run in another train.output_dir.")
    return state


def save_checkpoint(accelerator, out_dir: Path, step: int, recipe: Recipe, extra: dict, keep: int):
    ckdir = out_dir / "checkpoints"
    final = ckdir / f"step_{step:07d}"
    tmp = ckdir / f".tmp-step_{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "fingerprint": recipe.fingerprint(), "world_size": accelerator.num_processes, **extra}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, default=str))
        (tmp / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=1, default=str))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # atomic: a checkpoint folder either is complete or does not exist
        for old in list_checkpoints(out_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# ------------------------------------------------------------------------------------------ metrics
class Metrics:
    def __init__(self, path: Path, enabled: bool, start_step: int):
        self.path, self.enabled = path, enabled
        self.records: list[dict] = []
        if enabled and path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    if r.get("step", 0) <= start_step and start_step > 0:
                        self.records.append(r)
            path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        elif enabled:
            path.write_text("")

    def log(self, rec: dict):
        if self.enabled:
            self.records.append(rec)
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")


def plot_curve(records: list[dict], path: Path, title: str):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tr = [(r["step"], r["loss"]) for r in records if "loss" in r]
    ev = [(r["step"], r["eval_loss"], r["eval_accuracy"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    if tr:
        ax[0].plot(*zip(*tr), label="train MLM loss", lw=1)
    if ev:
        ax[0].plot([e[0] for e in ev], [e[1] for e in ev], "o-", label="held-out MLM loss (15% masking)")
        ax[1].plot([e[0] for e in ev], [e[2] for e in ev], "o-", color="C2")
    ax[0].set_xlabel("step"); ax[0].set_ylabel("loss"); ax[0].legend(); ax[0].grid(alpha=0.3)
    ax[1].set_xlabel("step"); ax[1].set_ylabel("held-out masked accuracy"); ax[1].grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- eval
@torch.no_grad()
def evaluate(accelerator, model, split, masker, n_samples, microbatch) -> dict:
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # loss*n, correct, n
    for batch in eval_batches(split, masker, n_samples, microbatch, accelerator.num_processes, accelerator.process_index):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        labels = batch["labels"]
        sel = labels != -100
        n = int(sel.sum())
        if n == 0:
            continue
        with accelerator.autocast():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, return_dict=True)
        logits = out.logits
        if logits.dim() == 3:  # HF baseline: (b, s, V)
            logits = logits[sel]
        correct = (logits.argmax(-1) == labels[sel]).sum()
        sums += torch.stack([out.loss.double() * n, correct.double(), torch.tensor(float(n), device=sums.device, dtype=torch.float64)])
    sums = accelerator.reduce(sums, reduction="sum")
    model.train()
    n = max(sums[2].item(), 1.0)
    return {"eval_loss": sums[0].item() / n, "eval_accuracy": sums[1].item() / n, "eval_masked_tokens": int(sums[2].item())}


def _seed_microbatch(seed: int, step: int, micro_index: int):
    torch.manual_seed((int(seed) * 1_000_003 + step * 4099 + micro_index) % (2**63 - 1))


# ---------------------------------------------------------------------------------------------- run
def run(recipe: Recipe, resume=None, log=print) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from .corpus import build_python_docs_corpus, default_cache_dir

    t_start = time.time()
    tcfg, dcfg = recipe.train, recipe.data
    mp = tcfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    out_dir = Path(tcfg.output_dir)
    trackers = []
    if tcfg.trackers == "auto":
        try:
            import tensorboard  # noqa: F401
            trackers = ["tensorboard"]
        except ImportError:
            trackers = []
    elif tcfg.trackers not in ("none", "", None):
        trackers = [t.strip() for t in tcfg.trackers.split(",")]
    accelerator = Accelerator(mixed_precision=mp, log_with=trackers or None, project_dir=str(out_dir))
    P, rank = accelerator.num_processes, accelerator.process_index
    accum = check_batch(recipe, P)
    say = (lambda *a: _print(accelerator, *a))

    ckpt = find_resume_checkpoint(resume, out_dir) if resume else None
    resumed_state = check_resume_compatible(ckpt, recipe) if ckpt else None
    if ckpt is None and accelerator.is_main_process:
        if list_checkpoints(out_dir):
            say(f"[pretrain] {out_dir} holds checkpoints of an earlier run; starting fresh (pass --resume to continue it)")
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        out_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    # ---- data and tokenizer (built once, by the main process first)
    cache_root = Path(dcfg.cache_dir) if dcfg.cache_dir else default_cache_dir()
    corpus = None
    with accelerator.main_process_first():
        if dcfg.train_files is None and dcfg.hub_name is None:
            corpus = build_python_docs_corpus(cache_root / "pydocs-corpus", valid_fraction=dcfg.valid_fraction, log=say)
        tokenizer = load_or_train_tokenizer(recipe, corpus, cache_root, log=say)
        folder, meta = build_or_load_cache(dcfg, tokenizer, log=say, is_main=True, default_corpus=corpus)
    train_split, valid_split = TokenizedSplit(folder, "train"), TokenizedSplit(folder, "valid")
    total_steps = duration_to_steps(tcfg.max_duration, tcfg.global_batch_size, meta["train"]["mean_tokens_per_row"])
    warm = warmup_steps(tcfg.warmup, total_steps)

    # ---- model, optimizer, schedule
    set_seed(tcfg.seed)
    torch.manual_seed(tcfg.seed)
    model = build_model(recipe, len(tokenizer), tokenizer.pad_token_id)
    model.to(accelerator.device)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model, tcfg.lr, tcfg.betas, tcfg.eps, tcfg.weight_decay, tcfg.no_decay_bias_and_norm)
    scheduler = build_scheduler(optimizer, warm, total_steps, tcfg.alpha_f)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    fwd_model = torch.compile(model) if tcfg.compile else model

    start_step, samples_seen, tokens_seen = 0, 0, 0
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        start_step = int(resumed_state["step"])
        samples_seen, tokens_seen = resumed_state.get("samples_seen", 0), resumed_state.get("tokens_seen", 0)
        say(f"[pretrain] resumed from {ckpt} at step {start_step}")

    if accelerator.is_main_process and trackers:
        flat = {f"{s}.{k}": (v if isinstance(v, (int, float, str, bool)) else str(v))
                for s, sec in recipe.to_dict().items() if isinstance(sec, dict) for k, v in sec.items()}
        accelerator.init_trackers(recipe.name.replace("/", "_"), config=flat)
    elif trackers:
        accelerator.init_trackers(recipe.name.replace("/", "_"))
    metrics = Metrics(out_dir / "metrics.jsonl", accelerator.is_main_process, start_step)

    n_flop_params, hidden, vocab = model_flop_params(accelerator.unwrap_model(model))
    layers = accelerator.unwrap_model(model).config.num_hidden_layers
    peak = peak_flops(accelerator.device)
    say(f"[pretrain] {recipe.name}: {recipe.model.family} model, {n_params / 1e6:.1f}M params (vocab {vocab}, tokenizer "
        f"{len(tokenizer)}), {meta['train']['rows']:,} train rows of <= {dcfg.max_seq_len} tokens, {total_steps} steps x "
        f"global batch {tcfg.global_batch_size} (= microbatch {tcfg.microbatch_size} x accumulation {accum} x {P} "
        f"process(es)), warmup {warm}, lr {tcfg.lr}, masking {tcfg.mlm_probability}, precision {mp}, device {accelerator.device}")

    train_masker = MLMMasker.from_tokenizer(tokenizer, tcfg.mlm_probability, tcfg.seed)
    eval_masker = MLMMasker.from_tokenizer(tokenizer, tcfg.eval_mlm_probability, tcfg.seed + 7919)
    ds = TrainMicrobatches(train_split, train_masker, tcfg.seed, start_step, total_steps, tcfg.global_batch_size,
                           tcfg.microbatch_size, accum, P, rank)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=dcfg.num_workers,
                                         pin_memory=accelerator.device.type == "cuda",
                                         prefetch_factor=4 if dcfg.num_workers > 0 else None,
                                         persistent_workers=False)

    live = {"pbar": None}

    def do_eval(step):
        r = evaluate(accelerator, fwd_model, valid_split, eval_masker, tcfg.eval_samples, tcfg.microbatch_size)
        rec = {"step": step, **r}
        metrics.log(rec)
        accelerator.log({"eval/loss": r["eval_loss"], "eval/accuracy": r["eval_accuracy"]}, step=step)
        msg = (f"[eval] step {step}: held-out MLM loss {r['eval_loss']:.4f}, masked accuracy {r['eval_accuracy']:.4f} "
               f"({r['eval_masked_tokens']} masked tokens)")
        if live["pbar"] is not None and accelerator.is_main_process:
            live["pbar"].write(msg)
        else:
            say(msg)
        return rec

    first_eval = None
    if start_step == 0:
        first_eval = do_eval(0)
    else:
        evs = [r for r in metrics.records if "eval_loss" in r]
        first_eval = evs[0] if evs else None

    from tqdm.auto import tqdm
    pbar = tqdm(total=total_steps, initial=start_step, disable=not accelerator.is_main_process, desc="pretrain",
                dynamic_ncols=True, mininterval=2.0)
    live["pbar"] = pbar
    it = iter(loader)
    model.train()
    win_loss = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    win_steps, win_tokens, win_flops, win_samples = 0, 0, 0.0, 0
    t_win = time.perf_counter()
    train_time = 0.0
    last_eval = None
    last_step = start_step
    for step in range(start_step, total_steps):
        step_loss = torch.zeros((), device=accelerator.device, dtype=torch.float32)
        for a in range(accum):
            batch = next(it)
            batch.pop("step")
            tokens, attn_sq, head_tokens = batch_stats(batch, recipe.model.family)
            win_tokens += tokens
            win_samples += batch["input_ids"].shape[0]
            win_flops += step_flops(n_flop_params, hidden, vocab, layers, tokens, attn_sq, head_tokens)
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
            _seed_microbatch(tcfg.seed, step, a * P + rank)
            sync = a == accum - 1
            ctx = contextlib.nullcontext() if (sync or P == 1) else accelerator.no_sync(model)
            with ctx:
                with accelerator.autocast():
                    out = fwd_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    labels=batch["labels"], return_dict=True)
                loss = out.loss / accum
                accelerator.backward(loss)
            step_loss += loss.detach().float()
        if tcfg.grad_clip_norm:
            accelerator.clip_grad_norm_(model.parameters(), tcfg.grad_clip_norm)
        lr_used = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        last_step = done
        win_loss += step_loss.double()
        win_steps += 1
        pbar.update(1)
        if done % tcfg.log_interval == 0 or done == total_steps:
            red = accelerator.reduce(torch.stack([win_loss, torch.tensor(float(win_tokens), device=win_loss.device, dtype=torch.float64),
                                                  torch.tensor(win_flops, device=win_loss.device, dtype=torch.float64),
                                                  torch.tensor(float(win_samples), device=win_loss.device, dtype=torch.float64)]),
                                     reduction="sum")
            dt = time.perf_counter() - t_win
            train_time += dt
            loss_v = red[0].item() / (win_steps * P)
            tokens_seen += int(red[1].item())
            samples_seen += int(red[3].item())
            tps = red[1].item() / dt
            rec = {"step": done, "loss": loss_v, "lr": lr_used, "tokens_per_s": tps, "samples_per_s": red[3].item() / dt,
                   "tflops_per_s": red[2].item() / dt / 1e12, "samples_seen": samples_seen, "tokens_seen": tokens_seen}
            if peak:
                rec["mfu"] = red[2].item() / dt / (peak * P)
            metrics.log(rec)
            accelerator.log({"train/loss": loss_v, "train/lr": lr_used, "perf/tokens_per_s": tps,
                             **({"perf/mfu": rec["mfu"]} if peak else {})}, step=done)
            pbar.set_postfix(loss=f"{loss_v:.3f}", lr=f"{lr_used:.2e}", tok_s=f"{tps:,.0f}",
                             **({"mfu": f"{rec['mfu']:.1%}"} if peak else {}))
            win_loss.zero_()
            win_steps, win_tokens, win_flops, win_samples = 0, 0, 0.0, 0
            t_win = time.perf_counter()
        if done % tcfg.eval_interval == 0 or done == total_steps:
            last_eval = do_eval(done)
            t_win = time.perf_counter()
        if done % tcfg.checkpoint_interval == 0 or done == total_steps:
            save_checkpoint(accelerator, out_dir, done, recipe, {"samples_seen": samples_seen, "tokens_seen": tokens_seen,
                                                                 "total_steps": total_steps}, tcfg.keep_checkpoints)
            t_win = time.perf_counter()
        if tcfg.crash_at_step is not None and done == tcfg.crash_at_step:
            pbar.close()
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # testing: a real kill -9, mid-run
    pbar.close()
    if last_eval is None:
        evs = [r for r in metrics.records if "eval_loss" in r]
        last_eval = evs[-1] if evs else None

    # ---- export the HF folder
    accelerator.wait_for_everyone()
    summary = {"steps": last_step, "total_steps": total_steps, "first_eval": first_eval, "last_eval": last_eval,
               "params": n_params, "vocab_size": vocab, "precision": mp, "num_processes": P, "train_time_s": train_time, "wall_time_s": time.time() - t_start,
               "tokens_seen": tokens_seen, "samples_seen": samples_seen, "data": meta, "output_dir": str(out_dir)}
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(str(out_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(out_dir))
        (out_dir / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=1, default=str))
        plot_curve(metrics.records, out_dir / "loss_curve.png", f"{recipe.name}: {recipe.model.family} BERT MLM pretraining")
        from .export import write_model_card
        write_model_card(out_dir, recipe, summary, metrics.records)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        if first_eval and last_eval:
            say(f"[pretrain] held-out MLM loss {first_eval['eval_loss']:.4f} -> {last_eval['eval_loss']:.4f}, masked "
                f"accuracy {first_eval['eval_accuracy']:.4f} -> {last_eval['eval_accuracy']:.4f} after {last_step} steps "
                f"({summary['wall_time_s']:.0f} s wall)")
        say(f"[pretrain] saved model, tokenizer and model card to {out_dir}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def fill_mask(folder: str, text: str, top_k: int = 5) -> list[tuple[str, float]]:
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
    enc = tok(text.replace("[MASK]", tok.mask_token), return_tensors="pt")
    with torch.no_grad():
        logits = model(**{k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}).logits
    pos = (enc["input_ids"][0] == tok.mask_token_id).nonzero()[0, 0]
    probs = logits[0, pos, : len(tok)].float().softmax(-1)
    top = probs.topk(top_k)
    return [(tok.convert_ids_to_tokens(int(i)), float(p)) for p, i in zip(top.values, top.indices)]


def main(argv=None):
    ap = argparse.ArgumentParser(description="Pretrain a MosaicBERT (or HF BERT) with MLM. With no arguments: a small "
                                 "MosaicBERT on the Python docs, on CPU, in a few minutes.")
    ap.add_argument("args", nargs="*", help="optional recipe YAML, then section.key=value overrides (e.g. train.lr=1e-4)")
    ap.add_argument("--resume", nargs="?", const="latest", default=None,
                    help="resume from the latest checkpoint of train.output_dir, or from PATH")
    ap.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
    ns = ap.parse_args(argv)
    cfg_path = None
    overrides = []
    for a in ns.args:
        if "=" in a:
            overrides.append(a)
        elif cfg_path is None:
            cfg_path = a
        else:
            ap.error(f"unexpected argument {a!r} (one recipe file, then key=value overrides)")
    try:
        recipe = load_recipe(cfg_path, overrides)
        if ns.print_recipe:
            import yaml
            print(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
            return 0
        summary = run(recipe, resume=ns.resume)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if isinstance(e, DataError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    ex = recipe.train.fill_mask_example
    if ex and int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0:
        try:
            preds = fill_mask(summary["output_dir"], ex)
            print(f"[fill-mask] {ex}\n            -> " + ", ".join(f"{t} ({p:.2f})" for t, p in preds), flush=True)
        except Exception as e:  # the example is a demo; never fail the run on it
            print(f"[fill-mask] skipped: {type(e).__name__}: {e}", flush=True)
    return 0
