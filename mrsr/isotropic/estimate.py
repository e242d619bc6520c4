"""Estimate a thick-slice scan's slice profile from the scan itself (no learning, numpy only).

The in-plane axes are sharp; the thick axis was acquired with an unknown profile. For each
candidate profile (family x width) the scan's in-plane lines are sampled as the thick axis
would have been acquired with it (:func:`mrsr.isotropic.operators.thick_sampling`), and the
mean windowed power spectrum of those simulated lines is compared with that of the real lines
along the thick axis, on the same frequency grid (cycles/mm up to the thick Nyquist
``1 / (2 spacing)``). The misfit is the RMS of the log ratio of the two spectra once its mean
(a free gain) is removed, over the band above the lowest frequencies; the candidate with the
smallest misfit is the estimate.

Two things make this work without a reference: the spectrum of what was sampled carries both
the profile's passband (how fast power falls towards Nyquist) and its aliasing (how much power
beyond Nyquist folds back: a boxcar's side lobes leave a floor near Nyquist that a Gaussian
does not), and the in-plane lines are the same anatomy at the same scale (self-similarity, as
the network itself assumes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mrsr.isotropic.geometry import Grid
from mrsr.isotropic.operators import along, sampling_matrix, thick_sampling
from mrsr.isotropic.profile import PROFILES, SliceProfile

# candidate widths, x the spacing
WIDTH_FACTORS = tuple(np.round(np.arange(0.5, 1.5001, 0.0625), 4))
MAX_SEGMENT = 32  # thick samples per spectrum segment
MAX_LINES = 6000  # lines per direction used for a spectrum (a random subset beyond)
BAND_LOW = 0.25  # the fit uses frequencies above this fraction of the thick Nyquist
LINE_FOREGROUND = 0.05  # normalised intensity that counts as foreground
LINE_FILL = 0.8  # share of a segment's samples that must be foreground
AMBIGUOUS = 1.15  # the other family fits within this factor of the best: the family is uncertain
MAX_PLAUSIBLE = 6  # profiles :meth:`ProfileFit.plausible` returns at most


@dataclass(frozen=True)
class ProfileFit:
    """The estimated profile and its misfit, the best candidate of the other family, and every
    candidate's ``(kind, width, misfit)``."""

    profile: SliceProfile
    residual: float
    other: SliceProfile | None
    other_residual: float
    lines: int
    candidates: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def ambiguous(self) -> bool:
        """True when the other family fits almost as well (the family is not decided)."""
        return self.other is not None and self.other_residual < AMBIGUOUS * self.residual

    @property
    def at_edge(self) -> bool:
        """True when the estimate is the narrowest or widest width searched in its family."""
        widths = [w for kind, w, _ in self.candidates if kind == self.profile.kind]
        return len(widths) > 1 and self.profile.width in (min(widths), max(widths))

    def families(self) -> list[SliceProfile]:
        """The estimate and the best fit of the other family (where one was fitted)."""
        return [self.profile] + ([self.other] if self.other is not None else [])

    def plausible(self, tolerance: float = AMBIGUOUS) -> list[SliceProfile]:
        """The profiles the scan cannot tell from the estimate: the estimate, the best of the
        other family, and the candidates whose misfit is within ``tolerance`` x the best
        (ordered by misfit; :data:`MAX_PLAUSIBLE` in all at most)."""
        near = [
            SliceProfile(kind, width)
            for kind, width, misfit in sorted(self.candidates, key=lambda t: t[2])
            if misfit <= tolerance * self.residual
        ]
        chosen = self.families()
        return (chosen + [p for p in near if p not in chosen])[:MAX_PLAUSIBLE]

    def record(self) -> dict:
        return {
            "estimate": self.profile.describe(),
            "kind": self.profile.kind,
            "width_mm": self.profile.width,
            "residual": self.residual,
            "other_family": None if self.other is None else self.other.describe(),
            "other_residual": self.other_residual,
            "ambiguous": self.ambiguous,
            "at_edge": self.at_edge,
            "lines": self.lines,
        }

    def describe(self) -> str:
        other = (
            ""
            if self.other is None
            else f"; best {self.other.kind}: {self.other.describe()}, {self.other_residual:.3f}"
        )
        return f"{self.profile.describe()} (spectral misfit {self.residual:.3f}{other})"


