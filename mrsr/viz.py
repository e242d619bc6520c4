"""Figure-2-style image grids: columns of images (e.g. LR, bicubic, SR, HR, |SR-HR|)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from mrsr.files import atomic_write_bytes


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


def titled(grid: np.ndarray, titles: list[str], col_width: int, pad: int = 2) -> np.ndarray:
    """Add a white header strip with one title centred over each column."""
    from PIL import Image, ImageDraw

    header = Image.new("L", (grid.shape[1], 14), 255)
    draw = ImageDraw.Draw(header)
    for c, title in enumerate(titles):
        width = draw.textlength(title)
        x = pad + c * (col_width + pad) + max(0, (col_width - width) / 2)
        draw.text((x, 1), title, fill=0)
    return np.concatenate([np.asarray(header, dtype=np.uint8), grid], axis=0)


def save_grid(columns: list[tuple[str, Tensor]], path: Path, max_rows: int = 4) -> np.ndarray:
    """Write the grid as PNG, with column titles, and return the image."""
    import io

    from PIL import Image

    grid = make_grid(columns, max_rows)
    size = max((tuple(b.shape[-2:]) for _, b in columns), key=lambda s: s[0] * s[1])
    image = titled(grid, [t for t, _ in columns], size[1])
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
    return image


__all__ = ["make_grid", "save_grid"]
