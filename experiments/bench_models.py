"""Cost of each network of the Table-1 comparison: parameters, FLOPs, inference latency and
training speed, for the paper-size and CPU-size presets (``conf/model/``), x2 and x4.

Per network and scale: parameters; GFLOP per image at ``--size`` x ``--size`` output (counted
with ``torch.utils.flop_counter``); batch-1 inference latency (median after warm-up); one
training step (forward, L1 backward, Adam) at ``--batch`` HR patches of ``--crop`` pixels, as
slices/s. fp32 on a CPU, bf16 autocast on a GPU (``--precision`` to choose). Networks are built
from their configs exactly as ``model=<name>`` builds them.

    python experiments/bench_models.py --out records/<date>-bench-models-cpu
    python experiments/bench_models.py --presets paper small --out records/<date>-bench-models-gpu
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch
from _bench import autocast, device_name, flops_per_image, record_folder, timed, write_result
from hydra.utils import instantiate

from mrsr.config import compose
from mrsr.labels import unlabelled
from mrsr.nets import n_params

FAMILIES = ("srcnn", "vdsr", "edsr", "rdn", "rcan", "swinir", "srresnet")


def build(name: str, scale: int) -> torch.nn.Module:
    cfg = compose([f"model={name}", f"scale={scale}"])
    return instantiate(unlabelled(cfg.model), _convert_="all")


def bench_one(
    name: str, scale: int, args: argparse.Namespace, device: torch.device, precision: str
) -> dict[str, Any]:
    torch.manual_seed(0)
    net = build(name, scale).to(device)
    x = torch.rand(1, 1, args.size // scale, args.size // scale, device=device)
    net.eval()
    flops = flops_per_image(net, x)

    def infer() -> None:
        with torch.inference_mode(), autocast(device, precision):
            net(x)

    latency = statistics.median(timed(infer, device, args.warmup, args.iters))
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    lr = torch.rand(args.batch, 1, args.crop // scale, args.crop // scale, device=device)
    hr = torch.rand(args.batch, 1, args.crop, args.crop, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = (net(lr).float() - hr).abs().mean()
        loss.backward()
        opt.step()

    per_step = statistics.median(timed(step, device, args.warmup, args.iters))
    row = {
        "model": name,
        "scale": scale,
        "params_m": n_params(net) / 1e6,
        "gflops_per_image": flops / 1e9,
        "output": args.size,
        "latency_ms": 1000 * latency,
        "train_batch": args.batch,
        "train_crop": args.crop,
        "train_ms_per_step": 1000 * per_step,
        "train_slices_per_s": args.batch / per_step,
    }
    print(
        f"{name:15s} x{scale}: {row['params_m']:8.3f} M params, "
        f"{row['gflops_per_image']:8.1f} GFLOP/image, "
        f"{row['latency_ms']:8.1f} ms/image, {row['train_slices_per_s']:8.1f} training slices/s",
        flush=True,
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None)
    p.add_argument("--presets", nargs="+", choices=["paper", "small"], default=["small"])
    p.add_argument("--models", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    p.add_argument("--scales", type=int, nargs="+", default=[2, 4])
    p.add_argument("--size", type=int, default=256, help="output size of the latency case")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=96, help="HR training patch")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument(
        "--out",
        type=Path,
        default=record_folder("bench-models"),
        help="record folder (or a .json file)",
    )
    args = p.parse_args()
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    names = [
        m + ("_small" if preset == "small" else "") for preset in args.presets for m in args.models
    ]
    rows = []
    for name in names:
        for scale in args.scales:
            rows.append(bench_one(name, scale, args, device, precision))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    write_result(
        args.out,
        {
            "benchmark": "models",
            "device": device_name(device),
            "precision": precision,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
