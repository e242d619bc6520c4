"""Figure-2-style image grids: columns of images (e.g. LR, bicubic, SR, HR, |SR-HR|)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from mrsr.results import atomic_write_bytes


def _tile(img: Tensor, size: tuple[int, int], error: bool) -> np.ndarray:
    img = img.detach().float().cpu().reshape(1, 1, *img.shape[-2:])
    if img.shape[-2:] != size:
        img = F.interpolate(img, size=size, mode="nearest")
    x = img[0, 0]
    if error:  # error maps are stretched so that 0.1 (10 % of the range) is white
        x = (x.abs() / 0.1).clamp(0, 1)
    return (x.clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def make_grid(columns: list[tuple[str, Tensor]], max_rows: int = 4, pad: int = 2) -> np.ndarray:
    """Grid with one column per ``(title, batch)``; each batch (N, 1, H, W) gives rows.

    All tiles are shown at the size of the largest image (nearest-neighbour, so LR pixels
    stay visible). Titles starting with ``|`` are error maps, scaled so 0.1 is white.
    """
    rows = min(max_rows, min(b.shape[0] for _, b in columns))
    size = max((tuple(b.shape[-2:]) for _, b in columns), key=lambda s: s[0] * s[1])
    h, w = size
    grid = np.full((rows * (h + pad) + pad, len(columns) * (w + pad) + pad), 255, np.uint8)
    for c, (title, batch) in enumerate(columns):
        for r in range(rows):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y : y + h, x : x + w] = _tile(batch[r], size, title.startswith("|"))
    return grid


def save_grid(columns: list[tuple[str, Tensor]], path: Path, max_rows: int = 4) -> np.ndarray:
    """Write the grid as PNG (column titles in the PNG's text metadata) and return it."""
    import io

    from PIL import Image, PngImagePlugin

    grid = make_grid(columns, max_rows)
    info = PngImagePlugin.PngInfo()
    info.add_text("columns", ", ".join(t for t, _ in columns))
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG", pnginfo=info)
    atomic_write_bytes(Path(path), buf.getvalue())
    return grid


__all__ = ["make_grid", "save_grid"]
