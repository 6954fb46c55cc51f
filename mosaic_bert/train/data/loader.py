"""Order and batching: which rows, masked how, go into which microbatch of which process.

The sample at global index ``g`` (``g = step * global_batch + offset``) is row ``perm(seed, epoch)[g % N]`` with
``epoch = g // N`` and ``perm`` the keyed bijection of ``order.py`` (no table: O(1) memory in every process and
worker), so a resumed run starts exactly at the next unseen sample. Process
``p``'s accumulation step ``a`` of a step takes offsets ``[(a * P + p) * mb, (a * P + p + 1) * mb)``, and masks are
keyed by ``g``, so a global batch means the same thing on any number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from ..masking import MLMMasker
from .order import global_rows
from .shards import TokenizedSplit


def make_batch(split: TokenizedSplit, rows: np.ndarray, keys: np.ndarray, masker: MLMMasker, trim: bool = True) -> dict:
    """Rows ``rows`` masked with per-sample keys ``keys``; ``trim`` cuts the padding columns no row uses."""
    ids, docs, lengths = split.rows(rows)
    if trim:
        width = int(lengths.max())
        ids, docs = ids[:, :width], docs[:, :width]
    input_ids, labels = masker(ids, keys)
    return {"input_ids": input_ids, "attention_mask": torch.from_numpy(docs), "labels": labels}


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's global batch is cut: ``global_batch = microbatch x accum x num_processes``."""
    seed: int
    global_batch: int
    microbatch: int
    accum: int = 1
    num_processes: int = 1
    rank: int = 0

    def micro_index(self, a: int) -> int:
        """This process's accumulation step ``a`` as an index among all microbatches of a step."""
        return a * self.num_processes + self.rank

    def sample_indices(self, step: int, a: int) -> np.ndarray:
        off = step * self.global_batch + self.micro_index(a) * self.microbatch
        return np.arange(off, off + self.microbatch, dtype=np.int64)


class TrainMicrobatches(torch.utils.data.Dataset):
    """Item i is this process's i-th microbatch from ``start_step`` on (map-style, so DataLoader workers keep order)."""

    def __init__(self, split: TokenizedSplit, masker: MLMMasker, plan: BatchPlan, start_step: int, total_steps: int,
                 trim: bool = True, layout: Optional[Callable[[dict], dict]] = None,
                 stats: Optional[Callable[[dict], tuple]] = None):
        """``trim`` cuts padding columns no row uses; ``layout``, ``stats``: as ``finish_microbatch``'s (with a
        layout rows keep their full width: fewer distinct shapes for a compiled model)."""
        self.split, self.masker, self.plan = split, masker, plan
        self.start, self.total, self.trim, self.layout = start_step, total_steps, trim and layout is None, layout
        self.stats = stats

    def __len__(self):
        return max(0, (self.total - self.start) * self.plan.accum)

    def __getitem__(self, i: int) -> dict:
        step, a = self.start + i // self.plan.accum, i % self.plan.accum
        g = self.plan.sample_indices(step, a)
        rows = global_rows(self.plan.seed, len(self.split), g)
        return finish_microbatch(make_batch(self.split, rows, g, self.masker, self.trim), self.layout, self.stats)


def pack_microbatch(batch: dict) -> dict:
    """The microbatch's tensors as one byte buffer (each at an 8-byte aligned offset) plus where each lies, and its
    other values as they are. A DataLoader worker hands each tensor to the loop through its own shared-memory block
    and file-descriptor handshake (~0.5 ms each on a busy host): packed, a microbatch costs one."""
    parts, spec, off = [], [], 0
    for k, v in batch.items():
        if torch.is_tensor(v):
            raw = v.contiguous().view(-1).view(torch.uint8)
            spec.append((k, v.dtype, tuple(v.shape), off))
            parts += [raw, raw.new_zeros((-raw.numel()) % 8)]
            off += raw.numel() + (-raw.numel()) % 8
    flat = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)
    return {"_packed": flat, "_spec": spec, **{k: v for k, v in batch.items() if not torch.is_tensor(v)}}


