"""What it takes to run devinterp's reference `llc()` on our models (parity test, benchmark)."""
from __future__ import annotations

from torch import nn


class PlainLM(nn.Module):
    """devinterp treats any model with .cfg.n_heads as TransformerLens; hide ours behind this."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = model

    def forward(self, tokens):
        return self.inner(tokens)
