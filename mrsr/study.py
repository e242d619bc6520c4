"""What a predict run works on: the scans an ``input=`` names and where each output goes.

``input=`` is a file, a list of files, a folder (its images, not its sub-folders), a glob
(``scans/*_T1w.nii.gz``; quote patterns with brackets) or the root of a BIDS dataset (a folder
with ``dataset_description.json``: every ``sub-*/[ses-*/]anat`` image, optionally only some
suffixes, e.g. ``T1w``). ``output=`` is a file for one input, else a folder; for BIDS it
defaults to ``<root>/derivatives/mrsr`` and becomes a BIDS derivatives dataset whose file names
keep the input's entities plus ``res-x<scale>`` (``sub-01_ses-1_res-x2_T1w.nii.gz``). Every
output gets a receipt beside it: the same name with ``.json``.
"""

from __future__ import annotations

import glob
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mrsr.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh", ".h5", ".hdf5")
# BIDS entity order (the specification's table); ``res`` is placed by it.
BIDS_ENTITIES = (
    "sub",
    "ses",
    "sample",
    "task",
    "tracksys",
    "acq",
    "nuc",
    "voi",
    "ce",
    "trc",
    "stain",
    "rec",
    "dir",
    "run",
    "mod",
    "echo",
    "flip",
    "inv",
    "mt",
    "part",
    "proc",
    "hemi",
    "space",
    "split",
    "recording",
    "chunk",
    "seg",
    "res",
    "den",
    "label",
    "desc",
)
DERIVATIVES_NAME = "mrsr"


@dataclass(frozen=True)
class Scan:
    """One input and where its output and receipt go."""

    input: Path
    output: Path

    @property
    def receipt(self) -> Path:
        return receipt_path(self.output)

    def check_receipt(self) -> None:
        """Refuse a file at the receipt's path that is not an mrsr receipt (a user's JSON)."""
        from mrsr.receipt import read_receipt

        if self.receipt.exists() and read_receipt(self.receipt) is None:
            raise ConfigError(
                f"{self.receipt} exists and is not an mrsr receipt; the receipt of "
                f"output={self.output} goes there: choose another output name"
            )


@dataclass(frozen=True)
class Study:
    """The scans of one predict run. ``kind``: file | files | folder | glob | bids."""

    kind: str
    scans: tuple[Scan, ...]
    derivatives: Path | None = None  # the BIDS derivatives root (kind == "bids")
    source: Path | None = None  # the BIDS dataset root
    left_out: tuple[str, ...] = ()  # BIDS files that are not taken, and why

    @property
    def batch(self) -> bool:
        return self.kind != "file"

    @property
    def linked(self) -> bool:
        """The derivatives sit in the source dataset's ``derivatives/mrsr``: receipts cite
        inputs as ``bids:raw:<path>``."""
        return (
            self.source is not None
            and self.derivatives == self.source / "derivatives" / DERIVATIVES_NAME
        )


def image_suffix(path: Path) -> str:
    """The image extension as written (``.nii.gz``, ``.NII``, ...; any case)."""
    name = path.name
    n = next((len(s) for s in IMAGE_SUFFIXES if name.lower().endswith(s)), None)
    return name[-n:] if n else path.suffix


def image_stem(path: Path) -> str:
    """The file name without its image extension (``sub-01_T1w.nii.gz`` -> ``sub-01_T1w``)."""
    suffix = image_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.stem


def is_image(path: Path) -> bool:
    name = path.name
    return path.is_file() and name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def receipt_path(output: Path) -> Path:
    """The receipt beside an output: ``scan_x2.nii.gz`` -> ``scan_x2.json``."""
    return output.with_name(image_stem(output) + ".json")


def output_suffix(inp: Path) -> str:
    """Outputs keep the input's format; fastMRI files become NIfTI."""
    suffix = image_suffix(inp)
    return ".nii.gz" if suffix.lower() in (".h5", ".hdf5") else suffix


def is_bids_root(path: Path) -> bool:
    return path.is_dir() and (path / "dataset_description.json").is_file()


def bids_entities(inp: Path) -> tuple[list[list[str]], str] | None:
    """The ``[key, label]`` entities and the suffix of a BIDS file name (None if it is not
    one: ``sub-<label>_[<key>-<label>_...]<suffix>``)."""
    *pairs, suffix = image_stem(inp).split("_")
    entities = [p.split("-", 1) for p in pairs]
    if not entities or any(len(e) != 2 for e in entities) or entities[0][0] != "sub":
        return None
    return entities, suffix


