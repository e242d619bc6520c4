"""16-mixed precision follows the loss scaler's contract: an fp16 overflow skips one step,
lowers the scale and training goes on (it is not a fault for the NaN policy); a gradient
that stays non-finite still reaches the NaN policy. Runs on CPU with a CPU GradScaler (the
same plugin Lightning builds for ``precision=16-mixed`` on a GPU)."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision
from torch.utils.data import DataLoader, TensorDataset

from mrsr.errors import NumericalError
from mrsr.stages.base import StageModule

OVERFLOW_STEPS = (3,)


class ManualToy(StageModule):
    """Manual optimisation as the GAN stages do it: manual_backward, then step_optimizer."""

    stage = "toy"

    def __init__(
        self, nan_policy: str = "stop", bad_steps: tuple[int, ...] = OVERFLOW_STEPS
    ) -> None:
        super().__init__(config={"toy": True}, scale=2, nan_policy=nan_policy)
        self.automatic_optimization = False
        self.net = torch.nn.Linear(4, 1)
        self.bad_steps = bad_steps
        self.history: list[torch.Tensor] = []
        self.scales: list[float] = []
        self.applied: list[bool] = []
        self.batches = 0

    def training_step(self, batch, batch_idx: int) -> None:
        (x,) = batch
        opt = self.optimizers()
        self.history.append(self.net.weight.detach().clone())
        loss = self.net(x).float().pow(2).mean()
        opt.zero_grad()
        self.manual_backward(loss)
        if self.batches in self.bad_steps:  # what an fp16 overflow leaves in the scaled gradients
            self.net.weight.grad.fill_(math.inf)
        self.applied.append(self.step_optimizer(opt, [self.net], "net"))
        if self.grad_scaler() is not None:
            self.scales.append(self.grad_scaler().get_scale())
        self.batches += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path: Path, module: ManualToy, steps: int = 8, fp16: bool = True) -> None:
    L.seed_everything(0)
    data = DataLoader(TensorDataset(torch.randn(128, 4)), batch_size=8)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)] if fp16 else None,
    )
    trainer.fit(module, data)


def test_overflow_skips_one_step_lowers_the_scale_and_training_goes_on(tmp_path: Path) -> None:
    module = ManualToy("stop")  # an overflow is not a fault: nan_policy=stop does not end the run
    fit(tmp_path, module)
    bad = OVERFLOW_STEPS[0]
    assert module.applied == [i != bad for i in range(8)]
    assert module.overflow_steps == 1 and module.skipped_steps == 0
    assert module.scales[bad] == module.scales[bad - 1] / 2  # the scaler lowered its scale
    # the overflowing step left the weights alone; every later step updated them
    assert torch.equal(module.history[bad], module.history[bad + 1])
    assert all(
        not torch.equal(a, b)
        for a, b in zip(module.history[bad + 1 : -1], module.history[bad + 2 :], strict=True)
    )
    assert torch.isfinite(module.net.weight).all()


def test_gradients_that_stay_non_finite_reach_the_nan_policy(tmp_path: Path) -> None:
    module = ManualToy("stop", bad_steps=tuple(range(100)))
    with pytest.raises(
        NumericalError, match=r"non-finite loss term\(s\) grad\(net\) at loss scale"
    ):
        fit(tmp_path, module, steps=40)
    assert module.overflow_steps == 11  # 2**10 halved eleven times: below the minimum scale of 1


def test_32_bit_keeps_the_nan_policy_on_gradients(tmp_path: Path) -> None:
    module = ManualToy("skip")
    fit(tmp_path, module, steps=6, fp16=False)
    bad = OVERFLOW_STEPS[0]
    assert module.grad_scaler() is None
    assert module.applied[bad] is False and all(a for i, a in enumerate(module.applied) if i != bad)
    assert module.skipped_steps == 1 and module.overflow_steps == 0
    assert torch.equal(module.history[bad], module.history[bad + 1])
