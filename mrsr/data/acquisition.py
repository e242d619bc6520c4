"""LR operators as objects: how an HR slice becomes the LR image a network is given.

One interface: ``op(hr, scale, generator=None) -> lr`` on float tensors ``(N, 1, H, W)`` of the
per-volume normalised scale (H and W divide by ``scale``), deterministic given the generator
(``None``: torch's global RNG, which the training loader seeds per sample from ``(seed, epoch,
position)``, so a resumed run sees the same LR). ``op.pair(hr, scale, generator)`` also applies
what an operator changes on the HR side (a bias field, a gamma: training only) and returns
``(lr, hr)``. Built by Hydra from ``conf/degradation/*.yaml`` (``_target_``), or from a name.

- :class:`Bicubic`: antialiased bicubic down-sampling (the paper's protocol; deterministic).
- :class:`KSpace`: the central ``1/scale`` of the 2D spectrum, magnitude (deterministic).
- :class:`MRAcquisition`: a scanner's in-plane acquisition, drawn per image: k-space extent
  (effective resolution), a reconstruction window (none, Hamming, Hann, Tukey, Fermi), partial
  Fourier along one axis (zero-filled), complex Gaussian noise before the magnitude; on the HR
  side optionally a smooth bias field (MONAI's ``RandBiasField``) and a narrow gamma.
- :class:`Mix`: one of several operators per image, with weights (e.g. the acquisition model
  and bicubic).

Every operator has a ``name`` (results rows, the checkpoint), a ``label`` (tables) and a
``nominal`` deterministic operator (``bicubic`` or ``kspace``): the one a re-degradation error,
a data-consistency loss or the k-space projection at inference uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mrsr.data.degrade import bicubic_down, kspace_lowpass, kspace_truncate
from mrsr.errors import ConfigError
from mrsr.ops import zerofill_upsample

WINDOWS = ("none", "hamming", "hann", "tukey", "fermi")
NOMINAL = ("bicubic", "kspace")


def _check_size(hr: Tensor, scale: int) -> None:
    if hr.shape[-1] % scale or hr.shape[-2] % scale:
        raise ConfigError(f"HR size {tuple(hr.shape[-2:])} does not divide by scale {scale}")


def _uniform(n: int, span: Sequence[float], g: torch.Generator | None) -> Tensor:
    lo, hi = float(span[0]), float(span[1])
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _span(value: Any, key: str, lo: float = 0.0, hi: float = math.inf) -> tuple[float, float]:
    """``[a, b]`` with ``lo <= a <= b <= hi``, else a one-line refusal naming ``key``."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"degradation.{key}={value!r} is invalid: expected [lo, hi]") from None
    if not lo <= a <= b <= hi:
        raise ConfigError(
            f"degradation.{key}={[a, b]} is invalid: expected {lo:g} <= lo <= hi <= {hi:g}"
        )
    return a, b


