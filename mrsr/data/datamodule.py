"""LightningDataModules for IXI, fastMRI and the embedded demo volumes (one shared base)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
from torch.utils.data import DataLoader

from mrsr.data.acquisition import Degradation, as_degradation
from mrsr.data.datasets import Augment, SliceDataset, View, collate_samples
from mrsr.data.degrade import check_scale
from mrsr.data.resumable import ResumableLoader, resumable
from mrsr.data.sources import (
    DEMO_SUBJECTS,
    DEMO_TEST_SUBJECT,
    FASTMRI_CHALLENGES,
    SPLITS,
    check_split,
    fastmri_official_split,
    fastmri_split_folders,
    list_demo,
    list_fastmri,
    list_ixi,
    split_by_subject,
)
from mrsr.data.store import Slab, VolumeStore, foreground_slices
from mrsr.data.types import VolumeRef
from mrsr.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# A split entry: a volume and, optionally, the part of it to use (a slab along the slicing
# axis; see :data:`mrsr.data.store.Slab`).
Entry = tuple[VolumeRef, Slab | None]
PATCH_TRIES = 5  # random positions tried per training crop when data.patch_foreground > 0


class MRDataModule(L.LightningDataModule):
    """Shared base: subclasses only say which volumes belong to which split.

    Samples are :class:`~mrsr.data.types.Sample` ``(lr, hr, meta)``. Training batches are
    random ``patch_size`` HR patches with the augmentations of :class:`Augment`, taken from
    slices along every axis of ``train_axes`` (default: the slicing axis only);
    validation/test batches are whole slices along ``axis``, deterministic, in volume order.
    ``degradation`` makes the LR images (:mod:`mrsr.data.acquisition`: an operator or its name);
    a random one makes training LR on the fly, a fresh draw per sample.
    """

    dataset_name = "base"

    def __init__(
        self,
        scale: int = 2,
        degradation: Degradation | str = "bicubic",
        axis: int = 2,
        crop: Sequence[int | None] | None = None,
        percentile: float = 99.5,
        min_foreground: float = 0.05,
        batch_size: int = 16,
        eval_batch_size: int = 8,
        patch_size: int | None = 96,
        patch_foreground: float = 0.0,
        num_workers: int = 0,
        flips: bool = True,
        augment: dict | None = None,
        train_axes: Sequence[int] | None = None,
        seed: int = 42,
        on_bad_file: str = "error",
        max_cached_volumes: int | None = None,
        cache_dir: str | None = None,
        fastmri_source: str = "auto",
        fastmri_crop: Sequence[int] = (320, 320),
    ) -> None:
        super().__init__()
        self.scale = check_scale(scale)
        degradation = as_degradation(degradation)
        if axis not in (0, 1, 2):
            raise ConfigError(f"data.axis={axis} is invalid: slices are taken along axis 0, 1 or 2")
        if on_bad_file not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_file={on_bad_file!r} is invalid: use 'error' or 'skip'")
        self.train_axes = [axis] if train_axes is None else [int(a) for a in train_axes]
        if not self.train_axes or any(a not in (0, 1, 2) for a in self.train_axes):
            raise ConfigError(
                f"data.train_axes={list(train_axes or [])} is invalid: use axes among 0, 1, 2"
            )
        if patch_size is not None and patch_size % self.scale:
            raise ConfigError(f"patch size {patch_size} does not divide by scale {self.scale}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.patch_size = patch_size
        self.num_workers = num_workers
        self.augment = Augment.from_config(flips, augment)
        if not 0.0 <= float(patch_foreground) <= 1.0:
            raise ConfigError(
                f"data.patch_foreground={patch_foreground} is invalid: "
                "expected a fraction in [0, 1]"
            )
        self.patch_foreground = float(patch_foreground)
        self.seed = seed
        self.on_bad_file = on_bad_file
        self.min_foreground = min_foreground
        self.store = VolumeStore(
            self.scale,
            degradation,
            axis,
            crop,
            percentile,
            fastmri_source,
            fastmri_crop,
            max_cached_volumes,
            cache_dir,
        )
        self.datasets: dict[str, SliceDataset] = {}
        self.classes: list[str] = []

    @property
    def operator(self) -> Degradation:
        """The degradation its LR images are made with."""
        return self.store.operator

    # -- what subclasses provide
    def split_entries(self) -> dict[str, list[Entry]]:
        raise NotImplementedError

    # -- building
    def _index(self, views: list[View]) -> list[tuple[int, int]]:
        index = []
        for pos, (ref, axis, slab) in enumerate(views):
            hr, _ = self.store.get(ref, axis, slab, lr=False)
            if min(hr.shape[-2:]) < 2 * self.scale:
                if axis != self.store.axis or slab is not None:
                    continue  # a thin part of a training volume: nothing to learn from
                raise DataError(
                    ref.path,
                    f"in-plane size {tuple(hr.shape[-2:])} is too small for scale {self.scale}",
                )
            index.extend((pos, s) for s in foreground_slices(hr, self.min_foreground))
        return index

    def _readable(self, entries: list[Entry]) -> list[Entry]:
        """Under ``on_bad_file=skip``, leave out (and log) volumes that cannot be read."""
        if self.on_bad_file != "skip":
            return entries
        keep = []
        for ref, slab in entries:
            try:
                self.store.get(ref, None, slab, lr=False)
            except DataError as err:
                log.warning("skipping %s", err)
                continue
            keep.append((ref, slab))
        return keep

    # splits each Lightning stage needs; ``None`` builds all of them
    STAGE_SPLITS = {
        "fit": ("train", "val"),
        "validate": ("val",),
        "test": ("test",),
        "predict": ("test",),
    }

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets ``stage`` needs (reading and caching only their volumes)."""
        self._build(self.STAGE_SPLITS.get(stage, SPLITS) if stage is not None else SPLITS)

    def _build(self, splits: Sequence[str]) -> None:
        todo = [s for s in SPLITS if s in splits and s not in self.datasets]
        if not todo:
            return
        if not hasattr(self, "_entries"):
            self._entries = self.split_entries()
            # class labels from every split, so they do not depend on which splits are built
            self.classes = sorted({ref.cls for split in self._entries.values() for ref, _ in split})
        labels = {c: i for i, c in enumerate(self.classes)}
        for split in todo:
            entries = self._readable(self._entries.get(split, []))
            train = split == "train"
            axes = self.train_axes if train else [self.store.axis]
            views = [View(ref, a, slab) for ref, slab in entries for a in axes]
            index = self._index(views)
            self.datasets[split] = SliceDataset(
                self.store,
                views,
                index,
                labels,
                self.patch_size if train else None,
                self.augment if train else None,
                self.patch_foreground,
                PATCH_TRIES,
            )
            log.info(
                "%s %s: %d volumes, %d slices%s",
                self.dataset_name,
                split,
                len({r for r, _ in entries}),
                len(index),
                f" (along axes {axes})" if len(axes) > 1 else "",
            )

    def _loader(self, split: str, train: bool) -> DataLoader:
        self._build([split])
        ds = self.datasets[split]
        if len(ds) == 0:
            hint = (
                " (data.split=all keeps every file for the test split)"
                if getattr(self, "split", None) == "all"
                else ""
            )
            raise DataError(
                getattr(self, "root", None),
                f"the {self.dataset_name} {split} split has no slices{hint}",
            )
        shapes = {tuple(self.store.get(*v, lr=False)[0].shape[-2:]) for v in ds.views}
        batch = self.batch_size if train else (self.eval_batch_size if len(shapes) == 1 else 1)
        return DataLoader(
            ds,
            batch_size=batch,
            shuffle=train,
            drop_last=train and len(ds) >= batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=False,
            collate_fn=collate_samples,
        )

    def train_dataloader(self) -> ResumableLoader:
        """Training batches in an order and with patches drawn from ``(seed, epoch, position)``:
        a resumed run (also from mid-epoch) continues with exactly the batches it would have seen
        (:mod:`mrsr.data.resumable`)."""
        return resumable(self._loader("train", True), int(self.seed), self._batches_trained)

    def _batches_trained(self) -> int:
        """Training batches processed in the current epoch (the loader's checkpointed state)."""
        trainer = getattr(self, "trainer", None)
        return (
            trainer.fit_loop.epoch_loop.batch_progress.current.processed
            if trainer is not None
            else 0
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)


