"""The generator objective of stage ``sr``: one place for its terms, weights and references.

``loss`` config keys (the ``conf/loss`` presets):

- weights ``pixel``, ``adv``, ``vit``, ``str``, ``tex`` (a zero weight switches a term off, and
  an extractor no term uses is never loaded);
- ``target``: what the SR output ``y`` is compared with.
  ``hr``: ``pixel(y, HR)`` and ``f(y)`` vs ``f(HR)``.
  ``lr`` (the paper, literally): ``f(y)`` vs ``f(LR)``; the interpolated LR minimises it.
  ``dc`` (data consistency): ``y`` re-degraded with the data's own degradation ``D`` is
  compared with the LR input, ``pixel(D(y), LR)`` and ``f(D(y))`` vs ``f(LR)``; the true HR
  minimises every term (``D(HR) = LR``), the interpolated LR does not.
  Images on the LR grid are resized to the SR patch's size before an extractor sees them, so
  every feature is taken at one physical scale.
- ``features``: ``pooled`` compares one vector per image (mean ViT token, z_t, and z_s
  flattened), ``1 - cos``; ``spatial`` compares the ViT token map and the z_s map location by
  location (unit-normalised over channels at each location, ``1 - cos`` averaged over
  locations, as LPIPS does), z_t stays a vector.
- ``normalise``: terms (of ``adv``, ``vit``, ``str``, ``tex``) whose weight is made relative
  to the pixel term: at the first training step each listed term is scaled so that its
  gradient on the SR output has the norm of the L1-vs-HR gradient; its configured weight is
  then the ratio of the two norms (each factor capped at ``MAX_SCALE``). The scales are
  buffers, saved with the checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrsr.data.degrade import degrade
from mrsr.errors import ConfigError
from mrsr.losses.feature import FeatureLoss, cosine_distance

log = logging.getLogger("mrsr")

LOSS_KEYS = ("pixel", "adv", "vit", "str", "tex")
PIXEL_LOSSES = ("l1", "charbonnier")
TARGETS = ("hr", "lr", "dc")
FEATURE_MODES = ("pooled", "spatial")
NORMALISABLE = ("adv", "vit", "str", "tex")
MAX_SCALE = 1e4  # a normalise factor is capped here (a term with almost no gradient stays small)


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


def needed_extractors(loss: Mapping[str, Any]) -> list[str]:
    """The extractors (``vit``, ``disent``) a loss config uses: the one place that decides it."""
    needed = []
    if float(loss.get("vit", 0.0)) > 0:
        needed.append("vit")
    if float(loss.get("str", 0.0)) > 0 or float(loss.get("tex", 0.0)) > 0:
        needed.append("disent")
    return needed


def pretrains_with_l1(loss: Mapping[str, Any]) -> bool:
    """Whether a loss config has adversarial or feature terms (which start from an L1 phase)."""
    return any(float(loss.get(k, 0.0)) > 0 for k in NORMALISABLE)


class SRObjective(nn.Module):
    """Weighted generator loss terms (see the module docstring).

    The extractors are held outside the module tree: frozen, in eval mode, never optimised or
    saved; they move with the module (``.to``). ``term_scale`` (the ``normalise`` factors) and
    ``calibrated`` are buffers and go into checkpoints.
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
        self.weights = {k: float(loss.get(k, 0.0)) for k in LOSS_KEYS}
        if any(w < 0 for w in self.weights.values()) or not any(self.weights.values()):
            raise ConfigError(f"loss weights {self.weights} must be >= 0 and not all zero")
        self.pixel_type = str(loss.get("pixel_type", "l1"))
        if self.pixel_type not in PIXEL_LOSSES:
            raise ConfigError(
                f"loss.pixel_type={self.pixel_type!r} is unknown: "
                f"choose {' or '.join(PIXEL_LOSSES)}"
            )
        self.target = str(loss.get("target", "hr"))
        if self.target not in TARGETS:
            raise ConfigError(
                f"loss.target={self.target!r} is unknown: choose {', '.join(TARGETS)}"
            )
        self.mode = str(loss.get("features", "pooled"))
        if self.mode not in FEATURE_MODES:
            raise ConfigError(
                f"loss.features={self.mode!r} is unknown: choose {' or '.join(FEATURE_MODES)}"
            )
        self.normalise = [str(k) for k in (loss.get("normalise") or [])]
        bad = [k for k in self.normalise if k not in NORMALISABLE]
        if bad:
            raise ConfigError(
                f"loss.normalise: {', '.join(bad)} cannot be normalised "
                f"(choose from {', '.join(NORMALISABLE)})"
            )
        self.scale, self.degradation = int(scale), degradation or "bicubic"
        self.register_buffer("term_scale", torch.ones(len(LOSS_KEYS)))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self._host: tuple[list[float], bool] | None = None
        self._features: dict[str, FeatureLoss] = {}
        needed = needed_extractors(self.weights)
        if "vit" in needed:
            if vit_extractor is None:
                raise ConfigError("loss.vit > 0 needs a ViT feature extractor")
            self._features["vit"] = FeatureLoss(vit_extractor)
        if "disent" in needed:
            if disent_extractor is None:
                raise ConfigError("loss.str/loss.tex > 0 need a disentanglement encoder")
            self._features["disent"] = FeatureLoss(disent_extractor)

    @property
    def uses_discriminator(self) -> bool:
        return self.weights["adv"] > 0

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
        calibrated unless the preset asks for ``normalise``; the host copies are refreshed."""
        state_dict.setdefault(prefix + "term_scale", torch.ones_like(self.term_scale))
        state_dict.setdefault(prefix + "calibrated", torch.tensor(not self.normalise))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._host = None

    def effective_weights(self) -> dict[str, float]:
        """The configured weights times the ``normalise`` scales."""
        if self._host is None:
            self._refresh()
        scales = self._host[0]  # type: ignore[index]
        return {k: self.weights[k] * scales[i] for i, k in enumerate(LOSS_KEYS)}

    def _feature_terms(self, x: Tensor, ref: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        """Feature distances of ``x`` and ``ref``, both first brought to ``size`` (the SR patch's
        HR grid): LR-grid images cover the same anatomy in fewer pixels, and the extractors must
        see every image at one physical scale (the one they were trained at)."""
        x, ref = to_size(x, size), to_size(ref, size)
        terms: dict[str, Tensor] = {}
        spatial = self.mode == "spatial"
        if "vit" in self._features:
            fx, fr = self._features["vit"].pairs(x, ref)
            if spatial and len(fx) < 2:
                raise ConfigError(
                    "loss.features=spatial needs a ViT extractor that returns token maps"
                )
            i = 1 if spatial else 0
            terms["vit"] = (spatial_cosine_distance if spatial else cosine_distance)(fx[i], fr[i])
        if "disent" in self._features:
            (zs_x, zt_x), (zs_r, zt_r) = self._features["disent"].pairs(x, ref)
            if self.weights["str"] > 0:
                terms["str"] = (spatial_cosine_distance if spatial else cosine_distance)(zs_x, zs_r)
            if self.weights["tex"] > 0:
                terms["tex"] = cosine_distance(zt_x, zt_r)
        return terms

    def terms(
        self, lr: Tensor, hr: Tensor, sr: Tensor, adv: Callable[[Tensor], Tensor] | None = None
    ) -> dict[str, Tensor]:
        """The unweighted terms with a non-zero weight; ``adv(sr)`` is the adversarial loss."""
        if self.target == "dc":
            out, ref, pixel_ref = degrade(sr, self.scale, self.degradation), lr, lr
        else:
            out, ref, pixel_ref = sr, (hr if self.target == "hr" else lr), hr
        terms: dict[str, Tensor] = {}
        if self.weights["pixel"] > 0:
            terms["pixel"] = pixel_loss(out, pixel_ref, self.pixel_type)
        if self.weights["adv"] > 0:
            if adv is None:
                raise ConfigError("loss.adv > 0 needs a discriminator")
            terms["adv"] = adv(sr)
        if self._features:
            terms.update(self._feature_terms(out, ref, tuple(sr.shape[-2:])))
        return terms

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
            self.term_scale[LOSS_KEYS.index(k)] = v
        self.calibrated.fill_(True)
        self._host = None

    def calibrate(self, sr: Tensor, hr: Tensor, terms: dict[str, Tensor]) -> dict[str, float]:
        """Set the ``normalise`` scales from gradient norms on ``sr`` (once; a no-op after, and
        a no-op when a norm is not finite, so the next step tries again)."""
        if not self.normalise or self._is_calibrated():
            return {}
        listed = [k for k in self.normalise if k in terms]
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
            "loss.normalise: gradient-norm scales %s (L1 gradient norm %.3g)",
            ", ".join(f"{k} x{v:.3g}" for k, v in scales.items()),
            ref,
        )
        return scales
