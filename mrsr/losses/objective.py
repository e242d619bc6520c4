"""The generator objective of stage ``sr``: the weighted sum of the loss preset's terms.

A loss preset (``conf/loss``) is ``name``, ``label``, ``order`` (its row in results tables)
and ``terms``, a mapping of named term configs (``_target_``: a
:class:`~mrsr.losses.terms.LossTerm`, with ``weight``, ``relative``, ``target`` and the term's
own options; see :mod:`mrsr.losses.terms`). :func:`build_terms` builds them; the objective
evaluates them in :data:`SLOTS` order and sums ``weight x scale x term``, where ``scale`` is
1 unless the term's weight is ``relative`` (set at the first step, :meth:`SRObjective.calibrate`;
each factor capped at ``MAX_SCALE``). The scales are one buffer (a slot per term name), saved
with the checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import Tensor, nn

from mrsr.data.degrade import degrade
from mrsr.errors import ConfigError
from mrsr.losses.feature import FeatureLoss
from mrsr.losses.terms import LossTerm, PixelTerm, TermInputs

log = logging.getLogger("mrsr")

# The scale slots and the evaluation order of the terms named so; other names follow, sorted.
SLOTS = ("pixel", "adv", "vit", "str", "tex")
EXTRACTORS = ("vit", "disent")
MAX_SCALE = 1e4  # a relative weight's factor is capped here (a term with almost no gradient)
# The keys of the flat form of earlier versions (loss.adv: 0.1), refused with the new spelling.
FLAT_KEYS = ("pixel", "adv", "vit", "str", "tex", "pixel_type", "target", "features", "normalise")
NEW_SPELLING = {
    "pixel_type": "loss.terms.pixel.kind={value}",
    "target": "loss.terms.<term>.target={value}",
    "features": "loss.terms.<vit|str>.spatial={spatial}",
    "normalise": "loss.terms.<term>.relative=true",
}


def _ordered(names: list[str]) -> list[str]:
    return [k for k in SLOTS if k in names] + sorted(k for k in names if k not in SLOTS)


def build_terms(loss: Mapping[str, Any]) -> dict[str, LossTerm]:
    """The terms of a loss preset with a weight > 0, in evaluation order (``null`` entries are
    terms a preset switched off)."""
    flat = [k for k in FLAT_KEYS if k in loss]
    if flat:
        raise ConfigError(flat_form(flat[0], loss[flat[0]]))
    terms: dict[str, LossTerm] = {}
    for name, spec in (loss.get("terms") or {}).items():
        if spec is None:
            continue
        if not isinstance(spec, Mapping) or "_target_" not in spec:
            raise ConfigError(
                f"loss.terms.{name} has no _target_: add it from a term config "
                f"(+loss_term@loss.terms.{name}=<pixel|adversarial|vit|structure|texture>)"
            )
        try:
            term = instantiate(spec, name=str(name), _convert_="all")
        except InstantiationException as err:
            cause = err.__cause__
            if isinstance(cause, ConfigError):
                raise cause from None
            said = str(cause) if cause is not None else str(err).splitlines()[0]
            raise ConfigError(f"loss.terms.{name}: {said}") from err
        if not isinstance(term, LossTerm):
            raise ConfigError(f"loss.terms.{name}: {spec['_target_']} is not a LossTerm")
        if term.weight > 0:
            terms[str(name)] = term
    return {k: terms[k] for k in _ordered(list(terms))}


def flat_form(key: str, value: Any) -> str:
    """The one-line refusal of ``loss.<key>``, a key of the flat form of earlier versions."""
    new = NEW_SPELLING.get(key, "loss.terms.{key}.weight={value}").format(
        key=key, value=value, spatial=str(value == "spatial").lower()
    )
    return f"loss.{key} is the flat form of earlier versions: terms are under loss.terms ({new})"


def needed_extractors(loss: Mapping[str, Any]) -> list[str]:
    """The extractors (``vit``, ``disent``) a loss config's terms read: the one place that
    decides which are trained or loaded."""
    used = {t.extractor for t in build_terms(loss).values()}
    return [k for k in EXTRACTORS if k in used]


def pretrains_with_l1(loss: Mapping[str, Any]) -> bool:
    """Whether a loss config has terms that a two-phase run trains after an L1 phase
    (adversarial or feature terms)."""
    return any(t.after_l1 for t in build_terms(loss).values())


def l1_phase_terms(loss: Mapping[str, Any]) -> dict[str, Any]:
    """The ``terms`` of a two-phase run's L1 phase: a pixel term of the preset's ``pixel`` kind
    (also when its weight is 0; else L1), weight 1, against HR."""
    pixel = (loss.get("terms") or {}).get("pixel") or {}
    kind = str(pixel.get("kind", "l1"))
    target = f"{PixelTerm.__module__}.{PixelTerm.__qualname__}"
    return {"pixel": {"_target_": target, "weight": 1.0, "target": "hr", "kind": kind}}


class SRObjective(nn.Module):
    """The weighted sum of a loss preset's terms (see the module docstring).

    The extractors are held outside the module tree: frozen, in eval mode, never optimised or
    saved; they move with the module (``.to``). ``term_scale`` (the ``relative`` factors, one
    slot per name of :func:`scale_slots`) and ``calibrated`` are buffers and go into
    checkpoints.
    """

    def __init__(
        self,
        loss: Mapping[str, Any],
        scale: int,
        degradation: str | None = "bicubic",
        vit_extractor: nn.Module | None = None,
        disent_extractor: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.loss_terms = build_terms(loss)
        if not self.loss_terms:
            raise ConfigError(
                f"loss={loss.get('name')}: no term with a weight > 0 (loss.terms: a mapping of "
                "terms, e.g. loss.terms.pixel.weight=1)"
            )
        self.relative = [k for k, t in self.loss_terms.items() if t.relative]
        self.scale, self.degradation = int(scale), degradation or "bicubic"
        self.slots = scale_slots(self.loss_terms)
        self.register_buffer("term_scale", torch.ones(len(self.slots)))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self._host: tuple[list[float], bool] | None = None
        self._features: dict[str, FeatureLoss] = {}
        given = {"vit": vit_extractor, "disent": disent_extractor}
        for name in EXTRACTORS:
            users = [f"loss.terms.{k}" for k, t in self.loss_terms.items() if t.extractor == name]
            if not users:
                continue
            if given[name] is None:
                raise ConfigError(f"{' and '.join(users)} need the {name} feature extractor")
            self._features[name] = FeatureLoss(given[name])

    @property
    def weights(self) -> dict[str, float]:
        """The configured weight of each term."""
        return {k: t.weight for k, t in self.loss_terms.items()}

    @property
    def uses_discriminator(self) -> bool:
        return any(t.adversarial for t in self.loss_terms.values())

    def _apply(self, fn, *args, **kwargs):  # move the (unregistered) extractors along
        super()._apply(fn, *args, **kwargs)
        for f in self._features.values():
            f._apply(fn, *args, **kwargs)
        return self

    def _is_calibrated(self) -> bool:
        if self._host is None:
            self._refresh()
        return self._host[1]  # type: ignore[index]

    def _refresh(self) -> None:
        """Host copies of the buffers (no device sync per step)."""
        self._host = (self.term_scale.tolist(), bool(self.calibrated))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Checkpoints written before these buffers existed (0.3) load with scales of one,
        calibrated unless a term is ``relative``; the host copies are refreshed."""
        state_dict.setdefault(prefix + "term_scale", torch.ones_like(self.term_scale))
        state_dict.setdefault(prefix + "calibrated", torch.tensor(not self.relative))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._host = None

    def scales(self) -> dict[str, float]:
        """Each term's ``relative`` factor (1 for the others)."""
        if self._host is None:
            self._refresh()
        host = self._host[0]  # type: ignore[index]
        return {k: host[self.slots.index(k)] for k in self.loss_terms}

    def effective_weights(self) -> dict[str, float]:
        """The configured weights times the ``relative`` factors."""
        return {k: self.loss_terms[k].weight * s for k, s in self.scales().items()}

    def terms(
        self, lr: Tensor, hr: Tensor, sr: Tensor, adv: Callable[[Tensor], Tensor] | None = None
    ) -> dict[str, Tensor]:
        """The unweighted terms; ``adv(sr)`` is the adversarial loss."""
        inputs = TermInputs(
            lr, hr, sr, lambda x: degrade(x, self.scale, self.degradation), self._features, adv
        )
        return {k: term(inputs) for k, term in self.loss_terms.items()}

    def total(self, terms: dict[str, Tensor]) -> Tensor:
        w = self.effective_weights()
        return sum(w[k] * v for k, v in terms.items())  # type: ignore[return-value]

    @torch.no_grad()
    def average_scales_over_ranks(self) -> None:
        """One set of weights for every process of a distributed run (mean of their scales)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.term_scale)
            self.term_scale /= torch.distributed.get_world_size()
            self._host = None

    @torch.no_grad()
    def _set_scales(self, scales: dict[str, float]) -> None:
        for k, v in scales.items():
            self.term_scale[self.slots.index(k)] = v
        self.calibrated.fill_(True)
        self._host = None

    def calibrate(self, sr: Tensor, hr: Tensor, terms: dict[str, Tensor]) -> dict[str, float]:
        """Set the ``relative`` scales from gradient norms on ``sr`` (once; a no-op after, and
        a no-op when a norm is not finite, so the next step tries again)."""
        if not self.relative or self._is_calibrated():
            return {}
        listed = [k for k in self.relative if k in terms]
        # every loss x the same constant: fp16 gradients stay representable
        boost = float(sr.numel())

        def norm(t: Tensor) -> float:
            (g,) = torch.autograd.grad(t * boost, sr, retain_graph=True, allow_unused=True)
            return float(g.float().norm()) / boost if g is not None else 0.0

        ref = norm(F.l1_loss(sr, hr))
        norms = {k: norm(terms[k]) for k in listed}
        if not all(math.isfinite(v) for v in (ref, *norms.values())) or ref <= 0:
            return {}
        scales = {k: min(MAX_SCALE, ref / max(v, 1e-12)) for k, v in norms.items()}
        self._set_scales(scales)
        log.info(
            "relative loss weights: gradient-norm scales %s (L1 gradient norm %.3g)",
            ", ".join(f"{k} x{v:.3g}" for k, v in scales.items()),
            ref,
        )
        return scales


def scale_slots(terms: Mapping[str, LossTerm]) -> list[str]:
    """The names with a slot in ``term_scale``: :data:`SLOTS` always (checkpoints of every
    preset have the same buffer), then other term names, sorted."""
    return [*SLOTS, *sorted(k for k in terms if k not in SLOTS)]