def bids_name(inp: Path, scale: int) -> str:
    """``inp``'s BIDS file name with ``res-x<scale>`` among its entities (in BIDS order); an
    input's own ``res-<label>`` becomes ``res-<label>x<scale>``."""
    parsed = bids_entities(inp)
    if parsed is None:
        raise ConfigError(f"{inp}: not a BIDS file name (sub-<label>_..._<suffix>)")
    entities, suffix = parsed
    own = next((v for k, v in entities if k == "res"), "")
    entities = [e for e in entities if e[0] != "res"] + [["res", f"{own}x{scale}"]]
    rank = {k: i for i, k in enumerate(BIDS_ENTITIES)}
    entities.sort(key=lambda e: rank.get(e[0], len(rank)))
    return "_".join(f"{k}-{v}" for k, v in entities) + f"_{suffix}" + output_suffix(inp)


# Anatomical files that are not magnitude MR images: masks, segmentations, and the phase, real
# or imaginary parts of complex data (``part-``).
NOT_MAGNITUDE_SUFFIXES = ("mask", "defacemask", "dseg", "probseg")
NOT_MAGNITUDE_PARTS = ("phase", "real", "imag")


def bids_images(root: Path, suffixes: Sequence[str] = ()) -> tuple[list[Path], list[str]]:
    """The magnitude images of a BIDS dataset's ``sub-*/[ses-*/]anat`` folders (only the
    ``suffixes`` given, e.g. ``T1w``, if any), and why each other image file there was left
    out (not a BIDS name, a mask or segmentation, a phase/real/imaginary part)."""
    found, left_out = [], []
    candidates = sorted(
        p
        for pattern in ("sub-*/anat/*", "sub-*/ses-*/anat/*")
        for p in root.glob(pattern)
        if is_image(p)
    )
    for p in candidates:
        parsed = bids_entities(p)
        if parsed is None:
            left_out.append(f"{p.relative_to(root)}: not a BIDS file name")
            continue
        entities, suffix = parsed
        part = next((v for k, v in entities if k == "part"), "mag")
        if suffix in NOT_MAGNITUDE_SUFFIXES or part in NOT_MAGNITUDE_PARTS:
            left_out.append(f"{p.relative_to(root)}: not a magnitude image ({suffix}, part-{part})")
        elif not suffixes or suffix in suffixes:
            found.append(p)
    return found, left_out


