"""Super-resolution of scans: tiled and outlier-safe network passes, slice-by-slice SR of a
volume, the input scan and its slicing axis, affines of refined grids, NIfTI output.

Slices are taken along the scan's slicing axis and each is up-sampled in-plane by the network's
scale. The output affine maps new voxel ``i'`` (on the two in-plane axes) to the input's
continuous voxel index ``(i' + 0.5) / s - 0.5``, so the output overlays the input in a viewer.
Intensities are normalised per volume as in training (a linear map, nothing clipped: voxels
brighter than the normalisation percentile pass through the network above 1) and mapped
back to the input's units; the output is only kept from going below the input's minimum.
NIfTI outputs are written to a temporary file beside them and renamed into place only when
complete.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrsr.data.acquisition import kspace_consistent
from mrsr.data.degrade import kspace_truncate, normalise_with_range
from mrsr.data.geometry import SlicingAxis, is_square, slicing_axis
from mrsr.data.resolution import Cutoff, spectral_cutoff
from mrsr.data.resolution import describe as describe_cutoff
from mrsr.errors import ConfigError, DataError
from mrsr.files import atomic_write, check_writable

log = logging.getLogger("mrsr")
# Normalised intensity (1 = the 99.5th percentile above the minimum) above which the network
# sees a plateau and the excess is passed on linearly: 1.5x the brightest training intensities
# (values near 1, scaled by the augmentation factor of up to 2).
PASSTHROUGH_LIMIT = 3.0


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def sr_tiled(
    net: nn.Module, x: Tensor, scale: int, tile: int | None = None, overlap: int = 16
) -> Tensor:
    """``net(x)`` computed on overlapping LR tiles of ``tile`` pixels.

    Each tile contributes only its inner part (``overlap // 2`` LR pixels are dropped on
    sides facing another tile), so the result equals the whole-image result whenever the
    network's receptive-field radius is at most ``overlap // 2`` LR pixels.
    """
    h, w = x.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return net(x).float()
    if tile <= overlap:
        raise ConfigError(f"predict.tile={tile} must be larger than predict.overlap={overlap}")
    out = x.new_zeros((x.shape[0], x.shape[1], h * scale, w * scale), dtype=torch.float32)
    m = overlap // 2
    for top in _starts(h, tile, overlap):
        for left in _starts(w, tile, overlap):
            th, tw = min(tile, h), min(tile, w)
            y = net(x[..., top : top + th, left : left + tw]).float()
            t0 = 0 if top == 0 else m
            t1 = th if top + th >= h else th - m
            l0 = 0 if left == 0 else m
            l1 = tw if left + tw >= w else tw - m
            out[
                ...,
                (top + t0) * scale : (top + t1) * scale,
                (left + l0) * scale : (left + l1) * scale,
            ] = y[..., t0 * scale : t1 * scale, l0 * scale : l1 * scale]
    return out


def upsampled_affine(affine: np.ndarray, scale: int, inplane: tuple[int, ...]) -> np.ndarray:
    """Affine of the grid refined by ``scale`` on the ``inplane`` voxel axes, centres aligned."""
    m = np.eye(4)
    for ax in inplane:
        m[ax, ax] = 1.0 / scale
        m[ax, 3] = 0.5 / scale - 0.5
    return np.asarray(affine, dtype=np.float64) @ m


def neighbour_max(x: Tensor) -> Tensor:
    """The largest of each pixel's 8 neighbours (edges replicated)."""
    pad = F.pad(x, (1, 1, 1, 1), mode="replicate")
    patches = F.unfold(pad, 3).view(x.shape[0], x.shape[1], 9, *x.shape[-2:])
    return torch.cat([patches[:, :, :4], patches[:, :, 5:]], 2).amax(2)


