"""``stage=predict`` on a study: folders, globs, lists and BIDS datasets in, derivatives out,
resume, failures that leave the rest intact, and the receipt beside every output."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrsr.errors import ConfigError, MrsrError
from mrsr.generators import bundled_model, file_sha256
from mrsr.receipt import background_noise, foreground_noise, noise_estimate
from mrsr.study import bids_name, plan
from mrsr.tasks import predict as predict_mod
from tests.conftest import phantom

ROOT = Path(__file__).resolve().parents[1]


def scan(path: Path, seed: int, shape=(32, 28, 5), zooms=(1.0, 1.0, 3.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(phantom(shape, seed=seed), np.diag([*zooms, 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def bids_tree(root: Path) -> dict[str, Path]:
    """Two subjects with T1w and T2w; sub-02's T2w is corrupt."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny study", "BIDSVersion": "1.9.0"})
    )
    files = {
        "s1t1": scan(root / "sub-01/anat/sub-01_T1w.nii.gz", 1),
        "s1t2": scan(root / "sub-01/anat/sub-01_run-1_T2w.nii.gz", 2),
        "s2t1": scan(root / "sub-02/ses-a/anat/sub-02_ses-a_T1w.nii.gz", 3),
    }
    bad = root / "sub-02/ses-a/anat/sub-02_ses-a_T2w.nii.gz"
    bad.write_bytes(b"\x1f\x8b this is not a gzip stream")
    files["bad"] = bad
    (root / "sub-01/anat/sub-01_T1w.json").write_text("{}")  # a raw sidecar: not an image
    return files


def run_predict(make_cfg, inp: object, out: object = None, *extra: str) -> dict:
    args = ["stage=predict", f"input={inp}", *extra]
    if out is not None:
        args.append(f"output={out}")
    return predict_mod.predict(make_cfg(*args))


def test_bids_name_keeps_the_entities_and_places_res_in_bids_order() -> None:
    assert bids_name(Path("sub-01_T1w.nii.gz"), 2) == "sub-01_res-x2_T1w.nii.gz"
    assert (
        bids_name(Path("sub-01_ses-1_acq-fast_run-2_desc-brain_T2w.nii"), 4)
        == "sub-01_ses-1_acq-fast_run-2_res-x4_desc-brain_T2w.nii"
    )
    with pytest.raises(ConfigError, match="not a BIDS file name"):
        bids_name(Path("brain.nii.gz"), 2)