def as_list(value: object) -> list[str]:
    """A config value that may be one string or a list of them (a string is never split: a
    path may hold commas)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    return [str(value)]


def plan(inputs: object, output: object, scale: int, suffixes: Sequence[str] = ()) -> Study:
    """The scans ``input=`` names and their outputs (see the module docstring); refused in one
    line when nothing matches or the output cannot be told."""
    given = as_list(inputs)
    if not given:
        raise ConfigError("input=<scan, folder, glob or BIDS root> is needed")
    out = None if output in (None, "") else Path(str(output)).expanduser()
    if len(given) > 1 or not isinstance(inputs, str):  # a list, even of one, is a batch
        files = [Path(g).expanduser() for g in given]
        return _into_folder("files", files, out, "input=[...]")
    text = given[0]
    path = Path(text).expanduser()
    if is_bids_root(path):
        return _bids(path, out, scale, suffixes)
    if path.is_file() or path.is_symlink():  # before patterns: a name may hold [ ] * ?
        return _one_file(path, out, output)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if is_image(p))
        if not files:
            from mrsr.data.readers import DICOM_HINT, is_dicom

            if any(is_dicom(f) for f in sorted(path.iterdir())[:20] if f.is_file()):
                raise DataError(path, f"is a folder of DICOM files: {DICOM_HINT}")
            raise ConfigError(
                f"input={text}: no images in this folder "
                f"({', '.join(IMAGE_SUFFIXES)}; sub-folders are not searched)"
            )
        return _into_folder("folder", files, out, f"input={text}")
    if glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(str(path)) if is_image(Path(p)))
        if not files:
            raise ConfigError(f"input={text}: the pattern matches no image")
        return _into_folder("glob", files, out, f"input={text}")
    return _one_file(path, out, output)  # a missing file is refused with the output checks


def _one_file(path: Path, out: Path | None, output: object) -> Study:
    if out is None:
        raise ConfigError("output=<file.nii.gz or folder> is needed")
    if out.is_dir() or str(output).endswith(("/", "\\")):
        out = out / (image_stem(path) + output_suffix(path))
    return Study("file", (Scan(path, out),))


def _into_folder(kind: str, files: list[Path], out: Path | None, what: str) -> Study:
    if out is None:
        raise ConfigError(f"{what} names several scans: pass output=<folder>")
    if out.name.endswith(IMAGE_SUFFIXES):
        raise ConfigError(f"{what} names several scans: output={out} must be a folder")
    scans = tuple(Scan(f, out / (image_stem(f) + output_suffix(f))) for f in files)
    one_output_each(scans, what)
    if any(s.output.resolve() == s.input.resolve() for s in scans):
        raise ConfigError(
            f"{what}: output={out} is the inputs' own folder and the outputs keep their names: "
            "choose another output folder"
        )
    return Study(kind, scans)


def one_output_each(scans: Sequence[Scan], what: str) -> None:
    """Refuse two inputs that would write the same output or receipt (``a.nii`` and
    ``a.nii.gz`` share ``a.json``)."""
    counts = Counter(s.receipt for s in scans)
    twice = sorted(str(p.with_suffix("")) for p, n in counts.items() if n > 1)
    if twice:
        raise ConfigError(f"{what}: two inputs would write the same output ({twice[0]})")


def _bids(root: Path, out: Path | None, scale: int, suffixes: Sequence[str]) -> Study:
    files, left_out = bids_images(root, suffixes)
    if not files:
        which = f" with suffix {', '.join(suffixes)}" if suffixes else ""
        raise ConfigError(f"input={root}: a BIDS dataset without anatomical images{which}")
    target = out or root / "derivatives" / DERIVATIVES_NAME
    inside = target.resolve().is_relative_to(root.resolve())
    if inside and not target.resolve().is_relative_to((root / "derivatives").resolve()):
        raise ConfigError(
            f"output={target} is inside the raw dataset {root}: put derivatives under "
            f"{root / 'derivatives'} or outside it (default: derivatives/{DERIVATIVES_NAME})"
        )
    scans = tuple(Scan(f, target / f.parent.relative_to(root) / bids_name(f, scale)) for f in files)
    one_output_each(scans, f"input={root}")
    return Study("bids", scans, derivatives=target, source=root, left_out=tuple(left_out))


def write_dataset_description(study: Study, version: str) -> None:
    """The derivatives dataset's ``dataset_description.json`` (kept when it exists). The source
    dataset is linked as ``raw`` (receipts cite inputs as ``bids:raw:<path>``) when the
    derivatives sit in its ``derivatives/`` folder."""
    if study.derivatives is None:
        return
    path = study.derivatives / "dataset_description.json"
    if path.exists():
        return
    from mrsr.files import atomic_write_text

    name = "mrsr super-resolution"
    source = study.source
    if source is not None:
        try:
            described = json.loads((source / "dataset_description.json").read_text())
            name += " of " + str(described["Name"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    description: dict = {
        "Name": name,
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "mrsr",
                "Version": version,
                "Description": "in-plane MR super-resolution (stage=predict)",
            }
        ],
    }
    if study.linked:
        description["DatasetLinks"] = {"raw": "../.."}
    atomic_write_text(path, json.dumps(description, indent=2) + "\n")


def source_reference(study: Study, inp: Path) -> str:
    """How a receipt names its input: ``bids:raw:<path in the dataset>`` inside a linked BIDS
    dataset, else its absolute path."""
    if study.linked:
        return "bids:raw:" + inp.relative_to(study.source).as_posix()
    return str(inp.absolute())


_LABEL = re.compile(r"^[A-Za-z0-9]+$")


def check_suffixes(value: object) -> list[str]:
    """``predict.suffix``: BIDS suffixes (``T1w``, ``[T1w,T2w]``), refused when not a label."""
    found = as_list(value)
    for s in found:
        if not _LABEL.match(s):
            raise ConfigError(f"predict.suffix={s}: a BIDS suffix is letters and digits (T1w)")
    return found
