"""The slice-profile estimate on 1 mm volumes made into thick slices by averaging or by a Gaussian.

    python experiments/profile_estimate_check.py [VOLUME[:axis] ...] [--spacing 4] [--out FILE.json]

Each volume (default: the embedded demo volumes) is made into ``--spacing`` mm slices along
``axis`` with :func:`mrsr.isotropic.simulate.plain_thick` (the mean of each group of slices, or
a sampled Gaussian of FWHM = spacing: not the stage's own operator), normalised as the stage
does, and :func:`mrsr.isotropic.estimate.estimate_profile` is run with the width free and with
the thickness given. No network is trained.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mrsr.data.readers import read_nifti
from mrsr.isotropic.estimate import estimate_profile
from mrsr.isotropic.restore import normalised_scan
from mrsr.isotropic.simulate import plain_thick
from mrsr.protocols.throughplane import DEFAULT_VOLUMES


def check(spec: str, spacing: float) -> list[dict]:
    path, _, axis_s = spec.partition(":")
    axis = int(axis_s or 2)
    vol = read_nifti(path)
    voxel = float(vol.zooms[axis])
    inplane = float(next(z for i, z in enumerate(vol.zooms[:3]) if i != axis))
    r = int(round(spacing / voxel))
    ref = np.moveaxis(vol.data, axis, 0)
    ref = ref[: ref.shape[0] - ref.shape[0] % r]
    rows = []
    for kind in ("gaussian", "boxcar"):
        norm = normalised_scan(plain_thick(ref, r, kind), 0)[0]
        free = estimate_profile(norm, inplane, spacing)
        given = estimate_profile(norm, inplane, spacing, thickness=spacing)
        rows.append(
            {
                "volume": Path(path).name,
                "axis": axis,
                "slices_made_by": f"{kind} of {spacing:g} mm",
                "estimate": free.record(),
                "thickness_given": given.record(),
            }
        )
        print(
            f"{Path(path).name:<22} {kind:<8} -> {free.describe()}; "
            f"thickness given: {given.describe()}",
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("volumes", nargs="*", default=DEFAULT_VOLUMES)
    ap.add_argument("--spacing", type=float, default=4.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = [row for spec in args.volumes for row in check(spec, args.spacing)]
    if args.out:
        Path(args.out).write_text(
            json.dumps({"spacing_mm": args.spacing, "rows": rows}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
