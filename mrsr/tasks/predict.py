"""``stage=predict``: super-resolve one scan or a whole study with a stage-``sr`` checkpoint (or
the bundled model of ``scale``), each output with a receipt beside it.

``input=`` is a file, a folder, a glob or a BIDS dataset (:mod:`mrsr.study`); ``output=`` a
file for one scan, else a folder (for BIDS: a derivatives dataset). Slices are taken along
``predict.axis`` and each is up-sampled in-plane by the model's scale
(:func:`mrsr.inference.super_resolve_scan`); the output overlays the input in a viewer
(:func:`mrsr.inference.upsampled_affine`) and keeps its header and units. Each output is
written to a temporary file beside it and renamed into place when complete, then its receipt
(:mod:`mrsr.receipt`). In a batch, scans with a finished receipt are skipped, a failing scan is
reported and the others go on, and the run ends with a summary (exit status 2 if any failed).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

import mrsr
from mrsr.data.degrade import normalise_with_range
from mrsr.data.geometry import mm
from mrsr.errors import ConfigError, MrsrError, user_error
from mrsr.files import check_writable, remove_stale_temporaries
from mrsr.generators import TrainedGenerator, model_for
from mrsr.inference import (
    InputScan,
    SliceProgress,
    acquired_input,
    check_consistency,
    check_cpu_bf16,
    check_from_acquired,
    check_output_dtype,
    check_paths,
    read_input,
    super_resolve_scan,
    upsampled_affine,
    write_nifti_atomic,
)
from mrsr.receipt import (
    CONSISTENCY_SLICES,
    NOISE_FLOOR,
    NOISE_MARGIN,
    RECEIPT_FORMAT,
    Receipt,
    command_line,
    consistency_error,
    file_fingerprint,
    image_facts,
    intensity_findings,
    noise_estimate,
    read_receipt,
    sampled_indices,
    write_receipt,
)
from mrsr.report.results import device_label
from mrsr.study import Scan, Study, check_suffixes, plan, source_reference
from mrsr.study import write_dataset_description as describe_derivatives

log = logging.getLogger("mrsr")


@dataclass(frozen=True)
class Settings:
    """``predict.*`` checked once for the whole run."""

    axis: int | str
    volume: int | None
    dtype: str
    consistency: str
    from_acquired: str
    batch_size: int
    tile: int | None
    overlap: int
    device: torch.device
    crop_background: bool = True
    cpu_bf16: str = "false"  # as given (auto | true | false)
    bf16: bool = False  # whether the network runs in bfloat16 here (always on a GPU)

    @classmethod
    def of(cls, p: DictConfig) -> Settings:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        cpu_bf16 = str(p.get("cpu_bf16", "false")).lower()
        native = check_cpu_bf16(cpu_bf16)  # a bad value is refused before any work
        return cls(
            axis=p.get("axis", "auto"),
            volume=None if p.get("volume") is None else int(p.volume),
            dtype=check_output_dtype(p.get("output_dtype", "float32"), "predict.output_dtype"),
            consistency=check_consistency(p.get("consistency", "none")),
            from_acquired=check_from_acquired(p.get("from_acquired", "auto")),
            batch_size=int(p.batch_size),
            tile=None if p.get("tile") in (None, 0) else int(p.tile),
            overlap=int(p.overlap),
            device=device,
            crop_background=bool(p.get("crop_background", True)),
            cpu_bf16=cpu_bf16,
            bf16=device.type == "cuda" or native,
        )

    def recorded(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "volume": self.volume,
            "output_dtype": self.dtype,
            "consistency": self.consistency,
            "from_acquired": self.from_acquired,
            "batch_size": self.batch_size,
            "tile": self.tile,
            "overlap": self.overlap,
            "crop_background": self.crop_background,
            "cpu_bf16": self.cpu_bf16,
        }


def predict(cfg: DictConfig) -> dict:
    """Super-resolve every scan ``cfg.input`` names (see the module docstring)."""
    settings = Settings.of(cfg.predict)
    overwrite = bool(cfg.get("overwrite", False))
    suffixes = check_suffixes(cfg.predict.get("suffix"))
    scale = int(cfg.get("scale", 2))
    study = plan(cfg.input, cfg.get("output"), scale, suffixes)
    if not study.batch:  # refused before the model is loaded
        check_paths(study.scans[0].input, study.scans[0].output, overwrite)
        study.scans[0].check_receipt()
    model = load_model(cfg.get("ckpt"), scale)
    if study.kind == "bids" and model.scale != scale:  # BIDS names carry res-x<scale>
        study = plan(cfg.input, cfg.get("output"), model.scale, suffixes)
    if not study.batch:
        return predict_scan(model, study.scans[0], settings, study)
    return predict_study(model, study, settings, overwrite)


def load_model(ckpt: object, scale: int) -> TrainedGenerator:
    """The model to run, said in the log: ``ckpt``, or the bundled model of ``scale``."""
    model = model_for(ckpt, scale)
    if model.scale == 1:
        raise ConfigError(
            f"ckpt={model.path} is a through-plane network (scale 1, from stage=throughplane): "
            "it was trained on one scan's slice profile; run stage=throughplane on the new scan "
            "instead"
        )
    log.info(
        "%s, x%d; model trained on %s LR images (nominal operator %s; docs: guide/data.md, "
        "LR operators)",
        model.name,
        model.scale,
        model.degradation,
        model.nominal,
    )
    return model


def predict_study(
    model: TrainedGenerator, study: Study, settings: Settings, overwrite: bool
) -> dict:
    """Every scan of a batch; finished ones skipped, failures reported, a summary at the end."""
    n = len(study.scans)
    log.info("%s input: %d scan(s) -> %s", study.kind, n, _common_folder(study))
    for folder in sorted({s.output.parent for s in study.scans}):
        check_writable(folder, "output")  # before any work, not after it
    describe_derivatives(study, mrsr.__version__)
    done: list[str] = []
    skipped: list[str] = []
    failed: list[tuple[str, str]] = []
    for why in study.left_out:
        log.info("left out: %s", why)
    with SliceProgress("super-resolving scans", n) as bar:
        for i, scan in enumerate(study.scans, 1):
            try:
                why = finished(scan, model, settings, study, overwrite)
                if why:
                    log.info("[%d/%d] %s: skipped (%s)", i, n, scan.input.name, why)
                    skipped.append(str(scan.output))
                else:
                    predict_scan(model, scan, settings, study, progress=False)
                    done.append(str(scan.output))
                    log.info("[%d/%d] %s: done", i, n, scan.input.name)
            except KeyboardInterrupt:
                raise
            except Exception as err:  # noqa: BLE001 - one scan's failure must not stop the rest
                cause = user_error(err)
                line = str(cause) if cause is not None else f"{type(err).__name__}: {err}"
                if cause is None:
                    log.exception("[%d/%d] %s: failed", i, n, scan.input.name)
                log.error("[%d/%d] %s: failed: %s", i, n, scan.input.name, line)
                failed.append((str(scan.input), line.replace(f"{scan.input}: ", "")))
            bar.advance(1)
    log.info(
        "summary: %d done, %d skipped (finished before), %d failed, of %d scan(s)",
        len(done),
        len(skipped),
        len(failed),
        n,
    )
    for path, line in failed:
        log.info("  failed: %s: %s", path, line)
    if failed:
        raise MrsrError(
            f"{len(failed)} of {n} scan(s) failed (first: {Path(failed[0][0]).name}: "
            f"{failed[0][1]}); the others are written; see the summary in run.log"
        )
    return {"done": done, "skipped": skipped, "failed": failed, "scans": n, "kind": study.kind}


def finished(
    scan: Scan, model: TrainedGenerator, settings: Settings, study: Study, overwrite: bool
) -> str | None:
    """Why ``scan`` needs no work: its output and a finished receipt exist, made by this model
    with these settings from this input as it is now. None: do it (nothing there, our own
    interrupted work, or ``overwrite``). An output this run must not replace (no receipt of
    ours, or one made differently) is refused in one line."""
    scan.check_receipt()
    if overwrite or not (scan.output.exists() or scan.receipt.exists()):
        return None
    receipt = read_receipt(scan.receipt)
    if receipt is None:
        raise ConfigError(
            f"output={scan.output} exists without a receipt of ours: pass overwrite=true to "
            "replace it"
        )
    if receipt.get("status") != "done" or not scan.output.exists():
        return None  # killed while writing: ours to redo
    differs = [
        what
        for what, same in (
            ("another model", (receipt.get("model") or {}).get("sha256") == model.sha256),
            ("another input", receipt.get("input") == source_reference(study, scan.input)),
            ("the input as it was", receipt.get("input_file") == file_fingerprint(scan.input)),
            ("other predict settings", receipt.get("settings") == settings.recorded()),
        )
        if not same
    ]
    if differs:
        raise ConfigError(
            f"output={scan.output} was made from {' and '.join(differs)} (its receipt says "
            "so): pass overwrite=true to redo it, or another output folder"
        )
    return f"finished {receipt.get('finished', '')}".strip()


def _common_folder(study: Study) -> str:
    if study.derivatives is not None:
        return str(study.derivatives)
    parents = {s.output.parent for s in study.scans}
    return str(parents.pop()) if len(parents) == 1 else f"{len(parents)} folders"


def predict_scan(
    model: TrainedGenerator,
    scan: Scan,
    settings: Settings,
    study: Study,
    progress: bool = True,
) -> dict:
    """Super-resolve one scan into ``scan.output`` and write its receipt."""
    receipt = Receipt()
    inp, out, scale = scan.input, scan.output, model.scale
    scan.output.parent.mkdir(parents=True, exist_ok=True)
    for path in (scan.output, scan.receipt):
        for tmp in remove_stale_temporaries(path):
            log.info("%s: removed %s, left by an interrupted run", inp.name, tmp.name)
    fingerprint = file_fingerprint(inp)
    on_disk = read_input(inp, settings.axis, settings.volume)
    image, cutoffs = acquired_input(on_disk, settings.from_acquired, inp)
    removed = image is not on_disk  # the acquired matrix replaced a zero-filled input
    data, axis, is_2d = image.data, image.slicing.axis, image.is_2d
    zooms_out = image.zooms_after(scale)
    log.info(
        "%s: voxels %s mm; slicing axis %d (%s); output voxels %s mm",
        inp.name,
        mm(image.zooms[1:] if is_2d else image.zooms),
        axis,
        image.slicing.reason,
        mm(zooms_out[1:] if is_2d else zooms_out),
    )
    if not image.slicing.square:
        receipt.warn(
            f"the in-plane voxels of slices along axis {axis} are not square "
            f"({mm(tuple(z for a, z in enumerate(image.zooms) if a != axis))} mm); "
            "the network treats them as square"
        )
    normalised = normalise_with_range(image.data, model.percentile)  # once, for both uses
    result, seconds = super_resolve_scan(
        model.net,
        image,
        scale,
        settings.batch_size,
        settings.tile,
        settings.overlap,
        settings.device,
        settings.consistency,
        percentile=model.percentile,
        progress=progress,
        crop_background=settings.crop_background,
        cpu_bf16=settings.bf16,
        normalised=normalised,
    )
    # a receipt that says "writing" first: a rerun after a kill knows a left-over output is
    # its own; removed again when the write fails here
    write_receipt(scan.receipt, {"mrsr_receipt": RECEIPT_FORMAT, "status": "writing"})
    try:
        write_nifti_atomic(
            out,
            result,
            upsampled_affine(image.affine, scale, image.inplane),
            image.header,
            settings.dtype,
            f"mrsr x{scale} SR",
        )
    except BaseException:
        scan.receipt.unlink(missing_ok=True)
        raise
    written = (
        np.dtype(image.header.get_data_dtype()).name
        if settings.dtype == "input" and image.header is not None
        else "float32"
    )
    n = data.shape[axis]
    log.info(
        "%s %s -> %s %s (%s): x%d in-plane, slicing axis %d, %d slice(s) on %s (%s) in %.2f s "
        "(%.1f slices/s)",
        inp.name,
        tuple(data.shape[1:]) if is_2d else tuple(data.shape),
        out.name,
        tuple(result.shape),
        written,
        scale,
        axis,
        n,
        device_label(settings.device),
        "bfloat16" if settings.bf16 else "float32",
        seconds,
        n / max(seconds, 1e-9),
    )
    checks = check_scan(model, image, normalised, result, cutoffs, receipt, removed)
    described = {
        "input_image": scan_facts(on_disk),
        **({"acquired_matrix": scan_facts(image)} if removed else {}),
    }
    if study.kind == "bids":  # the sidecar fields BIDS derivatives expect
        described["Sources"] = [source_reference(study, inp)]
        described["Resolution"] = (
            f"res-x{scale}: in-plane voxel size divided by {scale} "
            f"({mm(zooms_out[1:] if is_2d else zooms_out)} mm), mrsr super-resolution"
        )
    receipt.add(
        input=source_reference(study, inp),
        input_file=fingerprint,
        output=str(out.absolute()),
        version=mrsr.__version__,
        command=command_line(),
        model={
            "name": model.name,
            "path": str(model.path),
            "sha256": model.sha256,
            "scale": scale,
            "trained_on": model.degradation,
            "nominal_operator": model.nominal,
            "operator": model.operator,
            "updates": model.updates,
            "loss": model.loss,
        },
        scale=scale,
        slicing_axis=axis,
        slicing_axis_reason=image.slicing.reason,
        **described,
        output_image=image_facts(result.shape, zooms_out[1:] if is_2d else zooms_out, written),
        settings=settings.recorded(),
        checks=checks,
        network_seconds=round(seconds, 3),
        precision="bfloat16" if settings.bf16 else "float32",
        device=device_label(settings.device),
    )
    for said in receipt.warnings:
        log.warning("%s: %s", inp.name, said)
    written_receipt = receipt.finish()
    write_receipt(scan.receipt, written_receipt)
    log.info("%s: receipt %s (%s)", out.name, scan.receipt.name, written_receipt["trust"])
    return {
        "output": str(out),
        "receipt": str(scan.receipt),
        "shape": list(result.shape),
        "scale": scale,
        "seconds": seconds,
        "ckpt": str(model.path),
        "axis": axis,
        "axis_reason": image.slicing.reason,
        "voxel_mm": list(zooms_out),
        "consistency": settings.consistency,
        "trained_on": model.degradation,
        "cutoff": [c.fraction for c in cutoffs],
        "interpolated": any(c.interpolated for c in cutoffs),
        "trust": written_receipt["trust"],
        "warnings": written_receipt["warnings"],
    }


def scan_facts(image: InputScan) -> dict[str, Any]:
    """:func:`~mrsr.receipt.image_facts` of a scan (a 2D input: its one slice)."""
    is_2d = image.is_2d
    return image_facts(
        image.data.shape[1:] if is_2d else image.data.shape,
        image.zooms[1:] if is_2d else image.zooms,
        image.data.dtype if image.header is None else image.header.get_data_dtype(),
    )


def check_scan(
    model: TrainedGenerator,
    image: InputScan,
    normalised: tuple[np.ndarray, float, float],
    result: np.ndarray,
    cutoffs: list,
    receipt: Receipt,
    removed: bool = False,
) -> dict[str, Any]:
    """The receipt's checks of one scan (:mod:`mrsr.receipt`; ``normalised``: the scan as the
    network saw it, and its range); failures become warnings. ``removed``: the zero-filling of
    an interpolated input was removed (not said again)."""
    t0 = time.perf_counter()
    axis, scale = image.slicing.axis, model.scale
    norm, lo, hi = normalised
    slices = np.moveaxis(norm, axis, 0)  # a 2D input is one slice along axis 0
    noise = noise_estimate(slices)
    limit = max(NOISE_MARGIN * model.max_training_noise, NOISE_FLOOR)
    if noise["sigma"] is not None and noise["sigma"] > limit:
        receipt.warn(
            f"noise about {100 * noise['sigma']:.1f}% of the robust range, above the "
            f"{100 * model.max_training_noise:.1f}% the model was trained with: expect "
            "smoothed detail or amplified noise"
        )
    facts, said = intensity_findings(image.data, lo, hi)
    receipt.warn(*said)
    interpolated = any(c.interpolated for c in cutoffs)
    if interpolated and not removed:
        receipt.warn(
            "the input looks interpolated (its spectrum ends at "
            + " and ".join(f"{c.fraction:.2f}" for c in cutoffs)
            + " of Nyquist): super-resolving it sharpens an interpolation; "
            "predict.from_acquired=true removes a whole zero-filling factor"
        )
    pick = sampled_indices(slices.shape[0], CONSISTENCY_SLICES)
    sr_slices = result[None] if image.is_2d else np.moveaxis(result, axis, 0)
    sr = (sr_slices[pick] - np.float32(lo)) / np.float32(hi - lo)
    error = consistency_error(sr, slices[pick], scale, model.nominal)
    return {
        "noise": {
            **noise,
            "percentile": model.percentile,
            "training_max": model.max_training_noise,
            "limit": limit,
        },
        "resolution": {
            "cutoff_fraction_of_nyquist": [round(c.fraction, 4) for c in cutoffs],
            "interpolated": interpolated,
            "zero_filling_removed": removed,
            "checked": bool(cutoffs),
        },
        "intensities": facts,
        "consistency": {
            "operator": model.nominal,
            "relative_error": round(error, 5),
            "slices": len(pick),
            "meaning": "the output degraded again by the operator, against the input "
            "(relative L2, normalised units)",
        },
        "seconds": round(time.perf_counter() - t0, 3),
    }
