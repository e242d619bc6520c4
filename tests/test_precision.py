"""Mixed precision presets: every stage trains a step and evaluates under
``trainer.precision=bf16-mixed`` on CPU (Lightning's CPU autocast), with finite losses,
finite weights and a finite test score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

FAST = {
    "vit": ["vit.max_steps=2", "vit.val_check_interval=2", "vit.batch_size=4"],
    "disent": ["disent.max_steps=2", "disent.val_check_interval=2", "disent.batch_size=4"],
    "sr": [
        "sr.max_steps=2",
        "sr.val_check_interval=1",
        "sr.batch_size=4",
        "sr.train_crop=32",
        "loss=gan",  # L1 + a fixed adversarial weight
        "loss.terms.adv.weight=1e-3",
        "loss.terms.adv.relative=false",
    ],
}
LIMITS = [
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "trainer=cpu",
    "~callbacks.progress_bar",
]


@pytest.mark.parametrize("stage", ["vit", "disent", "sr"])
def test_bf16_mixed_on_cpu(make_cfg, stage: str) -> None:
    from mrsr.training import train_stage

    cfg = make_cfg(f"stage={stage}", *FAST[stage], *LIMITS, "trainer.precision=bf16-mixed")
    out = Path(cfg.paths.output_dir)
    result = train_stage(cfg)
    assert result["score"] is not None and torch.isfinite(torch.tensor(result["score"]))
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    for name, tensor in ckpt["state_dict"].items():
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float32, name  # master weights stay fp32
            assert torch.isfinite(tensor).all(), name
    metrics = json.loads((out / "FINISHED.json").read_text())["test"]
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_precision_values_accepted(make_cfg, precision: str) -> None:
    from mrsr.building import build_trainer

    cfg = make_cfg("trainer=cpu", f"trainer.precision={precision}", "~callbacks.progress_bar")
    trainer = build_trainer(cfg)
    # Lightning runs fp16 autocast only on GPUs: on CPU 16-mixed becomes bf16-mixed
    assert str(trainer.precision) == ("bf16-mixed" if precision == "16-mixed" else precision)


def test_feature_cosine_is_float32_under_bf16_autocast() -> None:
    """The paired preset's 1 - cos values (1e-4..1e-3) are below bf16's resolution: the
    distance of bf16 features is computed in float32 and resolves them."""
    from mrsr.losses.feature import cosine_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 384, generator=g)
    b = a + 1e-2 * torch.randn(4, 384, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fa, fb = a.bfloat16(), b.bfloat16()
        d = cosine_distance(fa, fb)
        naive = (1 - torch.nn.functional.cosine_similarity(fa, fb, dim=1)).mean()
    assert d.dtype == torch.float32
    assert d.item() == pytest.approx(cosine_distance(fa.float(), fb.float()).item(), rel=1e-6)
    assert 1e-5 < d.item() < 1e-3
    assert abs(naive.item() - d.item()) > 0.5 * d.item()  # what bf16 arithmetic would have given
