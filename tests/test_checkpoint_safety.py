"""Checkpoints are read only through ``load_checkpoint`` (``weights_only=True``): a pickle that
would run code is refused without running it, and broken or mismatched files give one line."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
import torch

from mrsr.checkpoint import load_checkpoint, sub_state_dict
from mrsr.errors import CheckpointError


class Exploit:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def good_ckpt(stage: str = "sr", scale: int = 2) -> dict:
    return {
        "state_dict": {"generator.w": torch.ones(2, 2), "disc.b": torch.zeros(3)},
        "mrsr": {"stage": stage, "scale": scale, "version": "0.1.0", "config": {"channels": 8}},
        "epoch": 3,
        "global_step": 10,
    }


def assert_refused(path: Path, match: str, **kw) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg and path.name in msg and match in msg, msg
    return info.value


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    ckpt = good_ckpt()
    ckpt["mrsr"]["config"] = Exploit(marker)
    torch.save(ckpt, path)
    # the file really is an exploit: an unsafe load would run it
    assert not marker.exists()
    assert_refused(path, "refused", stage="sr")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # control: proves the payload works
    assert marker.exists()


def test_malicious_top_level_object(tmp_path: Path) -> None:
    marker = tmp_path / "pwned2"
    path = tmp_path / "evil2.ckpt"
    torch.save(Exploit(marker), path)
    assert_refused(path, "refused")
    assert not marker.exists()


def test_good_checkpoint_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.ckpt"
    torch.save(good_ckpt(), path)
    ckpt = load_checkpoint(path, stage="sr", scale=2)
    assert torch.equal(ckpt["state_dict"]["generator.w"], torch.ones(2, 2))
    assert sub_state_dict(ckpt["state_dict"], "generator") == {
        "w": ckpt["state_dict"]["generator.w"]
    }


def _truncated(tmp_path: Path) -> Path:
    path = tmp_path / "trunc.ckpt"
    torch.save(good_ckpt(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _zip_missing_data(tmp_path: Path) -> Path:
    src = tmp_path / "src.ckpt"
    torch.save(good_ckpt(), src)
    path = tmp_path / "partial.ckpt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            if "/data/" not in item.filename:
                zout.writestr(item, zin.read(item.filename))
    return path


def _write(name: str, obj) -> callable:
    def make(tmp_path: Path) -> Path:
        path = tmp_path / name
        if isinstance(obj, bytes):
            path.write_bytes(obj)
        else:
            torch.save(obj, path)
        return path

    return make


CASES = {
    "missing": (lambda t: t / "nope.ckpt", "not found", {}),
    "folder": (lambda t: (t / "dir.ckpt").mkdir() or t / "dir.ckpt", "folder", {}),
    "garbage": (_write("garbage.ckpt", os.urandom(300)), "corrupt", {}),
    "empty": (_write("empty.ckpt", b""), "corrupt", {}),
    "text": (_write("text.ckpt", b"hello world\n"), "corrupt", {}),
    "truncated_zip": (_truncated, "corrupt", {}),
    "zip_missing_tensors": (_zip_missing_data, "corrupt", {}),
    "not_a_dict": (_write("list.ckpt", [torch.ones(1)]), "state_dict", {}),
    "no_state_dict": (_write("nosd.ckpt", {"weights": torch.ones(1)}), "state_dict", {}),
    "no_metadata": (_write("nometa.ckpt", {"state_dict": {"w": torch.ones(1)}}), "metadata", {}),
    "wrong_stage": (
        _write("vit.ckpt", good_ckpt(stage="vit")),
        "expected a stage-sr",
        {"stage": "sr"},
    ),
    "wrong_scale": (
        _write("x4.ckpt", good_ckpt(scale=4)),
        "expected x2",
        {"stage": "sr", "scale": 2},
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_broken_checkpoints(tmp_path: Path, case: str) -> None:
    make, match, kw = CASES[case]
    path = make(tmp_path)
    err = assert_refused(path, match, **kw)
    if case == "wrong_stage":
        assert "stage-vit" in str(err)
    if case == "wrong_scale":
        assert "x4" in str(err)


def test_errors_survive_pickling_between_processes() -> None:
    """DataLoader workers send exceptions to the main process by pickling them."""
    import pickle

    from mrsr.errors import DataError

    for err in (
        DataError("/data/IXI002-Guys-0828-T1.nii.gz", "truncated"),
        CheckpointError("/x.ckpt", "corrupt"),
    ):
        again = pickle.loads(pickle.dumps(err))
        assert type(again) is type(err) and str(again) == str(err)
