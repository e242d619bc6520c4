"""Synthetic head-like phantoms for tests and benchmarks: the same arrays for the same seed.

:func:`head_phantom` is a volume (or image) of any shape in scanner-like units (about 1000);
:func:`phantom_slices` a batch of normalised 2-D images with smoothed edges and texture.
"""

from __future__ import annotations

import numpy as np
import torch

from mrsr.metrics.realism import gaussian_blur


def head_phantom(
    shape: tuple[int, ...],
    seed: int,
    contrast: float = 1.0,
    *,
    structures: int = 6,
    spread: float = 0.5,
    varied: bool = True,
    float32: bool = False,
) -> np.ndarray:
    """An ellipsoid head (0.6 x ``contrast``) with ``structures`` brighter inner ellipsoids
    (centres within ``+-spread``), Gaussian noise inside the head, clipped at 0, times 1000.

    ``varied``: the head's radii (0.8-0.9) and the structures' radii (0.1-0.3) are drawn per
    axis; else a round head of radius 0.85 and structures of radius 0.2. ``float32``: the grid
    and the noise are drawn in float32 (quicker for large volumes; other values)."""
    rng = np.random.default_rng(seed)
    dtype = np.float32 if float32 else np.float64
    axes = [np.linspace(-1, 1, n, dtype=dtype) for n in shape]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)

    def head_radius() -> float:
        return 0.8 + 0.1 * rng.random() if varied else 0.85

    def radius() -> float:
        return rng.uniform(0.1, 0.3) if varied else 0.2

    r = sum((g / head_radius()) ** 2 for g in grids)
    vol = (r < 1).astype(np.float32) * 0.6 * contrast
    for _ in range(structures):
        c = rng.uniform(-spread, spread, len(shape))
        rr = sum(((g - ci) / radius()) ** 2 for g, ci in zip(grids, c, strict=True))
        vol += (rr < 1).astype(np.float32) * rng.uniform(0.1, 0.4)
    vol += 0.05 * rng.standard_normal(shape, dtype=dtype).astype(np.float32) * (r < 1)
    return np.clip(vol, 0, None) * 1000.0


def phantom_slices(n: int = 4, size: int = 96, seed: int = 0) -> torch.Tensor:
    """Head-like (N, 1, size, size) images: a head ellipse (0.5), a few brighter or darker
    inner ellipses, slightly smoothed edges and a fine texture inside the head."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = []
    for _ in range(n):
        head = ((yy / 0.85) ** 2 + (xx / 0.7) ** 2 < 1).float()
        img = 0.5 * head
        for _ in range(5):
            cy, cx = (torch.rand(2, generator=g) - 0.5) * 0.8
            ay, ax = 0.1 + 0.25 * torch.rand(2, generator=g)
            img = img + (torch.rand(1, generator=g) * 0.8 - 0.3) * (
                ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 < 1
            )
        texture = gaussian_blur(torch.randn(1, 1, size, size, generator=g), 0.8)[0, 0]
        out.append(
            gaussian_blur((img * head).clamp_min(0)[None, None], 0.6)[0, 0] + 0.08 * texture * head
        )
    return torch.stack(out)[:, None].clamp_min(0)