def unpack_microbatch(item: dict) -> dict:
    """``pack_microbatch`` undone: each tensor a view of the (pinned) buffer, no copy."""
    flat, spec = item.pop("_packed"), item.pop("_spec")
    for k, dtype, shape, off in spec:
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        item[k] = flat[off:off + n].view(dtype).view(tuple(shape))
    return item


def finish_microbatch(batch: dict, layout: Optional[Callable[[dict], dict]] = None,
                      stats: Optional[Callable[[dict], tuple]] = None, **more) -> dict:
    """A microbatch as the training loop receives it: ``batch``, the model inputs ``layout`` computes from it (e.g.
    the unpadding, so the model never asks the GPU for sizes), its FLOP-count inputs under ``_flop_stats`` (computed
    where the batch is made, so a worker does it, not the loop) and ``more``; packed (``pack_microbatch``) when made
    in a DataLoader worker process, to leave it as one buffer."""
    item = {**batch, **(layout(batch) if layout else {}), **({"_flop_stats": stats(batch)} if stats else {}), **more}
    return pack_microbatch(item) if torch.utils.data.get_worker_info() is not None else item


def loader_microbatches(ds, num_workers: int, pin_memory: bool, **loader_kw) -> Iterator[dict]:
    """``ds``'s items (``finish_microbatch``'s) through a DataLoader, unpacked as they arrive from workers."""
    it = iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                                          **loader_kw))
    return map(unpack_microbatch, it) if num_workers > 0 else it


class TrainLoader:
    """Yields ``(step, [microbatch, ...])`` for each optimizer step from its position on. The position (the next step
    to read) is its state: ``load_state_dict`` before iterating resumes exactly where a checkpoint was written."""

    def __init__(self, split: TokenizedSplit, masker: MLMMasker, plan: BatchPlan, total_steps: int,
                 num_workers: int = 0, pin_memory: bool = False, layout: Optional[Callable[[dict], dict]] = None,
                 stats: Optional[Callable[[dict], tuple]] = None):
        """``layout``: extra model inputs computed from each microbatch in the loader (e.g. the unpadding, so the
        model never asks the GPU for sizes); ``stats``: the FLOP count's inputs, also computed in the workers (at
        small microbatches a compiled step is bound by the host, and the loop's own work shows in full)."""
        self.split, self.masker, self.plan, self.total_steps = split, masker, plan, total_steps
        self.num_workers, self.pin_memory, self.layout, self.stats = num_workers, pin_memory, layout, stats
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "samples": self.step * self.plan.global_batch}

    def load_state_dict(self, state: dict):
        self.step = int(state["step"])

    def __iter__(self) -> Iterator[tuple[int, list[dict]]]:
        workers = self.num_workers > 0
        ds = TrainMicrobatches(self.split, self.masker, self.plan, self.step, self.total_steps,
                               layout=self.layout, stats=self.stats)
        # the workers keep two steps' microbatches in flight (at least 4 each): a step takes `accum` microbatches at
        # once, so with fewer in flight the loop would wait for the rest at every step
        prefetch = max(4, -(-2 * self.plan.accum // self.num_workers)) if workers else None
        it = loader_microbatches(ds, self.num_workers, self.pin_memory, shuffle=False, prefetch_factor=prefetch)
        for step in range(self.step, self.total_steps):
            micro = [next(it) for _ in range(self.plan.accum)]
            self.step = step + 1
            yield step, micro


def eval_batches(split: TokenizedSplit, masker: MLMMasker, n_samples: int, microbatch: int, num_processes: int, rank: int):
    """Fixed held-out batches (first ``n_samples`` rows, fixed masks), strided over processes."""
    n = min(n_samples, len(split))
    for j, s in enumerate(range(0, n, microbatch)):
        if j % num_processes == rank:
            rows = np.arange(s, min(s + microbatch, n))
            yield make_batch(split, rows, rows, masker)
