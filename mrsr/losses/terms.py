"""The generator's loss terms: one class per term, built by Hydra (``conf/loss_term``).

A loss preset (``conf/loss``) is a mapping ``terms: {name: term config}``; the objective
(:class:`mrsr.losses.objective.SRObjective`) builds each term with ``hydra.utils.instantiate``,
calls it on the step's :class:`TermInputs` and sums ``weight x term``. Options every term has:

- ``weight``: its factor (0 or a ``null`` entry switches it off; an extractor no term reads is
  never loaded);
- ``relative``: the weight is relative to the L1 term's gradient norm: at the first generator
  update the term is scaled so that its gradient on the SR output has the norm of the
  L1-vs-HR gradient (:meth:`~mrsr.losses.objective.SRObjective.calibrate`);
- ``target`` (pixel and feature terms): what the SR output ``y`` is compared with. ``hr``:
  ``y`` vs HR. ``lr`` (the paper, literally; features only): ``f(y)`` vs ``f(LR)``, which the
  interpolated LR minimises. ``dc`` (data consistency): ``y`` re-degraded with the data's own
  degradation ``D`` vs the LR input; the true HR minimises it (``D(HR) = LR``), the
  interpolated LR does not. Images on the LR grid are resized to the SR patch's size before an
  extractor sees them, so every feature is taken at one physical scale.

Adding a term: a subclass here (or anywhere importable) and a YAML in ``conf/loss_term``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from mrsr.errors import ConfigError
from mrsr.losses.feature import FeatureLoss, cosine_distance

TARGETS = ("hr", "lr", "dc")
PIXEL_LOSSES = ("l1", "charbonnier")
TARGET_WORDS = {"hr": "vs HR", "lr": "vs LR", "dc": "D(SR) vs LR"}


def pixel_loss(sr: Tensor, hr: Tensor, kind: str = "l1", eps: float = 1e-3) -> Tensor:
    """Mean L1, or Charbonnier ``sqrt(d^2 + eps^2) - eps`` (smooth at 0, L1 elsewhere)."""
    if kind == "charbonnier":
        return (torch.sqrt((sr - hr).pow(2) + eps * eps) - eps).mean()
    return F.l1_loss(sr, hr)


def spatial_cosine_distance(a: Tensor, b: Tensor, eps: float = 1e-10) -> Tensor:
    """LPIPS-style distance of (N, C, ...) maps: each location's channel vector is unit-normalised
    (``x / (|x| + eps)``), then ``|a_hat - b_hat|^2 / 2`` (``= 1 - cos`` where both are non-zero,
    0 where both are zero) is averaged over locations and the batch; float32 under autocast."""
    with torch.autocast(a.device.type, enabled=False):
        a, b = a.float(), b.float()
        a = a / (a.norm(dim=1, keepdim=True) + eps)
        b = b / (b.norm(dim=1, keepdim=True) + eps)
        return 0.5 * (a - b).pow(2).sum(dim=1).mean()


def to_size(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``x`` resized to ``size`` (bilinear, antialiased, in float32: CPU has no half-precision
    antialiased kernel); unchanged when it has that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(
        x.float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=True
    )


@dataclass
class TermInputs:
    """What the terms of one generator step read. Work shared by terms (the re-degraded output,
    the resized pairs, an extractor's features) is done once, on first use."""

    lr: Tensor
    hr: Tensor
    sr: Tensor
    degrade: Callable[[Tensor], Tensor]
    extractors: Mapping[str, FeatureLoss]
    adversarial: Callable[[Tensor], Tensor] | None = None
    _cache: dict[Any, Any] = field(default_factory=dict, init=False, repr=False)

    def _once(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def compared(self, target: str) -> tuple[Tensor, Tensor]:
        """(output, reference) of ``target``: (SR, HR), (SR, LR) or (D(SR), LR)."""
        if target == "dc":
            return self._once("dc", lambda: self.degrade(self.sr)), self.lr
        return self.sr, (self.hr if target == "hr" else self.lr)

    def features(self, extractor: str, target: str) -> tuple[tuple[Tensor, ...], ...]:
        """Features of the output (with gradients) and of the reference (detached) of
        ``target``, both first brought to the SR patch's size (one physical scale)."""

        def pair() -> tuple[Tensor, Tensor]:
            size = tuple(self.sr.shape[-2:])
            out, ref = self.compared(target)
            return to_size(out, size), to_size(ref, size)

        x, ref = self._once(("pair", target), pair)
        return self._once((extractor, target), lambda: self.extractors[extractor].pairs(x, ref))


class LossTerm:
    """One generator loss term: ``term(inputs)`` is its unweighted value."""

    extractor: ClassVar[str | None] = None  # the frozen extractor it reads (vit | disent)
    adversarial: ClassVar[bool] = False  # it needs the discriminator
    after_l1: ClassVar[bool] = True  # a two-phase pipeline trains it after an L1 phase
    can_be_relative: ClassVar[bool] = True
    targets: ClassVar[tuple[str, ...]] = ("hr",)
    symbol: ClassVar[str] = "L"  # how tables write it

    def __init__(
        self, name: str, weight: float = 1.0, relative: bool = False, target: str = "hr"
    ) -> None:
        self.name, self.weight, self.relative, self.target = (
            str(name),
            float(weight),
            bool(relative),
            str(target),
        )
        where = f"loss.terms.{self.name}"
        if not self.weight >= 0:
            raise ConfigError(f"{where}.weight={weight} must be >= 0")
        if self.relative and not self.can_be_relative:
            raise ConfigError(f"{where}.relative=true: this term is the reference, it cannot be")
        if self.target not in self.targets:
            choose = " or ".join(self.targets)
            raise ConfigError(f"{where}.target={target!r} is not for this term: choose {choose}")

    def __call__(self, inputs: TermInputs) -> Tensor:
        raise NotImplementedError

    def options(self) -> list[str]:
        """Its settings in words, for tables and logs."""
        return [TARGET_WORDS[self.target]] if len(self.targets) > 1 else []

    def describe(self) -> str:
        """``0.1 ‖∇L1‖ L_ViT (per location, vs HR)``: weight, symbol and options."""
        weight = f"{self.weight:g}" + (" ‖∇L1‖" if self.relative else "")
        options = ", ".join(self.options())
        return f"{weight} {self.symbol}" + (f" ({options})" if options else "")


class PixelTerm(LossTerm):
    """Pixel loss of SR vs HR, or of D(SR) vs LR (``target: dc``); ``kind``: ``l1`` or
    ``charbonnier`` (``sqrt(d^2 + 1e-6) - 1e-3``). The reference of ``relative`` weights."""

    after_l1 = False
    can_be_relative = False
    targets = ("hr", "dc")
    symbol = "L_pix"

    def __init__(
        self,
        name: str,
        weight: float = 1.0,
        target: str = "hr",
        kind: str = "l1",
        relative: bool = False,
    ) -> None:
        super().__init__(name, weight, relative, target)
        if kind not in PIXEL_LOSSES:
            raise ConfigError(
                f"loss.terms.{name}.kind={kind!r} is unknown: choose {' or '.join(PIXEL_LOSSES)}"
            )
        self.kind = kind

    def __call__(self, inputs: TermInputs) -> Tensor:
        return pixel_loss(*inputs.compared(self.target), self.kind)

    def options(self) -> list[str]:
        return [self.kind.upper() if self.kind == "l1" else self.kind, *super().options()]


class AdversarialTerm(LossTerm):
    """The generator's adversarial loss on SR (``sr.gan_loss``, the discriminator frozen)."""

    adversarial = True
    symbol = "L_adv"

    def __init__(self, name: str, weight: float = 1.0, relative: bool = False) -> None:
        super().__init__(name, weight, relative)

    def __call__(self, inputs: TermInputs) -> Tensor:
        if inputs.adversarial is None:
            raise ConfigError(f"loss.terms.{self.name} needs a discriminator")
        return inputs.adversarial(inputs.sr)


class FeatureTerm(LossTerm):
    """``1 - cos`` of frozen-extractor features of the output and its reference: one vector per
    image, or with ``spatial: true`` (a map) location by location, unit-normalised over
    channels at each location and averaged over locations, as LPIPS does."""

    targets = TARGETS
    has_map: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        weight: float = 1.0,
        relative: bool = False,
        target: str = "hr",
        spatial: bool = False,
    ) -> None:
        super().__init__(name, weight, relative, target)
        if spatial and not self.has_map:
            raise ConfigError(f"loss.terms.{name}.spatial=true: this feature is a vector")
        self.spatial = bool(spatial)

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        return (spatial_cosine_distance if self.spatial else cosine_distance)(a, b)

    def options(self) -> list[str]:
        return (["per location"] if self.spatial else []) + super().options()


class ViTTerm(FeatureTerm):
    """L_ViT: the ViT's mean token (pooled) or its token map (``spatial``)."""

    extractor = "vit"
    symbol = "L_ViT"

    def __call__(self, inputs: TermInputs) -> Tensor:
        fx, fr = inputs.features("vit", self.target)
        if self.spatial and len(fx) < 2:
            raise ConfigError(
                f"loss.terms.{self.name}.spatial=true needs a ViT extractor that returns token maps"
            )
        i = 1 if self.spatial else 0
        return self.distance(fx[i], fr[i])


class StructureTerm(FeatureTerm):
    """L_str: the disentanglement encoder's structure code z_s (flattened, or its map)."""

    extractor = "disent"
    symbol = "L_str"

    def __call__(self, inputs: TermInputs) -> Tensor:
        (zs_x, _), (zs_r, _) = inputs.features("disent", self.target)
        return self.distance(zs_x, zs_r)


class TextureTerm(FeatureTerm):
    """L_tex: the disentanglement encoder's texture vector z_t."""

    extractor = "disent"
    symbol = "L_tex"
    has_map = False

    def __call__(self, inputs: TermInputs) -> Tensor:
        (_, zt_x), (_, zt_r) = inputs.features("disent", self.target)
        return self.distance(zt_x, zt_r)
