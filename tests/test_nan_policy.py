"""NaN policy of ``StageModule.losses_finite`` / ``grads_finite`` in a real Lightning loop:
``skip`` skips exactly the faulty step and keeps weights finite; ``stop`` raises a one-line
NumericalError naming stage, step and term, and the last good checkpoint stays valid."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mrsr.callbacks import AtomicCheckpointIO, LastCheckpoint
from mrsr.errors import NumericalError
from mrsr.stages.base import StageModule

BAD_STEP = 3


class Toy(StageModule):
    stage = "toy"

    def __init__(self, nan_policy: str, where: str = "loss") -> None:
        super().__init__(config={"toy": True}, scale=2, nan_policy=nan_policy)
        self.net = torch.nn.Linear(4, 1)
        self.where = where
        self.history: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx: int):
        (x,) = batch
        self.history.append(self.net.weight.detach().clone())
        loss = self.net(x).pow(2).mean()
        if self.global_step == BAD_STEP and self.where == "loss":
            loss = loss * math.nan
        if not self.losses_finite({"l2": loss}):
            return None
        return loss

    def on_after_backward(self) -> None:
        if self.where == "grad" and self.global_step == BAD_STEP:
            self.net.weight.grad.fill_(math.inf)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path: Path, module: Toy, steps: int = 6) -> L.Trainer:
    L.seed_everything(0)
    data = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=8)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        plugins=[AtomicCheckpointIO()],
        callbacks=[LastCheckpoint(dirpath=str(tmp_path), every_n_train_steps=1)],
    )
    trainer.fit(module, data)
    return trainer


def test_skip_policy_skips_the_faulty_step_only(tmp_path: Path, caplog) -> None:
    module = Toy("skip")
    fit(tmp_path, module)
    assert module.skipped_steps == 1
    assert "stage toy, step 3: non-finite loss term(s) l2" in caplog.text
    assert all(torch.isfinite(w).all() for w in module.history)
    assert torch.isfinite(module.net.weight).all()
    # the skipped batch left the weights unchanged; the others changed them
    assert torch.equal(module.history[BAD_STEP], module.history[BAD_STEP + 1])
    assert not torch.equal(module.history[BAD_STEP - 1], module.history[BAD_STEP])
    assert not torch.equal(module.history[BAD_STEP + 1], module.history[BAD_STEP + 2])
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert ckpt["mrsr"]["skipped_steps"] == 1


def test_stop_policy_raises_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    module = Toy("stop")
    with pytest.raises(NumericalError, match=r"stage toy, step 3: non-finite loss term\(s\) l2"):
        fit(tmp_path, module)
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == BAD_STEP  # saved after the last good step
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert torch.equal(ckpt["state_dict"]["net.weight"], module.history[BAD_STEP])


def test_non_finite_gradient_is_caught(tmp_path: Path) -> None:
    module = Toy("stop", where="grad")

    def check(mod: Toy) -> None:
        mod.grads_finite(mod.net, "net")

    module.on_before_optimizer_step = lambda optimizer: check(module)
    with pytest.raises(NumericalError, match=r"step 3: non-finite loss term\(s\) grad\(net\)"):
        fit(tmp_path, module)


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="nan_policy"):
        Toy("ignore")
