"""``stage=predict``: super-resolve a NIfTI volume (or a fastMRI .h5 file) with a stage-``sr``
checkpoint (or the bundled model of ``scale``) and write a NIfTI on the new grid.

Slices are taken along ``predict.axis`` and each is up-sampled in-plane by the checkpoint's
scale (:func:`mrsr.inference.super_resolve_scan`); the output overlays the input in a viewer
(:func:`mrsr.inference.upsampled_affine`). Intensities are normalised per volume as in training
and mapped back to the input's units. The output is written to a temporary file beside it and
renamed into place only when complete.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from mrsr.data.geometry import mm
from mrsr.errors import ConfigError
from mrsr.inference import (
    acquired_input,
    bundled_model,
    check_consistency,
    check_from_acquired,
    check_output_dtype,
    check_paths,
    read_input,
    super_resolve_scan,
    upsampled_affine,
    write_nifti_atomic,
)
from mrsr.results import device_label

log = logging.getLogger("mrsr")


def predict(cfg: DictConfig) -> dict:
    """Super-resolve ``cfg.input`` into ``cfg.output`` with the EMA generator of ``cfg.ckpt``
    (default: the bundled quick-start model of ``cfg.scale``)."""
    from mrsr.stages.sr import load_generator

    inp, out = Path(str(cfg.input)).expanduser(), Path(str(cfg.output)).expanduser()
    check_paths(inp, out, bool(cfg.get("overwrite", False)))
    p = cfg.predict
    dtype = check_output_dtype(p.get("output_dtype", "float32"), "predict.output_dtype")
    consistency = check_consistency(p.get("consistency", "none"))
    from_acquired = check_from_acquired(p.get("from_acquired", "auto"))
    scan = read_input(
        inp, p.get("axis", "auto"), None if p.get("volume") is None else int(p.volume)
    )
    if cfg.get("ckpt") in (None, ""):
        ckpt = bundled_model(int(cfg.get("scale", 2)))
        log.info(
            "no ckpt given: using the bundled x%s quick-start model (%s)",
            cfg.get("scale", 2),
            ckpt.name,
        )
    else:
        ckpt = Path(str(cfg.ckpt))
    net = load_generator(str(ckpt))
    scale = int(net.scale)
    if scale == 1:
        raise ConfigError(
            f"ckpt={ckpt} is a through-plane network (scale 1, from stage=throughplane): it was "
            "trained on one scan's slice profile; run stage=throughplane on the new scan instead"
        )
    trained = getattr(net, "training_data", {})
    log.info(
        "model trained on %s LR images (nominal operator %s; docs: guide/data.md, LR operators)",
        trained.get("degradation") or "bicubic",
        trained.get("nominal") or "bicubic",
    )
    scan, cutoffs = acquired_input(scan, from_acquired, inp)
    data, axis, is_2d = scan.data, scan.slicing.axis, scan.is_2d
    zooms_out = scan.zooms_after(scale)
    log.info(
        "%s: voxels %s mm; slicing axis %d (%s); output voxels %s mm",
        inp.name,
        mm(scan.zooms[1:] if is_2d else scan.zooms),
        axis,
        scan.slicing.reason,
        mm(zooms_out[1:] if is_2d else zooms_out),
    )
    if not scan.slicing.square:
        log.warning(
            "%s: the in-plane voxels of slices along axis %d are not square (%s mm); "
            "the network treats them as square",
            inp.name,
            axis,
            mm(tuple(z for a, z in enumerate(scan.zooms) if a != axis)),
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tile = None if p.get("tile") in (None, 0) else int(p.tile)
    result, seconds = super_resolve_scan(
        net, scan, scale, int(p.batch_size), tile, int(p.overlap), device, consistency
    )
    write_nifti_atomic(
        out,
        result,
        upsampled_affine(scan.affine, scale, scan.inplane),
        scan.header,
        dtype,
        f"mrsr x{scale} SR",
    )
    n = data.shape[axis]
    written = (
        np.dtype(scan.header.get_data_dtype()).name
        if dtype == "input" and scan.header is not None
        else "float32"
    )
    log.info(
        "%s %s -> %s %s (%s): x%d in-plane, slicing axis %d, %d slice(s) on %s in %.2f s "
        "(%.1f slices/s)",
        inp.name,
        tuple(data.shape[1:]) if is_2d else tuple(data.shape),
        out.name,
        tuple(result.shape),
        written,
        scale,
        axis,
        n,
        device_label(device),
        seconds,
        n / max(seconds, 1e-9),
    )
    return {
        "output": str(out),
        "shape": list(result.shape),
        "scale": scale,
        "seconds": seconds,
        "ckpt": str(ckpt),
        "axis": axis,
        "axis_reason": scan.slicing.reason,
        "voxel_mm": list(zooms_out),
        "consistency": consistency,
        "trained_on": trained.get("degradation") or "bicubic",
        "cutoff": [c.fraction for c in cutoffs],
        "interpolated": any(c.interpolated for c in cutoffs),
    }
