"""``stage=predict``: super-resolve a NIfTI volume (or a fastMRI .h5 file) with a stage-``sr``
checkpoint (or the bundled model of ``scale``) and write a NIfTI on the new grid.

Slices are taken along ``predict.axis`` and each is up-sampled in-plane by the checkpoint's
scale. The output affine maps new voxel ``i'`` (on the two in-plane axes) to the input's
continuous voxel index ``(i' + 0.5) / s - 0.5``, so the output overlays the input in a viewer.
Intensities are normalised per volume as in training (a linear map, nothing clipped: voxels
brighter than the normalisation percentile pass through the network above 1) and mapped
back to the input's units; the output is only kept from going below the input's minimum.
The output is written to a temporary file beside it and renamed into place only when complete.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from mrsr.data.degrade import normalise_with_range
from mrsr.errors import ConfigError
from mrsr.results import atomic_write, device_label

log = logging.getLogger("mrsr")


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def sr_tiled(net: nn.Module, x: Tensor, scale: int, tile: int | None = None, overlap: int = 16) -> Tensor:
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
            out[..., (top + t0) * scale : (top + t1) * scale, (left + l0) * scale : (left + l1) * scale] = y[
                ..., t0 * scale : t1 * scale, l0 * scale : l1 * scale
            ]
    return out


def upsampled_affine(affine: np.ndarray, scale: int, inplane: tuple[int, ...]) -> np.ndarray:
    """Affine of the grid refined by ``scale`` on the ``inplane`` voxel axes, centres aligned."""
    m = np.eye(4)
    for ax in inplane:
        m[ax, ax] = 1.0 / scale
        m[ax, 3] = 0.5 / scale - 0.5
    return np.asarray(affine, dtype=np.float64) @ m


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
) -> np.ndarray:
    """SR of every slice of ``slices`` (n, h, w), normalised; returns (n, h*s, w*s) float32 >= 0."""
    from rich.progress import Progress

    device = device or torch.device("cpu")
    n, h, w = slices.shape
    out = np.empty((n, h * scale, w * scale), dtype=np.float32)
    net = net.eval().to(device)
    with Progress(disable=not progress, transient=True) as bar, torch.inference_mode():
        task = bar.add_task(description, total=n)
        for i in range(0, n, batch_size):
            x = torch.from_numpy(np.ascontiguousarray(slices[i : i + batch_size]))[:, None].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                y = sr_tiled(net, x, scale, tile, overlap)
            out[i : i + x.shape[0]] = y[:, 0].clamp(min=0).cpu().numpy()
            bar.advance(task, x.shape[0])
    return out


def check_paths(inp: Path, out: Path, overwrite: bool) -> None:
    if not inp.exists():
        raise ConfigError(f"input={inp}: file not found")
    if out.exists() and out.resolve() == inp.resolve():
        raise ConfigError(f"output={out} is the input file: choose another output path")
    if not out.name.endswith((".nii", ".nii.gz")):
        raise ConfigError(f"output={out}: the output must be a NIfTI file (.nii or .nii.gz)")
    if not out.parent.is_dir():
        raise ConfigError(f"output={out}: folder {out.parent} does not exist")
    if out.exists() and not overwrite:
        raise ConfigError(f"output={out} exists: pass overwrite=true to replace it")


def read_input(path: Path, axis: int) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """The volume (file axis order), its affine, the slicing axis and whether it is 2D."""
    if path.suffix in (".h5", ".hdf5"):
        from mrsr.data.readers import read_fastmri

        return read_fastmri(path), np.eye(4), 0, False  # (slices, H, W), unit voxels
    from mrsr.data.readers import read_nifti

    vol = read_nifti(path, ndims=(2, 3))
    if vol.data.ndim == 2:
        return vol.data[None], vol.affine, 0, True
    if axis not in (0, 1, 2):
        raise ConfigError(f"predict.axis={axis} must be 0, 1 or 2 for a 3D volume")
    return vol.data, vol.affine, axis, False


def write_nifti_atomic(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Save a NIfTI to a temporary file in ``path``'s folder, then rename it into place."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    atomic_write(path, lambda tmp: nib.save(img, tmp), suffix)


def bundled_model(scale: int) -> Path:
    """The quick-start model for ``scale`` shipped inside the package (see the README's model card)."""
    from importlib import resources

    from mrsr.data.degrade import check_scale

    path = Path(str(resources.files("mrsr.assets") / "models" / f"quickstart_x{check_scale(scale)}.ckpt"))
    if not path.is_file():
        raise ConfigError(f"no bundled x{scale} model in this installation ({path}): pass ckpt=<stage-sr checkpoint>")
    return path


def predict(cfg: DictConfig) -> dict:
    """Super-resolve ``cfg.input`` into ``cfg.output`` with the EMA generator of ``cfg.ckpt``
    (default: the bundled quick-start model of ``cfg.scale``)."""
    from mrsr.stages.sr import load_generator

    inp, out = Path(str(cfg.input)).expanduser(), Path(str(cfg.output)).expanduser()
    check_paths(inp, out, bool(cfg.get("overwrite", False)))
    p = cfg.predict
    if cfg.get("ckpt") in (None, ""):
        ckpt = bundled_model(int(cfg.get("scale", 2)))
        log.info("no ckpt given: using the bundled x%s quick-start model (%s)", cfg.get("scale", 2), ckpt.name)
    else:
        ckpt = Path(str(cfg.ckpt))
    net = load_generator(str(ckpt))
    scale = int(net.scale)
    if scale == 1:
        raise ConfigError(f"ckpt={ckpt} is a through-plane network (scale 1, from stage=throughplane): it was "
                          "trained on one scan's slice profile; run stage=throughplane on the new scan instead")
    data, affine, axis, is_2d = read_input(inp, int(p.axis))
    percentile = float(getattr(net, "training_data", {}).get("percentile", 99.5))
    norm, lo, hi = normalise_with_range(data, percentile)
    slices = np.moveaxis(norm, axis, 0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tile = None if p.get("tile") in (None, 0) else int(p.tile)
    t0 = time.perf_counter()
    sr = super_resolve_volume(net, slices, scale, int(p.batch_size), tile, int(p.overlap), device)
    seconds = time.perf_counter() - t0
    result = np.moveaxis(sr, 0, axis) * np.float32(hi - lo) + np.float32(lo)
    inplane = (0, 1) if is_2d else tuple(a for a in range(3) if a != axis)
    if is_2d:
        result = result[0]
    write_nifti_atomic(out, result, upsampled_affine(affine, scale, inplane))
    n = slices.shape[0]
    log.info(
        "%s %s -> %s %s: x%d in-plane, slicing axis %d, %d slice(s) on %s in %.2f s (%.1f slices/s)",
        inp.name, tuple(data.shape[1:]) if is_2d else tuple(data.shape), out.name, tuple(result.shape), scale,
        axis, n, device_label(device), seconds, n / max(seconds, 1e-9),
    )
    return {"output": str(out), "shape": list(result.shape), "scale": scale, "seconds": seconds, "ckpt": str(ckpt)}
