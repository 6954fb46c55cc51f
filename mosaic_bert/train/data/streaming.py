"""Streaming for the impatient: training microbatches straight from a streamed dataset (a Hub dataset or remote
files through ``datasets``), tokenized off the training thread, split across ranks with ``split_dataset_by_node``,
with exact resume. No conversion step, at a price: see "Limits".

Order: the dataset's own order (no shuffle buffer: its state would have to be checkpointed). Rank ``r`` of ``W`` reads
``split_dataset_by_node(ds, r, W)`` (whole data files per rank when the file count divides by ``W``, else every
``W``-th example). Rows are made in truncate mode (one [CLS] ... [SEP] row per document, the paper's). Masks are keyed
by the global sample index as on the converted path.

Ranks: after each step the ranks exchange (over a CPU gloo group, no GPU sync) whether each has its microbatches and
how many examples each has read: all stop at the first step one of them cannot fill (a rank that trained on alone
would wait forever in the gradient all-reduce), and every rank's position is known to the main process, which alone
writes the checkpoint. Positions differ between ranks: records that make no row (empty on a Hub dataset, or no token
after normalization) are read but not counted as rows.

Resume: the loader's state is the next step and the number of examples each rank has read; a resumed rank reads and
drops its own count of examples (never tokenized) and continues exactly.

A recipe selects it with ``data.streaming=true`` (``build_streaming_data``: the tokenizer, ``recipe_stream`` and the
held-out rows, tokenized in memory from ``data.valid_files`` or the Hub's ``data.hub_valid_split``).

Limits: which rank reads which document depends on the world size, so a resume must keep it (the converted path does
not have this limit); truncate mode only; skipping re-reads the stream up to the position (converted folders resume
in O(1)).
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from ...errors import DataError
from ..masking import MLMMasker
from .loader import BatchPlan, finish_microbatch, loader_microbatches
from .shards import attention_from_lengths
from .store import _SAFE_CUT_CHARS   # characters that always hold a row's tokens

_TOKENIZE_DOCS = 256


def rank_stream(ds, rank: int, world: int):
    """This rank's share of a ``datasets.IterableDataset`` (``split_dataset_by_node``); plain iterables are strided."""
    import datasets
    if isinstance(ds, datasets.IterableDataset):
        from datasets.distributed import split_dataset_by_node
        return split_dataset_by_node(ds, rank=rank, world_size=world) if world > 1 else ds
    return itertools.islice(ds, rank, None, world)


def _skip(ds, n: int):
    """The stream past its first ``n`` examples, read and dropped. Not ``IterableDataset.skip``: in datasets 5.2 a
    skip on a ``split_dataset_by_node`` stream of one file skips ``n`` examples of the whole stream before striding,
    so rank 0 of 2 resumed with skip(3) reads rank 1's examples (measured: [3, 5, 7, ...] instead of [6, 8, ...])."""
    return itertools.islice(ds, n, None) if n else ds


