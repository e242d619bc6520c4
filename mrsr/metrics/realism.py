"""Metrics that see what PSNR/SSIM cannot: missing or invented detail, edges, tissue classes,
consistency with the input, and a fresh critic.

Realism, structure and consistency. Images are (N, 1, H, W) on the package's normalised
scale (0 = the volume's minimum, 1 = its robust maximum, nothing clipped); every metric is
computed in float32 (sums and statistics in float64), also under autocast, per image unless
said. ``sr`` is the prediction, ``hr`` the target, ``lr`` the network's input. The HR
foreground is ``hr > FOREGROUND`` (0.05, as in :mod:`mrsr.metrics.distortion`).

- ``hf_power`` (:func:`highband_power_log_ratio`; best 0): both images are multiplied by the
  same separable 2-D Hann window (``torch.hann_window(n, periodic=False)`` per axis, against
  edge leakage), P = |FFT2|^2 (``norm="ortho"``). The power spectrum is radially averaged:
  ring k holds the frequencies (cycles per pixel) with round(|f| L) = k, L = min(H, W), at
  radius k / L; P(k) is the mean of P over the ring. hf_power = log10(sum_k P_sr(k) /
  sum_k P_hr(k)) over the rings with 0.5 / scale < k / L <= 0.5 (above the LR Nyquist, up to
  the HR Nyquist). Negative: detail missing (blur); positive: invented detail or noise.
  NaN where the HR band power is 0 (-inf where only SR's is).
- ``grad_w1`` (:func:`gradient_histogram_distance`; lower is better): the gradient magnitude
  is sqrt(Gx^2 + Gy^2) with Gx, Gy the Sobel filters divided by 8 (intensity per pixel: a
  ramp of slope a gives a), reflect padding, no smoothing. grad_w1 = W1 between the
  magnitudes of SR and of HR over the mask (default: the HR foreground), W1 the exact
  1-D Wasserstein-1 distance of two empirical distributions (:func:`wasserstein1`).
  NaN without foreground.
- ``hfen_07`` (lower is better): the protocol's HFEN
  ||LoG(sr) - LoG(hr)||_2 / ||LoG(hr)||_2 (:func:`mrsr.metrics.distortion.hfen`) with
  sigma 0.7 on a 7 x 7 kernel (the protocol's ``hfen`` is sigma 1.5 on 15 x 15). The side is
  the protocol's kernel scaled with sigma, 2 floor(7 sigma / 1.5 + 0.5) + 1
  (:func:`~mrsr.metrics.distortion.log_size`), so ``hfen(sr, hr, sigma=0.7)`` is ``hfen_07``.
- ``redeg`` (:func:`redegradation_error`; lower is better): ||D(sr) - lr||_2 / ||lr||_2 with
  D = :func:`mrsr.data.degrade.degrade` (the degradation that made the LR image, at
  ``scale``): 0 when the SR image is consistent with its input. NaN where lr is all 0.
- ``edge_f1`` (:func:`edge_f1`; higher is better): Canny edges (:func:`canny_edges`) of SR
  and HR with the same absolute thresholds, taken from HR (:func:`canny_thresholds`):
  Gaussian smoothing (sigma 1, :func:`gaussian_blur`), Sobel gradients as above,
  non-maximum suppression along the gradient direction rounded to 0/45/90/135 degrees (a
  pixel is kept when its magnitude is >= both neighbours along it, 0 outside the image),
  double threshold (strong >= high, weak >= low), hysteresis (weak pixels joined to strong
  ones by 8-connected chains: 3 x 3 dilations restricted to the weak pixels until stable).
  high = max(0.5 x q99, 1e-4) and low = 0.4 x high, q99 the 99th percentile (the value of
  0-based rank round(0.99 (n - 1)) of the n sorted pixels) of the HR smoothed gradient
  magnitude over the whole slice. Precision = the fraction of SR edge pixels within
  ``tolerance`` (1) pixels (Chebyshev distance) of an HR edge pixel, recall = the fraction
  of HR edge pixels within that of an SR edge pixel, F1 = 2 P R / (P + R) (0 when P + R = 0;
  P = 0 without SR edges). NaN when HR has no edge pixel.
- ``tissue_dice`` (:func:`tissue_dice`; higher is better): SR and HR are each segmented on
  their own into 3 intensity classes over the HR foreground (one mask, so the score is
  about the labels): 1-D k-means (Lloyd, deterministic: centres initialised at the
  (2i + 1) / 6 quantiles, i.e. the values of 0-based rank floor((2i + 1) n / 6) of the n
  sorted intensities; a pixel goes to the nearest centre, ties to the darker class;
  iterated until the centres stop changing, at most 100 times), classes ordered by mean
  intensity. tissue_dice = the mean over the classes present in either map of
  2 |A_c & B_c| / (|A_c| + |B_c|). NaN without foreground.
- critic accuracy (:func:`critic_accuracy`, one figure for a set of patches; best 0.5): a
  small CNN (the patch minus its mean, three stride-2 3 x 3 convolutions of 16, 32, 32
  channels with leaky ReLU 0.2, global mean, one logit) trained fresh (Adam, 200 steps of
  16 + 16 patches) to tell HR from SR patches on one half of them; its accuracy on the other
  (balanced) half. 0.5 = indistinguishable, 1 = always told apart. Deterministic for a seed.
  :func:`critic_correct` gives the correctness per held-out patch pair (for paired
  bootstraps by patch location).

:class:`RealismMetrics` accumulates the seven per-slice values above over (volume, slice)
pairs (each counted once) and reports their slice means, leaving out the slices where a
value is NaN (undefined, as said for each above).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from mrsr.data.degrade import degrade
from mrsr.metrics.distortion import SliceTable, foreground, hfen

HFEN_FINE_SIGMA = 0.7  # hfen_07's LoG, on 7 x 7 (distortion.log_size)
CANNY_SIGMA = 1.0
CANNY_QUANTILE = 0.99  # high threshold = CANNY_HIGH x this quantile of the HR magnitude ...
CANNY_HIGH = 0.5
CANNY_LOW = 0.4  # ... and low = CANNY_LOW x high (MATLAB's ratio)
CANNY_MIN = 1e-4  # floor of the high threshold: flat (float-rounding) gradients are no edges
TISSUE_CLASSES = 3
KMEANS_ITERS = 100
CRITIC_WIDTHS = (1, 16, 32, 32)  # stride-2 3x3 convolutions, then global mean and one logit
CRITIC_STEPS, CRITIC_BATCH, CRITIC_LR = 200, 32, 3e-3  # Adam steps, patches per step (half HR)

# the per-slice values and results-row columns (the protocol's HFEN at sigma 1.5 is ``hfen`` of
# SRMetrics)
REALISM = ("hf_power", "grad_w1", "hfen_07", "redeg", "edge_f1", "tissue_dice")
# True: higher is better, False: lower is better, "zero": closer to 0 is better
REALISM_HIGHER_IS_BETTER: dict[str, bool | str] = {
    "hf_power": "zero",
    "grad_w1": False,
    "hfen_07": False,
    "redeg": False,
    "edge_f1": True,
    "tissue_dice": True,
}

T = TypeVar("T")


def _no_autocast(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` with autocast off on its first argument's device (metrics are float32/64)."""

    @functools.wraps(fn)
    def wrapper(x: Tensor, *args, **kwargs) -> T:
        with torch.autocast(x.device.type, enabled=False):
            return fn(x, *args, **kwargs)

    return wrapper