def sr_limited(
    net: nn.Module,
    x: Tensor,
    scale: int,
    limit: float,
    tile: int | None = None,
    overlap: int = 16,
    window: tuple[int, int, int, int] | None = None,
    radius: int | None = None,
) -> Tensor:
    """``net`` on ``x`` with outliers held back, plus what was held back, up-sampled locally.

    A voxel far brighter than anything in training (a hot pixel, a flow artefact, a contrast
    agent bolus) would drive the network far outside its range, and its response rings over the
    receptive field (dark halos). Two kinds are held back: a pixel above ``limit`` that stands
    out of its 8 neighbours by more than ``limit`` (a spike) is shown to the network at its
    neighbours' level, and its excess is added back on its own footprint (nearest neighbour:
    nothing spreads); anything else above ``limit`` is shown at ``limit`` and the excess is
    added back bilinearly (non-negative, within one input pixel). Nothing is lost: without the
    network both parts sum to the input.

    With ``radius`` given, the network only runs on the LR ``window`` and the output is its
    skip path outside (:func:`sr_cropped`; ``window=None``: no network pass at all).
    """
    x = x.float()

    def sr(image: Tensor) -> Tensor:
        if radius is None:
            return sr_tiled(net, image, scale, tile, overlap)
        return sr_cropped(net, image, scale, window, radius, tile, overlap)

    if not bool((x > limit).any()):  # the usual case: nothing to hold back
        return sr(x)
    neighbours = neighbour_max(x)
    spike = (x > limit) & (x > neighbours + limit)
    despiked = torch.where(spike, neighbours, x)
    capped = despiked.clamp(max=limit)
    y = sr(capped)
    spikes, bright = x - despiked, despiked - capped
    if bool((spikes > 0).any()):
        y = y + (
            spikes if scale == 1 else F.interpolate(spikes, scale_factor=scale, mode="nearest")
        )
    if bool((bright > 0).any()):
        y = y + (
            bright
            if scale == 1
            else F.interpolate(bright, scale_factor=scale, mode="bilinear", align_corners=False)
        )
    return y


# Background cropping: a pixel whose 5x5 mean (normalised: 1 = the normalisation percentile) is
# above FOREGROUND is anatomy. The mean keeps a noise floor out: Rician background noise of
# sigma 0.025 (the noisiest typical training LR) has a 5x5 mean of about 0.03 +- 0.004.
FOREGROUND = 0.1
FOREGROUND_WINDOW = 5
# LR pixels kept from the network around the foreground box beyond the receptive field
# (a dim rim just below the threshold still gets the network's output).
FOREGROUND_PAD = 4
# On a CPU the network takes at most this many LR pixels at once (measured best on a 2-core
# CPU: larger batches spill the caches and page-fault fresh allocations).
CPU_PIXELS = 1 << 16


def foreground_boxes(
    x: Tensor, threshold: float = FOREGROUND, window: int = FOREGROUND_WINDOW
) -> list[tuple[int, int, int, int] | None]:
    """Per image of ``x`` (n, 1, h, w), normalised: the bounding box ``(top, bottom, left,
    right)`` (end exclusive) of the pixels whose ``window`` x ``window`` mean is above
    ``threshold``, or None when there is none (an empty slice)."""
    mean = F.avg_pool2d(x.float(), window, stride=1, padding=window // 2, count_include_pad=False)
    mask = (mean > threshold).any(1)  # (n, h, w)
    rows, cols = mask.any(2).cpu(), mask.any(1).cpu()
    boxes: list[tuple[int, int, int, int] | None] = []
    for r, c in zip(rows, cols, strict=True):
        ri, ci = torch.nonzero(r)[:, 0], torch.nonzero(c)[:, 0]
        if len(ri) == 0:
            boxes.append(None)
        else:
            boxes.append((int(ri[0]), int(ri[-1]) + 1, int(ci[0]), int(ci[-1]) + 1))
    return boxes


# Modules whose output at a pixel depends on the same pixel of their input only, and the
# containers whose forward only chains their children (and, for SRResNet, adds its skip).
_POINTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Identity,
    nn.BatchNorm2d,
    nn.Dropout,
)


