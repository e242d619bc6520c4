"""The comparison networks of the paper's tables (``model=srcnn|vdsr|edsr|rdn|rcan|swinir`` and
their ``_small`` CPU presets): sizes, shapes, training through stage ``sr``, checkpoints,
``stage=predict`` and their rows in the report."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from mrsr import generators
from mrsr.checkpoint import sub_state_dict
from mrsr.labels import unlabelled
from mrsr.nets import n_params
from mrsr.report import tables
from tests.conftest import phantom, run_labels

MODELS = ("srcnn", "vdsr", "edsr", "rdn", "rcan", "swinir")
# Published sizes (x2; the papers' RGB networks, here one channel: within 3 %).
PAPER_PARAMS = {
    "srcnn": 0.057e6,
    "vdsr": 0.665e6,
    "edsr": 40.7e6,
    "rdn": 22.1e6,
    "rcan": 15.4e6,
    "swinir": 11.75e6,
}


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("model", MODELS)
def test_cpu_preset_builds_one_channel_and_any_size(make_cfg, model: str, scale: int) -> None:
    cfg = make_cfg(f"model={model}_small", f"scale={scale}")
    net = generators.build_generator(cfg.model)
    assert net.scale == scale and n_params(net) < 0.3e6
    torch.manual_seed(0)
    for h, w in ((13, 17), (8, 8), (31, 6)):  # odd sizes, smaller than a Swin window, thin
        x = torch.rand(2, 1, h, w)
        y = net(x)
        assert y.shape == (2, 1, h * scale, w * scale) and torch.isfinite(y).all()
    with pytest.raises(Exception, match="scale=3 is not supported"):
        instantiate(unlabelled(make_cfg(f"model={model}_small", "scale=3").model))


@pytest.mark.parametrize("model", MODELS)
def test_paper_preset_has_the_published_size(make_cfg, model: str) -> None:
    net = instantiate(unlabelled(make_cfg(f"model={model}", "scale=2").model))
    assert n_params(net) == pytest.approx(PAPER_PARAMS[model], rel=0.03)
    assert net.scale == 2 and net(torch.rand(1, 1, 9, 11)).shape == (1, 1, 18, 22)


def test_skips_and_inputs_are_where_the_papers_put_them(make_cfg) -> None:
    """VDSR starts as the bicubic up-sampling (zero last layer) and SRCNN sees only it; with
    their bodies' last convs zeroed, EDSR and RCAN are tail(head(x)) (global skip) and RDN is
    tail(first shallow features)."""
    from mrsr.ops import upsample

    torch.manual_seed(0)
    x = torch.rand(2, 1, 10, 12)
    net = lambda name: instantiate(unlabelled(make_cfg(f"model={name}_small", "scale=2").model))  # noqa: E731
    assert torch.equal(net("vdsr")(x), upsample(x, 2))
    srcnn = net("srcnn")
    assert torch.equal(srcnn(x), srcnn.body(upsample(x, 2)))
    with torch.no_grad():
        for name in ("edsr", "rcan"):
            m = net(name)
            nn.init.zeros_(m.body[-1].weight)
            nn.init.zeros_(m.body[-1].bias)
            assert torch.allclose(m(x), m.tail(m.head(x)), atol=1e-6)
        rdn = net("rdn")
        nn.init.zeros_(rdn.fusion[-1].weight)
        nn.init.zeros_(rdn.fusion[-1].bias)
        assert torch.allclose(rdn(x), rdn.tail(rdn.shallow1(x)), atol=1e-6)


def test_swinir_mirror_pads_once_to_whole_windows() -> None:
    """Any size is the cropped output of the mirror-padded image (as SwinIR pads), also when
    the image is narrower than a window."""
    import torch.nn.functional as F

    from mrsr.nets.swinir import SwinIR

    torch.manual_seed(0)
    net = SwinIR(
        2, embed_dim=16, depths=(2,), num_heads=(2,), upsampler="pixelshuffledirect"
    ).eval()
    with torch.no_grad():
        x = torch.rand(1, 1, 13, 17)
        assert torch.allclose(
            net(x), net(F.pad(x, (0, 7, 0, 3), mode="reflect"))[..., :26, :34], atol=1e-6
        )
        thin = torch.rand(1, 1, 3, 5)
        assert torch.allclose(
            net(thin), net(F.pad(thin, (0, 3, 0, 5), mode="replicate"))[..., :6, :10], atol=1e-6
        )


TINY = [
    "data.crop=[96,96,12]",
    "data.eval_batch_size=4",
    "sr.batch_size=4",
    "sr.train_crop=32",
    "sr.max_steps=2",
    "sr.val_check_interval=2",
    "sr.lr_schedule=constant",
    "sr.warmup_steps=0",
    "logger=csv",
    "callbacks.progress_bar=null",
    "trainer.accelerator=cpu",
]


@pytest.mark.parametrize("model", MODELS)
def test_trains_checkpoints_and_predicts(make_cfg, tmp_path: Path, model: str) -> None:
    """stage=sr (l1 protocol, EMA) for two updates, its results row, the checkpoint's EMA
    generator reloaded exactly, exported as a bundled model, and stage=predict with it."""
    from mrsr.tasks.predict import predict
    from mrsr.training import train_stage

    cfg = make_cfg("stage=sr", "experiment=table_demo", f"model={model}_small", "scale=2", *TINY)
    out = Path(cfg.paths.output_dir)
    before = {k: v.clone() for k, v in generators.build_generator(cfg.model).state_dict().items()}
    result = train_stage(cfg)
    ckpt = torch.load(result["best"], map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    raw = sub_state_dict(ckpt["state_dict"], "generator")
    # it trained
    assert any(not torch.equal(raw[k], before[k]) for k in before if before[k].is_floating_point())
    net = generators.load_generator(result["best"], scale=2)
    assert type(net).__name__ == cfg.model._target_.rsplit(".", 1)[-1] and not net.training
    ema = sub_state_dict(ckpt["state_dict"], "ema.module")
    assert all(torch.equal(v, ema[k]) for k, v in net.state_dict().items())
    row = json.loads((out / "results.json").read_text())[0]
    assert (
        row["model"] == f"{model}_small"
        and row["params"] == n_params(net)
        and row["ms_per_slice"] > 0
    )
    assert (
        np.isfinite(row["psnr"])
        and row["device"].startswith("cpu")
        and row["precision"] == "32-true"
    )

    # the bundled-model path: weights and metadata only, read back like any checkpoint
    bundled = generators.export_generator(result["best"], tmp_path / "bundled.ckpt")
    again = generators.load_generator(str(bundled), scale=2)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in net.state_dict().items())
    vol = phantom((14, 11, 3), seed=5) + 20.0
    inp, dst = tmp_path / "in.nii.gz", tmp_path / "out.nii.gz"
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([1.0, 1.0, 3.0, 1.0])), str(inp))
    predict(make_cfg("stage=predict", f"ckpt={bundled}", f"input={inp}", f"output={dst}"))
    img = nib.load(str(dst))
    assert img.shape == (28, 22, 3) and np.isfinite(np.asarray(img.dataobj)).all()
    assert np.allclose(np.diag(img.affine)[:3], [0.5, 0.5, 3.0])


def _job(
    root: Path,
    name: str,
    model: str | None,
    preset: str,
    scale: int,
    psnr: float,
    cost: bool = True,
    seed: int = 42,
    device: str = "cpu (1 threads)",
) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    base = {
        "dataset": "demo",
        "scale": scale,
        "degradation": "bicubic",
        **run_labels(preset, model, seed),
    }
    extra = (
        {
            "params": 1000 * scale,
            "ms_per_slice": 2.5 * scale,
            "device": device,
            "precision": "32-true",
        }
        if cost
        else {}
    )
    rows = [
        {"method": "sr", **base, "psnr_vol": psnr, "psnr_vol_std": 0.1, **extra},
        {"method": "bicubic", **base, "psnr_vol": 20.0, "psnr_vol_std": 0.1},
    ]
    (folder / "results.json").write_text(json.dumps(rows))


def test_report_has_a_row_per_network_with_size_time_and_budget(tmp_path: Path) -> None:
    for i, (model, preset, psnr) in enumerate(
        [
            ("swinir_small", "l1", 25.0),
            ("srresnet_small", "l1", 24.0),
            ("srcnn_small", "l1", 22.0),
            ("srresnet_small", "paper", 23.0),
            ("edsr", "paired", 26.0),
        ]
    ):
        for scale in (2, 4):
            _job(tmp_path, f"{i}_{scale}", model, preset, scale, psnr - scale)
    rows = tables.table_rows(tables.collect(tmp_path))
    assert list(dict.fromkeys(r["method"] for r in rows)) == [
        "bicubic",
        "srcnn_small",
        "edsr+paired",
        "swinir_small",
        "l1",
        "paper",
    ]
    md = tables.to_markdown(rows)
    assert "| method | params | ms / slice | SR budget | seeds | x2 PSNR | x4 PSNR |" in md
    assert (
        "| SRCNN (Dong 2016), CPU size | 0.002 M / 0.004 M | 5.0 / 10.0 "
        "| 300 updates (one phase) | 1 | 20.00 ± 0.10 |" in md
    )
    assert "| EDSR (Lim 2017), loss=paired |" in md and "| SRResNet, L1 (baseline) |" in md
    assert "on cpu (1 threads), 32-true" in md
    header = tables.to_csv(rows).splitlines()[0]
    assert header.endswith("psnr,psnr_std,params,ms_per_slice,device,n_seeds,budget,run")


def test_short_training_beats_bicubic_on_the_held_out_subject(make_cfg) -> None:
    """VDSR starts as bicubic up-sampling; 120 L1 updates on the demo's training subjects make
    it better than bicubic on the test subject (seg3d, never trained on)."""
    from mrsr.training import train_stage

    cfg = make_cfg(
        "stage=sr",
        "experiment=table_demo",
        "model=vdsr_small",
        "model.depth=5",
        "scale=2",
        "sr.batch_size=16",
        "sr.train_crop=32",
        "sr.max_steps=120",
        "sr.val_check_interval=120",
        "sr.lr=1e-3",
        "sr.warmup_steps=0",
        "logger=csv",
        "callbacks.progress_bar=null",
        "data.val_slab=[0.6,0.63]",
    )
    test = train_stage(cfg)["test"]
    assert test["test/psnr"] - test["test/psnr_bicubic"] > 0.3
    assert test["test/ssim"] > test["test/ssim_bicubic"]


def test_report_keeps_old_results_and_never_averages_times_over_devices(
    tmp_path: Path, capsys
) -> None:
    # results written before params/times existed
    _job(tmp_path, "old", None, "l1", 2, 25.0, cost=False)
    _job(tmp_path, "a", "edsr_small", "l1", 2, 25.0, seed=1, device="cpu (1 threads)")
    _job(tmp_path, "b", "edsr_small", "l1", 2, 26.0, seed=2, device="cuda (NVIDIA H200)")
    _job(tmp_path, "c", "swinir_small", "l1", 2, 27.0, seed=1, device="cuda (NVIDIA H200)")
    rows = {r["method"]: r for r in tables.table_rows(tables.collect(tmp_path))}
    assert "params" not in rows["l1"] and "ms_per_slice" not in rows["l1"]
    assert rows["edsr_small"]["n_seeds"] == 2 and "ms_per_slice" not in rows["edsr_small"]
    assert rows["edsr_small"]["device"] == "several devices"
    md = tables.to_markdown(list(rows.values()))
    assert "| SRResNet, L1 (baseline) | — | — | 300 updates (one phase) | 1 |" in md
    assert "| SwinIR (Liang 2021), CPU size | 0.002 M | 5.0 (cuda (NVIDIA H200), 32-true) |" in md
    # two SRResNet sizes with one preset and seed share a row: the report says which run it kept
    _job(tmp_path, "d", "srresnet", "l1", 2, 30.0, cost=False)
    tables.table_rows(tables.collect(tmp_path))
    assert "replaces" in capsys.readouterr().err
