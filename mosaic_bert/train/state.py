"""The training state a checkpoint restores besides model/optimizer/schedule (step, totals seen, loader position), and
the callback hook the Trainer calls after every optimizer step."""

from __future__ import annotations

from .data import TrainLoader


class TrainState:
    """What a checkpoint must restore besides model/optimizer/schedule: the step, the totals seen, the loader position."""

    def __init__(self, loader: TrainLoader, total_steps: int):
        self.loader, self.total_steps = loader, total_steps
        self.step = self.samples_seen = self.tokens_seen = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "samples_seen": self.samples_seen, "tokens_seen": self.tokens_seen,
                "total_steps": self.total_steps, "loader": self.loader.state_dict()}

    def load_state_dict(self, d: dict):
        self.step, self.samples_seen, self.tokens_seen = int(d["step"]), d.get("samples_seen", 0), d.get("tokens_seen", 0)
        self.loader.load_state_dict(d.get("loader", {"step": self.step}))

    def count_window(self, rec: dict) -> dict:
        """Add a reported window's tokens and samples (summed over processes) to the totals; the record with them."""
        self.tokens_seen += rec.pop("tokens")
        self.samples_seen += rec.pop("samples")
        return {**rec, "samples_seen": self.samples_seen, "tokens_seen": self.tokens_seen}


class Callback:
    """Hook called after every optimizer step (e.g. a test that kills the run at step N)."""

    def on_step_end(self, trainer):
        pass
