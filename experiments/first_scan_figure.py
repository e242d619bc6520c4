"""Before/after figure of one real slice through the first-scan path: the bundled x2 model on a
volume it never saw in training.

The HR reference is a whole volume (default: ``mrsr/assets/demo/seg3d_T1.nii.gz``, the demo
data's held-out test subject; the bundled models are trained on the stroke subject only). The LR
scan is what a scanner acquiring half the in-plane matrix returns: every axial slice's central
``1/scale`` of k-space, magnitude (``mrsr.data.acquisition.KSpace``, in the file's own units),
written as a NIfTI on the coarser grid (voxels ``scale`` times larger in-plane, centres aligned).
That file goes through the command a user runs on a first scan::

    python -m mrsr.run stage=predict input=lr.nii.gz output=sr.nii.gz predict.axis=2

(``predict.axis=2`` because the LR voxels, 2 x 1.8 x 0.9 mm, have two coarse axes; on a scan
with one thick axis the default finds the slicing axis itself.)
The figure shows one axial slice as: the LR scan (each pixel repeated, as a viewer shows it), its
zero-filling interpolation (the sinc up-sampling a scanner console does), the SR output and the
HR reference, each with a zoomed inset (the yellow box). PSNR is against the HR in the volume's
own units: peak = the HR volume's maximum, MSE over the whole volume and over the shown slice.

    python experiments/first_scan_figure.py --out records/2026-12-06-first-scan
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mrsr.data.acquisition import KSpace
from mrsr.inference import downsampled_affine, write_nifti_atomic
from mrsr.ops import upsample
from mrsr.report.records import write_record
from mrsr.report.results import device_label

ROOT = Path(__file__).resolve().parents[1]
VOLUME = "mrsr/assets/demo/seg3d_T1.nii.gz"
FIGURE = "first_scan_x2.png"


def per_slice(fn, vol: np.ndarray) -> np.ndarray:
    """``fn`` applied to every axial slice (axis 2) as one (N, 1, H, W) float64 batch."""
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol, 2, 0)))[:, None].double()
    return np.moveaxis(fn(x)[:, 0].numpy(), 0, 2)


def psnr(pred: np.ndarray, hr: np.ndarray, peak: float) -> float:
    mse = float(np.mean((pred.astype(np.float64) - hr) ** 2))
    return 10 * np.log10(peak**2 / mse)


def run_predict(
    lr_path: Path, sr_path: Path, scale: int, workdir: Path, *extra: str
) -> tuple[float, str]:
    """The user's command on the LR file; seconds and the log line naming the model."""
    cmd = [
        sys.executable,
        "-m",
        "mrsr.run",
        "stage=predict",
        f"input={lr_path}",
        f"output={sr_path}",
        f"scale={scale}",
        "predict.axis=2",
        f"hydra.run.dir={workdir / 'run'}",
        *extra,
    ]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"stage=predict failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    lines = (done.stdout + done.stderr).splitlines()
    model = next((line for line in lines if "model trained on" in line), "")
    return seconds, model.split("] - ")[-1].strip()


