"""The training clock behind loss-vs-time curves: pauses (evaluation, checkpoints) are left out of it."""

import torch

from mosaic_bert.train import metrics


class _OneProcess:
    def reduce(self, t, reduction):
        return t


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_training_clock_leaves_pauses_out(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(metrics.time, "perf_counter", clock)
    w = metrics.ThroughputWindow(torch.device("cpu"), num_processes=1, peak_flops=None)
    clock.now += 2.0                       # training
    with w.paused():
        clock.now += 1.0
        assert w.elapsed() == 2.0          # the clock stands still while paused (evaluation)
        clock.now += 5.0
    clock.now += 3.0                       # training
    assert w.elapsed() == 5.0
    w.add_microbatch(1000, 1, 0.0)
    w.add_step(torch.tensor(1.0))
    rec = w.reduce(_OneProcess(), step=1, lr=0.1)
    assert w.train_time == 5.0 and rec["tokens_per_s"] == 200.0   # rates over training time only
    clock.now += 1.5
    assert w.elapsed() == 6.5


def test_data_wait_is_the_time_spent_in_the_loader(monkeypatch):
    """``timed`` charges to the window only the seconds spent inside the loader's ``next``, not the step's own."""
    clock = _Clock()
    monkeypatch.setattr(metrics.time, "perf_counter", clock)
    w = metrics.ThroughputWindow(torch.device("cpu"), num_processes=1, peak_flops=None)

    def loader():
        for step in range(3):
            clock.now += 0.5               # waiting for the batch
            yield step

    seen = []
    for step in w.timed(loader()):
        clock.now += 1.5                   # the training step
        seen.append(step)
        w.add_step(torch.tensor(1.0))
    assert seen == [0, 1, 2]
    rec = w.reduce(_OneProcess(), step=3, lr=0.1)
    assert rec["data_wait_frac"] == 1.5 / 6.0
    clock.now += 1.0
    w.add_step(torch.tensor(1.0))
    assert w.reduce(_OneProcess(), step=4, lr=0.1)["data_wait_frac"] == 0.0   # a new window starts at zero
