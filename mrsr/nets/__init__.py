"""Pure ``nn.Module`` networks (no training logic)."""

from torch import nn


def n_params(net: nn.Module) -> int:
    """Number of parameters of ``net`` (frozen ones too, e.g. an EMA copy)."""
    return sum(p.numel() for p in net.parameters())
