"""Weight averaging: an exponential moving average of the weights (and batch-norm statistics) over the optimiser's
steps. The average is what validation scores and what checkpoint.pt keeps: it does not swing with the last few
batches as the raw weights do at a high learning rate, so the validation F1 of successive epochs is steadier."""

from __future__ import annotations

import copy

import torch

WARMUP_STEPS = 10  # the decay grows as (1 + n) / (WARMUP_STEPS + n) until it reaches the configured one


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"weight-average decay must be within 0..1 (0: no averaging), got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards `model`'s current weights; integer buffers (batch counts) are copied."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (WARMUP_STEPS + self.updates))
        for mine, theirs in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if mine.dtype.is_floating_point:
                mine.lerp_(theirs.detach(), 1.0 - decay)
            else:
                mine.copy_(theirs)

    def state_dict(self) -> dict:
        return {"weights": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
