"""The receipt written beside every predict and through-plane output: what made it and how far
to trust it.

A receipt is a JSON sidecar (BIDS style: the output's name with ``.json``). It says which
package version and model (with the checkpoint's sha256) made the output, the operator the
model was trained on, the scale, slicing axis and why, the input's voxel sizes and type, and
three checks of the input against what the model knows, each in plain words when it fails
(through-plane SR, which trains on the scan itself, reports the noise and checks the rest):

- **noise**: the input's noise level (:func:`noise_estimate`, a fraction of its robust range, the
  unit of the training operators' ``noise``) against the largest the model was trained on;
- **resolution**: the spectral cut-off of each in-plane axis
  (:func:`mrsr.data.resolution.spectral_cutoff`); an input whose spectrum ends early is already
  interpolated;
- **intensities**: negative values, voxels far above the robust maximum, nearly empty volumes,
  label maps;

and one check of the output: its **consistency** with the input (the output degraded again by
the model's nominal operator, against the input; relative L2 error over evenly spaced slices).
``trust`` is ``within training conditions`` when no check fails, else ``outside training
conditions`` with the reasons in ``warnings``.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrsr.inference import PASSTHROUGH_LIMIT

RECEIPT_FORMAT = 1
# An input noise level above this multiple of the training maximum is called out.
NOISE_MARGIN = 1.5
# The Immerkaer noise estimate reads this level on noise-free anatomy at 1 mm (texture, not
# noise): below it an input is not called noisy whatever the training range.
NOISE_FLOOR = 0.02
BRIGHT_LIMIT = PASSTHROUGH_LIMIT  # normalised intensity above which voxels bypass the network
BRIGHT_FRACTION = 1e-3
NEGATIVE_FRACTION = 1e-3
ANATOMY = 0.1  # normalised intensity of the anatomy (noise read inside, foreground fraction)
MAX_SLICES = 32
CONSISTENCY_SLICES = 16  # slices a check reads (evenly spaced): a volume-level figure, fast
MAX_VOXELS = 2_000_000  # voxels the intensity fractions are counted on (evenly strided)


def sampled_indices(n: int, most: int = MAX_SLICES) -> list[int]:
    """At most ``most`` evenly spaced indices of ``range(n)``."""
    return np.unique(np.linspace(0, n - 1, min(n, most)).round().astype(int)).tolist()


def sampled_slices(slices: np.ndarray, max_slices: int = MAX_SLICES) -> np.ndarray:
    """At most ``max_slices`` evenly spaced slices of (n, h, w)."""
    return np.asarray(slices[sampled_indices(slices.shape[0], max_slices)], dtype=np.float32)


def background_noise(slices: np.ndarray, top: float = 0.3, bins: int = 300) -> float:
    """The noise level of normalised magnitude ``slices`` read in the air around the anatomy:
    there the magnitude of complex Gaussian noise of std ``s`` is Rayleigh, whose mode is
    ``s``: the mode of the histogram of values in (0, ``top``). NaN when the background was
    masked or quantised to the minimum (more voxels at the minimum than in the band)."""
    flat = slices.ravel()
    low = flat[(flat > 1e-6) & (flat < top)]
    at_min = int((flat <= 1e-6).sum())
    if low.size < 1000 or at_min > low.size:
        return float("nan")
    counts, edges = np.histogram(low, bins=bins, range=(0.0, top))
    counts = np.convolve(counts, np.ones(5) / 5, "same")
    i = int(np.argmax(counts))
    return float(0.5 * (edges[i] + edges[i + 1]))


def foreground_noise(slices: np.ndarray) -> float:
    """An upper bound of the noise level of normalised ``slices`` read in the anatomy:
    Immerkaer's second-difference filter (which cancels planes and ramps; white noise of std
    ``s`` gives std ``6 s``), its median absolute response over the anatomy's interior (every
    3x3 neighbour above :data:`ANATOMY`) divided by 6 x 0.6745. Texture counts as noise, so
    noise-free 1 mm anatomy reads 0.003-0.03 and its LR images up to about 0.07."""
    x = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    if x.shape[-1] < 3 or x.shape[-2] < 3:
        return float("nan")
    kernel = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
    response = torch.nn.functional.conv2d(x, kernel[None, None])
    inside = -torch.nn.functional.max_pool2d(-x, 3, stride=1) > ANATOMY
    values = response[inside].abs()
    if values.numel() < 100:
        return float("nan")
    return float(values.median()) / (6.0 * 0.6745)


def noise_estimate(slices: np.ndarray) -> dict[str, Any]:
    """The input's noise level (fraction of its robust range, the unit of the training
    operators' ``noise``): the background's Rayleigh mode (:func:`background_noise`) where the
    background holds noise, capped by the foreground bound (:func:`foreground_noise`; the only
    figure for a masked background or a field of view without air)."""
    sample = sampled_slices(slices)
    bg, fg = background_noise(sample), foreground_noise(sample)
    finite = [v for v in (bg, fg) if np.isfinite(v)]
    return {
        "sigma": round(min(finite), 5) if finite else None,
        "background": None if not np.isfinite(bg) else round(bg, 5),
        "foreground_upper_bound": None if not np.isfinite(fg) else round(fg, 5),
        "read_in": "background" if np.isfinite(bg) and bg <= fg else "foreground (upper bound)",
        "unit": "fraction of the robust range (the normalisation percentile above the minimum)",
    }


def intensity_findings(data: np.ndarray, lo: float, hi: float) -> tuple[dict, list[str]]:
    """Facts about the input's intensities (its own units and normalised by the robust
    range ``lo``..``hi``) and the ones a user should read, in plain words."""
    whole = np.asarray(data).ravel()
    flat = whole[:: max(1, whole.size // MAX_VOXELS)].astype(np.float32)
    span = max(hi - lo, 1e-12)
    negative = float((flat < 0).mean())
    bright = float((flat > lo + BRIGHT_LIMIT * span).mean())
    foreground = float((flat > lo + ANATOMY * span).mean())
    distinct = int(np.unique(flat[:: max(1, flat.size // 200_000)]).size)
    facts = {
        "min": float(whole.min()),
        "max": float(whole.max()),
        "robust_range": [float(lo), float(hi)],
        "negative_fraction": negative,
        "above_3x_robust_max_fraction": bright,
        "foreground_fraction": foreground,
        "distinct_values": distinct,
    }
    said = []
    if negative > NEGATIVE_FRACTION:
        said.append(
            f"{100 * negative:.1f}% of voxels are negative: the models are for magnitude images"
        )
    if bright > BRIGHT_FRACTION:
        said.append(
            f"{100 * bright:.2f}% of voxels are more than 3x the robust maximum: they bypass "
            "the network (up-sampled locally)"
        )
    if foreground < 0.01:
        said.append(f"the volume is nearly empty ({100 * foreground:.2f}% above background)")
    if distinct <= 16:
        said.append(f"only {distinct} distinct values: a label map or mask, not an MR image")
    return facts, said


def consistency_error(
    sr: np.ndarray, lr: np.ndarray, scale: int, nominal: str, batch: int = 16
) -> float:
    """``||D(sr) - lr|| / ||lr||`` over normalised slices (n, h*s, w*s) and (n, h, w), D the
    deterministic operator ``nominal`` (``bicubic`` or ``kspace``)."""
    from mrsr.data.acquisition import as_degradation

    op = as_degradation(nominal)
    num = den = 0.0
    for i in range(0, sr.shape[0], batch):
        y = torch.from_numpy(np.ascontiguousarray(sr[i : i + batch], dtype=np.float32))[:, None]
        x = torch.from_numpy(np.ascontiguousarray(lr[i : i + batch], dtype=np.float32))[:, None]
        num += float(((op(y, scale) - x).double() ** 2).sum())
        den += float((x.double() ** 2).sum())
    return float(np.sqrt(num / max(den, 1e-30)))


@dataclass
class Receipt:
    """The receipt being filled in for one output (of ``stage=predict`` or
    ``stage=throughplane``)."""

    fields: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def add(self, **fields: Any) -> None:
        self.fields.update(fields)

    def warn(self, *said: str) -> None:
        self.warnings += [s for s in said if s not in self.warnings]

    def finish(self) -> dict[str, Any]:
        """The receipt as written: the fields, the warnings, the verdict and the wall time."""
        return {
            "mrsr_receipt": RECEIPT_FORMAT,
            "status": "done",
            "trust": "outside training conditions"
            if self.warnings
            else "within training conditions",
            "warnings": list(self.warnings),
            **self.fields,
            "wall_seconds": round(time.perf_counter() - self.started, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def image_facts(shape: tuple[int, ...], zooms: tuple[float, ...], dtype: Any) -> dict[str, Any]:
    """Shape, voxel sizes (mm) and stored data type of an image as a receipt states them."""
    return {
        "shape": [int(n) for n in shape],
        "voxel_mm": [float(z) for z in zooms],
        "dtype": np.dtype(dtype).name,
    }


def file_fingerprint(path: Path) -> dict[str, int]:
    """What tells a changed input file (its size and modification time)."""
    st = path.stat()
    return {"bytes": st.st_size, "modified_ns": st.st_mtime_ns}


def command_line() -> str:
    """How this process was started, as a shell line (``python -m mrsr.run ...``)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("mrsr/run.py", "mrsr\\run.py")):
        argv = ["python", "-m", "mrsr.run", *argv[1:]]
    return shlex.join(argv)


def write_receipt(path: Path, receipt: dict[str, Any]) -> None:
    from mrsr.files import atomic_write_text

    atomic_write_text(path, json.dumps(receipt, indent=2, default=_plain) + "\n")


def read_receipt(path: Path) -> dict[str, Any] | None:
    """The receipt at ``path``; None when there is none or the file is not an mrsr receipt."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and "mrsr_receipt" in found else None


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)