def display(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """An axial slice (x = R->L voxel axis 0, y = P->A axis 1) as uint8, anterior up."""
    x = np.clip((img - lo) / (hi - lo), 0, 1)
    return (np.flipud(x.T) * 255).round().astype(np.uint8)


def figure(
    panels: list[np.ndarray],
    titles: list[str],
    box: tuple[int, int, int],
    zoom: int,
) -> bytes:
    """One column per panel: the slice, a box marking the inset, the inset enlarged below."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    h, w = panels[0].shape
    y0, x0, size = box  # in display coordinates
    pad, header = 4, 34
    inset = size * zoom
    width = len(panels) * (w + pad) + pad
    height = header + h + pad + inset + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, (img, title) in enumerate(zip(panels, titles, strict=True)):
        left = pad + c * (w + pad)
        for line, text in enumerate(title.split("\n")):
            tw = draw.textlength(text, font=font)
            draw.text((left + max(0, (w - tw) / 2), 2 + 15 * line), text, fill=(0, 0, 0), font=font)
        canvas.paste(Image.fromarray(img).convert("RGB"), (left, header))
        draw.rectangle(
            (left + x0 - 1, header + y0 - 1, left + x0 + size, header + y0 + size),
            outline=(255, 210, 0),
        )
        crop = Image.fromarray(img[y0 : y0 + size, x0 : x0 + size])
        crop = crop.resize((inset, inset), Image.NEAREST).convert("RGB")
        canvas.paste(crop, (left + (w - inset) // 2, header + h + pad))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volume", default=VOLUME)
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--slice", type=int, default=None, help="axial slice (default: 45 %% up)")
    ap.add_argument(
        "--box",
        type=int,
        nargs=3,
        default=[100, 112, 40],
        metavar=("ROW", "COL", "SIZE"),
        help="inset: top row, left column and size in display pixels (anterior up)",
    )
    ap.add_argument("--zoom", type=int, default=4)
    ap.add_argument("--out", type=Path, required=True, help="record folder")
    args = ap.parse_args()

    import nibabel as nib

    scale = args.scale
    img = nib.load(str(ROOT / args.volume if not Path(args.volume).is_file() else args.volume))
    hr = np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float64)
    if hr.ndim != 3 or hr.shape[0] % scale or hr.shape[1] % scale:
        raise SystemExit(
            f"{args.volume}: need a 3D volume with in-plane sizes divisible by {scale}"
        )
    peak = float(hr.max())
    lr = per_slice(lambda x: KSpace()(x, scale), hr)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lr_path, sr_path = work / "lr.nii.gz", work / "sr.nii.gz"
        affine = downsampled_affine(img.affine, scale, (0, 1))
        write_nifti_atomic(lr_path, lr.astype(np.float32), affine)
        seconds, model_line = run_predict(lr_path, sr_path, scale, work)
        sr_img = nib.load(str(sr_path))
        sr = np.asarray(sr_img.get_fdata(dtype=np.float32), dtype=np.float64)
        out_affine = sr_img.affine
        dc_path = work / "sr_dc.nii.gz"
        run_predict(lr_path, dc_path, scale, work, "predict.consistency=kspace")
        sr_dc = np.asarray(nib.load(str(dc_path)).get_fdata(dtype=np.float32), dtype=np.float64)
    if sr.shape != hr.shape:
        raise SystemExit(f"SR shape {sr.shape} != HR shape {hr.shape}")
    if not np.allclose(out_affine, img.affine, atol=1e-4):
        raise SystemExit("the SR output does not overlay the HR reference (affines differ)")

    nearest = np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)
    zerofill = per_slice(lambda x: upsample(x, scale, "zerofill"), lr)
    bicubic = per_slice(lambda x: upsample(x, scale, "bicubic"), lr)
    k = args.slice if args.slice is not None else int(round(0.45 * hr.shape[2]))
    volumes = {
        "lr_nearest": nearest,
        "zerofill": zerofill,
        "bicubic": bicubic,
        "sr": sr,
        "sr_consistency_kspace": sr_dc,
    }
    psnr_volume = {name: psnr(v, hr, peak) for name, v in volumes.items()}
    psnr_slice = {name: psnr(v[:, :, k], hr[:, :, k], peak) for name, v in volumes.items()}

    lo, hi = 0.0, float(np.percentile(hr[:, :, k], 99.5))
    shown = [nearest, zerofill, sr, hr]
    titles = [
        f"LR scan, {lr.shape[0]}x{lr.shape[1]}",
        "zero-filling",
        f"SR (bundled x{scale})",
        f"HR reference, {hr.shape[0]}x{hr.shape[1]}",
    ]
    for i, key in enumerate(["lr_nearest", "zerofill", "sr"]):
        titles[i] += f"\nPSNR {psnr_slice[key]:.2f} dB (slice)"
    png = figure([display(v[:, :, k], lo, hi) for v in shown], titles, tuple(args.box), args.zoom)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / FIGURE).write_bytes(png)

    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    rows = [
        ["LR scan, each pixel repeated", psnr_volume["lr_nearest"], psnr_slice["lr_nearest"]],
        ["zero-filling (sinc)", psnr_volume["zerofill"], psnr_slice["zerofill"]],
        ["bicubic (not shown)", psnr_volume["bicubic"], psnr_slice["bicubic"]],
        ["SR, bundled x2 model", psnr_volume["sr"], psnr_slice["sr"]],
        [
            "SR with predict.consistency=kspace (not shown)",
            psnr_volume["sr_consistency_kspace"],
            psnr_slice["sr_consistency_kspace"],
        ],
    ]
    table = {
        "caption": f"PSNR against the HR reference (dB; peak {peak:g}, the volume's own units)",
        "columns": ["panel", "whole volume", f"axial slice {k}"],
        "rows": [[name, f"{a:.2f}", f"{b:.2f}"] for name, a, b in rows],
    }
    protocol = (
        f"Volume `{args.volume}` ({hr.shape[0]}x{hr.shape[1]}x{hr.shape[2]}, voxels "
        f"{' x '.join(f'{z:g}' for z in zooms)} mm), the demo data's held-out test subject: "
        "the bundled models are trained on the stroke subject only. LR: every axial slice "
        f"(axis 2) through `mrsr.data.acquisition.KSpace` at scale {scale} (the central "
        f"1/{scale} of k-space in both in-plane axes, magnitude, in the file's own units), "
        f"written as a NIfTI of {lr.shape[0]}x{lr.shape[1]}x{lr.shape[2]} voxels on the "
        "coarser grid (centres aligned), then `python -m mrsr.run stage=predict input=lr.nii.gz "
        f"output=sr.nii.gz scale={scale} predict.axis=2` (the bundled x{scale} model, all "
        f"defaults; {seconds:.0f} s on this machine's CPU, start-up included). Zero-filling: the "
        "sinc up-sampling of each LR slice (`mrsr.ops.upsample(..., 'zerofill')`); bicubic "
        "likewise; SR with `predict.consistency=kspace` is the same command with that option. "
        f"PSNR = 10 log10(peak^2 / MSE), peak = the HR volume's maximum ({peak:g}), MSE over the "
        f"whole volume and over axial slice {k}; nothing clipped at the top. Figure "
        f"`{FIGURE}`: axial slice {k}, anterior up, display window [0, {hi:g}] (the slice's "
        f"99.5th percentile) for every panel; the inset is the yellow box enlarged {args.zoom} "
        "times (nearest)."
    )
    gain = psnr_volume["sr"] - psnr_volume["zerofill"]
    gain_dc = psnr_volume["sr_consistency_kspace"] - psnr_volume["zerofill"]
    reading = (
        f"SR minus zero-filling over the whole volume: {gain:+.2f} dB "
        f"({gain_dc:+.2f} dB with `predict.consistency=kspace`). A single volume and a single "
        "operator: the bundled models' evaluation matrix (docs: results/quickstart.md) has the "
        "other volumes and LR operators."
    )
    readme = "\n".join(
        [
            "# First scan: the bundled x2 model on a real slice it never saw",
            "",
            f"![LR scan, zero-filling, SR, HR]({FIGURE})",
            "",
            "## Protocol",
            "",
            protocol,
            "",
            "## PSNR",
            "",
            table["caption"] + ":",
            "",
            "| " + " | ".join(table["columns"]) + " |",
            "|---|---|---|",
            *["| " + " | ".join(r) + " |" for r in table["rows"]],
            "",
            reading,
            "",
            "Made by:",
            "",
            "```bash",
            f"python experiments/first_scan_figure.py --out {args.out.as_posix()}",
            "```",
            "",
        ]
    )
    (args.out / "README.md").write_text(readme)
    write_record(
        args.out,
        title="First scan: the bundled x2 model on a real slice it never saw",
        protocol=protocol,
        metrics={
            "psnr_volume_db": psnr_volume,
            "psnr_slice_db": psnr_slice,
            "slice": k,
            "peak": peak,
            "sr_minus_zerofill_db": gain,
            "sr_consistency_kspace_minus_zerofill_db": gain_dc,
            "predict_seconds": seconds,
            "model_log": model_line,
            "shape_hr": list(hr.shape),
            "shape_lr": list(lr.shape),
        },
        config={
            "volume": args.volume,
            "scale": scale,
            "operator": "kspace",
            "axis": 2,
            "slice": k,
            "box": list(args.box),
            "zoom": args.zoom,
        },
        device=device_label(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        files=[FIGURE, "README.md"],
        table=table,
    )
    print(json.dumps({"psnr_volume_db": psnr_volume, "psnr_slice_db": psnr_slice}, indent=1))
    print(f"{args.out / FIGURE}: {len(png) / 1000:.0f} kB, predict {seconds:.0f} s")


if __name__ == "__main__":
    main()