def _spectrum(lines: np.ndarray, length: int) -> np.ndarray:
    """Mean power spectrum of the central ``length`` samples of ``lines`` (samples on axis 0),
    mean removed, Hann window."""
    start = (lines.shape[0] - length) // 2
    seg = lines[start : start + length]
    seg = seg - seg.mean(0, keepdims=True)
    window = np.hanning(length + 2)[1:-1, None]
    return (np.abs(np.fft.rfft(seg * window, axis=0)) ** 2).mean(1)


def _foreground(lines: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the lines (columns) whose central ``length`` samples are mostly foreground, at
    most :data:`MAX_LINES` of them."""
    start = (lines.shape[0] - length) // 2
    cols = np.flatnonzero((lines[start : start + length] > LINE_FOREGROUND).mean(0) >= LINE_FILL)
    if cols.size > MAX_LINES:
        cols = np.sort(rng.choice(cols, MAX_LINES, replace=False))
    return cols


def candidate_profiles(
    spacing: float, thickness: float | None = None, kinds: tuple[str, ...] = PROFILES
) -> list[SliceProfile]:
    """The candidates: each family at widths ``spacing x`` :data:`WIDTH_FACTORS` (or only
    ``thickness`` when it is given)."""
    widths = [float(thickness)] if thickness else [float(spacing * f) for f in WIDTH_FACTORS]
    return [SliceProfile(kind, w) for kind in kinds for w in widths]


def estimate_profile(
    volume: np.ndarray,
    voxel: float,
    spacing: float,
    thickness: float | None = None,
    kinds: tuple[str, ...] = PROFILES,
    seed: int = 0,
) -> ProfileFit:
    """Estimate the slice profile of ``volume`` (normalised, thick axis first; in-plane voxels of
    ``voxel`` mm, slices every ``spacing`` mm) among :func:`candidate_profiles`."""
    rng = np.random.default_rng(seed)
    vol = np.asarray(volume, dtype=np.float64)
    n_thick, a, b = vol.shape
    n_sim = [int(np.floor(n * voxel / spacing + 1e-9)) for n in (a, b)]
    length = min(n_thick, *n_sim, MAX_SEGMENT)
    if length < 8:
        raise ValueError(
            f"too few samples ({length}) along the thick axis or in-plane "
            "to estimate a slice profile"
        )
    real_cols = _foreground(vol.reshape(n_thick, -1), length, rng)
    chosen = []  # in-plane lines (on axis 0) whose thick sampling is mostly foreground
    for k in (1, 2):
        lines = np.moveaxis(vol, k, 0).reshape(vol.shape[k], -1)
        m, _ = thick_sampling(lines.shape[0], voxel, spacing, SliceProfile("boxcar", spacing))
        chosen.append(lines[:, _foreground(m @ lines, length, rng)])
    if real_cols.size == 0 or any(c.shape[1] == 0 for c in chosen):
        raise ValueError("no foreground lines to estimate a slice profile from")
    band = np.fft.rfftfreq(length, spacing) > BAND_LOW / (2 * spacing)
    table: list[tuple[str, float, float]] = []
    for prof in candidate_profiles(spacing, thickness, kinds):
        sim, real = np.zeros(length // 2 + 1), np.zeros(length // 2 + 1)
        for k, lines in zip((1, 2), chosen, strict=True):
            m, _ = thick_sampling(lines.shape[0], voxel, spacing, prof)
            sim += _spectrum(m @ lines, length)
            # the in-plane lines lie in thick slices (blurred across them by the true profile): blur
            # the thick-axis lines across them by the candidate, so that the two differ only by
            # which axis is which
            blur = sampling_matrix(vol.shape[k], voxel, Grid(vol.shape[k], 0.0, 1.0), prof)
            real += _spectrum(along(vol, blur, k).reshape(n_thick, -1)[:, real_cols], length)
        if sim[band].sum() <= 1e-12 * max(real[band].sum(), 1e-12):
            raise ValueError(
                "the in-plane slices hold no structure to estimate a slice profile from"
            )
        ratio = np.log((sim[band] + 1e-20) / (real[band] + 1e-20))
        table.append((prof.kind, prof.width, float(np.sqrt(np.mean((ratio - ratio.mean()) ** 2)))))
    best = min(table, key=lambda t: t[2])
    others = [t for t in table if t[0] != best[0]]
    other = min(others, key=lambda t: t[2]) if others else None
    return ProfileFit(
        SliceProfile(best[0], best[1]),
        best[2],
        None if other is None else SliceProfile(other[0], other[1]),
        float("nan") if other is None else other[2],
        int(real_cols.size),
        table,
    )


def highband_ratio(
    fine: np.ndarray,
    thick: np.ndarray,
    voxel: float,
    spacing: float,
    profile: SliceProfile,
    select: np.ndarray | None = None,
    seed: int = 0,
) -> float:
    """Power across the thick axis of ``fine`` over the in-plane power of the scan ``thick``, in
    the band the thick slices could not hold (above the thick Nyquist ``1 / (2 spacing)``, up to
    twice it; cycles/mm).

    ``fine``: a result on the in-plane voxel grid (``voxel`` mm), thick axis first; ``thick``: the
    scan (thick axis first, same normalisation). An in-plane line of the scan lies in a thick
    slice, blurred across by the slice profile; so each line of ``fine`` along the thick axis is
    first blurred along in-plane axis ``k`` by ``profile`` and compared with the scan's lines
    along ``k``: the two then differ only by which axis is which. About 1 where through-plane
    detail looks like in-plane detail (0.8 to 1.6 on 1 mm references), far below 1 for an
    interpolation, clearly above 1 when detail was invented across the slices. Lines of ``fine``
    are counted where ``select`` (default ``fine``; pass the interpolation the result came from)
    is foreground."""
    rng = np.random.default_rng(seed)
    vol = np.asarray(fine, dtype=np.float64)
    ref = vol if select is None else np.asarray(select, dtype=np.float64)
    scan = np.asarray(thick, dtype=np.float64)
    if ref.shape != vol.shape or scan.shape[1:] != vol.shape[1:]:
        raise ValueError(
            f"shapes differ: result {vol.shape}, select {ref.shape}, scan {scan.shape}"
        )
    length = min(vol.shape[0], *scan.shape[1:], 4 * MAX_SEGMENT)
    freq = np.fft.rfftfreq(length, voxel)
    band = (freq > 1 / (2 * spacing)) & (freq <= 1 / spacing)
    if not band.any():
        return float("nan")
    across = inplane = 0.0
    for k in (1, 2):
        blur = sampling_matrix(vol.shape[k], voxel, Grid(vol.shape[k], 0.0, 1.0), profile)
        lines = along(vol, blur, k).reshape(vol.shape[0], -1)
        src = lines if select is None else along(ref, blur, k).reshape(vol.shape[0], -1)
        cols = _foreground(src, length, rng)
        scan_lines = np.moveaxis(scan, k, 0).reshape(scan.shape[k], -1)
        scan_cols = _foreground(scan_lines, length, rng)
        if cols.size and scan_cols.size:
            across += _spectrum(lines[:, cols], length)[band].sum()
            inplane += _spectrum(scan_lines[:, scan_cols], length)[band].sum()
    return float(across / inplane) if inplane > 0 else float("nan")
