"""Training-step time of the quick-start generator with each up-sampler.

One step = forward, L1 loss, backward and Adam update of ``model=srresnet_small`` (8 blocks x 32
maps, residual on bicubic) on a batch of 16 random 96-pixel HR patches, NHWC as the recipe runs
it; ``--warmup`` steps, then the median of ``--steps`` timed steps. On a GPU the step runs under
bf16 autocast (``--precision``).

    python experiments/bench_upsampler.py --out records/<date>-bench-upsampler
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import device_name, record_folder, write_result  # noqa: E402

from mrsr.nets.srresnet import SRResNet  # noqa: E402
from mrsr.nets.upsample import UPSAMPLERS  # noqa: E402


def time_step(upsampler: str, scale: int, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    net = SRResNet(scale, 8, 32, batch_norm=False, residual_bicubic=True, upsampler=upsampler)
    net = net.to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=5e-4)
    lr = torch.rand(args.batch, 1, args.crop // scale, args.crop // scale, device=device)
    lr = lr.contiguous(memory_format=torch.channels_last)
    hr = torch.rand(args.batch, 1, args.crop, args.crop, device=device)
    bf16 = device.type == "cuda" and args.precision == "bf16-mixed"
    times = []
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = (net(lr).float() - hr).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return {
        "upsampler": upsampler,
        "scale": scale,
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "s_per_step": step,
        "slices_per_s": args.batch / step,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--precision", default="bf16-mixed", help="on a GPU: bf16-mixed | 32-true")
    p.add_argument(
        "--out",
        type=Path,
        default=record_folder("bench-upsampler"),
        help="record folder (or a .json file)",
    )
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = [time_step(u, s, args, device) for s in (2, 4) for u in UPSAMPLERS]
    for r in rows:
        print(
            f"x{r['scale']} {r['upsampler']:<20} {r['params_m']:.3f} M params  "
            f"{r['s_per_step'] * 1e3:8.1f} ms/step"
            f"  {r['slices_per_s']:8.1f} slices/s"
        )
    write_result(
        args.out,
        {
            "benchmark": "upsampler",
            "device": device_name(device),
            "torch": torch.__version__,
            "precision": args.precision if device.type == "cuda" else "32-true",
            "batch": args.batch,
            "hr_crop": args.crop,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