# ------------------------------------------------------------------ filters


def _correlate1d(x: Tensor, taps: list[float], dim: int) -> Tensor:
    """Correlate the images of ``x`` along H (``dim`` -2) or W (-1) with the odd-length
    ``taps``; reflect padding (same size)."""
    r = len(taps) // 2
    padded = F.pad(x, (r, r, 0, 0) if dim == -1 else (0, 0, r, r), mode="reflect")
    n = x.shape[dim]
    out = taps[0] * padded.narrow(dim, 0, n)
    for i, tap in enumerate(taps[1:], start=1):
        if tap:
            out = out + tap * padded.narrow(dim, i, n)
    return out


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian smoothing: the sampled exp(-t^2 / (2 sigma^2)) on t = -r..r,
    r = ceil(3 sigma), normalised to sum 1; reflect padding (same size)."""
    r = math.ceil(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    taps = (g / g.sum()).tolist()
    return _correlate1d(_correlate1d(x, taps, -1), taps, -2)


_DIFF, _SMOOTH = [-0.5, 0.0, 0.5], [0.25, 0.5, 0.25]  # Sobel / 8 = smoothing (x) central difference


def _sobel(x: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel derivatives along W (x) and H (y), divided by 8 (intensity per pixel)."""
    gx = _correlate1d(_correlate1d(x, _DIFF, -1), _SMOOTH, -2)
    gy = _correlate1d(_correlate1d(x, _DIFF, -2), _SMOOTH, -1)
    return gx, gy


