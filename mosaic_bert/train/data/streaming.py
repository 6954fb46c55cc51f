"""Streaming for the impatient: training microbatches straight from a streamed dataset (a Hub dataset or remote
files through ``datasets``), tokenized off the training thread, split across ranks with ``split_dataset_by_node``,
with exact resume. No conversion step, at a price: see "Limits".

Order: the dataset's own order (no shuffle buffer: its state would have to be checkpointed). Rank ``r`` of ``W`` reads
``split_dataset_by_node(ds, r, W)`` (whole data files per rank when the file count divides by ``W``, else every
``W``-th example). Rows are made in truncate mode (one [CLS] ... [SEP] row per document, the paper's). Masks are keyed
by the global sample index as on the converted path.

Resume: the loader's state is the next step and the number of examples this rank has read; a resumed loader reads
and drops those examples (never tokenized) and continues exactly.

A recipe selects it with ``data.streaming=true`` (``build_streaming_data``: the tokenizer, ``recipe_stream`` and the
held-out rows, tokenized in memory from ``data.valid_files`` or the Hub's ``data.hub_valid_split``).

Limits: which rank reads which document depends on the world size, so a resume must keep it (the converted path does
not have this limit); truncate mode only; skipping re-reads the stream up to the position (converted folders resume
in O(1)).
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterator

import numpy as np
import torch

from ...errors import DataError
from ..masking import MLMMasker
from .loader import BatchPlan
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
                 start_step: int, skip: int):
        self.open_stream, self.tokenizer, self.masker, self.plan = open_stream, tokenizer, masker, plan
        self.seq_len, self.text_column, self.start, self.skip = seq_len, text_column, start_step, skip

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
            width = int(lengths.max())
            att = attention_from_lengths(lengths, width)
            input_ids, labels = self.masker(ids[:, :width], plan.sample_indices(step, a))
            yield {"input_ids": input_ids, "attention_mask": torch.from_numpy(att), "labels": labels,
                   "_examples": got[-1][1]}


class StreamingTrainLoader:
    """``TrainLoader``'s contract on a stream: yields ``(step, [microbatch, ...])``; ``state_dict`` holds the next step
    and the examples this rank has read. ``open_stream()`` returns the whole (unsplit) stream, e.g.
    ``lambda: datasets.load_dataset("allenai/c4", "en", split="train", streaming=True)``. ``num_workers`` 0 tokenizes
    in the training process, 1 in one DataLoader worker (one stream per rank keeps the order exact)."""

    def __init__(self, open_stream: Callable, tokenizer, masker: MLMMasker, plan: BatchPlan, total_steps: int,
                 seq_len: int = 128, mode: str = "truncate", text_column: str = "text", num_workers: int = 1):
        if mode != "truncate":
            raise DataError(f"Streaming makes truncate rows only (got data.mode={mode}): convert the data with "
                            f"scripts/prepare_data.py for chunk or pack.")
        if num_workers not in (0, 1):
            raise DataError(f"Streaming reads one ordered stream per rank: num_workers must be 0 or 1, got {num_workers}.")
        self.open_stream, self.tokenizer, self.masker, self.plan = open_stream, tokenizer, masker, plan
        self.total_steps, self.seq_len, self.text_column, self.num_workers = total_steps, seq_len, text_column, num_workers
        self.step, self.examples = 0, 0

    def state_dict(self) -> dict:
        return {"step": self.step, "samples": self.step * self.plan.global_batch, "examples": self.examples,
                "world": self.plan.num_processes}

    def load_state_dict(self, state: dict):
        if int(state.get("world", self.plan.num_processes)) != self.plan.num_processes:
            raise DataError(f"A streamed run resumes on the world size it started with ({state['world']} processes, "
                            f"now {self.plan.num_processes}); convert the data with scripts/prepare_data.py to change it.")
        self.step, self.examples = int(state["step"]), int(state["examples"])

    def __iter__(self):
        ds = _Microbatches(self.open_stream, self.tokenizer, self.masker, self.plan, self.seq_len, self.text_column,
                           self.step, self.examples)
        it = iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=self.num_workers))
        for step in range(self.step, self.total_steps):
            micro = []
            for _ in range(self.plan.accum):
                try:
                    micro.append(next(it))
                except StopIteration:
                    return
            self.examples = int(micro[-1].pop("_examples"))
            for m in micro[:-1]:
                m.pop("_examples")
            self.step = step + 1
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
