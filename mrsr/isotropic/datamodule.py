"""Training pairs made from one scan's own in-plane slices (self-supervised through-plane SR).

An in-plane slice is high-resolution along both of its axes. Degrading it along one of them
with the scan's slice profile and spacing, then interpolating back with a cubic spline, gives
an input that looks like a slice cut across the thick axis after the same interpolation; the
slice itself is the target (SMORE, Zhao et al. 2020). Both in-plane axes are degraded, each
put on the image's first (height) axis, which is where the thick axis goes at inference.

Pairs may be made with several slice profiles (each slice with each): a network trained on
them restores a scan acquired with any of them, which is what a scan whose profile's family
cannot be told from its spectrum needs (records/2026-12-06-throughplane-families).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mrsr.data.datasets import collate_samples
from mrsr.data.store import FOREGROUND
from mrsr.data.types import Sample, SliceMeta
from mrsr.errors import ConfigError
from mrsr.isotropic.operators import along, thick_axis_operator
from mrsr.isotropic.profile import SliceProfile

PATCH_TRIES = 8  # random positions tried per patch before one with little foreground is kept
PATCH_FOREGROUND = 0.25  # share of foreground pixels that makes a patch worth keeping
HELD_FOREGROUND = (
    0.01  # share of foreground a held-out slice needs (an empty one scores an infinite PSNR)
)


def degrade_rows(
    slices: np.ndarray, voxel: float, spacing: float, profile: SliceProfile
) -> tuple[np.ndarray, np.ndarray]:
    """(n, h, w) slices of ``voxel`` mm pixels, degraded along h like the thick axis (thick
    slices every ``spacing`` mm, interpolated back by cubic spline at the inference phase).
    Returns the inputs and the targets, both cropped along h to the voxels the thick slices span."""
    h = slices.shape[1]
    if h * voxel / spacing < 4:
        raise ConfigError(
            f"the in-plane field of view ({h} voxels of {voxel:g} mm) holds fewer than 4 slices of "
            f"{spacing:g} mm: too small to learn from"
        )
    span, operator = thick_axis_operator(h, voxel, spacing, profile)
    targets = slices[:, span]
    return along(targets, operator, axis=1), targets


@dataclass
class PairSet:
    """Inputs and targets (n, h, w), the degraded axis first; ``source`` is the in-plane slice."""

    inputs: list[torch.Tensor]
    targets: list[torch.Tensor]
    source: list[int]


def make_pairs(
    volume: np.ndarray,
    slices: list[int],
    voxel: float,
    spacing: float,
    profiles: Sequence[SliceProfile],
) -> PairSet:
    """Pairs from the in-plane slices ``volume[k]`` (thick axis first), degraded along each
    in-plane axis in turn, with each of ``profiles``."""
    stack = volume[slices]
    out = PairSet([], [], [])
    targets: dict[int, list[torch.Tensor]] = {}  # one copy per axis: the same for every profile
    for profile in profiles:
        for axis, oriented in enumerate((stack, np.swapaxes(stack, 1, 2))):
            degraded, target = degrade_rows(oriented, voxel, spacing, profile)
            out.inputs += [torch.from_numpy(np.ascontiguousarray(s)) for s in degraded]
            if axis not in targets:
                targets[axis] = [
                    torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32)) for s in target
                ]
            out.targets += targets[axis]
            out.source += list(slices)
    return out


class RandomPatches(Dataset):
    """``length`` random patches of ``pairs``; item ``i`` depends only on ``(seed, i)`` (so a
    run is reproducible), flipped left-right at random (the degraded axis is never flipped:
    a measured slice profile need not be symmetric)."""

    def __init__(self, pairs: PairSet, patch: int, length: int, seed: int) -> None:
        self.pairs, self.length, self.seed = pairs, int(length), int(seed)
        smallest = min(min(t.shape) for t in pairs.targets)
        self.patch = min(int(patch), smallest)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Sample:
        rng = np.random.default_rng([self.seed, i])
        k = int(rng.integers(len(self.pairs.targets)))
        x, y = self.pairs.inputs[k], self.pairs.targets[k]
        p = self.patch
        for _ in range(PATCH_TRIES):
            top, left = int(rng.integers(y.shape[0] - p + 1)), int(rng.integers(y.shape[1] - p + 1))
            patch = y[top : top + p, left : left + p]
            if float((patch > FOREGROUND).float().mean()) > PATCH_FOREGROUND:
                break
        xs, ys = x[None, top : top + p, left : left + p], y[None, top : top + p, left : left + p]
        if rng.random() < 0.5:
            xs, ys = xs.flip(-1), ys.flip(-1)
        return Sample(xs, ys, SliceMeta("scan", 0, self.pairs.source[k], "", 0))  # collate copies


class WholeSlices(Dataset):
    """Whole held-out pairs, one per item (volume index: which in-plane axis was degraded)."""

    def __init__(self, pairs: PairSet) -> None:
        self.pairs = pairs
        self.half = len(pairs.targets) // 2

    def __len__(self) -> int:
        return len(self.pairs.targets)

    def __getitem__(self, i: int) -> Sample:
        meta = SliceMeta("scan", int(i >= self.half), self.pairs.source[i], "", 0)
        return Sample(self.pairs.inputs[i][None], self.pairs.targets[i][None], meta)


class SelfPairsDataModule(L.LightningDataModule):
    """Training patches from the scan's in-plane slices; every ``round(1 / holdout)``-th slice
    that holds anatomy (at least :data:`HELD_FOREGROUND` foreground) is held out and scored
    whole (SR vs the cubic-spline input) at validation.

    ``volume``: normalised (with ``percentile``), thick axis first. ``profile``: the slice
    profile, or several (training pairs are made with each, drawn equally often; the held-out
    slices are degraded with the first). The run is one epoch of ``steps`` batches.
    """

    dataset_name = "scan"

    def __init__(
        self,
        volume: np.ndarray,
        voxel: float,
        spacing: float,
        profile: SliceProfile | Sequence[SliceProfile],
        steps: int,
        batch_size: int = 16,
        patch_size: int = 48,
        holdout: float = 0.1,
        seed: int = 0,
        percentile: float = 99.5,
    ) -> None:
        super().__init__()
        profiles = [profile] if isinstance(profile, SliceProfile) else list(profile)
        if not profiles:
            raise ConfigError("no slice profile to make training pairs with")
        # what a checkpoint records about the data (read by the SR module's builder)
        self.degradation = f"slice profile{'s' if len(profiles) > 1 else ''} " + ", ".join(
            p.describe() for p in profiles
        )
        self.percentile = float(percentile)
        if not 0 < holdout <= 0.5:
            raise ConfigError(f"throughplane.holdout={holdout} must be in (0, 0.5]")
        n = volume.shape[0]
        every = max(2, int(round(1 / holdout)))
        share = (volume > FOREGROUND).mean(axis=(1, 2))
        held = [k for k in range(every // 2, n, every) if share[k] >= HELD_FOREGROUND]
        if not held:  # too few slices, or the regular ones are empty: the fullest slice
            held = [int(np.argmax(share))]
        fitted = [k for k in range(n) if k not in held]
        if not fitted:
            raise ConfigError(f"the scan has {n} slice(s): too few to learn from")
        self.held_out = held
        self.train_pairs = make_pairs(volume, fitted, voxel, spacing, profiles)
        self.val_pairs = make_pairs(volume, held, voxel, spacing, profiles[:1])
        self.steps, self.batch_size, self.patch_size, self.seed = (
            int(steps),
            int(batch_size),
            int(patch_size),
            seed,
        )

    def train_dataloader(self) -> DataLoader:
        data = RandomPatches(
            self.train_pairs, self.patch_size, self.steps * self.batch_size, self.seed
        )
        return DataLoader(
            data, batch_size=self.batch_size, shuffle=False, collate_fn=collate_samples
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            WholeSlices(self.val_pairs), batch_size=1, shuffle=False, collate_fn=collate_samples
        )