def gradient_magnitude(x: Tensor) -> Tensor:
    """sqrt(Gx^2 + Gy^2) of the Sobel derivatives / 8, reflect padding (float32, same size)."""
    gx, gy = _sobel(x.float())
    return torch.hypot(gx, gy)


def _dilate(mask: Tensor, radius: int) -> Tensor:
    """Binary dilation of a bool mask by the (2 radius + 1)^2 square (Chebyshev distance
    <= radius), nothing outside the image."""
    out = mask.clone()
    for dim in (-2, -1):
        src, n = out.clone(), out.shape[dim]
        for s in range(1, min(radius, n - 1) + 1):
            out.narrow(dim, s, n - s).logical_or_(src.narrow(dim, 0, n - s))
            out.narrow(dim, 0, n - s).logical_or_(src.narrow(dim, s, n - s))
    return out


# ------------------------------------------------------------------ spectrum


def _rings(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Ring index round(|f| L) of every FFT2 bin (flattened), L = min(h, w), and the ring
    radii k / L in cycles per pixel."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64, device=device)
    fx = torch.fft.fftfreq(w, dtype=torch.float64, device=device)
    length = min(h, w)
    ring = torch.round(torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) * length).long().flatten()
    return ring, torch.arange(int(ring.max()) + 1, dtype=torch.float64, device=device) / length


@_no_autocast
def radial_power_spectrum(x: Tensor) -> tuple[Tensor, Tensor]:
    """Radially averaged power spectrum of (N, 1, H, W) images after a 2-D Hann window.

    Returns the ring radii (R,) in cycles per pixel and the mean power per ring (N, R)
    (float64; see the module docstring). Rings without FFT bins are NaN."""
    n, c, h, w = x.shape
    hann = [
        torch.hann_window(s, periodic=False, dtype=torch.float64, device=x.device) for s in (h, w)
    ]
    spec = torch.fft.fft2(x.double() * torch.outer(*hann), norm="ortho")
    power = spec.real.pow(2).add(spec.imag.pow(2)).reshape(n, c * h * w)
    ring, radii = _rings(h, w, x.device)
    ring = ring.repeat(c)
    sums = torch.zeros(n, radii.numel(), dtype=torch.float64, device=x.device).index_add_(
        1, ring, power
    )
    counts = torch.bincount(ring, minlength=radii.numel()).double()
    return radii, sums / counts  # 0 / 0 = NaN for an empty ring


def highband_power_log_ratio(sr: Tensor, hr: Tensor, scale: float) -> Tensor:
    """log10 of SR's over HR's radially averaged power summed over the rings between the LR
    Nyquist (0.5 / scale, excluded) and the HR Nyquist (0.5, included), per image (float64):
    < 0 detail missing, > 0 detail or noise invented, 0 the same; NaN where HR's is 0."""
    if scale <= 1:
        raise ValueError(f"scale must be > 1, got {scale}")
    radii, power = radial_power_spectrum(torch.cat([sr, hr]))
    band = (radii > 0.5 / scale) & (radii <= 0.5)
    band_sr, band_hr = power[:, band].nansum(1).chunk(2)
    return torch.where(band_hr > 0, torch.log10(band_sr / band_hr), torch.nan)


# ------------------------------------------------------------------ gradient distribution


def _per_masked_image(
    fn: Callable[[Tensor, Tensor, Tensor], Tensor], a: Tensor, b: Tensor, mask: Tensor
) -> Tensor:
    """``fn(a_i, b_i, mask_i)`` per image (float64), NaN where ``mask_i`` is empty."""
    nan = torch.tensor(torch.nan, dtype=torch.float64, device=a.device)
    return torch.stack(
        [fn(x, y, m).double() if m.any() else nan for x, y, m in zip(a, b, mask, strict=True)]
    )