class Degradation:
    """Base class: ``__call__`` makes LR, ``pair`` makes the training pair."""

    name = "base"
    label = "base"
    nominal = "bicubic"
    random = False  # True: draws per image (made on the fly in training)

    def __init__(self, name: str | None = None, label: str | None = None) -> None:
        self.name = str(name or type(self).name)
        self.label = str(label or type(self).label)

    def __call__(self, hr: Tensor, scale: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def pair(
        self, hr: Tensor, scale: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        return self(hr, scale, generator), hr

    def describe(self) -> dict[str, Any]:
        """The operator's settings as plain data (checkpoints, records, cache keys)."""
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


class Bicubic(Degradation):
    """Antialiased bicubic down-sampling in image space, clamped at 0 (the paper's protocol)."""

    name = label = nominal = "bicubic"

    def __call__(self, hr: Tensor, scale: int, generator: torch.Generator | None = None) -> Tensor:
        _check_size(hr, scale)
        return bicubic_down(hr, scale)


class KSpace(Degradation):
    """The central ``1/scale`` of the 2D spectrum, magnitude, on the LR grid
    (:func:`mrsr.data.degrade.kspace_truncate`)."""

    name = nominal = "kspace"
    label = "k-space truncation"

    def __call__(self, hr: Tensor, scale: int, generator: torch.Generator | None = None) -> Tensor:
        _check_size(hr, scale)
        return kspace_truncate(hr, scale)


def window_profile(u: Tensor, kind: Tensor, alpha: Tensor, radius: Tensor) -> Tensor:
    """Reconstruction windows on normalised frequencies ``u`` (``|u| = 1`` at the edge of the
    acquired band, 0 beyond), one window per row: ``kind`` indexes :data:`WINDOWS`; ``alpha`` is
    the Tukey taper fraction, ``radius`` the Fermi half-height point (width 0.03)."""
    a = u.abs()
    kind, alpha, radius = kind[:, None], alpha[:, None], radius[:, None]
    hamming = 0.54 + 0.46 * torch.cos(torch.pi * a)
    hann = 0.5 + 0.5 * torch.cos(torch.pi * a)
    taper = ((a - (1 - alpha)) / alpha).clamp(0, 1)
    tukey = 0.5 + 0.5 * torch.cos(torch.pi * taper)
    fermi = torch.sigmoid((radius - a) / 0.03)
    out = torch.ones_like(a)
    for i, w in enumerate((out, hamming, hann, tukey, fermi)):
        out = torch.where(kind == i, w, out)
    return torch.where(a <= 1, out, torch.zeros_like(out))


class MRAcquisition(Degradation):
    """A scanner's in-plane acquisition, its settings drawn per image.

    The LR spectrum is the central ``1/scale`` of the HR slice's (:class:`KSpace`'s, before the
    magnitude); then, per image and per in-plane axis:

    - ``extent``: the fraction of that band that holds data (``[0.85, 1]``: an effective
      resolution up to 15 % below the grid's; more than the grid holds cannot be represented);
    - a window over the acquired band, drawn from ``windows`` (weights of none, hamming, hann,
      tukey, fermi; the Tukey taper in ``tukey_alpha``, the Fermi half-height in
      ``fermi_radius``), separable over the two axes;
    - partial Fourier with probability ``partial_fourier_p``: along one axis (drawn), only a
      fraction in ``partial_fourier`` of the band is kept, from one side (drawn), zero-filled;
    - complex Gaussian noise (each of the real and imaginary parts) before the magnitude, of
      standard deviation ``sigma`` times the robust maximum (normalised intensity 1; white matter
      on a T1 sits near 0.7-0.9 of it): none with probability ``noise_none``, else in
      ``noise_typical`` with probability ``noise_typical_p``, else in ``noise``.

    ``noise_in_hr_p`` (``pair``, training only): the probability that the drawn noise belongs to
    the HR acquisition instead (complex, of the same sigma, before its magnitude): the HR target
    then carries it and the LR image holds its in-band part, as when a noisy scan is both the
    input's source and the reference; the network learns to keep in-band noise there instead of
    smoothing it away. Real scans carry noise in their reference too.

    On the HR side (``pair``, training only): with probability ``bias_field_p`` a smooth
    multiplicative field (MONAI ``RandBiasField``, degree 3, coefficients in ``bias_field``),
    and a gamma in ``gamma`` (null: none), applied before degrading, so the pair stays exact.
    """

    name = "mri"
    label = "MR acquisition model"
    nominal = "kspace"
    random = True

    def __init__(
        self,
        extent: Sequence[float] = (0.85, 1.0),
        windows: Mapping[str, float] | None = None,
        tukey_alpha: Sequence[float] = (0.2, 0.6),
        fermi_radius: Sequence[float] = (0.8, 0.95),
        partial_fourier: Sequence[float] = (0.6, 1.0),
        partial_fourier_p: float = 0.3,
        noise: Sequence[float] = (0.0, 0.05),
        noise_typical: Sequence[float] = (0.008, 0.035),
        noise_typical_p: float = 0.75,
        noise_none: float = 0.1,
        bias_field: Sequence[float] | None = None,
        bias_field_p: float = 0.0,
        gamma: Sequence[float] | None = None,
        noise_in_hr_p: float = 0.0,
        name: str | None = None,
        label: str | None = None,
    ) -> None:
        super().__init__(name, label)
        self.extent = _span(extent, "extent", 0.05, 1.0)
        weights = dict(windows or {"none": 1.0})
        unknown = set(weights) - set(WINDOWS)
        if unknown:
            raise ConfigError(
                f"degradation.windows has unknown window(s) {sorted(unknown)}: "
                f"use {', '.join(WINDOWS)}"
            )
        w = torch.tensor([float(weights.get(k, 0.0)) for k in WINDOWS], dtype=torch.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ConfigError("degradation.windows: weights must be >= 0 with a positive sum")
        self.windows = {k: float(weights.get(k, 0.0)) for k in WINDOWS}
        self._window_p = w / w.sum()
        self.tukey_alpha = _span(tukey_alpha, "tukey_alpha", 1e-3, 1.0)
        self.fermi_radius = _span(fermi_radius, "fermi_radius", 0.1, 1.0)
        self.partial_fourier = _span(partial_fourier, "partial_fourier", 0.5, 1.0)
        self.noise = _span(noise, "noise", 0.0)
        self.noise_typical = _span(noise_typical, "noise_typical", 0.0)
        for key, p in (
            ("partial_fourier_p", partial_fourier_p),
            ("noise_typical_p", noise_typical_p),
            ("noise_none", noise_none),
            ("bias_field_p", bias_field_p),
            ("noise_in_hr_p", noise_in_hr_p),
        ):
            if not 0.0 <= float(p) <= 1.0:
                raise ConfigError(f"degradation.{key}={p} is invalid: expected a probability")
        self.partial_fourier_p = float(partial_fourier_p)
        self.noise_typical_p, self.noise_none = float(noise_typical_p), float(noise_none)
        self.noise_in_hr_p = float(noise_in_hr_p)
        self.bias_field = None if bias_field is None else _span(bias_field, "bias_field", 0.0)
        self.bias_field_p = float(bias_field_p) if bias_field is not None else 0.0
        self.gamma = None if gamma is None else _span(gamma, "gamma", 1e-3)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "extent": list(self.extent),
            "windows": dict(self.windows),
            "tukey_alpha": list(self.tukey_alpha),
            "fermi_radius": list(self.fermi_radius),
            "partial_fourier": list(self.partial_fourier),
            "partial_fourier_p": self.partial_fourier_p,
            "noise": list(self.noise),
            "noise_typical": list(self.noise_typical),
            "noise_typical_p": self.noise_typical_p,
            "noise_none": self.noise_none,
            "bias_field": self.bias_field and list(self.bias_field),
            "bias_field_p": self.bias_field_p,
            "gamma": self.gamma and list(self.gamma),
            "noise_in_hr_p": self.noise_in_hr_p,
        }

    # -- draws (float64 on the CPU, from the generator: the same on every device)
    def draw(self, n: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The settings of ``n`` acquisitions: per image and axis (rows y, x) extent, window,
        Tukey alpha, Fermi radius; partial-Fourier fraction (1: none), its axis and side; sigma."""
        g = generator
        extent = _uniform(2 * n, self.extent, g).view(n, 2)
        kind = torch.multinomial(self._window_p, 2 * n, replacement=True, generator=g).view(n, 2)
        alpha = _uniform(2 * n, self.tukey_alpha, g).view(n, 2)
        radius = _uniform(2 * n, self.fermi_radius, g).view(n, 2)
        pf_on = torch.rand(n, generator=g, dtype=torch.float64) < self.partial_fourier_p
        fraction = torch.where(pf_on, _uniform(n, self.partial_fourier, g), torch.ones(n).double())
        pf_axis = torch.randint(0, 2, (n,), generator=g)
        pf_side = torch.randint(0, 2, (n,), generator=g) * 2 - 1
        which = torch.rand(n, generator=g, dtype=torch.float64)
        typical = _uniform(n, self.noise_typical, g)
        wide = _uniform(n, self.noise, g)
        sigma = torch.where(which < self.noise_typical_p, typical, wide)
        clean = torch.rand(n, generator=g, dtype=torch.float64) < self.noise_none
        sigma = torch.where(clean, 0.0, sigma)
        return {
            "extent": extent,
            "window": kind,
            "alpha": alpha,
            "radius": radius,
            "pf_fraction": fraction,
            "pf_axis": pf_axis,
            "pf_side": pf_side,
            "sigma": sigma,
        }

    def mask(self, shape: tuple[int, int], settings: dict[str, Tensor], device) -> Tensor:
        """The k-space weights ``(N, 1, h, w)`` (FFT order) of the LR grid ``shape``."""
        n = settings["extent"].shape[0]
        axes = []
        for i, m in enumerate(shape):
            k = torch.fft.fftfreq(m, d=1.0 / m, dtype=torch.float64).round()
            u = k / max(m / 2, 1)  # -1 at the LR Nyquist bin
            e = settings["extent"][:, i : i + 1]
            w = window_profile(
                u.expand(n, m) / e,
                settings["window"][:, i],
                settings["alpha"][:, i],
                settings["radius"][:, i],
            )
            # partial Fourier on this axis: keep u/e >= 1 - 2f (side +1) or <= 2f - 1 (side -1)
            on = (settings["pf_axis"] == i)[:, None]
            f = settings["pf_fraction"][:, None]
            side = settings["pf_side"][:, None].double()
            keep = (side * u / e) >= (1 - 2 * f) - 1e-9
            w = torch.where(on & ~keep, torch.zeros_like(w), w)
            axes.append(w)
        out = axes[0][:, :, None] * axes[1][:, None, :]
        return out[:, None].to(device)

    def __call__(self, hr: Tensor, scale: int, generator: torch.Generator | None = None) -> Tensor:
        return self._acquire(hr, scale, generator, in_hr_p=0.0)[0]

    def pair(
        self, hr: Tensor, scale: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        hr = self.hr_changes(hr, generator)
        return self._acquire(hr, scale, generator, self.noise_in_hr_p)

    def _acquire(
        self, hr: Tensor, scale: int, generator: torch.Generator | None, in_hr_p: float
    ) -> tuple[Tensor, Tensor]:
        """``(lr, hr)``: the drawn acquisition of ``hr``; with probability ``in_hr_p`` an image's
        noise is the HR acquisition's (HR returned as its noisy magnitude)."""
        _check_size(hr, scale)
        n = hr.shape[0]
        settings = self.draw(n, generator)
        sigma = settings["sigma"].view(n, 1, 1, 1)
        source: Tensor = hr
        if in_hr_p > 0:
            in_hr = (torch.rand(n, generator=generator, dtype=torch.float64) < in_hr_p).view(
                n, 1, 1, 1
            )
            if bool((in_hr & (sigma > 0)).any()):
                noise = torch.randn((2, *hr.shape), generator=generator, dtype=torch.float64)
                cplx = torch.complex(noise[0], noise[1]) * torch.where(in_hr, sigma, 0.0)
                source = hr.double() + cplx.to(hr.device)
                hr = torch.where(in_hr.to(hr.device), source.abs(), hr.double()).to(hr.dtype)
            sigma = torch.where(in_hr, 0.0, sigma)
        spec = torch.fft.fft2(kspace_lowpass(source, scale), norm="forward")
        weights = self.mask(tuple(spec.shape[-2:]), settings, hr.device)
        img = torch.fft.ifft2(spec * weights, norm="forward")
        if bool((sigma > 0).any()):
            noise = torch.randn((2, *img.shape), generator=generator, dtype=torch.float64)
            img = img + (sigma * torch.complex(noise[0], noise[1])).to(hr.device)
        return img.abs().to(hr.dtype), hr

    def hr_changes(self, hr: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The bias field and gamma drawn for each image, applied to ``hr`` (training only)."""
        if self.bias_field is not None and self.bias_field_p > 0:
            from monai.transforms import RandBiasField

            field = RandBiasField(degree=3, coeff_range=self.bias_field, prob=1.0)
            out = []
            for img in hr:
                seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
                if float(torch.rand((), generator=generator)) < self.bias_field_p:
                    field.set_random_state(seed=seed)
                    biased = field(img.cpu().float().numpy())  # MONAI may give a MetaTensor
                    biased = biased.as_tensor() if hasattr(biased, "as_tensor") else biased
                    img = torch.as_tensor(biased).to(hr.device, hr.dtype)
                out.append(img)
            hr = torch.stack(out)
        if self.gamma is not None:
            g = _log_uniform(hr.shape[0], self.gamma, generator).to(hr.device, hr.dtype)
            hr = hr.clamp(min=0).pow(g.view(-1, 1, 1, 1))
        return hr


def _log_uniform(n: int, span: Sequence[float], g: torch.Generator | None) -> Tensor:
    lo, hi = math.log(span[0]), math.log(span[1])
    return torch.exp(lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64))


class Mix(Degradation):
    """One of ``components`` per image, drawn with ``weights`` (default: equal)."""

    random = True

    def __init__(
        self,
        components: Sequence[Degradation | Mapping[str, Any] | str],
        weights: Sequence[float] | None = None,
        name: str = "mix",
        label: str | None = None,
        nominal: str | None = None,
    ) -> None:
        self.components = [as_degradation(c) for c in components]
        if not self.components:
            raise ConfigError("degradation.components is empty: list at least one operator")
        w = [1.0] * len(self.components) if weights is None else [float(x) for x in weights]
        if len(w) != len(self.components) or min(w) < 0 or sum(w) <= 0:
            raise ConfigError(
                f"degradation.weights={w} is invalid: one weight >= 0 per component, positive sum"
            )
        self.weights = torch.tensor(w, dtype=torch.float64) / sum(w)
        self.name = str(name)
        self.label = label or " / ".join(c.label for c in self.components)
        self.nominal = nominal or self.components[int(self.weights.argmax())].nominal
        if self.nominal not in NOMINAL:
            raise ConfigError(f"degradation.nominal={self.nominal!r}: use bicubic or kspace")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "components": [c.describe() for c in self.components],
            "weights": [float(x) for x in self.weights],
        }

    def _choice(self, n: int, generator: torch.Generator | None) -> Tensor:
        return torch.multinomial(self.weights, n, replacement=True, generator=generator)

    def __call__(self, hr: Tensor, scale: int, generator: torch.Generator | None = None) -> Tensor:
        return self.pair(hr, scale, generator, hr_changes=False)[0]

    def pair(
        self,
        hr: Tensor,
        scale: int,
        generator: torch.Generator | None = None,
        hr_changes: bool = True,
    ) -> tuple[Tensor, Tensor]:
        _check_size(hr, scale)
        pick = self._choice(hr.shape[0], generator)
        lr = hr.new_empty((hr.shape[0], hr.shape[1], hr.shape[2] // scale, hr.shape[3] // scale))
        hr_out = hr.clone() if hr_changes else hr
        for i, op in enumerate(self.components):
            idx = torch.nonzero(pick == i).flatten()
            if len(idx) == 0:
                continue
            idx = idx.to(hr.device)
            if hr_changes:
                lo, hi = op.pair(hr[idx], scale, generator)
                hr_out[idx] = hi
            else:
                lo = op(hr[idx], scale, generator)
            lr[idx] = lo
        return lr, hr_out


class BlockAverage(Degradation):
    """The mean of each ``scale x scale`` block (detector binning; deterministic). No model is
    trained on it: an operator for judging models outside their training operators."""

    name = "area"
    label = "block average"
    nominal = "bicubic"

    def __call__(self, hr: Tensor, scale: int, generator: torch.Generator | None = None) -> Tensor:
        _check_size(hr, scale)
        return torch.nn.functional.avg_pool2d(hr, scale)


class Described(Degradation):
    """An operator known by its description only (a through-plane slice profile, estimated from
    the scan and applied by :mod:`mrsr.isotropic`): results rows and checkpoints carry its name;
    it makes no LR here."""

    random = False

    def __init__(self, description: str) -> None:
        super().__init__(description, description)

    def __call__(self, hr: Tensor, scale: int, generator: torch.Generator | None = None) -> Tensor:
        raise ConfigError(f"degradation {self.name!r} is described here, not simulated")


BUILTIN: dict[str, type[Degradation]] = {"bicubic": Bicubic, "kspace": KSpace, "area": BlockAverage}


def fixed_acquisition(
    name: str,
    window: str = "none",
    extent: float = 1.0,
    partial_fourier: float | None = None,
    noise: float = 0.0,
) -> MRAcquisition:
    """One acquisition setting, not a draw: a window over the whole band (or ``extent`` of it),
    partial Fourier of the given fraction (axis and side still drawn), noise of sigma ``noise``
    (times the robust maximum)."""
    return MRAcquisition(
        extent=(extent, extent),
        windows={window: 1.0},
        partial_fourier=(partial_fourier or 1.0, partial_fourier or 1.0),
        partial_fourier_p=1.0 if partial_fourier else 0.0,
        noise=(noise, noise),
        noise_typical=(noise, noise),
        noise_none=0.0 if noise > 0 else 1.0,
        name=name,
        label=name,
    )


# The evaluation matrix's LR operators (experiments/eval_unseen.py). The mix's training ranges
# hold the first six; the last three lie outside them (stronger noise, a narrower band, an
# image-space operator no model is trained on).
MATRIX_OPERATORS = {
    "bicubic": Bicubic,
    "kspace": KSpace,
    "kspace+hamming": lambda: fixed_acquisition("kspace+hamming", window="hamming"),
    "kspace+pf0.625": lambda: fixed_acquisition("kspace+pf0.625", partial_fourier=0.625),
    "kspace+noise1.5%": lambda: fixed_acquisition("kspace+noise1.5%", noise=0.015),
    "kspace+noise4%": lambda: fixed_acquisition("kspace+noise4%", noise=0.04),
    "kspace+noise8%": lambda: fixed_acquisition("kspace+noise8%", noise=0.08),
    "kspace+extent0.7": lambda: fixed_acquisition("kspace+extent0.7", extent=0.7),
    "area": BlockAverage,
}
OUTSIDE_TRAINING = ("kspace+noise8%", "kspace+extent0.7", "area")


def as_degradation(value: Degradation | Mapping[str, Any] | str | None) -> Degradation:
    """An operator from an operator, a config (``_target_``, built by Hydra) or a name
    (``bicubic``, ``kspace``; ``None``: bicubic)."""
    if isinstance(value, Degradation):
        return value
    if value is None:
        return Bicubic()
    if isinstance(value, str):
        if value not in BUILTIN:
            raise ConfigError(
                f"data.degradation={value!r} is unknown: choose one of {', '.join(BUILTIN)} "
                "or a degradation config (degradation=mri | mix | ...)"
            )
        return BUILTIN[value]()
    if hasattr(value, "get") and value.get("_target_"):
        from hydra.utils import instantiate

        op = instantiate(value, _convert_="all")
        if not isinstance(op, Degradation):
            raise ConfigError(f"degradation: {value.get('_target_')} is not an mrsr degradation")
        return op
    raise ConfigError(f"degradation={value!r} is invalid: give a name or a config with _target_")


def degradation_name(value: Degradation | Mapping[str, Any] | str | None) -> str:
    """The name results rows and checkpoints carry for ``value``."""
    if isinstance(value, Mapping) or hasattr(value, "get"):
        return str(value.get("name") or as_degradation(value).name)
    return as_degradation(value).name


def kspace_consistent(sr: Tensor, lr: Tensor, scale: int) -> Tensor:
    """``sr`` with its central k-space (the band an LR image of ``scale`` holds) replaced by the
    LR image's own: ``sr + Z(lr - T(sr))``, T the k-space truncation (before the magnitude), Z
    its right inverse (:func:`mrsr.ops.zerofill_upsample` with the whole Nyquist bin). The LR
    band is kept exactly; what ``sr`` adds above the LR Nyquist is kept as it is."""
    residual = lr.double() - kspace_lowpass(sr, scale).real
    return (sr.double() + zerofill_upsample(residual, scale, nyquist=1.0)).to(sr.dtype)
