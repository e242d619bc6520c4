"""Tensor operations shared by data, nets and losses.

Nothing here depends on another ``mrsr`` module except :mod:`mrsr.errors`, so networks can use
these without importing the data package. Tensors are float ``(N, C, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mrsr.errors import ConfigError


def check_scale(scale: int) -> int:
    if scale not in (2, 4):
        raise ConfigError(f"scale={scale} is not supported: use 2 or 4")
    return int(scale)


def upsample(lr: torch.Tensor, scale: int, mode: str = "bicubic") -> torch.Tensor:
    """Interpolation baseline: nearest, bilinear, bicubic or zerofill (sinc: the zero-padded
    spectrum, :func:`zerofill_upsample`) up-sampling (ringing below 0 removed)."""
    if mode == "zerofill":
        return zerofill_upsample(lr, scale).clamp(min=0.0)
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(lr, scale_factor=scale, mode=mode, **kwargs).clamp(min=0.0)


# -- the k-space grid convention ------------------------------------------------------------
# LR pixel ``m`` sits at HR position ``m*scale + (scale-1)/2`` (as ``align_corners=False``);
# the spectra below use ``norm="forward"`` (bin 0 is the mean intensity).


def lr_band(m: int, scale: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``m`` frequency bins of an LR axis (integers, FFT order) and the phase ramp that moves
    the HR grid's origin (``n = m * scale`` pixels) onto the LR grid's:
    ``exp(2 pi i k shift / n)``, ``shift = (scale - 1) / 2`` HR pixels."""
    freq = torch.fft.fftfreq(m, d=1.0 / m, dtype=torch.float64, device=device).round().long()
    shift = (scale - 1) / 2  # HR pixels between the HR and the LR grid origins
    return freq, torch.exp(2j * torch.pi * freq.double() * shift / (m * scale))


def _zerofill_axis(x: torch.Tensor, dim: int, scale: int, nyquist: float) -> torch.Tensor:
    """One axis of :func:`zerofill_upsample` (complex in, complex out)."""
    m = x.shape[dim]
    n = m * scale
    spec = torch.fft.fft(x, dim=dim, norm="forward")
    freq, phase = lr_band(m, scale, x.device)
    view = [1] * x.ndim
    view[dim] = m
    shape = list(x.shape)
    shape[dim] = n
    out = spec.new_zeros(shape)
    out = out.index_copy(dim, freq % n, spec * phase.conj().view(view))
    if m % 2 == 0:  # the LR Nyquist bin (-m/2) goes to the HR bins -m/2 and +m/2
        nyq = spec.index_select(dim, torch.tensor([m // 2], device=x.device))
        ramp = phase[m // 2]  # exp(2 pi i (-m/2) shift / n)
        minus = torch.tensor([n - m // 2], device=x.device)
        plus = torch.tensor([m // 2], device=x.device)
        out = out.index_copy(dim, minus, nyquist * nyq * ramp.conj())
        out = out.index_copy(dim, plus, nyquist * nyq * ramp)
    return torch.fft.ifft(out, dim=dim, norm="forward")


def zerofill_upsample(lr: torch.Tensor, scale: int, nyquist: float = 0.5) -> torch.Tensor:
    """Sinc interpolation by ``scale``: the LR spectrum zero-padded to the HR grid (what a scanner's
    "interpolate" does), on the package's grid convention, real part, float64 math.

    ``nyquist=0.5`` splits the LR Nyquist bin evenly over the two HR bins it stands for, so the
    result is real and passes through the LR samples (``scipy.signal.resample``'s rule);
    ``nyquist=1`` is the right inverse of the k-space truncation
    (``kspace_lowpass(zerofill_upsample(lr, s, 1), s) == lr``), used for data consistency.
    """
    x = lr.double()
    for dim in (-2, -1):
        x = _zerofill_axis(x, dim, scale, nyquist)
    return x.real.to(lr.dtype)