def wasserstein1(a: Tensor, b: Tensor) -> Tensor:
    """Exact 1-D Wasserstein-1 distance between the empirical distributions of samples ``a``
    and ``b`` (float64 scalar): the integral over t in (0, 1] of |Qa(t) - Qb(t)|, with
    Q(t) = the ceil(t n)-th smallest of n samples. For equal sizes, the mean absolute
    difference of the sorted samples; otherwise summed over the merged steps of both Q."""
    a, b = a.double().flatten().sort()[0], b.double().flatten().sort()[0]
    n, m = a.numel(), b.numel()
    if n == 0 or m == 0:
        raise ValueError("wasserstein1 needs samples on both sides")
    if n == m:
        return (a - b).abs().mean()
    # step ends t = i/n and j/m, in units of 1/(n m) (integers, so the merge is exact)
    ends = torch.unique(
        torch.cat([torch.arange(1, n + 1) * m, torch.arange(1, m + 1) * n]).to(a.device)
    )
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    qa, qb = a[(ends + m - 1) // m - 1], b[(ends + n - 1) // n - 1]  # Q on (start, end]
    return ((ends - starts).double() * (qa - qb).abs()).sum() / (n * m)


@_no_autocast
def gradient_histogram_distance(sr: Tensor, hr: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per image, W1 between SR's and HR's Sobel gradient magnitudes over ``mask`` (default:
    the HR foreground ``hr > FOREGROUND``); float64, NaN where the mask is empty."""
    mag_sr, mag_hr = gradient_magnitude(torch.cat([sr, hr])).chunk(2)
    mask = foreground(hr) if mask is None else mask.bool().expand_as(hr)
    return _per_masked_image(lambda s, t, m: wasserstein1(s[m], t[m]), mag_sr, mag_hr, mask)


# ------------------------------------------------------------------ consistency


@_no_autocast
def redegradation_error(sr: Tensor, lr: Tensor, scale: int, degradation: str = "bicubic") -> Tensor:
    """||D(sr) - lr||_2 / ||lr||_2 per image (float64), D = ``degrade(., scale, degradation)``;
    NaN where ``lr`` is all 0."""
    down = degrade(sr.float(), scale, degradation)
    if down.shape != lr.shape:
        raise ValueError(f"degraded SR {tuple(down.shape)} does not match LR {tuple(lr.shape)}")
    err = (down.double() - lr.double()).pow(2).flatten(1).sum(1)
    ref = lr.double().pow(2).flatten(1).sum(1)
    return torch.where(ref > 0, (err / ref).sqrt(), torch.nan)


# ------------------------------------------------------------------ Canny edges


def _smoothed_gradients(x: Tensor, sigma: float) -> tuple[Tensor, Tensor, Tensor]:
    """Magnitude, Gx, Gy of the Sobel gradients of the Gaussian-smoothed image."""
    gx, gy = _sobel(gaussian_blur(x.float(), sigma))
    return torch.hypot(gx, gy), gx, gy


def _thresholds(mag: Tensor) -> tuple[Tensor, Tensor]:
    """(low, high) per image from its smoothed gradient magnitude (see the module docstring)."""
    flat = mag.flatten(1)
    rank = round(CANNY_QUANTILE * (flat.shape[1] - 1))
    high = (CANNY_HIGH * flat.kthvalue(rank + 1, dim=1).values).clamp_min(CANNY_MIN)
    return CANNY_LOW * high, high


@_no_autocast
def canny_thresholds(x: Tensor, sigma: float = CANNY_SIGMA) -> tuple[Tensor, Tensor]:
    """Per-image Canny (low, high) thresholds (N,): high = max(0.5 x the 99th percentile of
    the smoothed gradient magnitude, 1e-4), low = 0.4 x high."""
    return _thresholds(_smoothed_gradients(x, sigma)[0])


def _non_maximum(mag: Tensor, gx: Tensor, gy: Tensor) -> Tensor:
    """Pixels whose magnitude is >= both neighbours along the gradient direction rounded to
    0, 45, 90 or 135 degrees (0 outside the image)."""
    h, w = mag.shape[-2:]
    padded = F.pad(mag, (1, 1, 1, 1))
    sector = torch.round(torch.rad2deg(torch.atan2(gy, gx)).remainder(180) / 45).long() % 4
    keep = torch.zeros_like(mag, dtype=torch.bool)
    for s, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):  # (row, column) steps
        ahead = padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        behind = padded[..., 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]
        keep |= (sector == s) & (mag >= ahead) & (mag >= behind)
    return keep


def _hysteresis(strong: Tensor, weak: Tensor) -> Tensor:
    """Grow ``strong`` into ``weak`` (which contains it) by 3 x 3 dilations until stable."""
    edges = strong
    while True:
        grown = weak & _dilate(edges, 1)
        if torch.equal(grown, edges):
            return edges
        edges = grown


def _edges(mag: Tensor, gx: Tensor, gy: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Canny edge map from the smoothed gradients and per-image thresholds (N,)."""
    peak = _non_maximum(mag, gx, gy)
    low, high = (
        torch.as_tensor(t, dtype=mag.dtype, device=mag.device).reshape(-1, 1, 1, 1)
        for t in (low, high)
    )
    return _hysteresis(peak & (mag >= high), peak & (mag >= low))


@_no_autocast
def canny_edges(
    x: Tensor,
    sigma: float = CANNY_SIGMA,
    low: Tensor | float | None = None,
    high: Tensor | float | None = None,
) -> Tensor:
    """Canny edge map (bool, like ``x``). ``low``/``high`` are absolute thresholds on the
    smoothed gradient magnitude (a number or one per image); by default each image's own
    :func:`canny_thresholds` (pass HR's to compare SR with HR)."""
    mag, gx, gy = _smoothed_gradients(x, sigma)
    if low is None or high is None:
        own_low, own_high = _thresholds(mag)
        low = own_low if low is None else low
        high = own_high if high is None else high
    return _edges(mag, gx, gy, low, high)


@_no_autocast
def edge_f1(sr: Tensor, hr: Tensor, tolerance: int = 1, sigma: float = CANNY_SIGMA) -> Tensor:
    """F1 of SR's Canny edges against HR's, both with HR's thresholds, an edge pixel matching
    within ``tolerance`` pixels (Chebyshev); float64 per image, NaN where HR has no edge."""
    mag, gx, gy = _smoothed_gradients(torch.cat([sr, hr]), sigma)
    low, high = _thresholds(mag[sr.shape[0] :])
    e_sr, e_hr = _edges(mag, gx, gy, low.repeat(2), high.repeat(2)).chunk(2)
    n_sr, n_hr = (e.flatten(1).sum(1).double() for e in (e_sr, e_hr))
    precision = (e_sr & _dilate(e_hr, tolerance)).flatten(1).sum(1) / n_sr.clamp_min(1)
    recall = (e_hr & _dilate(e_sr, tolerance)).flatten(1).sum(1) / n_hr.clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-300)
    return torch.where(n_hr > 0, f1, torch.nan)


# ------------------------------------------------------------------ tissue classes


def _kmeans_1d(values: Tensor, classes: int) -> Tensor:
    """Sorted centres of 1-D k-means on ``values`` (see the module docstring), float64."""
    v = values.double().flatten().sort()[0]
    n = v.numel()
    csum = torch.cat([v.new_zeros(1), v.cumsum(0)])
    centres = v[(torch.arange(classes, device=v.device) * 2 + 1) * n // (2 * classes)]
    for _ in range(KMEANS_ITERS):
        cuts = torch.searchsorted(v, (centres[1:] + centres[:-1]) / 2, right=True)  # ties: darker
        ends = torch.cat([cuts.new_zeros(1), cuts, cuts.new_full((1,), n)])
        counts = ends[1:] - ends[:-1]
        new = torch.where(
            counts > 0, (csum[ends[1:]] - csum[ends[:-1]]) / counts.clamp_min(1), centres
        )
        new = new.sort()[0]
        if torch.equal(new, centres):
            break
        centres = new
    return centres


@_no_autocast
def tissue_labels(x: Tensor, mask: Tensor | None = None, classes: int = TISSUE_CLASSES) -> Tensor:
    """Per image, 1-D k-means intensity classes 0..classes-1 (darkest first) fitted on the
    image's own values in ``mask`` (default ``x > FOREGROUND``); -1 outside the mask (long)."""
    mask = foreground(x) if mask is None else mask.bool().expand_as(x)
    labels = torch.full(x.shape, -1, dtype=torch.long, device=x.device)
    for img, m, out in zip(x.double(), mask, labels, strict=True):
        if m.any():
            centres = _kmeans_1d(img[m], classes)
            out[m] = torch.bucketize(img[m], (centres[1:] + centres[:-1]) / 2)
    return labels


def _dice_mean(a: Tensor, b: Tensor, classes: int) -> Tensor:
    """Mean Dice over the classes present in label vector ``a`` or ``b`` (float64)."""
    scores = []
    for c in range(classes):
        in_a, in_b = a == c, b == c
        size = in_a.sum() + in_b.sum()
        if size > 0:
            scores.append(2 * (in_a & in_b).sum().double() / size)
    return torch.stack(scores).mean()


@_no_autocast
def tissue_dice(sr: Tensor, hr: Tensor, classes: int = TISSUE_CLASSES) -> Tensor:
    """Mean Dice of SR's and HR's own k-means tissue classes over the HR foreground, per image
    (float64); NaN without foreground."""
    mask = foreground(hr)
    labels = tissue_labels(sr, mask, classes), tissue_labels(hr, mask, classes)
    return _per_masked_image(lambda a, b, m: _dice_mean(a[m], b[m], classes), *labels, mask)


# ------------------------------------------------------------------ critic


def _critic_init(gen: torch.Generator) -> list[Tensor]:
    """He-normal conv weights, zero biases and a 1-logit linear head, drawn from ``gen``."""
    params = []
    for c_in, c_out in zip(CRITIC_WIDTHS[:-1], CRITIC_WIDTHS[1:], strict=True):
        params += [
            torch.randn(c_out, c_in, 3, 3, generator=gen) * math.sqrt(2 / (9 * c_in)),
            torch.zeros(c_out),
        ]
    width = CRITIC_WIDTHS[-1]
    return params + [torch.randn(1, width, generator=gen) / math.sqrt(width), torch.zeros(1)]


def _critic_logits(params: list[Tensor], x: Tensor) -> Tensor:
    """The patch minus its mean, stride-2 3 x 3 convolutions with leaky ReLU (0.2), global
    mean, one logit per patch."""
    *convs, w_out, b_out = params
    x = x - x.mean((2, 3), keepdim=True)
    for w, b in zip(convs[::2], convs[1::2], strict=True):
        x = F.leaky_relu(F.conv2d(x, w, b, stride=2, padding=1), 0.2)
    return F.linear(x.mean((2, 3)), w_out, b_out).squeeze(1)


def critic_correct(
    sr_patches: Tensor,
    hr_patches: Tensor,
    steps: int = CRITIC_STEPS,
    seed: int = 0,
    batch: int = CRITIC_BATCH,
    lr: float = CRITIC_LR,
) -> Tensor:
    """Per patch pair, whether a small CNN critic trained fresh to tell HR (label 1) from SR
    (label 0) patches (P, 1, h, w) gets them right: (n,) float64, n the smaller count.

    The n pairs (patch i of each side) are shuffled by one permutation; the first n // 2 train
    the critic (NaN in the result), the others are held out: each gets the mean of [its HR
    patch scored > 0] and [its SR patch scored <= 0] (0, 0.5 or 1), so the NaN-mean is the
    balanced held-out accuracy and pairs at the same index can be compared across methods.
    Training: ``steps`` Adam steps (``lr``) on the binary cross-entropy of ``batch`` / 2
    patches of each class drawn with replacement. Everything random comes from a local
    ``torch.Generator(seed)`` (the global RNG is not touched); deterministic on the CPU."""
    n = min(sr_patches.shape[0], hr_patches.shape[0])
    if n < 2:
        raise ValueError("the critic needs at least 2 patches of each kind")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    train, test = order[: n // 2], order[n // 2 :]
    device = hr_patches.device
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.autocast(device.type, enabled=False),
    ):
        sr, hr = (p[:n].detach().float().clone() for p in (sr_patches, hr_patches))
        params = [p.to(device).requires_grad_() for p in _critic_init(gen)]
        opt = torch.optim.Adam(params, lr=lr)
        target = torch.cat([torch.ones(batch // 2), torch.zeros(batch // 2)]).to(device)
        for _ in range(steps):
            pick = train[torch.randint(len(train), (2, batch // 2), generator=gen)].to(device)
            loss = F.binary_cross_entropy_with_logits(
                _critic_logits(params, torch.cat([hr[pick[0]], sr[pick[1]]])), target
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            test = test.to(device)
            right = (
                (_critic_logits(params, hr[test]) > 0).double()
                + (_critic_logits(params, sr[test]) <= 0).double()
            ) / 2
    return torch.full((n,), torch.nan, dtype=torch.float64, device=device).index_copy(
        0, test, right
    )


def critic_accuracy(sr_patches: Tensor, hr_patches: Tensor, **kwargs: Any) -> float:
    """Held-out accuracy of the fresh critic of :func:`critic_correct` (same arguments; the
    NaN-mean of its result): 0.5 = indistinguishable, 1 = always told apart."""
    return critic_correct(sr_patches, hr_patches, **kwargs).nanmean().item()


# ------------------------------------------------------------------ accumulator


@_no_autocast
def realism_values(
    sr: Tensor, hr: Tensor, lr: Tensor, scale: int, degradation: str = "bicubic"
) -> dict[str, Tensor]:
    """The per-image values of :data:`REALISM` (float64, NaN where undefined)."""
    sr, hr, lr = sr.float(), hr.float(), lr.float()
    return {
        "hf_power": highband_power_log_ratio(sr, hr, scale),
        "grad_w1": gradient_histogram_distance(sr, hr),
        "hfen_07": hfen(sr, hr, HFEN_FINE_SIGMA).double(),
        "redeg": redegradation_error(sr, lr, scale, degradation),
        "edge_f1": edge_f1(sr, hr),
        "tissue_dice": tissue_dice(sr, hr),
    }


class RealismMetrics(SliceTable):
    """Accumulates the per-slice :data:`REALISM` values; ``compute`` returns their slice means.

    The prediction is clamped at 0 as in :class:`~mrsr.metrics.distortion.SRMetrics`. Each
    (volume, slice) pair counts once. The means are over the slices with HR foreground (an
    empty slice would dominate the HFEN means, whose denominator is clamped), less those where
    a value is NaN (undefined: no HR edge for edge_f1, no HR high-band power for hf_power, an
    all-0 LR for redeg); ``n_slices`` counts all slices and ``n_slices_fg`` those with HR
    foreground. :data:`REALISM_HIGHER_IS_BETTER` gives each
    value's direction.
    """

    higher_is_better = None

    def __init__(self, scale: int, degradation: str = "bicubic", **kwargs) -> None:
        super().__init__(REALISM + ("fg",), **kwargs)
        self.scale = scale
        self.degradation = degradation

    def update(
        self, sr: Tensor, hr: Tensor, lr: Tensor, volume_idx: Tensor, slice_idx: Tensor
    ) -> None:  # type: ignore[override]
        with torch.autocast(sr.device.type, enabled=False):
            sr = sr.detach().float().clamp(min=0.0)
            hr, lr = hr.detach().float(), lr.detach().float()
            values = realism_values(sr, hr, lr, self.scale, self.degradation)
            self.add(volume_idx, slice_idx, fg=foreground(hr).flatten(1).any(1), **values)

    def per_slice(self) -> dict[str, Tensor]:
        """The de-duplicated table: ``vol``, ``sl`` and a float64 column per value (NaN
        where undefined), in (volume, slice) order, for paired bootstraps by slice."""
        table = self._table()
        return {k: table[k] for k in ("vol", "sl", *REALISM)}

    def row(self) -> dict[str, float]:
        """The :data:`REALISM` means for a results row (empty without slices); resets."""
        values = self.compute()
        self.reset()
        return {k: values[k] for k in REALISM if k in values}

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        table = self._table()
        if table["vol"].numel() == 0:
            return {}
        fg = table["fg"] > 0
        out = {name: table[name][fg].nanmean().item() for name in REALISM}
        out["n_slices"] = float(table["vol"].numel())
        out["n_slices_fg"] = float(table["fg"].sum().item())
        return out
