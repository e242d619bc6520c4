"""How strongly a frozen extractor's features respond to detail above the LR Nyquist.

An SR network adds exactly that detail, so a feature loss (L_ViT, L_str, L_tex) can only steer
it if the extractor's features change when it is removed. For a batch of HR patches ``x``:

    response = mean_i d(f(x_i), f(low(x_i))) / mean_i d(f(x_i), f(x_{i+1}))

with ``d`` the SR loss's feature distance and ``low`` a low-pass at the LR Nyquist:
``bicubic`` (the SR input: :func:`~mrsr.data.degrade.degrade` then bicubic up-sampling, as the
SR network sees the LR image; it also softens the band below the LR Nyquist, so it measures
all that the SR input lacks) or ``kspace`` (ideal, only the detail above the LR Nyquist: the
spectrum of the mirrored patch above it zeroed, the Nyquist bin halved as
:func:`~mrsr.data.degrade.kspace_truncate` does). The denominator, the distance
between two different HR patches, is the reference for "features that differ": 0 is blind to
SR detail, 1 is as different as another patch.

The extractor is applied as the SR loss applies it (:class:`~mrsr.losses.feature.FeatureLoss`,
hence its ``forward``, which feeds patches at its trained pixel scale), so the measurement sees
what the loss sees. Library code: no Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mrsr.data.degrade import crop_to_multiple, degrade
from mrsr.data.sources import DEMO_TEST_SUBJECT, list_demo
from mrsr.data.store import FOREGROUND, VolumeStore
from mrsr.losses.feature import FeatureLoss, cosine_distance
from mrsr.losses.terms import spatial_cosine_distance
from mrsr.ops import upsample

LOWPASSES = ("bicubic", "kspace")


def _band(n: int, scale: int, device: torch.device) -> Tensor:
    """1 on the FFT bins below the LR Nyquist ``n / (2 scale)``, 0.5 on it, 0 above (float64)."""
    k = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64, device=device).abs()
    cut = n / (2 * scale)
    return (k < cut).double() + 0.5 * (k == cut).double()


def ideal_lowpass(hr: Tensor, scale: int) -> Tensor:
    """``hr`` (N, C, H, W) with its spectrum above the LR Nyquist zeroed, on the HR grid.

    The spectrum is that of the mirrored patch (even extension to 2H x 2W, a DCT), so the
    patch's borders add no wrap-around edge: the plain periodic FFT makes mismatched borders
    ring, and an extractor's response to that ringing swamped the one to the lost detail
    (trained scale-1 ViT: 0.08 vs 0.0003 at x2)."""
    h, w = hr.shape[-2:]
    x = torch.cat([hr, hr.flip(-2)], dim=-2)
    x = torch.cat([x, x.flip(-1)], dim=-1).double()
    mask = _band(2 * h, scale, hr.device)[:, None] * _band(2 * w, scale, hr.device)[None, :]
    return torch.fft.ifft2(torch.fft.fft2(x) * mask).real[..., :h, :w].to(hr.dtype)


def lowpass(hr: Tensor, scale: int, kind: str = "bicubic") -> Tensor:
    """``hr`` without its detail above the LR Nyquist (one of :data:`LOWPASSES`); sides must
    divide by ``scale``."""
    if kind == "bicubic":
        return upsample(degrade(hr, scale, "bicubic"), scale)
    if kind == "kspace":
        return ideal_lowpass(hr, scale)
    raise ValueError(f"low-pass {kind!r} is unknown: choose one of {', '.join(LOWPASSES)}")


def output_names(extractor: nn.Module, n: int) -> list[str]:
    """Names of an extractor's ``n`` outputs: its ``output_names`` attribute, else out0, out1,
    ..."""
    names = list(getattr(extractor, "output_names", ()))
    return names if len(names) == n else [f"out{i}" for i in range(n)]


def feature_distances(loss: FeatureLoss, a: Tensor, b: Tensor) -> dict[str, float]:
    """The SR loss's distances between the features of ``a`` and ``b`` (batch means), per output:
    a vector ``name`` by ``1 - cos``; a map ``name`` by ``1 - cos`` of the flattened map (what a
    structure term with ``spatial: false`` uses for z_s) and ``name_spatial`` per location
    (``spatial: true``)."""
    fa, fb = loss.features(a), loss.features(b)
    out: dict[str, float] = {}
    for name, u, v in zip(output_names(loss.extractor, len(fa)), fa, fb, strict=True):
        out[name] = float(cosine_distance(u, v))
        if u.ndim > 2:
            out[f"{name}_spatial"] = float(spatial_cosine_distance(u, v))
    return out


@torch.no_grad()
def detail_response(
    extractor: nn.Module, hr: Tensor, scale: int, kinds: Sequence[str] = LOWPASSES
) -> dict[str, float]:
    """Response of ``extractor``'s features to the detail above the LR Nyquist of ``hr`` (N >= 2
    HR patches (N, 1, H, W), cropped to a multiple of ``scale``; see the module docstring).

    Keys ``"<kind>/<output>"``: the response for each low-pass kind (``bicubic/z_t``,
    ``kspace/tokens_spatial``, ...), and ``"reference/<output>"``: the denominator, the mean
    distance between different patches (near 0, e.g. z_t of an untrained encoder, the ratio
    is float32 noise). The extractor is frozen and put in eval mode, as the SR loss does.
    """
    if hr.ndim != 4 or hr.shape[0] < 2:
        raise ValueError(
            f"detail_response needs a batch of at least 2 images (N, C, H, W), "
            f"got {tuple(hr.shape)}"
        )
    loss = FeatureLoss(extractor)
    hr = crop_to_multiple(hr.float(), scale)
    ref = feature_distances(loss, hr, hr.roll(1, dims=0))
    out = {f"reference/{k}": v for k, v in ref.items()}
    for kind in kinds:
        lost = feature_distances(loss, hr, lowpass(hr, scale, kind))
        out.update({f"{kind}/{k}": lost[k] / max(ref[k], 1e-12) for k in lost})
    return out


def tile_patches(slices: Tensor, size: int, n: int, min_foreground: float = 0.5) -> Tensor:
    """``n`` patches (n, 1, size, size) out of slices (S, 1, H, W): the non-overlapping ``size``
    tiles of every slice with at least ``min_foreground`` of their pixels above the package's
    foreground level, ``n`` of them evenly spaced over the slices (deterministic)."""
    tiles = slices.unfold(2, size, size).unfold(3, size, size)  # (S, 1, gh, gw, size, size)
    tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, slices.shape[1], size, size)
    tiles = tiles[(tiles > FOREGROUND).flatten(1).float().mean(1) >= min_foreground]
    if tiles.shape[0] < n:
        raise ValueError(
            f"only {tiles.shape[0]} patches of {size} px with {min_foreground:.0%} foreground, "
            f"{n} wanted"
        )
    return tiles[torch.linspace(0, tiles.shape[0] - 1, n).round().long()].contiguous()


def demo_patches(
    n: int = 64, size: int = 96, subject: str = DEMO_TEST_SUBJECT, contrast: str = "T1"
) -> Tensor:
    """HR patches of an embedded demo volume (default: the test subject), normalised and sliced
    as the data modules do (axial slices, RAS+); see :func:`tile_patches`."""
    ref = next(
        r
        for r in list_demo(("T1", "T2", "FLAIR"))
        if r.subject == subject and r.contrast == contrast
    )
    hr, _ = VolumeStore(scale=4).get(ref)
    return tile_patches(hr, size, n)
