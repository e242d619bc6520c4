"""``stage=throughplane``: make a thick-slice scan isotropic with no training set.

Self-supervised through-plane SR (SMORE, Zhao et al. 2020): a same-size SR network is trained
with stage ``sr``'s module and loop on the scan's own in-plane slices, degraded along one
in-plane axis with the slice profile and spacing of the thick axis and interpolated back
(:mod:`mrsr.isotropic.datamodule`). The thick axis is then interpolated to the in-plane voxel size
with the same cubic spline, the network restores every slice that cuts across it in both
orthogonal orientations, and the two results are averaged. With ``throughplane.spacing`` other
than the in-plane voxel size the result is finally re-sampled to that spacing (cubic spline).

With ``throughplane.slice_profile=auto`` (the default) the slice profile is estimated from the
scan first (:mod:`mrsr.isotropic.estimate`); after applying, a self-check compares the
output's power above the thick Nyquist across and along the slices and warns when the network
seems to have invented detail. Factors above 8x and scans too small to learn from are refused.

On a CPU that computes bfloat16 natively the network is trained and applied in bfloat16
(``throughplane.precision=auto``), and it is applied only on each slice's foreground box
(``throughplane.crop_background``): records/2026-12-06-throughplane-speed.

The output grid covers the input's field of view, centred (see
:mod:`mrsr.isotropic.geometry`), and its affine puts each voxel where it is, so the output
overlays the input in a viewer. Intensities are handled as by ``stage=predict``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import mrsr
from mrsr.building import build_module, build_trainer, output_dir
from mrsr.data.acquisition import Described
from mrsr.data.resolution import describe as describe_cutoff
from mrsr.data.resolution import spectral_cutoff
from mrsr.errors import ConfigError
from mrsr.files import atomic_write_text
from mrsr.inference import (
    check_magnitude,
    check_output_dtype,
    check_paths,
    cpu_has_bf16,
    write_nifti_atomic,
)
from mrsr.isotropic.datamodule import SelfPairsDataModule
from mrsr.isotropic.estimate import ProfileFit, estimate_profile
from mrsr.isotropic.geometry import ThickGeometry, grid_affine, thick_geometry
from mrsr.isotropic.profile import SliceProfile, slice_profile
from mrsr.isotropic.restore import HIGHBAND_LIMIT, normalised_scan, restore_scan
from mrsr.losses.objective import build_terms
from mrsr.receipt import (
    Receipt,
    command_line,
    file_fingerprint,
    image_facts,
    intensity_findings,
    noise_estimate,
    write_receipt,
)
from mrsr.report.results import device_label
from mrsr.study import Scan

log = logging.getLogger("mrsr")
HELD_OUT_NOTE = (
    "held-out in-plane slices degraded with the {} profile: a simulation that assumes that "
    "profile, not a measure of the through-plane gain"
)
RECORD = "throughplane.json"
# Lightning's info lines (devices, "Seed set to", "Loading `train_dataloader` ...", the model
# summary, "`Trainer.fit` stopped") say nothing about a one-scan run; its warnings still show.
LIGHTNING_CHATTER = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.fabric.utilities.seed",
    "lightning.pytorch.callbacks.model_summary",
    "lightning.pytorch.accelerators.cuda",
)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's loggers in :data:`LIGHTNING_CHATTER` at WARNING while the block runs."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_CHATTER]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def choose_profile(
    tp: DictConfig, geom: ThickGeometry, norm: np.ndarray
) -> tuple[SliceProfile, ProfileFit | None]:
    """``throughplane.slice_profile``: the profile given, or (``auto``) the one estimated from the
    scan (:func:`~mrsr.isotropic.estimate.estimate_profile`; of ``slice_thickness`` when set)."""
    thickness = tp.get("slice_thickness")
    kind = str(tp.slice_profile)
    if kind != "auto":
        step = tp.get("profile_step") or geom.voxel
        return slice_profile(kind, float(thickness or geom.spacing), float(step)), None
    if thickness is not None and not float(thickness) > 0:
        raise ConfigError(f"throughplane.slice_thickness={thickness} must be > 0 mm")
    try:
        fit = estimate_profile(
            norm, geom.voxel, geom.spacing, None if thickness is None else float(thickness)
        )
    except ValueError as err:
        fallback = slice_profile("gaussian", float(thickness or geom.spacing))
        log.warning(
            "could not estimate the slice profile (%s): assuming %s", err, fallback.describe()
        )
        return fallback, None
    return fit.profile, fit


TRAINING_PROFILES = ("plausible", "families", "estimate")


def train_profiles_rule(tp: DictConfig) -> str:
    """``throughplane.train_profiles``, or a one-line refusal."""
    rule = str(tp.get("train_profiles", "plausible"))
    if rule not in TRAINING_PROFILES:
        raise ConfigError(
            f"throughplane.train_profiles={rule} must be one of {', '.join(TRAINING_PROFILES)}"
        )
    return rule


def training_profiles(
    tp: DictConfig, profile: SliceProfile, fit: ProfileFit | None
) -> list[SliceProfile]:
    """``throughplane.train_profiles``: the slice profiles the training pairs are made with. A
    given profile (or the fallback) alone; for an estimate, ``plausible``: the best fit of each
    family (Gaussian and boxcar of matching blur cannot be told apart from a scan) and every
    width that fits about as well (:meth:`~mrsr.isotropic.estimate.ProfileFit.plausible`),
    ``families``: the best fit of each family, ``estimate``: the estimate alone
    (records/2026-12-06-throughplane-families)."""
    rule = train_profiles_rule(tp)
    if fit is None or rule == "estimate":
        return [profile]
    if rule == "plausible":
        return fit.plausible()
    return fit.families()


PRECISIONS = ("auto", "32-true", "bf16-mixed")


def choose_precision(tp: DictConfig, trainer_precision: str, cuda: bool) -> str:
    """``throughplane.precision``: ``auto`` is ``bf16-mixed`` on a CPU that computes bfloat16
    natively (:func:`~mrsr.inference.cpu_has_bf16`; several times faster there, and measured
    as good: records/2026-12-06-throughplane-speed), else ``trainer.precision``."""
    value = str(tp.get("precision", "auto"))
    if value not in PRECISIONS:
        raise ConfigError(f"throughplane.precision={value} must be one of {', '.join(PRECISIONS)}")
    if value != "auto":
        return value
    return "bf16-mixed" if not cuda and cpu_has_bf16() else str(trainer_precision)


def _check_settings(cfg: DictConfig) -> None:
    tp = cfg.throughplane
    check_output_dtype(tp.get("output_dtype", "float32"), "throughplane.output_dtype")
    choose_precision(tp, "32-true", True)  # refuses an unknown value before any work
    train_profiles_rule(tp)  # likewise
    if int(tp.get("orientations", 2)) not in (1, 2):
        raise ConfigError(
            f"throughplane.orientations={tp.orientations} must be 1 or 2 (slices across the "
            "thick axis restored in one orientation, or in both and averaged)"
        )
    if tp.get("spacing") is not None and not float(tp.spacing) > 0:
        raise ConfigError(
            f"throughplane.spacing={tp.spacing} must be > 0 mm (or null: the in-plane voxel size)"
        )
    if int(cfg.trainer.max_steps) < 1:
        raise ConfigError(
            f"trainer.max_steps={cfg.trainer.max_steps} must be >= 1 (training steps on the scan)"
        )
    loss = OmegaConf.to_container(cfg.loss, resolve=True)
    for name, term in build_terms(loss).items():  # type: ignore[arg-type]
        if term.target != "hr":
            raise ConfigError(
                f"loss.terms.{name}.target={term.target}: through-plane SR compares with the "
                f"in-plane slice itself (target hr); its degradation is the slice profile, not "
                "data.degradation"
            )


def scan_checks(
    norm: np.ndarray, data: np.ndarray, lo: float, hi: float
) -> tuple[dict[str, Any], list[str]]:
    """The receipt's checks of the scan that apply to through-plane SR (:mod:`mrsr.receipt`),
    and what they warn of: its noise (reported: the network learns the scan's own), its
    intensities and the in-plane resolution (an in-plane interpolation teaches the network an
    interpolation). Made from the input alone, before any training."""
    facts, said = intensity_findings(data, lo, hi)
    cutoffs = spectral_cutoff(norm)  # in-plane slices (it reads a sample of them)
    interpolated = any(c.interpolated for c in cutoffs)
    if interpolated:
        said.append(
            f"the in-plane slices look interpolated ({describe_cutoff(cutoffs, norm.shape[1:])})"
            ": the network learns to restore an interpolation"
        )
    checks = {
        "noise": noise_estimate(norm),
        "intensities": facts,
        "resolution": {
            "inplane_cutoff_fraction_of_nyquist": [round(c.fraction, 4) for c in cutoffs],
            "interpolated": interpolated,
        },
    }
    return checks, said


def write_scan_receipt(
    receipt: Receipt,
    record: dict[str, Any],
    cfg: DictConfig,
    vol: Any,
    result: np.ndarray,
    fingerprint: dict[str, int],
) -> None:
    """The receipt beside the output (:mod:`mrsr.receipt`; the fields of ``stage=predict``'s
    that apply): what made it, from what, and its checks."""
    tp, axis = cfg.throughplane, int(record["axis"])
    zooms_out = [float(z) for z in vol.zooms[:3]]
    zooms_out[axis] = float(record["output_spacing_mm"])
    dtype = vol.header.get_data_dtype()
    receipt.add(
        version=mrsr.__version__,
        command=command_line(),
        stage="throughplane",
        input=record["input"],
        input_file=fingerprint,
        input_image=image_facts(vol.data.shape, vol.zooms[:3], dtype),
        output=record["output"],
        output_image=image_facts(
            result.shape, zooms_out, dtype if tp.get("output_dtype") == "input" else np.float32
        ),
        network={
            "trained_on": "the scan's own in-plane slices (self-supervised)",
            "steps": int(cfg.trainer.max_steps),
            "training_profiles": record["training_profiles"],
            "precision": record["precision"],
            "held_out_psnr": record["held_out_psnr"],
            "held_out_psnr_cubic": record["held_out_psnr_cubic"],
            "held_out_note": record["held_out_note"],
        },
        thick_axis={
            "axis": axis,
            "why": "throughplane.axis" if tp.get("axis") is not None else "largest voxel size",
            "spacing_mm": record["spacing_mm"],
            "inplane_mm": record["voxel_mm"],
        },
        slice_profile={
            "profile": record["profile"],
            "source": record["profile_source"],
            "fit": record["profile_fit"],
        },
        self_check=record["self_check"],
        settings=OmegaConf.to_container(tp, resolve=True),
        seconds={
            "training": round(record["train_seconds"], 3),
            "applying": round(record["apply_seconds"], 3),
        },
    )
    write_receipt(Path(record["receipt"]), receipt.finish())


def throughplane(cfg: DictConfig) -> dict[str, Any]:
    """Train on ``cfg.input``'s in-plane slices, super-resolve its thick axis into
    ``cfg.output``."""
    from mrsr.data.readers import read_nifti

    inp, out = Path(str(cfg.input)).expanduser(), Path(str(cfg.output)).expanduser()
    check_paths(inp, out, bool(cfg.get("overwrite", False)))
    scan = Scan(inp, out)
    scan.check_receipt()  # a user's JSON where the receipt goes is refused now
    if inp.suffix in (".h5", ".hdf5"):
        raise ConfigError(
            f"input={inp}: through-plane SR needs a NIfTI volume with its voxel sizes"
        )
    tp = cfg.throughplane
    _check_settings(cfg)
    vol = read_nifti(
        inp,
        ndims=(3,),
        volume=None if tp.get("volume") is None else int(tp.volume),
        volume_key="throughplane.volume",
    )
    check_magnitude(inp, vol.data)
    geom = thick_geometry(
        vol.zooms, vol.data.shape, None if tp.get("axis") is None else int(tp.axis)
    )
    receipt = Receipt()
    fingerprint = file_fingerprint(inp)
    t0 = time.perf_counter()
    percentile = float(tp.percentile)
    norm, lo, hi = normalised_scan(vol.data, geom.axis, percentile)  # (thick, a, b)
    checks, input_warnings = scan_checks(norm, vol.data, lo, hi)
    for w in input_warnings:  # said before minutes of training
        log.warning(w)
    t_est = time.perf_counter()
    profile, fit = choose_profile(tp, geom, norm)
    t_est = time.perf_counter() - t_est
    source = (
        "given"
        if fit is None and str(tp.slice_profile) != "auto"
        else "estimated"
        if fit
        else "fallback"
    )
    out_grid = geom.output_grid(tp.get("spacing"))
    log.info(
        "%s: %s voxels %s mm; thick axis %d (%g mm, %.2fx the in-plane %g mm), "
        "slice profile %s; output %d slices of %g mm",
        inp.name,
        tuple(vol.data.shape),
        " x ".join(f"{z:g}" for z in vol.zooms),
        geom.axis,
        geom.spacing,
        geom.ratio,
        geom.voxel,
        profile.describe(),
        out_grid.n,
        out_grid.slope * geom.spacing,
    )
    warnings: list[str] = list(input_warnings)  # the record's and the receipt's
    if fit is not None:
        log.info("slice profile estimated from the scan: %s", fit.describe())
        if fit.ambiguous:
            log.info(
                "the scan's spectrum barely tells %s from %s apart (misfits within 15%%): "
                "the amount of blur is estimated, its family is not",
                fit.profile.describe(),
                fit.other.describe() if fit.other else "",
            )
        if fit.at_edge:
            warnings.append(
                f"the slice profile estimate ({fit.profile.describe()}) is at the edge "
                "of the widths searched: set throughplane.slice_profile / slice_thickness "
                "from the protocol"
            )

    trained_on = training_profiles(tp, profile, fit)
    if len(trained_on) > 1:
        log.info(
            "training pairs made with %d slice profiles: %s",
            len(trained_on),
            ", ".join(p.describe() for p in trained_on),
        )
    run_dir = output_dir(cfg)
    cuda = torch.cuda.is_available()
    precision = choose_precision(tp, str(cfg.trainer.get("precision", "32-true")), cuda)
    cfg.trainer.precision = precision
    with quiet_lightning():
        trainer = build_trainer(cfg)
    if trainer.world_size > 1:
        raise ConfigError(
            "stage=throughplane trains on one scan on one device: "
            "use trainer=default or trainer=gpu"
        )
    with quiet_lightning():
        L.seed_everything(int(cfg.seed), workers=True)
    dm = SelfPairsDataModule(
        norm,
        geom.voxel,
        geom.spacing,
        trained_on,
        int(cfg.trainer.max_steps),
        int(tp.batch_size),
        int(tp.patch_size),
        float(tp.holdout),
        int(cfg.seed),
        percentile,
    )
    # the slice profile is the scan's degradation
    module = build_module(cfg, degradation=Described(dm.degradation))
    module.config["throughplane"] = {
        "profile": profile.describe(),
        "profile_source": source,
        **asdict(geom),
    }
    with quiet_lightning():
        trainer.fit(module, datamodule=dm)
    held = {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if k in ("val/psnr", "val/psnr_bicubic")
    }
    t_train = time.perf_counter() - t0

    t1 = time.perf_counter()
    device = torch.device("cuda" if cuda else "cpu")
    tile = None if tp.get("tile") in (None, 0) else int(tp.tile)
    result, check = restore_scan(
        module.eval_generator,
        norm,
        lo,
        hi,
        geom,
        out_grid,
        profile,
        int(tp.infer_batch_size),
        tile,
        device,
        (2, 1)[: int(tp.get("orientations", 2))],
        bool(tp.get("crop_background", False)),
        bf16=device.type == "cpu" and precision.startswith("bf16"),
    )
    write_nifti_atomic(
        out,
        result,
        grid_affine(vol.affine, geom.axis, out_grid),
        vol.header,
        str(tp.get("output_dtype", "float32")),
        "mrsr through-plane SR",
        resliced=True,
    )
    t_apply = time.perf_counter() - t1
    if check["oversharpened"]:
        warnings.append(
            f"the output has {check['highband_ratio']:.1f}x the in-plane power above the thick "
            "Nyquist across its slices (a correct result has about 1x; "
            f"limit {HIGHBAND_LIMIT:g}x): the network "
            "may have invented detail and be worse than the cubic spline; set "
            "throughplane.slice_profile / slice_thickness from the protocol"
        )

    note = HELD_OUT_NOTE.format({"given": "given", "estimated": "estimated"}.get(source, "assumed"))
    record = {
        "input": str(inp),
        "output": str(out),
        "shape_in": list(vol.data.shape),
        "shape_out": list(result.shape),
        "axis": geom.axis,
        "voxel_mm": geom.voxel,
        "spacing_mm": geom.spacing,
        "output_spacing_mm": out_grid.slope * geom.spacing,
        "profile": profile.describe(),
        "profile_source": source,
        "profile_fit": None if fit is None else fit.record(),
        "training_profiles": [p.describe() for p in trained_on],
        "held_out_psnr": held.get("val/psnr"),
        "held_out_psnr_cubic": held.get("val/psnr_bicubic"),
        "held_out_note": note,
        "held_out_slices": dm.held_out,
        "self_check": check,
        "may_be_worse_than_cubic": check["oversharpened"],
        "warnings": warnings,
        "train_seconds": t_train,  # after reading: normalisation, estimate, training
        "estimate_seconds": t_est,
        "precision": precision,
        "orientations": int(tp.get("orientations", 2)),
        "crop_background": bool(tp.get("crop_background", False)),
        "apply_seconds": t_apply,
        "device": device_label(device),
        "receipt": str(scan.receipt),
    }
    if trainer.is_global_zero:
        atomic_write_text(run_dir / RECORD, json.dumps(record, indent=2) + "\n")
        receipt.warn(*warnings)
        receipt.add(checks=checks)
        write_scan_receipt(receipt, record, cfg, vol, result, fingerprint)
    if held:
        log.info(
            "%s: SR %.2f dB vs cubic spline %.2f dB",
            note[0].upper() + note[1:],
            held.get("val/psnr", float("nan")),
            held.get("val/psnr_bicubic", float("nan")),
        )
    log.info(
        "self-check: power above the thick Nyquist across slices / in-plane %.2f "
        "(cubic spline %.2f; "
        "about 1 expected, warning above %g)",
        check["highband_ratio"],
        check["highband_ratio_cubic"],
        HIGHBAND_LIMIT,
    )
    for w in warnings[len(input_warnings) :]:  # the input's were said before training
        log.warning(w)
    log.info(
        "%s -> %s %s in %.0f s (training %.0f s, applying %.0f s on %s)",
        inp.name,
        out.name,
        tuple(result.shape),
        t_train + t_apply,
        t_train,
        t_apply,
        device_label(device),
    )
    return {"score": held.get("val/psnr"), **record}