def receptive_radius(net: nn.Module) -> int | None:
    """How many LR pixels on each side of a pixel its network output depends on, not counting
    the skip path (:func:`skip_of`), counted from the network's convolutions: the sum of their
    half-widths (convs at the output resolution counted as if at the input's: an upper bound).
    None when the network has other layers (attention, global pooling, strides): then there is
    no known local radius and nothing is cropped."""
    from mrsr.nets.srresnet import ResidualBlock, SRResNet
    from mrsr.nets.upsample import PixelShuffleDirect, PixelShuffleUpsampler

    containers = {nn.Sequential, SRResNet, ResidualBlock, PixelShuffleDirect, PixelShuffleUpsampler}
    radius = 0
    for m in net.modules():
        if type(m) is nn.Conv2d:
            k, d = m.kernel_size, m.dilation
            same = (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
            if m.stride != (1, 1) or m.padding_mode != "zeros" or m.padding != same:
                return None
            radius += max(d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
        elif type(m) in containers or type(m) in _POINTWISE or type(m) is nn.PixelShuffle:
            continue
        else:
            return None
    return radius


def skip_of(net: nn.Module) -> Any:
    """The network's skip path (its up-sampled input the output is added to), or None."""
    if getattr(net, "residual_bicubic", False) and callable(getattr(net, "skip_path", None)):
        return net.skip_path
    return None


def background(net: nn.Module, x: Tensor, scale: int) -> Tensor:
    """What the output is where the network is not run: the network's skip path (bicubic
    up-sampling for the bundled models), else bicubic up-sampling (float32)."""
    skip = skip_of(net)
    if skip is not None:
        return skip(x.float()).float()
    from mrsr.ops import upsample

    return upsample(x.float(), scale, "bicubic")


# Crops are rounded up to a multiple of this many LR pixels: a few distinct shapes, so that
# the convolution backends (oneDNN, cuDNN) reuse their plans from slice to slice.
CROP_MULTIPLE = 16


def _span(lo: int, hi: int, margin: int, n: int, multiple: int) -> tuple[int, int]:
    """``[lo - margin, hi + margin)`` within ``[0, n)``, grown to a multiple of ``multiple``."""
    start, stop = max(lo - margin, 0), min(hi + margin, n)
    size = min(-(-(stop - start) // multiple) * multiple, n)
    stop = min(start + size, n)
    return stop - size, stop


def crop_window(
    box: tuple[int, int, int, int] | None,
    margin: int,
    shape: tuple[int, int],
    multiple: int = CROP_MULTIPLE,
) -> tuple[int, int, int, int] | None:
    """The LR window ``(top, bottom, left, right)`` the network runs on for a foreground
    ``box``: the box plus ``margin`` on each side, within the image of ``shape``, its sides
    rounded up to a multiple of ``multiple`` (None for no box)."""
    if box is None:
        return None
    top, bottom = _span(box[0], box[1], margin, shape[0], multiple)
    left, right = _span(box[2], box[3], margin, shape[1], multiple)
    return top, bottom, left, right


def sr_cropped(
    net: nn.Module,
    x: Tensor,
    scale: int,
    window: tuple[int, int, int, int] | None,
    radius: int,
    tile: int | None = None,
    overlap: int = 16,
) -> Tensor:
    """``net(x)`` computed on the LR ``window`` only (:func:`crop_window`) and kept where it is
    that of the whole image up to float rounding: the window less ``radius`` (at least the
    network's :func:`receptive_radius`) on each side that is not the image's border. Elsewhere
    the output is :func:`background`. The skip path is always that of the whole image, so a
    skip with a wider reach (zero-filling) is exact too. ``window=None``: :func:`background`
    only, no network pass."""
    h, w = x.shape[-2:]
    if window is None:
        return background(net, x, scale)
    if tuple(window) == (0, h, 0, w):
        return sr_tiled(net, x, scale, tile, overlap)
    t0, b0, l0, r0 = window
    if tile is not None and max(b0 - t0, r0 - l0) > tile:
        # a tiled crop would put the tile seams elsewhere than the whole slice's tiling does
        return sr_tiled(net, x, scale, tile, overlap)
    top, bottom = (t0 + radius if t0 > 0 else 0), (b0 - radius if b0 < h else h)
    left, right = (l0 + radius if l0 > 0 else 0), (r0 - radius if r0 < w else w)
    out = background(net, x, scale)
    if bottom <= top or right <= left:
        return out
    crop = x[..., t0:b0, l0:r0]
    s = scale
    inside = (
        ...,
        slice((top - t0) * s, (bottom - t0) * s),
        slice((left - l0) * s, (right - l0) * s),
    )
    y = sr_tiled(net, crop, scale, tile, overlap)[inside]
    region = (..., slice(top * s, bottom * s), slice(left * s, right * s))
    skip = skip_of(net)
    if skip is None:
        out[region] = y
    else:  # the network's residual on the crop added to the skip of the whole image
        out[region] += y - skip(crop.float()).float()[inside]
    return out


def sr_foreground(
    net: nn.Module,
    x: Tensor,
    scale: int,
    limit: float,
    radius: int | None,
    tile: int | None = None,
    overlap: int = 16,
    max_pixels: int | None = None,
    pad: int = FOREGROUND_PAD,
) -> Tensor:
    """:func:`sr_limited` of the images of ``x`` with the network run on each one's foreground
    box (:func:`foreground_boxes`) plus ``radius + pad`` LR pixels (:func:`crop_window`; images
    with the same window go together); images without foreground get the skip path only.
    ``radius=None``: whole images (no cropping). ``max_pixels``: the network takes at most this
    many LR pixels at once (keeps a CPU's activations in its caches and out of fresh
    allocations)."""
    shape = (x.shape[-2], x.shape[-1])
    groups: dict[tuple[int, int, int, int] | None, list[int]] = {}
    if radius is None:
        groups[(0, shape[0], 0, shape[1])] = list(range(len(x)))
    else:
        for j, box in enumerate(foreground_boxes(x)):
            groups.setdefault(crop_window(box, radius + pad, shape), []).append(j)
    if len(groups) == 1 and max_pixels is None:
        window = next(iter(groups))
        return sr_limited(net, x, scale, limit, tile, overlap, window, radius)
    out = x.new_empty(
        (x.shape[0], x.shape[1], x.shape[2] * scale, x.shape[3] * scale), dtype=torch.float32
    )
    for window, index in groups.items():
        area = (
            shape[0] * shape[1]
            if window is None
            else (window[1] - window[0]) * (window[3] - window[2])
        )
        step = len(index) if max_pixels is None else max(1, max_pixels // area)
        for k in range(0, len(index), step):
            part = index[k : k + step]
            out[part] = sr_limited(net, x[part], scale, limit, tile, overlap, window, radius)
    return out


class SliceProgress:
    """Progress of a loop over slices: a transient rich bar on a terminal, otherwise (a log
    file, a pipe, a batch job) a log line every ``every`` seconds and at the end."""

    def __init__(
        self, description: str, total: int, enabled: bool = True, every: float = 10.0
    ) -> None:
        import sys

        from rich.progress import Progress

        self.description, self.total, self.done, self.every = description, total, 0, every
        self.tty = enabled and sys.stdout.isatty()  # where rich draws
        self.log = enabled and not self.tty
        self.bar = Progress(disable=not self.tty, transient=True)
        self.task = self.bar.add_task(description, total=total)
        self.t0 = self.last = time.perf_counter()

    def __enter__(self) -> SliceProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def advance(self, n: int) -> None:
        self.done += n
        self.bar.advance(self.task, n)
        now = time.perf_counter()
        if self.log and (now - self.last >= self.every or self.done >= self.total):
            self.last = now
            log.info(
                "%s: %d/%d (%.0f%%), %.0f s",
                self.description,
                self.done,
                self.total,
                100.0 * self.done / max(self.total, 1),
                now - self.t0,
            )


def super_resolve_volume(
    net: nn.Module,
    slices: np.ndarray,
    scale: int,
    batch_size: int = 8,
    tile: int | None = None,
    overlap: int = 16,
    device: torch.device | None = None,
    progress: bool = True,
    description: str = "super-resolving slices",
    limit: float | None = None,
    consistency: str = "none",
    crop_background: bool = True,
    channels_last: bool | None = None,
    cpu_bf16: bool = False,
) -> np.ndarray:
    """SR of every slice of ``slices`` (n, h, w), normalised; returns (n, h*s, w*s) float32 >= 0.

    Intensities above ``limit`` (default :data:`PASSTHROUGH_LIMIT`) bypass the network
    (:func:`sr_limited`). ``consistency="kspace"`` projects each output onto its input's own
    k-space (:func:`mrsr.data.acquisition.kspace_consistent`: the central band of the output's
    spectrum is replaced by the input's), for inputs acquired in k-space.

    ``crop_background``: the network runs only on each slice's foreground box
    (:func:`foreground_boxes`) plus its :func:`receptive_radius` and :data:`FOREGROUND_PAD`
    (slices with the same crop window together; on a CPU at most :data:`CPU_PIXELS` at once);
    elsewhere, and on slices without foreground, the output is the network's skip path
    (:func:`sr_cropped`: inside the boxes the output is that of the whole slice up to float
    rounding). Networks without a known local receptive field are run on whole slices.
    ``channels_last`` (default: on a CPU) runs the network in channels-last memory format
    (oneDNN's fast convolutions; float rounding differs from the default format). Both off give
    the whole-slice result of earlier versions bit for bit (channels-last alone also takes the
    slices of a batch :data:`CPU_PIXELS` at a time on a CPU). ``cpu_bf16`` runs the network
    under bfloat16 autocast on a CPU too (as always on a GPU): several times faster where the
    CPU computes bfloat16 natively (:func:`cpu_has_bf16`), slower where it does not."""
    check_consistency(consistency)
    device = device or torch.device("cpu")
    limit = PASSTHROUGH_LIMIT if limit is None else limit
    n, h, w = slices.shape
    out = np.empty((n, h * scale, w * scale), dtype=np.float32)
    net = net.eval().to(device)
    # the k-space projection is global: the background's skip path would leak into the anatomy
    cropped = crop_background and consistency == "none"
    radius = receptive_radius(net) if cropped else None
    fmt = (
        torch.channels_last
        if (device.type == "cpu" if channels_last is None else channels_last)
        else None
    )
    # whole slices in float32's default format go through as one batch, as before
    cpu = device.type == "cpu" and (radius is not None or fmt is not None)
    max_pixels = CPU_PIXELS if cpu else None
    if fmt is not None:
        net.to(memory_format=fmt)
    seen: list[int] = []  # LR pixels the network was run on
    try:
        hook = net.register_forward_pre_hook(lambda _, a: seen.append(a[0][:, 0].numel()))
    except (AttributeError, RuntimeError):  # a scripted network takes no hooks
        hook = None
    try:
        with SliceProgress(description, n, progress) as bar, torch.inference_mode():
            for i in range(0, n, batch_size):
                x = torch.from_numpy(np.ascontiguousarray(slices[i : i + batch_size]))[:, None].to(
                    device
                )
                if fmt is not None:
                    x = x.contiguous(memory_format=fmt)
                with torch.autocast(
                    device.type,
                    dtype=torch.bfloat16,
                    enabled=device.type == "cuda" or (device.type == "cpu" and cpu_bf16),
                ):
                    y = sr_foreground(net, x, scale, limit, radius, tile, overlap, max_pixels)
                if consistency == "kspace":
                    y = kspace_consistent(y.float(), x.float(), scale)
                out[i : i + x.shape[0]] = y[:, 0].float().clamp(min=0).cpu().numpy()
                bar.advance(x.shape[0])
    finally:
        if hook is not None:
            hook.remove()
        if fmt is not None:
            net.to(memory_format=torch.contiguous_format)
    if radius is not None and hook is not None:
        (log.info if progress else log.debug)(
            "background cropping: the network ran on %.1f%% of the slices' pixels",
            100.0 * sum(seen) / max(out[:, ::scale, ::scale].size, 1),
        )
    return out


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX tiles or AVX512-BF16): there oneDNN's
    bfloat16 convolutions are several times faster than float32 ones; elsewhere they are
    emulated, and slower."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # an older PyTorch: not known, so no
        return False


CONSISTENCY = ("none", "kspace")
CPU_BF16 = ("auto", "true", "false")


def check_cpu_bf16(value: object, key: str = "predict.cpu_bf16") -> bool:
    """Whether to run the network in bfloat16 on a CPU: ``auto`` where the CPU computes it
    natively (:func:`cpu_has_bf16`), ``true``, ``false``; else a one-line refusal."""
    mode = str(value).lower()
    if mode not in CPU_BF16:
        raise ConfigError(f"{key}={value} must be one of {', '.join(CPU_BF16)}")
    return cpu_has_bf16() if mode == "auto" else mode == "true"


def check_consistency(value: object, key: str = "predict.consistency") -> str:
    """``value`` if it is one of :data:`CONSISTENCY`, else a one-line refusal naming ``key``."""
    if str(value) not in CONSISTENCY:
        raise ConfigError(f"{key}={value} must be one of {', '.join(CONSISTENCY)}")
    return str(value)


def check_paths(inp: Path, out: Path, overwrite: bool) -> None:
    if not inp.exists():
        raise ConfigError(f"input={inp}: file not found")
    if out.exists() and out.resolve() == inp.resolve():
        raise ConfigError(f"output={out} is the input file: choose another output path")
    if not out.name.lower().endswith((".nii", ".nii.gz", ".mgz", ".mgh")):
        raise ConfigError(
            f"output={out}: the output must be a NIfTI file (.nii or .nii.gz) or a FreeSurfer .mgz"
        )
    if not out.parent.is_dir():
        raise ConfigError(f"output={out}: folder {out.parent} does not exist")
    check_writable(out.parent, "output")  # before any work, not after it
    if out.exists() and not overwrite:
        raise ConfigError(f"output={out} exists: pass overwrite=true to replace it")


# An image is signed (phase, field map, difference image), not a magnitude image, when at least
# SIGNED_FRACTION of its voxels are negative and its 1st percentile is below -SIGNED_DEPTH times
# its 99th: a magnitude image's few slightly negative voxels (ringing of a reconstruction or an
# interpolation, a subtracted noise offset) pass.
SIGNED_FRACTION = 0.05
SIGNED_DEPTH = 0.25


def check_magnitude(path: Path, data: np.ndarray, sample: int = 1_000_000) -> None:
    """Refuse, in one line, an image whose negative values carry meaning: the networks are
    trained on magnitude images (percentiles of at most ``sample`` evenly strided voxels)."""
    if float(data.min()) >= 0:
        return
    flat = data.reshape(-1)
    flat = flat[:: max(1, flat.size // sample)]
    negative = float(np.count_nonzero(flat < 0)) / flat.size
    if negative < SIGNED_FRACTION:
        return
    p1, p99 = (float(v) for v in np.percentile(flat, [1, 99]))
    if p1 >= -SIGNED_DEPTH * abs(p99):
        return
    raise DataError(
        path,
        f"signed intensities ({negative:.0%} of voxels negative, from {float(data.min()):.4g} to "
        f"{float(data.max()):.4g}): mrsr super-resolves magnitude images; a phase map, field "
        "map or difference image is not one: pass the magnitude image",
    )


@dataclass
class InputScan:
    """What predict reads: the volume in the file's axis order, its geometry and header."""

    data: np.ndarray  # (slices, H, W) for fastMRI and 2D inputs (then ``is_2d``), else 3D
    affine: np.ndarray
    slicing: SlicingAxis
    is_2d: bool
    header: Any = None  # the NIfTI header the output keeps (None: fastMRI)
    zooms: tuple[float, ...] = (1.0, 1.0, 1.0)

    @property
    def inplane(self) -> tuple[int, ...]:
        """The voxel axes that in-plane SR refines."""
        return (0, 1) if self.is_2d else self.slicing.inplane

    @property
    def inplane_shape(self) -> tuple[int, int]:
        """The size of a slice (the two refined axes)."""
        if self.is_2d:
            return tuple(self.data.shape[1:])
        a, b = self.inplane
        return self.data.shape[a], self.data.shape[b]

    def zooms_after(self, scale: int) -> tuple[float, ...]:
        """The voxel sizes after in-plane SR by ``scale`` (of ``data``'s axes)."""
        inplane, is_2d = self.inplane, self.is_2d
        return tuple(
            z / scale if (a in inplane and not is_2d) or (is_2d and a > 0) else z
            for a, z in enumerate(self.zooms)
        )


def read_input(path: Path, axis: int | str = "auto", volume: int | None = None) -> InputScan:
    """The scan, its affine and the slicing axis (:func:`mrsr.data.geometry.slicing_axis`)."""
    from mrsr.data.readers import read_nifti

    if path.suffix in (".h5", ".hdf5"):
        from mrsr.data.readers import read_fastmri

        data = read_fastmri(path)  # (slices, H, W), unit voxels
        return InputScan(data, np.eye(4), SlicingAxis(0, "fastMRI file: its slices", True), False)
    vol = read_nifti(path, ndims=(2, 3), volume=volume, volume_key="predict.volume")
    check_magnitude(path, vol.data)
    if vol.data.ndim == 2:
        a, b = vol.zooms[:2]
        return InputScan(
            vol.data[None],
            vol.affine,
            SlicingAxis(0, "2D image", is_square(a, b)),
            True,
            vol.header,
            (1.0, a, b),
        )
    try:
        slicing = slicing_axis(vol.zooms, axis, "predict.axis")
    except ConfigError as err:
        raise DataError(path, str(err)) from err
    return InputScan(vol.data, vol.affine, slicing, False, vol.header, vol.zooms)


def super_resolve_scan(
    net: nn.Module,
    scan: InputScan,
    scale: int,
    batch_size: int = 8,
    tile: int | None = None,
    overlap: int = 16,
    device: torch.device | None = None,
    consistency: str = "none",
    percentile: float = 99.5,
    progress: bool = True,
    crop_background: bool = True,
    cpu_bf16: bool = False,
    normalised: tuple[np.ndarray, float, float] | None = None,
) -> tuple[np.ndarray, float]:
    """Every slice of ``scan`` along its slicing axis super-resolved in-plane by ``scale``
    (:func:`super_resolve_volume`), normalised as the network was trained (``percentile``:
    :attr:`mrsr.generators.TrainedGenerator.percentile`) and mapped back to the input's units,
    in the file's axis order (a 2D input gives a 2D image); and the seconds spent
    super-resolving. ``normalised``: ``normalise_with_range(scan.data, percentile)`` when the
    caller has it already."""
    axis = scan.slicing.axis
    norm, lo, hi = normalised or normalise_with_range(scan.data, percentile)
    slices = np.moveaxis(norm, axis, 0)
    t0 = time.perf_counter()
    sr = super_resolve_volume(
        net,
        slices,
        scale,
        batch_size,
        tile,
        overlap,
        device,
        progress=progress,
        consistency=consistency,
        crop_background=crop_background,
        cpu_bf16=cpu_bf16,
    )
    seconds = time.perf_counter() - t0
    result = np.moveaxis(sr, 0, axis) * np.float32(hi - lo) + np.float32(lo)
    if scan.is_2d:
        result = result[0]
    return result, seconds


def resolution_check(scan: InputScan) -> tuple[Cutoff, Cutoff]:
    """The spectral cut-off of the scan's two in-plane axes
    (:func:`mrsr.data.resolution.spectral_cutoff`, slices along its slicing axis)."""
    return spectral_cutoff(np.moveaxis(scan.data, scan.slicing.axis, 0))


FROM_ACQUIRED = ("auto", "true", "false")


def check_from_acquired(value: object, key: str = "predict.from_acquired") -> str:
    """``auto``, ``true`` or ``false`` (Hydra gives booleans), else a one-line refusal."""
    mode = str(value).lower()
    if mode not in FROM_ACQUIRED:
        raise ConfigError(f"{key}={value} must be one of {', '.join(FROM_ACQUIRED)}")
    return mode


def acquired_input(scan: InputScan, mode: str, path: Path) -> tuple[InputScan, list[Cutoff]]:
    """The scan to super-resolve and the cut-offs of its in-plane axes. An input whose spectrum
    ends early looks interpolated and is said to be; with ``mode="true"`` its acquired matrix
    (:func:`acquired_matrix`) replaces it when both axes were zero-filled by one whole factor,
    and anything else is refused in one line (``auto``: only said; ``false``: not checked)."""
    if mode == "false":
        return scan, []
    cutoffs = resolution_check(scan)
    said = describe_cutoff(cutoffs, scan.inplane_shape)
    factors = {c.factor for c in cutoffs}
    q = factors.pop() if len(factors) == 1 else None
    whole = q is not None and q > 1
    if not any(c.interpolated for c in cutoffs):
        if mode == "true":
            log.info("%s: %s; nothing to remove", path.name, said)
        return scan, list(cutoffs)
    if mode == "true":
        if not whole:
            raise DataError(
                path,
                f"{said}: not one whole zero-filling factor on both axes, so there is no acquired "
                "matrix to recover: pass predict.from_acquired=false",
            )
        log.info(
            "%s: %s; super-resolving the acquired matrix (zero-filling factor %d removed)",
            path.name,
            said,
            q,
        )
        return acquired_matrix(scan, q, str(path)), list(cutoffs)
    hint = (
        f"pass predict.from_acquired=true to super-resolve the acquired matrix (factor {q}) instead"
        if whole
        else "super-resolving it sharpens an interpolation"
    )
    log.warning("%s looks interpolated: %s; %s", path.name, said, hint)
    return scan, list(cutoffs)


def downsampled_affine(affine: np.ndarray, factor: int, inplane: tuple[int, ...]) -> np.ndarray:
    """Affine of the grid coarsened by ``factor`` on the ``inplane`` voxel axes, centres aligned
    (the inverse of :func:`upsampled_affine`)."""
    m = np.eye(4)
    for ax in inplane:
        m[ax, ax] = float(factor)
        m[ax, 3] = (factor - 1) / 2
    return np.asarray(affine, dtype=np.float64) @ m


def acquired_matrix(scan: InputScan, factor: int, where: str = "input") -> InputScan:
    """The scan on the matrix it was acquired at, when it was zero-filled by ``factor`` in-plane:
    the central ``1/factor`` of each slice's spectrum (magnitude), on a grid that overlays the
    input (:func:`downsampled_affine`)."""
    axis = scan.slicing.axis
    slices = np.moveaxis(scan.data, axis, 0)
    if slices.shape[1] % factor or slices.shape[2] % factor:
        raise ConfigError(
            f"{where}: in-plane size {slices.shape[1:]} does not divide by the zero-filling "
            f"factor {factor}: pass predict.from_acquired=false"
        )
    x = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    small = np.moveaxis(kspace_truncate(x, factor)[:, 0].numpy(), 0, axis)
    refined = (1, 2) if scan.is_2d else scan.inplane  # zooms of a 2D input are (1, a, b)
    zooms = tuple(z * factor if a in refined else z for a, z in enumerate(scan.zooms))
    return dataclasses.replace(
        scan,
        data=small,
        affine=downsampled_affine(scan.affine, factor, scan.inplane),
        zooms=zooms,
    )


OUTPUT_DTYPES = ("float32", "input")


def check_output_dtype(value: object, key: str = "output_dtype") -> str:
    """``value`` if it is one of :data:`OUTPUT_DTYPES`, else a one-line refusal naming ``key``."""
    if str(value) not in OUTPUT_DTYPES:
        raise ConfigError(f"{key}={value} must be one of {', '.join(OUTPUT_DTYPES)}")
    return str(value)


def output_image(
    data: np.ndarray,
    affine: np.ndarray,
    like: Any = None,
    dtype: str = "float32",
    note: str = "",
    resliced: bool = False,
    mgh: bool = False,
) -> Any:
    """A NIfTI image of ``data`` on ``affine`` that keeps what ``like`` (the input's header)
    says: sform/qform codes, units, intent, display range and description (``note`` appended).

    ``dtype``: ``float32``, or ``input``: the input's data type (an integer type is written with
    a scl_slope/scl_inter that nibabel fits to the output's range). ``resliced``: the slice axis
    was re-sampled, so the slice-timing fields no longer apply and are cleared. ``mgh``: a
    FreeSurfer MGH image instead (:func:`mgh_image`). ``affine`` is in ``like``'s spatial units
    (an MGH input's: mm); an MGH input written as NIfTI gets scanner-space codes and mm.
    """
    import nibabel as nib

    check_output_dtype(dtype)
    data = np.asarray(data, dtype=np.float32)
    if mgh:
        return mgh_image(data, affine, like, dtype)
    if not isinstance(like, nib.Nifti1Header):  # none, or an MGH input's header
        img = nib.Nifti1Image(data, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm")
        if like is not None and dtype == "input":
            img.header.set_data_dtype(np.dtype(like.get_data_dtype()).newbyteorder("="))
        if like is not None and note:
            img.header["descrip"] = description("", note)
        return img
    header = like.copy()
    img = nib.Nifti1Image(data, affine, header=header)
    img.set_sform(affine, code=int(like["sform_code"]))
    img.set_qform(affine, code=int(like["qform_code"]))
    hdr = img.header
    hdr.set_data_dtype(like.get_data_dtype() if dtype == "input" else np.float32)
    hdr.set_slope_inter(None, None)  # data in the input's units; nibabel scales integers on save
    if resliced:
        for key in ("slice_code", "slice_start", "slice_end", "slice_duration"):
            hdr[key] = 0
    if note:
        old = bytes(like["descrip"]).split(b"\0", 1)[0].decode("latin-1", "replace").strip()
        hdr["descrip"] = description(old, note)
    return img


DESCRIP_BYTES = 79  # NIfTI's 80-byte field; C readers (nifti1_io) keep 79 and a NUL


def description(old: str, note: str) -> bytes:
    """``old; note`` within :data:`DESCRIP_BYTES`: the tag ``note`` is always kept whole and
    the user's text ``old`` is shortened (ending in ``...``) to make room."""
    tag = note.encode("latin-1", "replace")[:DESCRIP_BYTES]
    text = old.encode("latin-1", "replace")
    if not text:
        return tag
    room = DESCRIP_BYTES - len(tag) - 2
    if room < 4:
        return tag
    if len(text) > room:
        text = text[: room - 3].rstrip() + b"..."
    return text + b"; " + tag


MGH_DTYPES = (np.uint8, np.int16, np.int32, np.float32)  # what the MGH format stores


def mgh_image(data: np.ndarray, affine: np.ndarray, like: Any = None, dtype: str = "float32"):
    """A FreeSurfer MGH image (.mgz) of ``data`` on ``affine`` (in ``like``'s spatial units,
    converted to the mm that MGH stores); an MGH input's scan parameters (TR, flip angle, TE,
    TI) are kept. ``dtype="input"`` writes the input's type, rounded and clipped to its range
    (MGH has no scaling): only the types MGH stores (:data:`MGH_DTYPES`)."""
    import nibabel as nib

    from mrsr.data.readers import UNIT_MM, spatial_unit

    want = np.dtype(np.float32)
    if like is not None and dtype == "input":
        want = np.dtype(like.get_data_dtype()).newbyteorder("=")
        if want not in [np.dtype(t) for t in MGH_DTYPES]:
            raise ConfigError(
                f"output_dtype=input: the input's type {want.name} cannot be stored in a .mgz "
                "(uint8, int16, int32, float32): write .nii.gz, or keep output_dtype=float32"
            )
    if want.kind in "iu":
        info = np.iinfo(want)
        data = np.clip(np.rint(data), info.min, info.max)
    factor = UNIT_MM[spatial_unit(like)] if like is not None else 1.0
    mm = np.diag([factor, factor, factor, 1.0]) @ np.asarray(affine, dtype=np.float64)
    img = nib.MGHImage(np.asarray(data).astype(want), mm)
    if isinstance(like, nib.freesurfer.mghformat.MGHHeader):
        for key in ("tr", "flip_angle", "te", "ti"):
            img.header[key] = like[key]
    return img


def is_mgh(path: Path) -> bool:
    """A FreeSurfer MGH file name (.mgz, .mgh)."""
    from mrsr.data.readers import MGH_SUFFIXES

    return path.name.lower().endswith(MGH_SUFFIXES)


def write_nifti_atomic(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray,
    like: Any = None,
    dtype: str = "float32",
    note: str = "",
    resliced: bool = False,
) -> None:
    """Save :func:`output_image` to a temporary file in ``path``'s folder, then rename it into
    place. The format follows ``path``'s extension: NIfTI (.nii, .nii.gz) or MGH (.mgz, .mgh)."""
    import nibabel as nib

    img = output_image(data, affine, like, dtype, note, resliced, mgh=is_mgh(path))
    suffix = next(
        (s for s in (".nii.gz", ".nii", ".mgz", ".mgh") if path.name.lower().endswith(s)), ".nii"
    )
    atomic_write(path, lambda tmp: nib.save(img, tmp), suffix)