def test_a_bids_study_becomes_a_derivatives_dataset(make_cfg, tmp_path: Path, caplog) -> None:
    """Every anat image is written under derivatives/mrsr with its entities and res-x2 and a
    receipt; the corrupt file fails in one line while the others are written; a rerun skips
    what was finished and still reports the failure; the suffix filter selects T1w only."""
    root = tmp_path / "bids"
    files = bids_tree(root)
    with pytest.raises(MrsrError, match=r"1 of 4 scan\(s\) failed \(first: sub-02_ses-a_T2w"):
        run_predict(make_cfg, root)
    deriv = root / "derivatives" / "mrsr"
    expected = {
        "s1t1": deriv / "sub-01/anat/sub-01_res-x2_T1w.nii.gz",
        "s1t2": deriv / "sub-01/anat/sub-01_run-1_res-x2_T2w.nii.gz",
        "s2t1": deriv / "sub-02/ses-a/anat/sub-02_ses-a_res-x2_T1w.nii.gz",
    }
    for key, out in expected.items():
        img = nib.load(str(out))
        src = nib.load(str(files[key]))
        assert img.shape == (64, 56, 5)
        np.testing.assert_allclose(img.header.get_zooms(), (0.5, 0.5, 3.0))
        receipt = json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())
        assert receipt["status"] == "done"
        assert receipt["input"] == "bids:raw:" + files[key].relative_to(root).as_posix()
        assert np.allclose(
            img.affine[:3, 3], src.affine[:3, 3] + src.affine[:3, :2] @ [-0.25, -0.25]
        )
    assert not (deriv / "sub-02/ses-a/anat/sub-02_ses-a_res-x2_T2w.nii.gz").exists()
    description = json.loads((deriv / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "mrsr"
    assert description["DatasetLinks"] == {"raw": "../.."}
    assert "tiny study" in description["Name"]
    assert not list(deriv.rglob(".*.tmp*")), "no temporary file is left behind"

    stamps = {k: v.stat().st_mtime_ns for k, v in expected.items()}
    caplog.clear()
    with pytest.raises(MrsrError, match="1 of 4"), caplog.at_level(logging.INFO, logger="mrsr"):
        run_predict(make_cfg, root)
    assert {k: v.stat().st_mtime_ns for k, v in expected.items()} == stamps
    assert caplog.text.count(": skipped (finished") == 3
    assert "3 skipped" in caplog.text and "1 failed" in caplog.text

    only = tmp_path / "t1only"
    result = run_predict(make_cfg, root, only, "predict.suffix=T1w")
    assert result["scans"] == 2 and not result["failed"]
    assert sorted(p.name for p in only.rglob("*.nii.gz")) == [
        "sub-01_res-x2_T1w.nii.gz",
        "sub-02_ses-a_res-x2_T1w.nii.gz",
    ]
    assert "DatasetLinks" not in json.loads((only / "dataset_description.json").read_text())


def test_a_folder_a_glob_and_a_list(make_cfg, tmp_path: Path) -> None:
    """The three non-BIDS ways to name several scans give the same outputs as one-file runs."""
    src = tmp_path / "scans"
    a, b = scan(src / "a.nii.gz", 4), scan(src / "b.nii", 5)
    (src / "notes.txt").write_text("not an image")
    one = tmp_path / "one"
    one.mkdir()
    run_predict(make_cfg, a, one / "a.nii.gz")
    reference = np.asarray(nib.load(str(one / "a.nii.gz")).dataobj)
    for kind, inp in (
        ("folder", src),
        ("glob", src / "*.nii*"),
        ("files", f"[{a},{b}]"),
    ):
        out = tmp_path / kind
        result = run_predict(make_cfg, inp, out)
        assert result["kind"] == kind and len(result["done"]) == 2
        assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.nii.gz", "b.json", "b.nii"]
        np.testing.assert_array_equal(
            np.asarray(nib.load(str(out / "a.nii.gz")).dataobj), reference
        )
    with pytest.raises(ConfigError, match="names several scans: pass output=<folder>"):
        run_predict(make_cfg, src)
    with pytest.raises(ConfigError, match="must be a folder"):
        run_predict(make_cfg, src, tmp_path / "x.nii.gz")
    with pytest.raises(ConfigError, match="the pattern matches no image"):
        run_predict(make_cfg, tmp_path / "nothing*.nii.gz", tmp_path / "o")
    with pytest.raises(ConfigError, match="input=<scan, folder, glob or BIDS root> is needed"):
        run_predict(make_cfg, "[]", tmp_path / "o")


def test_a_file_into_a_folder_and_an_existing_output_in_a_batch(make_cfg, tmp_path: Path) -> None:
    a = scan(tmp_path / "in" / "a.nii.gz", 6)
    out = tmp_path / "out"
    out.mkdir()
    result = run_predict(make_cfg, a, str(out) + "/")
    assert result["output"] == str(out / "a.nii.gz") and (out / "a.json").exists()
    user = tmp_path / "user"
    user.mkdir()
    (user / "a.nii.gz").write_bytes(b"the user's own file")
    with pytest.raises(MrsrError, match="exists without a receipt of ours"):
        run_predict(make_cfg, f"[{a},{scan(tmp_path / 'in' / 'b.nii.gz', 7)}]", user)
    assert (user / "a.nii.gz").read_bytes() == b"the user's own file"
    assert (user / "b.nii.gz").exists()


def test_every_receipt_field(make_cfg, tmp_path: Path) -> None:
    inp = scan(tmp_path / "t1.nii.gz", 8)
    result = run_predict(make_cfg, inp, tmp_path / "t1_x2.nii.gz")
    receipt = json.loads((tmp_path / "t1_x2.json").read_text())
    assert result["receipt"] == str(tmp_path / "t1_x2.json")
    import mrsr

    assert receipt["mrsr_receipt"] == 1 and receipt["status"] == "done"
    assert receipt["version"] == mrsr.__version__
    model = receipt["model"]
    assert model["name"] == "bundled x2 (quickstart_x2.ckpt)"
    assert model["sha256"] == file_sha256(bundled_model(2))
    assert model["trained_on"] == "mix" and model["nominal_operator"] == "kspace"
    assert model["operator"]["name"] == "mix" and model["scale"] == 2
    assert receipt["scale"] == 2 and receipt["slicing_axis"] == 2
    assert "thickest" in receipt["slicing_axis_reason"] or "axis" in receipt["slicing_axis_reason"]
    assert receipt["input_image"] == {
        "shape": [32, 28, 5],
        "voxel_mm": [1.0, 1.0, 3.0],
        "dtype": "float32",
    }
    assert receipt["output_image"]["voxel_mm"] == [0.5, 0.5, 3.0]
    checks = receipt["checks"]
    assert checks["noise"]["sigma"] is not None and checks["noise"]["training_max"] == 0.04
    assert (
        checks["resolution"]["cutoff_fraction_of_nyquist"] == [1.0, 1.0]
        or len(checks["resolution"]["cutoff_fraction_of_nyquist"]) == 2
    )
    assert checks["intensities"]["negative_fraction"] == 0.0
    assert 0 <= checks["consistency"]["relative_error"] < 0.2
    assert checks["consistency"]["operator"] == "kspace"
    assert receipt["wall_seconds"] > 0 and receipt["network_seconds"] > 0
    assert "stage=predict" in receipt["command"] or "pytest" in receipt["command"]
    assert receipt["settings"]["consistency"] == "none"
    assert receipt["trust"] == "within training conditions" and receipt["warnings"] == []


def test_the_receipt_says_when_an_input_is_outside_training(make_cfg, tmp_path: Path) -> None:
    """Noise far above the training range, an interpolated input and a label map are each said
    in plain words, in the receipt and the log."""
    rng = np.random.default_rng(0)
    clean = phantom((64, 64, 4), seed=9)
    sigma = 0.1 * clean.max()  # complex noise before the magnitude, as a scanner makes it
    noisy = np.abs(
        clean + rng.normal(0, sigma, clean.shape) + 1j * rng.normal(0, sigma, clean.shape)
    ).astype(np.float32)
    cases = {
        "noisy": noisy,
        "labels": (clean > 500).astype(np.float32) * 3,
    }
    for name, data in cases.items():
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
        result = run_predict(make_cfg, tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_x2.nii.gz")
        assert result["trust"] == "outside training conditions"
    noisy_receipt = json.loads((tmp_path / "noisy_x2.json").read_text())
    assert any("noise about" in w and "above the 4.0%" in w for w in noisy_receipt["warnings"])
    labels = json.loads((tmp_path / "labels_x2.json").read_text())
    assert any("label map" in w for w in labels["warnings"])


def test_noise_estimate_reads_the_noise_level_in_air_and_bounds_it_in_a_masked_scan() -> None:
    rng = np.random.default_rng(1)
    clean = phantom((24, 96, 96), seed=10) / 1000.0  # anatomy about 0.6-1, air 0
    for sigma in (0.01, 0.03, 0.06):
        noisy = np.abs(
            clean + rng.normal(0, sigma, clean.shape) + 1j * rng.normal(0, sigma, clean.shape)
        ).astype(np.float32)
        found = noise_estimate(noisy)
        assert found["read_in"] == "background"
        assert abs(background_noise(noisy) - sigma) < 0.2 * sigma + 0.002, (sigma, found)
    masked = clean.copy()  # air exactly 0: read in the anatomy, an upper bound
    found = noise_estimate(masked)
    assert found["background"] is None and found["read_in"] == "foreground (upper bound)"
    assert found["sigma"] == pytest.approx(foreground_noise(masked), abs=1e-5)


def test_plan_refuses_what_it_cannot_tell(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images in this folder"):
        plan(str(tmp_path / "empty"), str(tmp_path / "o"), 2)
    a = scan(tmp_path / "x" / "a.nii.gz", 1)
    scan(tmp_path / "x" / "a.nii", 2)
    with pytest.raises(ConfigError, match="two inputs would write the same output"):
        plan(str(tmp_path / "x"), str(tmp_path / "o"), 2)
    with pytest.raises(ConfigError, match=r"output=<file.nii.gz or folder> is needed"):
        plan(str(a), None, 2)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_batch_killed_midway_resumes_without_losing_or_redoing_work(tmp_path: Path) -> None:
    """SIGKILL after the first outputs: no partial file is left, and the rerun skips every
    finished scan (untouched) and completes the rest."""
    src = tmp_path / "scans"
    for i in range(8):
        scan(src / f"s{i}.nii.gz", 20 + i, shape=(96, 96, 12))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MRSR_OUTPUT_DIR": str(tmp_path / "runs")}
    cmd = [sys.executable, "-m", "mrsr.run", "stage=predict", f"input={src}", f"output={out}"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def finished() -> list[Path]:
        return [p for p in out.glob("*.json") if json.loads(p.read_text())["status"] == "done"]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(finished()) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = finished()
    assert 2 <= len(before) < 8, "killed mid-batch"
    for tmp in out.glob(".*"):  # what the kill left, found by a rerun a minute later
        os.utime(tmp, (time.time() - 120, time.time() - 120))
    kept = before + [p.with_name(p.stem + ".nii.gz") for p in before]
    stamps = {p: p.stat().st_mtime_ns for p in kept}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    log = done.stdout + done.stderr
    assert log.count(": skipped (finished") == len(before)
    assert {p: p.stat().st_mtime_ns for p in kept} == stamps, "finished scans were redone"
    assert len(list(out.glob("*.nii.gz"))) == 8 and len(list(out.glob("*.json"))) == 8
    assert not list(out.glob(".*")), "what the kill left half-written is cleared"
    for path in sorted(out.glob("*.json")):
        assert json.loads(path.read_text())["status"] == "done"
        nib.load(str(path.with_name(path.stem + ".nii.gz"))).get_fdata()  # whole and readable


def test_a_failure_in_the_middle_leaves_every_other_output_right(make_cfg, tmp_path: Path) -> None:
    src = tmp_path / "scans"
    a, c = scan(src / "a.nii.gz", 11), scan(src / "c.nii.gz", 12)
    (src / "b.nii.gz").write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(MrsrError, match=r"1 of 3 scan\(s\) failed \(first: b.nii.gz"):
        run_predict(make_cfg, src, tmp_path / "out")
    assert not (tmp_path / "out" / "b.nii.gz").exists()
    for inp in (a, c):
        alone = tmp_path / f"alone_{inp.name}"
        run_predict(make_cfg, inp, alone)
        np.testing.assert_array_equal(
            np.asarray(nib.load(str(tmp_path / "out" / inp.name)).dataobj),
            np.asarray(nib.load(str(alone)).dataobj),
        )


def test_a_batch_refuses_its_input_folder_and_an_unwritable_output_before_any_work(
    make_cfg, tmp_path: Path
) -> None:
    src = tmp_path / "scans"
    scan(src / "a.nii.gz", 13)
    with pytest.raises(ConfigError, match="is the inputs' own folder"):
        run_predict(make_cfg, src, src)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user can write in read-only folders (root)")
        with pytest.raises(ConfigError, match="output: cannot write in"):
            run_predict(make_cfg, src, locked / "out")
    finally:
        locked.chmod(0o700)


def test_a_users_json_at_the_receipts_path_is_never_replaced(make_cfg, tmp_path: Path) -> None:
    a = scan(tmp_path / "a.nii.gz", 14)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.json").write_text('{"RepetitionTime": 2.0}')
    with pytest.raises(ConfigError, match=r"a.json exists and is not an mrsr receipt"):
        run_predict(make_cfg, a, out / "a.nii.gz")
    with pytest.raises(MrsrError, match="1 of 1 scan"):
        run_predict(make_cfg, f"[{a}]", out)
    assert (out / "a.json").read_text() == '{"RepetitionTime": 2.0}'
    assert not (out / "a.nii.gz").exists()


def test_resume_redoes_nothing_made_differently_without_being_asked(
    make_cfg, tmp_path: Path
) -> None:
    """A finished output is skipped only when the same model made it with the same settings from
    the same, unchanged input; otherwise the scan is refused in one line until overwrite=true."""
    a_dir, b_dir, out = tmp_path / "A", tmp_path / "B", tmp_path / "out"
    a = scan(a_dir / "s1.nii.gz", 15)
    scan(b_dir / "s1.nii.gz", 16)
    run_predict(make_cfg, a_dir, out)
    first = (out / "s1.nii.gz").read_bytes()
    with pytest.raises(MrsrError, match="made from other predict settings"):
        run_predict(make_cfg, a_dir, out, "predict.consistency=kspace")
    with pytest.raises(MrsrError, match="made from another input"):
        run_predict(make_cfg, b_dir, out)
    os.utime(a, ns=(time.time_ns(), time.time_ns()))
    with pytest.raises(MrsrError, match="made from the input as it was"):
        run_predict(make_cfg, a_dir, out)
    assert (out / "s1.nii.gz").read_bytes() == first
    result = run_predict(make_cfg, b_dir, out, "overwrite=true")
    assert result["done"] == [str(out / "s1.nii.gz")]
    assert json.loads((out / "s1.json").read_text())["input"] == str(
        (b_dir / "s1.nii.gz").absolute()
    )


def test_bids_names_that_would_collide_and_files_that_are_not_magnitude_images(
    make_cfg, tmp_path: Path, caplog
) -> None:
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "r", "BIDSVersion": "1.9.0"}')
    anat = root / "sub-01" / "anat"
    scan(anat / "sub-01_space-MNI_res-1_T1w.nii.gz", 17)
    scan(anat / "sub-01_space-MNI_res-2_T1w.nii.gz", 18)
    scan(anat / "sub-01_T1w_defacemask.nii.gz", 19)  # not a BIDS name
    scan(anat / "sub-01_part-phase_T2w.nii.gz", 20)
    scan(anat / "sub-01_dseg.nii.gz", 21)
    with caplog.at_level(logging.INFO, logger="mrsr"):
        result = run_predict(make_cfg, root)
    assert not result["failed"]
    deriv = root / "derivatives" / "mrsr" / "sub-01" / "anat"
    assert sorted(p.name for p in deriv.glob("*.nii.gz")) == [
        "sub-01_space-MNI_res-1x2_T1w.nii.gz",
        "sub-01_space-MNI_res-2x2_T1w.nii.gz",
    ]
    assert caplog.text.count("left out: ") == 3
    sidecar = json.loads((deriv / "sub-01_space-MNI_res-1x2_T1w.json").read_text())
    assert sidecar["Sources"] == ["bids:raw:sub-01/anat/sub-01_space-MNI_res-1_T1w.nii.gz"]
    assert sidecar["Resolution"].startswith("res-x2: in-plane voxel size divided by 2")
    with pytest.raises(ConfigError, match="is inside the raw dataset"):
        run_predict(make_cfg, root, root / "sr")


def test_a_file_name_with_brackets_or_commas_is_a_file(make_cfg, tmp_path: Path) -> None:
    odd = scan(tmp_path / "Doe,John" / "scan[1].nii.gz", 22)
    result = run_predict(make_cfg, f"'{odd}'", tmp_path / "o.nii.gz")
    assert result["output"] == str(tmp_path / "o.nii.gz")
    upper = scan(tmp_path / "UP" / "SCAN.NII.GZ", 23)
    found = plan(str(upper.parent), str(tmp_path / "o2"), 2)
    assert [s.output.name for s in found.scans] == ["SCAN.NII.GZ"]


def test_the_receipt_of_an_input_whose_zero_filling_was_removed(make_cfg, tmp_path: Path) -> None:
    """from_acquired=true: the receipt states the file and the acquired matrix, and does not
    call the input interpolated any more."""
    import torch

    from mrsr.ops import zerofill_upsample

    vol = phantom((40, 48, 4), seed=24)
    x = torch.from_numpy(np.moveaxis(vol, 2, 0))[:, None].double()
    big = np.moveaxis(zerofill_upsample(x, 2)[:, 0].numpy(), 0, 2).astype(np.float32)
    nib.save(nib.Nifti1Image(np.abs(big), np.eye(4)), str(tmp_path / "zf.nii.gz"))
    run_predict(
        make_cfg, tmp_path / "zf.nii.gz", tmp_path / "zf_x2.nii.gz", "predict.from_acquired=true"
    )
    receipt = json.loads((tmp_path / "zf_x2.json").read_text())
    assert receipt["input_image"]["shape"] == [80, 96, 4]
    assert receipt["acquired_matrix"]["shape"] == [40, 48, 4]
    assert receipt["acquired_matrix"]["voxel_mm"] == [2.0, 2.0, 1.0]
    assert receipt["checks"]["resolution"]["zero_filling_removed"] is True
    assert not any("interpolated" in w for w in receipt["warnings"])


def test_cropping_is_off_under_kspace_consistency() -> None:
    """The k-space projection is global: with it the network runs on whole slices, so the
    anatomy is the same as without cropping."""
    import torch

    from mrsr.generators import load_generator
    from mrsr.inference import super_resolve_volume

    rng = np.random.default_rng(2)
    vol = phantom((6, 64, 64), seed=25) / 1000.0
    vol = np.pad(vol, ((0, 0), (24, 24), (24, 24)))
    noisy = np.abs(vol + rng.normal(0, 0.03, vol.shape)).astype(np.float32)
    net = load_generator(bundled_model(2))
    kw = {"progress": False, "consistency": "kspace", "device": torch.device("cpu")}
    on = super_resolve_volume(net, noisy, 2, crop_background=True, **kw)
    off = super_resolve_volume(net, noisy, 2, crop_background=False, **kw)
    np.testing.assert_array_equal(on, off)


def test_cpu_bf16_is_checked_recorded_and_close_to_float32(make_cfg, tmp_path: Path) -> None:
    """``predict.cpu_bf16``: a bad value is refused before any work; the receipt says which
    precision ran; bfloat16 stays within a small fraction of the float32 output."""
    inp = scan(tmp_path / "t1.nii.gz", 26, shape=(48, 40, 4))
    with pytest.raises(ConfigError, match=r"predict.cpu_bf16=maybe must be one of auto, true"):
        run_predict(make_cfg, inp, tmp_path / "x.nii.gz", "predict.cpu_bf16=maybe")
    outs = {}
    for flag in ("false", "true"):
        out = tmp_path / f"bf16_{flag}.nii.gz"
        run_predict(make_cfg, inp, out, f"predict.cpu_bf16={flag}")
        receipt = json.loads(out.with_name(f"bf16_{flag}.json").read_text())
        assert receipt["precision"] == ("bfloat16" if flag == "true" else "float32")
        assert receipt["settings"]["cpu_bf16"] == flag
        outs[flag] = np.asarray(nib.load(str(out)).dataobj)
    err = np.abs(outs["true"] - outs["false"]).max() / np.abs(outs["false"]).max()
    assert 0 < err < 0.02, err


def test_a_real_scan_stored_with_its_thick_axis_anywhere(make_cfg, tmp_path: Path) -> None:
    """The same real thick-slice slab stored with its thick axis first, in the middle or last:
    the same slices are super-resolved (with background cropping), the outputs are the same
    voxels at the same world positions, and the receipts' checks read the same."""
    from mrsr.data.readers import read_nifti
    from mrsr.data.sources import demo_dir

    hr = read_nifti(demo_dir() / "seg3d_T1.nii.gz").data[8:152, 40:200, 60:72]
    slab = hr.reshape(144, 160, 4, 3).mean(3)  # (X, Y, T): 3 mm slices made by averaging
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    affine[:3, 3] = [-70.0, -80.0, 10.0]
    ijk = np.array([10, 20, 3])  # a voxel of (X, Y, T) at output resolution
    seen = []
    for thick, order in ((0, (2, 0, 1)), (1, (0, 2, 1)), (2, (0, 1, 2))):  # X stays before Y
        moved = np.eye(4)
        moved[:3, :3] = affine[:3, :3][:, order]
        moved[:3, 3] = affine[:3, 3]
        inp = tmp_path / f"thick{thick}.nii.gz"
        nib.save(nib.Nifti1Image(np.transpose(slab, order).astype(np.float32), moved), str(inp))
        result = run_predict(make_cfg, inp, tmp_path / f"thick{thick}_x2.nii.gz")
        assert result["axis"] == thick
        out = nib.load(str(tmp_path / f"thick{thick}_x2.nii.gz"))
        np.testing.assert_allclose(out.header.get_zooms(), np.array([0.5, 0.5, 3.0])[list(order)])
        receipt = json.loads((tmp_path / f"thick{thick}_x2.json").read_text())
        seen.append(
            (
                np.transpose(np.asarray(out.dataobj), np.argsort(order)),  # back to (X, Y, T)
                out.affine @ np.append(ijk[list(order)], 1.0),
                {k: v for k, v in receipt["checks"].items() if k != "seconds"},
            )
        )
    assert seen[0][0].shape == (288, 320, 4)
    for data, world, checks in seen[1:]:
        np.testing.assert_array_equal(data, seen[0][0])
        np.testing.assert_allclose(world, seen[0][1])
        assert checks == seen[0][2]


def test_noise_estimate_on_multi_coil_images_errs_high_not_low() -> None:
    """Simulated another way than the Rayleigh model assumes: sum-of-squares images of 4 and 8
    coils, whose background is non-central chi, not Rayleigh. The estimate reads high (the
    background's mode moves up with the coils; about 2-2.5x here), capped by the foreground
    bound: it may warn on a clean multi-coil scan, but never calls a noisy one clean."""
    rng = np.random.default_rng(3)
    clean = phantom((24, 96, 96), seed=10) / 1000.0
    for coils in (4, 8):
        weights = rng.uniform(0.5, 1.5, coils)
        weights /= np.sqrt((weights**2).sum())
        for sigma in (0.01, 0.02, 0.04):
            sos = np.sqrt(
                sum(
                    np.abs(
                        clean * w
                        + rng.normal(0, sigma, clean.shape)
                        + 1j * rng.normal(0, sigma, clean.shape)
                    )
                    ** 2
                    for w in weights
                )
            ).astype(np.float32)
            lo, hi = float(sos.min()), float(np.percentile(sos, 99.5))
            found = noise_estimate((sos - lo) / (hi - lo))
            true = sigma / (hi - lo)
            assert true <= found["sigma"] <= found["foreground_upper_bound"] + 1e-9, (coils, sigma)
            assert found["sigma"] < 3 * true + 0.02, (coils, sigma, found)


def test_two_bids_inputs_that_would_share_a_receipt_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "r", "BIDSVersion": "1.9.0"}')
    scan(root / "sub-01" / "anat" / "sub-01_T1w.nii", 27)
    scan(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz", 28)  # the same receipt name
    with pytest.raises(ConfigError, match="two inputs would write the same output"):
        plan(str(root), None, 2)
