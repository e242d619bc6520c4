"""Finding volumes on disk and splitting them by subject: IXI, fastMRI and the demo set."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from mrsr.data.readers import fastmri_info
from mrsr.data.types import VolumeRef
from mrsr.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IXI_PATTERN = re.compile(
    r"^IXI(?P<id>\d{3})-(?P<site>[A-Za-z]+)-(?P<nr>\d{4})-(?P<contrast>[A-Za-z0-9-]+)\.nii(\.gz)?$"
)
IXI_CONTRASTS = ("PD", "T1", "T2")


def _folder(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(root, "data folder not found")
    if not root.is_dir():
        raise DataError(root, "is not a folder")
    return root


def bad_file(path: Path, problem: str, on_bad_file: str) -> None:
    """Apply the ``data.on_bad_file`` policy: raise (``error``) or log and skip (``skip``)."""
    if on_bad_file == "skip":
        log.warning("skipping %s: %s", path, problem)
        return
    raise DataError(path, problem)


def split_counts(n: int, wanted: Sequence[int]) -> tuple[int, int, int]:
    """(train, test, val) subject counts.

    With at least ``sum(wanted)`` subjects the wanted counts are used and extra subjects
    are left out. With fewer, test and val keep their share of ``n`` (at least one each)
    and train gets the rest; fewer than 3 subjects cannot be split.
    """
    n_train, n_test, n_val = (int(c) for c in wanted)
    total = n_train + n_test + n_val
    if n >= total:
        return n_train, n_test, n_val
    if n < 3:
        raise DataError(
            None, f"only {n} subject(s) found: at least 3 are needed for train/test/val splits"
        )
    n_test = max(1, round(n * n_test / total))
    n_val = max(1, round(n * n_val / total))
    return n - n_test - n_val, n_test, n_val


def check_split(split: Sequence[int] | str) -> list[int] | str:
    """``data.split``: ``[train, test, val]`` counts, or ``"all"`` (every file in the test
    split)."""
    if isinstance(split, str):
        if split == "all":
            return split
    elif len(split) == 3 and all(isinstance(c, int) and c >= 0 for c in split):
        return [int(c) for c in split]
    raise ConfigError(f"data.split={split!r} is invalid: use [train, test, val] counts or 'all'")


def shuffled_subjects(refs: Sequence[VolumeRef], seed: int) -> list[str]:
    """The sorted subject ids of ``refs``, permuted by ``numpy.random.default_rng(seed)``."""
    subjects = sorted({r.subject for r in refs})
    return [subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))]


def split_by_subject(
    refs: Sequence[VolumeRef], wanted: Sequence[int] | str, seed: int
) -> dict[str, list[VolumeRef]]:
    """Deterministic subject-level split: no subject appears in two splits.

    ``wanted="all"`` puts every volume in the test split (scoring a folder, however few).
    """
    if wanted == "all":
        return {"train": [], "val": [], "test": sorted(refs, key=lambda r: r.name)}
    shuffled = shuffled_subjects(refs, seed)
    n_train, n_test, n_val = split_counts(len(shuffled), wanted)
    groups = {
        "train": set(shuffled[:n_train]),
        "test": set(shuffled[n_train : n_train + n_test]),
        "val": set(shuffled[n_train + n_test : n_train + n_test + n_val]),
    }
    return {
        s: sorted((r for r in refs if r.subject in groups[s]), key=lambda r: r.name) for s in SPLITS
    }


def list_ixi(
    root: str | Path, contrasts: Sequence[str], on_bad_file: str = "error"
) -> list[VolumeRef]:
    """IXI volumes of the chosen contrasts, e.g. ``IXI002-Guys-0828-T1.nii.gz``."""
    root = _folder(root)
    bad = [c for c in contrasts if c not in IXI_CONTRASTS]
    if bad:
        raise DataError(root, f"unknown IXI contrast(s) {bad}: choose from {list(IXI_CONTRASTS)}")
    refs: dict[tuple[str, str], VolumeRef] = {}
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        m = IXI_PATTERN.match(path.name)
        if m is None:
            if path.name.endswith((".nii", ".nii.gz")):
                bad_file(
                    path,
                    "file name does not match IXI<id>-<site>-<nr>-<PD|T1|T2>.nii.gz",
                    on_bad_file,
                )
            continue
        contrast = m["contrast"]
        if contrast not in contrasts:
            continue
        subject = f"IXI{m['id']}"
        key = (subject, contrast)
        if key in refs:
            raise DataError(
                path,
                f"duplicate {contrast} volume for subject {subject} (also {refs[key].path.name})",
            )
        name = path.name.split(".nii")[0]
        refs[key] = VolumeRef(path, name, subject, contrast, f"IXI-{contrast}", "nifti")
    if not refs:
        raise DataError(
            root,
            f"no IXI volumes of contrast {list(contrasts)} found "
            "(expected IXI<id>-<site>-<nr>-<contrast>.nii.gz)",
        )
    return sorted(refs.values(), key=lambda r: r.name)


def list_fastmri(
    root: str | Path, contrasts: Sequence[str], source: str = "auto", on_bad_file: str = "error"
) -> list[VolumeRef]:
    """fastMRI knee ``.h5`` files whose ``acquisition`` attribute matches ``contrasts``."""
    root = _folder(root)
    refs = []
    for path in sorted(root.glob("*.h5")):
        try:
            info = fastmri_info(path, source)
        except DataError as err:
            bad_file(path, err.problem, on_bad_file)
            continue
        if info.contrast is None:
            bad_file(
                path,
                "missing or unknown 'acquisition' attribute (expected CORPD_FBK or CORPDFS_FBK)",
                on_bad_file,
            )
            continue
        if info.contrast in contrasts:
            refs.append(
                VolumeRef(
                    path, path.stem, path.stem, info.contrast, f"fastMRI-{info.contrast}", "fastmri"
                )
            )
    if not refs:
        raise DataError(root, f"no fastMRI .h5 files of contrast {list(contrasts)} found")
    return refs


# The official fastMRI folders as extracted (``singlecoil_train``) or as the archives are
# named (``knee_singlecoil_train``). Test/challenge folders hold under-sampled k-space only.
FASTMRI_FOLDER = re.compile(
    r"^(?:(?:knee|brain)_)?(?P<challenge>singlecoil|multicoil)_(?P<split>train|val|test(?:_v\d+)?|challenge)$"
)
FASTMRI_CHALLENGES = ("singlecoil", "multicoil")


def fastmri_split_folders(root: str | Path, challenge: str | None = None) -> dict[str, Path] | None:
    """The official ``<challenge>_train`` / ``<challenge>_val`` folders inside ``root``, or
    ``None`` for a flat folder of ``.h5`` files. Test and challenge folders are left out
    (no fully sampled ground truth)."""
    root = _folder(root)
    official = [
        (m, d) for d in sorted(root.iterdir()) if (m := FASTMRI_FOLDER.match(d.name)) and d.is_dir()
    ]
    if not official:
        return None
    usable: dict[str, dict[str, Path]] = {}
    for m, d in official:
        if m["split"] in ("train", "val"):
            usable.setdefault(m["challenge"], {})[m["split"]] = d
    if challenge is None:
        if len(usable) > 1:
            raise DataError(
                root, "holds both singlecoil and multicoil folders: choose one with data.challenge="
            )
        challenge = next(iter(usable), None)
    if challenge not in usable:
        names = ", ".join(d.name for _, d in official)
        raise DataError(
            root,
            f"no {challenge or 'fastMRI'} train or val folder with ground truth (found {names})",
        )
    return usable[challenge]


def fastmri_official_split(
    folders: dict[str, Path],
    refs: dict[str, list[VolumeRef]],
    wanted: Sequence[int] | str,
    seed: int,
) -> dict[str, list[VolumeRef]]:
    """Splits of the official layout (as the paper): the test split is drawn from ``*_val``,
    train and validation from ``*_train`` (validation: files held out by subject)."""
    train_refs, val_refs = refs.get("train", []), refs.get("val", [])
    if wanted == "all":
        return split_by_subject(train_refs + val_refs, "all", seed)
    n_train, n_test, n_val = (int(c) for c in wanted)
    pool = shuffled_subjects(train_refs, seed)
    if train_refs and len(pool) < 2:
        raise DataError(
            folders["train"],
            f"only {len(pool)} subject(s): at least 2 are needed for train/val splits",
        )
    n_val = min(n_val, max(len(pool) - 1, 0)) if pool else 0
    groups = {
        "val": set(pool[:n_val]),
        "train": set(pool[n_val : n_val + n_train]),
        "test": set(shuffled_subjects(val_refs, seed)[:n_test]),
    }
    source = {"train": train_refs, "val": train_refs, "test": val_refs}
    return {
        s: sorted((r for r in source[s] if r.subject in groups[s]), key=lambda r: r.name)
        for s in SPLITS
    }


DEMO_FILES = {
    # name: (subject, contrast)
    "seg3d_T1": ("seg3d", "T1"),
    "stroke_T1": ("stroke", "T1"),
    "stroke_T2": ("stroke", "T2"),
    "stroke_FLAIR": ("stroke", "FLAIR"),
}
DEMO_TEST_SUBJECT = "seg3d"
DEMO_SUBJECTS = ("seg3d", "stroke")


def demo_dir() -> Path:
    return Path(str(resources.files("mrsr.assets") / "demo"))


def list_demo(contrasts: Sequence[str]) -> list[VolumeRef]:
    """The embedded real brain MRI volumes (see ``mrsr/assets/demo/LICENSE``)."""
    root = demo_dir()
    refs = [
        VolumeRef(root / f"{name}.nii.gz", name, subject, contrast, f"demo-{contrast}", "nifti")
        for name, (subject, contrast) in DEMO_FILES.items()
        if contrast in contrasts
    ]
    if not any(r.subject == "seg3d" for r in refs):
        raise DataError(root, "demo contrasts must include T1 (the seg3d subject is T1 only)")
    return refs
