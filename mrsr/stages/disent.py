"""Stage ``disent``: the structure/texture swapping autoencoder, then a frozen (z_s, z_t) extractor.

With ``disent.lr_views=true`` the autoencoder also sees each slice as the SR stage's input shows
it (degraded with the data's degradation, bicubic-upsampled) and learns the LR/HR swap:
``G(z_s(LR), z_t(HR)) = HR`` and ``G(z_s(HR), z_t(LR)) = LR`` (weight ``weights.lrswap``), so
the structure code is shared by the two views and the texture code carries their difference
in detail.

:class:`DisentModule` is the LightningModule (``conf/stage/disent.yaml``);
:func:`mrsr.extractors.load_disent_extractor` turns its checkpoint into the frozen encoder that
stage ``sr`` uses for L_str = 1 - cos(z_s(a), z_s(b)) and L_tex = 1 - cos(z_t(a), z_t(b)).

Measure of disentanglement (validation and test): for pairs (x1, x2) of evaluation slices,
s = G(z_s(x1), z_t(x2)). Each image (at ``img_size``) is turned into a Sobel gradient-magnitude
map; ``corr`` is the Pearson correlation of two such maps over all pixels. The logged
``swap_struct_margin`` is the mean over pairs of corr(edges(s), edges(x1)) - corr(edges(s),
edges(x2)): positive means the swap keeps the structure (edges) of x1, the image that gave z_s.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrsr.data.acquisition import as_degradation
from mrsr.data.degrade import crop_to_multiple
from mrsr.errors import ConfigError
from mrsr.losses.gan import d_loss_fake, d_loss_real, g_loss
from mrsr.metrics import SliceTable, psnr, ssim
from mrsr.nets.swapae import (
    CooccurrenceDiscriminator,
    PatchDiscriminator,
    StructureTextureEncoder,
    SwapGenerator,
    random_crops,
    resize_to,
)
from mrsr.ops import upsample
from mrsr.stages.base import SliceEvalHooks, StageModule, plain

log = logging.getLogger("mrsr")

MAX_EVAL_IMAGES = 64  # evaluation slices kept (at img_size) for the swap check


def swap_partners(labels: Tensor) -> Tensor:
    """For each batch index i, the index j != i of the next image with the same label (cyclic);
    where no other image has that label, i + 1 (mod batch size)."""
    n = labels.numel()
    out = torch.arange(n).roll(-1)
    lab = labels.tolist()
    for i in range(n):
        for k in range(1, n):
            j = (i + k) % n
            if lab[j] == lab[i]:
                out[i] = j
                break
    return out.to(labels.device)


def sobel_edges(x: Tensor) -> Tensor:
    """Sobel gradient magnitude of (N, 1, H, W) images (replicate padding)."""
    kx = torch.tensor(
        [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype
    )
    k = torch.stack([kx, kx.t()])[:, None]
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k)
    return g.pow(2).sum(1, keepdim=True).add(1e-12).sqrt()


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation per image of two (N, ...) batches."""
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def swap_struct_margin(swapped: Tensor, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    """Per pair: corr(edges(s), edges(x1)) and corr(edges(s), edges(x2)) (see module docstring)."""
    es = sobel_edges(swapped.float())
    return pearson(es, sobel_edges(x1.float())), pearson(es, sobel_edges(x2.float()))


class DisentModule(SliceEvalHooks, StageModule):
    """Swapping autoencoder: L = w.rec L1(x, G(E(x))) + w.adv L_adv(rec) + w.swap L_adv(swap)."""

    stage = "disent"

    def __init__(
        self,
        net: Mapping[str, Any],
        weights: Mapping[str, float] | None = None,
        disc_channels: int = 64,
        cooccurrence: bool = False,
        r1_gamma: float = 10.0,
        r1_every: int = 16,
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.0, 0.99),
        nan_policy: str = "skip",
        train_crop: int | None = None,
        lr_views: bool = False,
        scale: int | None = None,
        degradation: Mapping[str, Any] | str = "bicubic",
    ) -> None:
        net = {
            k: ([int(c) for c in v] if k == "enc_channels" else int(v))
            for k, v in plain(net).items()
        }
        w = {
            "rec": 1.0,
            "adv": 0.7,
            "swap": 0.7,
            "cooc": 1.0,
            "lrswap": 1.0,
            **(plain(weights) or {}),
        }
        scale = scale if lr_views else None  # the data's scale matters for the LR views only
        if lr_views and scale is None:
            raise ConfigError("disent.lr_views=true needs the SR scale of the data")
        config = {
            "train_crop": train_crop,
            "lr_views": bool(lr_views),
            "degradation": plain(degradation) if lr_views else None,
            "net": dict(net),
            "weights": w,
            "disc_channels": int(disc_channels),
            "cooccurrence": bool(cooccurrence),
            "r1_gamma": float(r1_gamma),
            "r1_every": int(r1_every),
            "lr": float(lr),
            "betas": [float(b) for b in betas],
        }
        super().__init__(config=config, scale=scale, nan_policy=nan_policy)
        self.save_hyperparameters({**config, "scale": scale, "nan_policy": nan_policy})
        self.lr_views, self.degradation = bool(lr_views), plain(degradation)
        self.operator = as_degradation(self.degradation)
        if int(r1_every) < 1:
            raise ConfigError(f"disent.r1_every={r1_every} must be >= 1")
        self.automatic_optimization = False
        self.weights = {k: float(v) for k, v in w.items()}
        self.r1_gamma, self.r1_every = float(r1_gamma), int(r1_every)
        self.lr, self.betas = float(lr), (float(betas[0]), float(betas[1]))
        self.img_size = int(net["img_size"])
        self.encoder = StructureTextureEncoder(**net)
        self.generator = SwapGenerator(**net)
        self.discriminator = PatchDiscriminator(channels=int(disc_channels))
        self.cooc = CooccurrenceDiscriminator(channels=int(disc_channels)) if cooccurrence else None
        self.patch_size = max(8, self.img_size // 4)
        self._iter = 0
        self._eval: dict[str, list[Tensor]] = {}
        self.eval_table = SliceTable(("psnr", "ssim"))

    # -- networks
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(x)

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.generator(*self.encoder(x))

    def discriminators(self) -> list[nn.Module]:
        return [self.discriminator] + ([self.cooc] if self.cooc is not None else [])

    def configure_optimizers(self):
        g_params = [*self.encoder.parameters(), *self.generator.parameters()]
        d_params = [p for d in self.discriminators() for p in d.parameters()]
        return [
            torch.optim.Adam(g_params, lr=self.lr, betas=self.betas),
            torch.optim.Adam(d_params, lr=self.lr, betas=self.betas),
        ]

    # -- training
    def _cooc_logits(self, images: Tensor, texture_source: Tensor) -> Tensor:
        """Co-occurrence logits: patches of ``images`` vs patches of ``texture_source``."""
        return self.cooc(
            random_crops(images, self.patch_size, 4),
            random_crops(texture_source, self.patch_size, 4),
        )

    def _r1(self, real: Tensor) -> Tensor:
        """Lazy R1 penalty (gamma/2 * E||grad_x D(x)||^2, times r1_every)."""
        real = real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.discriminator(real).sum(), real, create_graph=True)
        return 0.5 * self.r1_gamma * self.r1_every * grad.pow(2).flatten(1).sum(1).mean()

    def lr_view(self, hr: Tensor) -> Tensor:
        """The HR slice as the SR stage's input shows it: degraded, then bicubic-upsampled."""
        s = int(self.scale)
        hr = crop_to_multiple(hr, s)
        return upsample(self.operator(hr.float(), s), s).to(hr.dtype)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        _, hr, meta = batch
        x = resize_to(hr, self.img_size)
        x_lr = resize_to(self.lr_view(hr), self.img_size) if self.lr_views else None
        partner = swap_partners(torch.as_tensor(meta.label))
        x2 = x[partner.to(x.device)]
        opt_g, opt_d = self.optimizers()
        self._iter += 1

        z_s, z_t = self.encoder(x)
        rec = self.generator(z_s, z_t)
        swap = self.generator(z_s, z_t[partner.to(x.device)])

        # D step: real vs reconstructed vs swapped (G outputs detached)
        for d in self.discriminators():
            d.requires_grad_(True)
        d_terms = {
            "d_real": d_loss_real(self.discriminator(x)),
            "d_fake": 0.5
            * (
                d_loss_fake(self.discriminator(rec.detach()))
                + d_loss_fake(self.discriminator(swap.detach()))
            ),
        }
        if self.cooc is not None:
            d_terms["d_cooc"] = d_loss_real(self._cooc_logits(x2, x2)) + d_loss_fake(
                self._cooc_logits(swap.detach(), x2)
            )
        if self.r1_gamma > 0 and self._iter % self.r1_every == 0:
            d_terms["r1"] = self._r1(x)
        if self.losses_finite(d_terms):
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(sum(d_terms.values()))
            self.step_optimizer(opt_d, list(self.discriminators()), "D")
        for d in self.discriminators():
            d.requires_grad_(False)

        # G step (E and G), D frozen
        w = self.weights
        terms = {
            "rec": F.l1_loss(rec, x),
            "adv": g_loss(self.discriminator(rec)),
            "swap": g_loss(self.discriminator(swap)),
        }
        if self.cooc is not None:
            terms["cooc"] = g_loss(self._cooc_logits(swap, x2))
        if x_lr is not None:  # LR/HR swap: structure of one view + texture of the other
            zl_s, zl_t = self.encoder(x_lr)
            terms["lrswap"] = F.l1_loss(self.generator(zl_s, z_t), x) + F.l1_loss(
                self.generator(z_s, zl_t), x_lr
            )
        total = sum(w[k] * v for k, v in terms.items())
        if self.losses_finite({**terms, "total": total}):
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(total)
            self.step_optimizer(opt_g, [self.encoder, self.generator], "E+G")
            self.log("train/loss", total.detach(), on_step=True, prog_bar=True)
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in {**terms, **d_terms}.items()}, on_step=True
        )

    # -- evaluation
    def _eval_start(self) -> None:
        self.eval_table.reset()
        self._eval = {"images": []}

    @torch.no_grad()
    def _eval_step(self, batch: Any) -> None:
        _, hr, meta = batch
        x = resize_to(hr.float(), self.img_size).clamp(0, 1)
        rec = self.reconstruct(x).float().clamp(0, 1)
        self.eval_table.update(meta.volume_idx, meta.slice, psnr=psnr(rec, x), ssim=ssim(rec, x))
        kept = sum(len(t) for t in self._eval["images"])
        if kept < MAX_EVAL_IMAGES:
            self._eval["images"].append(x[: MAX_EVAL_IMAGES - kept])

    def _swap_images(self, split: str) -> Tensor:
        """Slices for the swap check: evenly spaced over the split's dataset, the same on every
        process (so DDP and single-process runs agree); else those seen in this epoch."""
        dm = self._trainer.datamodule if self._trainer is not None else None
        ds = getattr(dm, "datasets", {}).get(split) if dm is not None else None
        if ds is None or len(ds) < 2:
            return torch.cat(self._eval["images"])
        idx = torch.linspace(0, len(ds) - 1, min(MAX_EVAL_IMAGES, len(ds))).long().tolist()
        hr = [torch.as_tensor(ds[i].hr).float()[None].to(self.device) for i in idx]
        return torch.cat([resize_to(x, self.img_size) for x in hr]).clamp(0, 1)

    @torch.no_grad()
    def swap_check(self, images: Tensor) -> dict[str, Tensor]:
        """Swap images i and (i + n//2) mod n: per-pair correlations and the grid columns."""
        n = images.shape[0]
        x1 = images
        x2 = images.roll(-(n // 2) if n > 1 else 0, dims=0)
        zs1, zt1 = self.encoder(x1)
        zs2, zt2 = self.encoder(x2)
        rec = self.generator(zs1, zt1).float().clamp(0, 1)
        s12 = self.generator(zs1, zt2).float().clamp(0, 1)
        s21 = self.generator(zs2, zt1).float().clamp(0, 1)
        c1, c2 = swap_struct_margin(s12, x1, x2)
        return {
            "x1": x1,
            "x2": x2,
            "rec": rec,
            "s12": s12,
            "s21": s21,
            "corr_x1": c1,
            "corr_x2": c2,
        }

    def _eval_end(self, split: str) -> dict[str, float]:
        table = self.eval_table.compute()  # gathered over ranks, each slice once
        p, s = table["psnr"].float(), table["ssim"].float()
        metrics = {
            f"{split}/rec_psnr": p.mean(),
            f"{split}/rec_ssim": s.mean(),
            f"{split}/score": p.mean(),
        }
        images = self._swap_images(split)
        if images.shape[0] > 1:
            sw = self.swap_check(images)
            metrics[f"{split}/swap_corr_x1"] = sw["corr_x1"].mean().cpu()
            metrics[f"{split}/swap_corr_x2"] = sw["corr_x2"].mean().cpu()
            metrics[f"{split}/swap_struct_margin"] = (sw["corr_x1"] - sw["corr_x2"]).mean().cpu()
            if self.trainer is not None and not self.trainer.sanity_checking:
                idx = torch.linspace(0, images.shape[0] - 1, min(4, images.shape[0])).long()
                self.log_grid(
                    f"{split}/swap",
                    [
                        ("x1", sw["x1"][idx]),
                        ("x2", sw["x2"][idx]),
                        ("rec", sw["rec"][idx]),
                        ("G(zs1,zt2)", sw["s12"][idx]),
                        ("G(zs2,zt1)", sw["s21"][idx]),
                    ],
                )
        metrics = {k: v.float().to(self.device) for k, v in metrics.items()}
        self.log_dict(metrics, prog_bar=split == "val")
        if split == "val":
            log.info(
                "step %d: rec PSNR %.2f dB, swap structure margin %.3f",
                self.global_step,
                float(metrics["val/rec_psnr"]),
                float(metrics.get("val/swap_struct_margin", float("nan"))),
            )
        return {k: float(v) for k, v in metrics.items()}