def _split(
    root: str, refs: list[VolumeRef], wanted: Sequence[int] | str, seed: int
) -> dict[str, list[VolumeRef]]:
    """:func:`split_by_subject`, with errors naming the data folder."""
    try:
        return split_by_subject(refs, wanted, seed)
    except DataError as err:
        if err.path is None:
            raise DataError(root, err.problem) from None
        raise


class IXIDataModule(MRDataModule):
    """IXI brain volumes (``IXI<id>-<site>-<nr>-<PD|T1|T2>.nii.gz``), split by subject."""

    dataset_name = "IXI"

    def __init__(
        self,
        root: str,
        contrasts: Sequence[str] = ("T1",),
        split: Sequence[int] | str = (500, 70, 6),
        crop: Sequence[int | None] | None = (240, 240, 96),
        **kwargs,
    ) -> None:
        super().__init__(crop=crop, **kwargs)
        self.root = root
        self.contrasts = list(contrasts)
        self.split = check_split(split)

    def split_entries(self) -> dict[str, list[Entry]]:
        refs = list_ixi(self.root, self.contrasts, self.on_bad_file)
        return {
            k: [(r, None) for r in v]
            for k, v in _split(self.root, refs, self.split, self.seed).items()
        }


class FastMRIDataModule(MRDataModule):
    """fastMRI knee HDF5 files, filtered by ``acquisition`` (PD / PDFS), split by file.

    ``root`` is either the official layout (``singlecoil_train`` / ``singlecoil_val`` or
    ``knee_singlecoil_*``; ``challenge`` picks single- or multi-coil when both are there),
    whose test split comes from the val folder as in the paper, or a flat folder of ``.h5``
    files split deterministically by count.
    """

    dataset_name = "fastMRI"

    def __init__(
        self,
        root: str,
        contrasts: Sequence[str] = ("PD", "PDFS"),
        split: Sequence[int] | str = (227, 24, 4),
        challenge: str | None = None,
        axis: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(axis=axis, **kwargs)
        self.root = root
        self.contrasts = list(contrasts)
        self.split = check_split(split)
        if challenge not in (None, *FASTMRI_CHALLENGES):
            raise ConfigError(
                f"data.challenge={challenge!r} is unknown: choose singlecoil, multicoil or null"
            )
        self.challenge = challenge

    def split_entries(self) -> dict[str, list[Entry]]:
        folders = fastmri_split_folders(self.root, self.challenge)
        src, on_bad = self.store.fastmri_source, self.on_bad_file
        if folders is None:
            refs = list_fastmri(self.root, self.contrasts, src, on_bad)
            splits = _split(self.root, refs, self.split, self.seed)
        else:
            found = {k: list_fastmri(d, self.contrasts, src, on_bad) for k, d in folders.items()}
            splits = fastmri_official_split(folders, found, self.split, self.seed)
            log.info("fastMRI official folders: %s", ", ".join(d.name for d in folders.values()))
        return {k: [(r, None) for r in v] for k, v in splits.items()}


class DemoDataModule(MRDataModule):
    """The embedded real brain volumes: two subjects, no download.

    Test: the whole ``seg3d`` subject (T1), never seen in training. Train/val: the
    ``stroke`` subject (T1, T2, FLAIR); validation is the slab of slices in
    ``val_slab`` (fractions along the slicing axis), training the two parts of the volume
    on either side of it, less a 2-slice gap next to the slab (also when training slices
    are taken along the other axes, so no validation voxel is ever trained on). Two
    subjects are too few for a subject-level validation split, so this is documented as a
    slab split.
    """

    dataset_name = "demo"

    def __init__(
        self,
        contrasts: Sequence[str] = ("T1", "T2", "FLAIR"),
        val_slab: Sequence[float] = (0.55, 0.7),
        test_subject: str = DEMO_TEST_SUBJECT,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if test_subject not in DEMO_SUBJECTS:
            raise ConfigError(
                f"data.test_subject={test_subject!r} is unknown: "
                f"choose {' or '.join(DEMO_SUBJECTS)}"
            )
        self.test_subject = test_subject
        self.contrasts = list(contrasts)
        self.val_slab = (float(val_slab[0]), float(val_slab[1]))

    def split_entries(self) -> dict[str, list[Entry]]:
        refs = list_demo(self.contrasts)
        lo, hi = self.val_slab
        test = [(r, None) for r in refs if r.subject == self.test_subject]
        rest = [r for r in refs if r.subject != self.test_subject]
        gap = 2  # slices next to the slab are used by neither side
        return {
            "train": [(r, part) for r in rest for part in ((0.0, lo, gap), (hi, 1.0, gap))],
            "val": [(r, (lo, hi, 0)) for r in rest],
            "test": test,
        }
