"""Fingerprints of short seeded runs: does a restructuring keep behaviour bit for bit?

    python experiments/same_runs.py --out <folder>  # runs, writes <folder>/fingerprints.json
    python experiments/same_runs.py --compare before.json after.json \
        [--record records/<date>-<slug> --commits BEFORE,AFTER]  # the comparison as a record

Each run is a short seeded ``python -m mrsr.run`` on CPU (one thread): the pipeline with the
paper's loss (vit, disent, the L1 phase and the GAN + feature phase), a comparison network,
``stage=predict`` on the demo volume, ``stage=throughplane``, and a short ``stage=sr`` run of every
loss preset in ``conf/loss`` (with the pipeline run's extractors). A fingerprint is the SHA-256
of every tensor of a checkpoint's ``state_dict`` (names sorted), or of a written NIfTI's voxel
data, affine and header codes. Labels, logs and hyper-parameters are not behaviour and are left out.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

import mrsr
from mrsr.report.records import write_record
from mrsr.stage_process import run_stage

TINY = [
    "data.crop=[96,96,12]",
    "data.eval_batch_size=4",
    "model=srresnet_small",
    "model.n_blocks=1",
    "sr.val_check_interval=10",
    "sr.batch_size=4",
    "sr.train_crop=32",
    "callbacks.progress_bar=null",
    "logger=null",
    "trainer=cpu",
]
EXTRACTORS = [
    "vit.max_steps=10",
    "vit.val_check_interval=5",
    "vit.batch_size=4",
    "vit.train_crop=32",
    "disent.max_steps=10",
    "disent.val_check_interval=5",
    "disent.batch_size=4",
]
RUNS: dict[str, list[str]] = {
    "pipeline_paper": ["stage=pipeline", "loss=paper", *TINY, *EXTRACTORS, "sr.max_steps=20"],
    "sr_edsr_x4": ["stage=sr", *TINY, "model=edsr_small", "scale=4", "sr.max_steps=20"],
}


def tensor_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        if isinstance(value, torch.Tensor):
            h.update(name.encode())
            h.update(
                value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                if value.numel()
                else b""
            )
    return h.hexdigest()


def nifti_digest(path: Path) -> str:
    img = nib.load(path)
    h = hashlib.sha256(np.asarray(img.dataobj).tobytes())
    h.update(img.affine.tobytes())
    h.update(
        repr(
            (
                img.header.get_qform(coded=True)[1],
                img.header.get_sform(coded=True)[1],
                img.header.get_zooms(),
                img.get_data_dtype().str,
            )
        ).encode()
    )
    return h.hexdigest()


def run(out: Path, name: str, overrides: list[str]) -> None:
    run_stage(
        [*overrides, "seed=7"],
        out / name,
        skip_if=out / name,  # done already (an interrupted call resumes)
        env={"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
    )


def fingerprints(out: Path) -> dict[str, str]:
    prints: dict[str, str] = {}
    for ckpt in sorted(out.rglob("*.ckpt")):
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        prints[ckpt.relative_to(out).as_posix()] = tensor_digest(state)
    for nii in sorted(p for p in out.rglob("*.nii.gz") if p.name != "thick.nii.gz"):
        prints[nii.relative_to(out).as_posix()] = nifti_digest(nii)
    return prints


def loss_presets() -> list[str]:
    """Every loss preset the package ships (``conf/loss/*.yaml``)."""
    presets = importlib.resources.files("mrsr.conf").joinpath("loss").iterdir()
    return sorted(p.name.removesuffix(".yaml") for p in presets if p.name.endswith(".yaml"))


def record_comparison(
    folder: Path, before: dict[str, str], after: dict[str, str], commits: tuple[str, str]
) -> None:
    """The comparison as a record: one row per run (its fingerprints, how many differ), and
    both fingerprint files beside it; ``commits``: where each set was made (``--out``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, prints in (("before.json", before), ("after.json", after)):
        (folder / name).write_text(json.dumps(prints, indent=1) + "\n")
    runs: dict[str, list[int]] = {}
    for key in sorted(before.keys() | after.keys()):
        counts = runs.setdefault(key.split("/")[0], [0, 0])
        counts[0] += 1
        counts[1] += before.get(key) != after.get(key)
    differ = sum(d for _, d in runs.values())
    write_record(
        folder,
        title="Bit for bit: fingerprints of seeded runs before and after a restructuring",
        protocol=__doc__.split("\n\n", 2)[2].strip().replace("\n", " ")
        + f" Fingerprints made with --out at commit {commits[0]} (before) and {commits[1]}"
        " (after), compared from this record's copies.",
        metrics={"fingerprints": len(before.keys() | after.keys()), "differ": differ},
        config={"before_commit": commits[0], "after_commit": commits[1], "runs": sorted(runs)},
        files=["before.json", "after.json"],
        # the comparison as rerun from the record's own copies of the fingerprints
        argv=[
            "experiments/same_runs.py",
            "--compare",
            f"{folder}/before.json",
            f"{folder}/after.json",
            "--record",
            str(folder),
            f"--commits={commits[0]},{commits[1]}",
        ],
        table={
            "caption": "Fingerprints per run (checkpoints and written NIfTIs), and how many differ",
            "columns": ["run", "fingerprints", "differ"],
            "rows": [[run, n, d] for run, (n, d) in runs.items()],
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--compare", nargs=2)
    ap.add_argument("--record", help="with --compare: write the comparison as a record here")
    ap.add_argument("--commits", help="with --record: BEFORE,AFTER, where each set was made")
    args = ap.parse_args()
    if args.compare:
        a, b = (json.loads(Path(p).read_text()) for p in args.compare)
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        print(
            f"{len(a.keys() & b.keys())} common fingerprints, {len(differ)} differ"
            + "".join(f"\n  {k}" for k in differ)
        )
        if args.record:
            before_commit, after_commit = (args.commits or "?,?").split(",")
            record_comparison(Path(args.record), a, b, (before_commit, after_commit))
        raise SystemExit(1 if differ else 0)
    out = Path(args.out).resolve()
    for name, overrides in RUNS.items():
        run(out, name, overrides)
    done = {
        stage: json.loads((out / "pipeline_paper" / stage / "FINISHED.json").read_text())["best"]
        for stage in ("vit", "disent", "sr")
    }
    for preset in loss_presets():
        run(
            out,
            f"sr_loss_{preset}",
            [
                "stage=sr",
                f"loss={preset}",
                *TINY,
                "sr.max_steps=6",
                f"sr.vit_ckpt={done['vit']}",
                f"sr.disent_ckpt={done['disent']}",
            ],
        )
    sr_best = done["sr"]
    volume = Path(mrsr.__file__).parent / "assets" / "demo" / "seg3d_T1.nii.gz"
    run(
        out,
        "predict",
        [
            "stage=predict",
            f"ckpt={sr_best}",
            f"input={volume}",
            f"output={out / 'predict' / 'sr.nii.gz'}",
        ],
    )
    thick = out / "thick.nii.gz"  # every third axial slice of the demo volume: 3x thicker
    img = nib.load(volume.with_name("stroke_T1.nii.gz"))  # square in-plane voxels
    affine = img.affine.copy()
    affine[:3, 2] *= 3
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., ::3], affine, img.header), thick)
    run(
        out,
        "throughplane",
        [
            "stage=throughplane",
            f"input={thick}",
            "trainer.max_steps=20",
            "throughplane.slice_profile=gaussian",
            "callbacks.progress_bar=null",
            "logger=null",
            f"output={out / 'throughplane' / 'iso.nii.gz'}",
        ],
    )
    prints = fingerprints(out)
    (out / "fingerprints.json").write_text(json.dumps(prints, indent=1) + "\n")
    print(f"{len(prints)} fingerprints -> {out / 'fingerprints.json'}")


if __name__ == "__main__":
    main()