class _Microbatches(torch.utils.data.IterableDataset):
    """This rank's microbatches from ``start_step`` on, each with ``_examples``: examples read up to its last row."""

    def __init__(self, open_stream, tokenizer, masker: MLMMasker, plan: BatchPlan, seq_len: int, text_column: str,
                 start_step: int, skip: int, layout: Optional[Callable[[dict], dict]] = None,
                 stats: Optional[Callable[[dict], tuple]] = None):
        """``layout``, ``stats``: as ``finish_microbatch``'s."""
        self.open_stream, self.tokenizer, self.masker, self.plan = open_stream, tokenizer, masker, plan
        self.seq_len, self.text_column, self.start, self.skip = seq_len, text_column, start_step, skip
        self.layout, self.stats = layout, stats

    def _rows(self) -> Iterator[tuple[list[int], int]]:
        tok, body = self.tokenizer, self.seq_len - 2
        stream = _skip(rank_stream(self.open_stream(), self.plan.rank, self.plan.num_processes), self.skip)
        read, batch = self.skip, []

        def flush(batch):
            enc = tok([t[: body * _SAFE_CUT_CHARS] for t, _ in batch], add_special_tokens=False, truncation=True,
                      max_length=body, return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            for ids, (_, n) in zip(enc, batch):
                if ids:
                    yield [tok.cls_token_id] + ids + [tok.sep_token_id], n
        for ex in stream:
            read += 1
            text = ex.get(self.text_column) if isinstance(ex, dict) else ex
            if text and text.strip():
                batch.append((text, read))
            if len(batch) >= _TOKENIZE_DOCS:
                yield from flush(batch)
                batch = []
        if batch:
            yield from flush(batch)

    def __iter__(self):
        plan, rows = self.plan, self._rows()
        for i in itertools.count():
            step, a = self.start + i // plan.accum, i % plan.accum
            got = list(itertools.islice(rows, plan.microbatch))
            if len(got) < plan.microbatch:
                return   # the stream ended
            ids = np.full((plan.microbatch, self.seq_len), self.tokenizer.pad_token_id, dtype=np.int64)
            for j, (r, _) in enumerate(got):
                ids[j, : len(r)] = r
            lengths = np.array([len(r) for r, _ in got])
            # as TrainMicrobatches: padding columns no row uses are cut, unless a layout is added (then the full
            # width: fewer distinct shapes for a compiled model)
            width = self.seq_len if self.layout else int(lengths.max())
            att = attention_from_lengths(lengths, width)
            input_ids, labels = self.masker(ids[:, :width], plan.sample_indices(step, a))
            batch = {"input_ids": input_ids, "attention_mask": torch.from_numpy(att), "labels": labels}
            yield finish_microbatch(batch, self.layout, self.stats, _examples=got[-1][1])


def _cpu_group(world: int):
    """The process group for the ranks' per-step exchange, or None (one process, or no torch.distributed: an
    in-process test of one rank). Gloo even beside NCCL: a CUDA collective would make the host wait for the GPU's
    queued work every step, and the loader runs ahead of it."""
    import torch.distributed as dist
    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return None
    return dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


class StreamingTrainLoader:
    """``TrainLoader``'s contract on a stream: yields ``(step, [microbatch, ...])``; ``state_dict`` holds the next step
    and the examples each rank has read. ``open_stream()`` returns the whole (unsplit) stream, e.g.
    ``lambda: datasets.load_dataset("allenai/c4", "en", split="train", streaming=True)``. ``num_workers`` 0 tokenizes
    in the training process, 1 in one DataLoader worker (one stream per rank keeps the order exact)."""

    def __init__(self, open_stream: Callable, tokenizer, masker: MLMMasker, plan: BatchPlan, total_steps: int,
                 seq_len: int = 128, mode: str = "truncate", text_column: str = "text", num_workers: int = 1,
                 layout: Optional[Callable[[dict], dict]] = None, pin_memory: bool = False,
                 stats: Optional[Callable[[dict], tuple]] = None):
        """``layout``: extra model inputs computed from each microbatch in the loader, as ``TrainLoader``'s (the
        bucketed unpadding of the compiled fast path). ``pin_memory``: page-locked batches, so that the training
        loop's ``non_blocking`` copies to the GPU do not wait for the GPU's queued work (as ``TrainLoader``'s).
        ``stats``: the FLOP count's inputs computed with each microbatch (as ``TrainLoader``'s)."""
        if mode != "truncate":
            raise DataError(f"Streaming makes truncate rows only (got data.mode={mode}): convert the data with "
                            f"scripts/prepare_data.py for chunk or pack.")
        if num_workers not in (0, 1):
            raise DataError(f"Streaming reads one ordered stream per rank: num_workers must be 0 or 1, got {num_workers}.")
        self.open_stream, self.tokenizer, self.masker, self.plan = open_stream, tokenizer, masker, plan
        self.total_steps, self.seq_len, self.text_column, self.num_workers = total_steps, seq_len, text_column, num_workers
        self.layout, self.pin_memory, self.group = layout, pin_memory, False   # the gloo group, made on the first __iter__ (all ranks call it)
        self.stats = stats
        self.step, self.examples = 0, 0
        self.rank_examples: list[Optional[int]] = [0] * plan.num_processes

    def state_dict(self) -> dict:
        """``examples``: this rank's count (rank 0's in a checkpoint); ``rank_examples``: every rank's, by rank
        (None where unknown: ranks in one process without torch.distributed)."""
        return {"step": self.step, "samples": self.step * self.plan.global_batch, "examples": self.examples,
                "rank_examples": list(self.rank_examples), "world": self.plan.num_processes}

    def load_state_dict(self, state: dict):
        if int(state.get("world", self.plan.num_processes)) != self.plan.num_processes:
            raise DataError(f"A streamed run resumes on the world size it started with ({state['world']} processes, "
                            f"now {self.plan.num_processes}); convert the data with scripts/prepare_data.py to change it.")
        counts = state.get("rank_examples") or [None] * self.plan.num_processes
        mine = counts[self.plan.rank]
        if mine is None and self.plan.num_processes > 1:
            raise DataError(f"This streamed checkpoint does not hold rank {self.plan.rank}'s stream position (no "
                            f"rank_examples: written by an older version, or by ranks without torch.distributed); "
                            f"it cannot be resumed on {self.plan.num_processes} processes.")
        self.step = int(state["step"])
        self.examples = int(state["examples"] if mine is None else mine)
        self.rank_examples = [None if c is None else int(c) for c in counts]

    def _exchange(self, full: bool, examples: int) -> Optional[list[Optional[int]]]:
        """Every rank's examples read after this step, or None if some rank could not fill the step."""
        plan = self.plan
        if self.group is None:
            return [examples if r == plan.rank else None for r in range(plan.num_processes)] if full else None
        mine = torch.tensor([int(full), examples], dtype=torch.int64)
        every = [torch.zeros_like(mine) for _ in range(plan.num_processes)]
        torch.distributed.all_gather(every, mine, group=self.group)
        return [int(e[1]) for e in every] if all(int(e[0]) for e in every) else None

    def __iter__(self):
        if self.group is False:
            self.group = _cpu_group(self.plan.num_processes)
        ds = _Microbatches(self.open_stream, self.tokenizer, self.masker, self.plan, self.seq_len, self.text_column,
                           self.step, self.examples, self.layout, self.stats)
        it = loader_microbatches(ds, self.num_workers, self.pin_memory)
        for step in range(self.step, self.total_steps):
            micro = list(itertools.islice(it, self.plan.accum))
            examples = int(micro[-1]["_examples"]) if micro else self.examples
            counts = self._exchange(len(micro) == self.plan.accum, examples)
            if counts is None:
                return   # the stream ended on some rank: every rank stops at this step
            for m in micro:
                m.pop("_examples")
            self.step, self.examples, self.rank_examples = step + 1, examples, counts
            yield step, micro


# ------------------------------------------------------------------------------------------ a recipe's stream
class HeldOutRows:
    """Held-out rows tokenized in memory (``TokenizedSplit``'s ``len`` and ``rows``, for ``eval_batches``)."""

    def __init__(self, arrays, seq_len: int):
        self.seq_len = seq_len
        self.ids = arrays["ids"].astype(np.int64) if arrays else np.zeros((0, seq_len), np.int64)
        self.lengths = arrays["lengths"].astype(np.int64) if arrays else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def rows(self, idx):
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        lengths = self.lengths[idx]
        return self.ids[idx], attention_from_lengths(lengths, self.seq_len), lengths


def _file_examples(files, fmt: str, text_column: str):
    """``{text_column: document}`` from local files with the converted path's reader (blank-line blocks, json, ...)."""
    from .sources import iter_documents_from_files
    for d in iter_documents_from_files(files, fmt, text_column):
        yield {text_column: d}


def recipe_stream(cfg) -> Callable:
    """``open_stream`` for a data section: the Hub split streamed by ``datasets``, or the local files as a
    ``datasets.IterableDataset`` with one shard per file (so ranks get whole files when the count divides)."""
    import datasets
    if cfg.hub_name is not None:
        return lambda: datasets.load_dataset(cfg.hub_name, cfg.hub_config, split=cfg.hub_train_split, streaming=True)
    from .sources import resolve_files
    files, fmt, col = resolve_files(cfg.train_files), cfg.format, cfg.text_column
    return lambda: datasets.IterableDataset.from_generator(_file_examples, gen_kwargs={"files": files, "fmt": fmt,
                                                                                       "text_column": col})


def build_streaming_data(data_cfg, tok_cfg, accelerator, cache_root, log=print) -> dict:
    """Tokenizer, ``open_stream`` and held-out rows for ``data.streaming=true`` (see DataConfig.streaming)."""
    from ..tokenizer import load_or_train_tokenizer
    from .convert import is_converted
    from .sources import iter_documents_from_files, iter_hub_documents, resolve_files, take
    from .store import tokenize_documents
    if is_converted(data_cfg.train_files):
        raise DataError(f"{data_cfg.train_files} is a converted folder, read in O(1) without streaming: set "
                        f"data.streaming=false.")
    with accelerator.main_process_first():
        tokenizer = load_or_train_tokenizer(tok_cfg, data_cfg, None, cache_root, log=log)
    if data_cfg.hub_name is not None:
        docs = iter_hub_documents(data_cfg.hub_name, data_cfg.hub_config, data_cfg.hub_valid_split, data_cfg.text_column)
    elif data_cfg.valid_files is not None:
        docs = iter_documents_from_files(resolve_files(data_cfg.valid_files, "data.valid_files"), data_cfg.format,
                                         data_cfg.text_column)
    else:
        docs = []
    arrays, n_docs = tokenize_documents(take(docs, data_cfg.max_valid_docs), tokenizer, data_cfg.max_seq_len, "truncate")
    valid = HeldOutRows(arrays, data_cfg.max_seq_len)
    log(f"[data] streaming the train data (tokenized as read); {len(valid)} held-out rows from {n_docs} documents")
    meta = {"streaming": True, "train": {"rows": None, "mean_tokens_per_row": 0.0},
            "valid": {"rows": len(valid), "documents": n_docs}}
    return {"tokenizer": tokenizer, "stream": recipe_stream(data_cfg), "valid": valid, "meta": meta}
