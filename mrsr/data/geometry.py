"""Which voxel axis a scan was acquired along, from its voxel sizes alone.

One rule for every place that slices a user's volume for inference (``stage=predict``,
``stage=throughplane``, ``experiments/eval_unseen.py``): the slice axis is the axis whose voxel
size is clearly the largest (at least :data:`THICK_RATIO` times both others); a volume with no
such axis is (nearly) isotropic and sliced along :data:`DEFAULT_AXIS`, or along the one axis whose
slices have square voxels if those of :data:`DEFAULT_AXIS` do not. The two in-plane voxel
sizes must be equal within :data:`SQUARE_TOLERANCE`: the networks see pixels as squares.
Anything else is ambiguous and refused in one line that names the setting to pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from mrsr.errors import ConfigError

THICK_RATIO = 1.5  # an axis this many times thicker than both others is the slice axis
SQUARE_TOLERANCE = 0.05  # relative difference allowed between the two in-plane voxel sizes
DEFAULT_AXIS = 2  # slice axis of an isotropic volume (axial for RAS/LAS-stored brains)


def mm(zooms: tuple[float, ...]) -> str:
    """``1 x 1 x 4`` for voxel sizes in mm."""
    return " x ".join(f"{z:g}" for z in zooms)


def is_square(a: float, b: float) -> bool:
    return abs(a - b) <= SQUARE_TOLERANCE * min(a, b)


@dataclass(frozen=True)
class SlicingAxis:
    """The chosen slice axis of a 3D volume and why (for the log)."""

    axis: int
    reason: str
    square: bool  # whether the in-plane voxels are square

    @property
    def inplane(self) -> tuple[int, int]:
        a, b = (ax for ax in range(3) if ax != self.axis)
        return a, b


def thick_axis(zooms: tuple[float, ...]) -> int | None:
    """The axis at least :data:`THICK_RATIO` times thicker than both others, if there is one."""
    z = [float(v) for v in zooms[:3]]
    order = sorted(range(3), key=lambda a: z[a])
    return order[2] if z[order[2]] >= THICK_RATIO * z[order[1]] else None


def two_thick_axes(zooms: tuple[float, ...]) -> bool:
    """Two axes at least :data:`THICK_RATIO` times thicker than the third (e.g. 1 x 4 x 4 mm)."""
    z = sorted(float(v) for v in zooms[:3])
    return z[1] >= THICK_RATIO * z[0]


def slicing_axis(
    zooms: tuple[float, ...], requested: int | str = "auto", key: str = "predict.axis"
) -> SlicingAxis:
    """The axis to take 2D slices along (``requested``: ``auto`` or 0, 1, 2).

    ``auto``: the clearly thickest axis; else, for a (nearly) isotropic volume,
    :data:`DEFAULT_AXIS` if its slices have square voxels, else the first axis whose slices do.
    Refused (one line naming ``key``): two thick axes, and in-plane voxels that are not square.
    An explicit axis is always taken; ``square`` says whether its in-plane voxels are square,
    so the caller can warn.
    """
    z = tuple(float(v) for v in zooms[:3])
    if str(requested) != "auto":
        try:
            axis = int(requested)
        except ValueError:
            axis = -1
        if axis not in (0, 1, 2):
            raise ConfigError(f"{key}={requested} must be auto, 0, 1 or 2 for a 3D volume")
        a, b = (z[i] for i in range(3) if i != axis)
        return SlicingAxis(axis, f"{key}={axis} as given", is_square(a, b))
    thick = thick_axis(z)
    if thick is not None:
        a, b = (z[i] for i in range(3) if i != thick)
        if not is_square(a, b):
            raise ConfigError(
                f"voxels are {mm(z)} mm: axis {thick} is the thick one but the in-plane voxels "
                f"({a:g} x {b:g} mm) are not square; resample them to square voxels first, "
                f"or pass {key}=0|1|2 to slice anyway"
            )
        return SlicingAxis(
            thick,
            f"auto: axis {thick} is the thick one ({z[thick]:g} mm, "
            f"{z[thick] / max(a, b):.1f}x the in-plane {max(a, b):g} mm)",
            True,
        )
    if two_thick_axes(z):
        thin = min(range(3), key=lambda i: z[i])
        raise ConfigError(
            f"voxels are {mm(z)} mm: two axes are thick, so the acquisition plane is ambiguous; "
            f"pass {key}={thin} to refine the two thick axes (slices along the thin axis {thin}), "
            "or the axis you want kept"
        )
    squares = [ax for ax in range(3) if is_square(*(z[i] for i in range(3) if i != ax))]
    if DEFAULT_AXIS in squares:
        return SlicingAxis(
            DEFAULT_AXIS,
            f"auto: voxels are (nearly) isotropic ({mm(z)} mm), default axis {DEFAULT_AXIS}",
            True,
        )
    if squares:
        return SlicingAxis(
            squares[0],
            f"auto: no axis is clearly thick ({mm(z)} mm); axis {squares[0]} is the one "
            f"whose slices have square voxels",
            True,
        )
    raise ConfigError(
        f"voxels are {mm(z)} mm: no axis is clearly thick "
        "and no slice orientation has square voxels; "
        f"resample to square in-plane voxels first, or pass {key}=0|1|2 to slice anyway"
    )
