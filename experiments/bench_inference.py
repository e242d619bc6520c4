"""SR inference benchmark: latency and throughput of the paper-size SRResNet generator.

For x2 and x4 at 256x256 and 512x512 outputs: batch-1 latency (median of timed runs
after warm-up) and throughput at ``--batch``, plus the model FLOPs per image (counted
with ``torch.utils.flop_counter``) and the achieved FLOP/s. fp32 on CPU, bf16 autocast
on a GPU (``--precision`` to choose); ``--compile`` adds ``torch.compile``.

    python experiments/bench_inference.py --out records/<date>-bench-inference
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch
from _bench import autocast, device_name, flops_per_image, record_folder, timed, write_result

from mrsr.nets.srresnet import SRResNet


def bench(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    rows = []
    for scale in args.scales:
        net = SRResNet(scale=scale, n_blocks=16, n_feats=64, batch_norm=True).to(device).eval()
        fwd = torch.compile(net) if args.compile else net
        for out_size in args.sizes:
            size = out_size // scale
            x1 = torch.rand(1, 1, size, size, device=device)
            xb = torch.rand(args.batch, 1, size, size, device=device)
            flops = flops_per_image(net, x1)

            def run(x: torch.Tensor, fwd: torch.nn.Module = fwd) -> None:
                with torch.inference_mode(), autocast(device, precision):
                    fwd(x)

            lat = timed(lambda x=x1: run(x), device, args.warmup, args.iters)
            thr = timed(
                lambda x=xb: run(x), device, max(1, args.warmup // 2), max(2, args.iters // 2)
            )
            latency = statistics.median(lat)
            per_batch = statistics.median(thr)
            row = {
                "scale": scale,
                "output": out_size,
                "input": size,
                "latency_ms": 1000 * latency,
                "latency_p90_ms": 1000 * sorted(lat)[int(0.9 * (len(lat) - 1))],
                "batch": args.batch,
                "images_per_s": args.batch / per_batch,
                "gflops_per_image": flops / 1e9,
                "achieved_tflops": flops * args.batch / per_batch / 1e12,
            }
            rows.append(row)
            print(
                f"x{scale} {out_size}x{out_size}: {row['latency_ms']:8.1f} ms/image (batch 1), "
                f"{row['images_per_s']:7.2f} images/s (batch {args.batch}), "
                f"{row['gflops_per_image']:6.1f} GFLOP/image, {row['achieved_tflops']:.3f} TFLOP/s"
            )
    return {
        "benchmark": "inference",
        "device": device_name(device),
        "precision": precision,
        "compile": bool(args.compile),
        "model": "SRResNet n_blocks=16 n_feats=64 (paper size)",
        "torch": torch.__version__,
        "rows": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None)
    p.add_argument("--scales", type=int, nargs="+", default=[2, 4])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument(
        "--batch", type=int, default=None, help="throughput batch (default: 4 CPU, 32 GPU)"
    )
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile the generator")
    p.add_argument(
        "--out",
        type=Path,
        default=record_folder("bench-inference"),
        help="record folder (or a .json file)",
    )
    args = p.parse_args()
    gpu = args.device.startswith("cuda")
    args.batch = args.batch or (32 if gpu else 4)
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    args.iters = args.iters or (100 if gpu else 6)
    result = bench(args)
    print(
        f"device: {result['device']}, precision {result['precision']}, compile {result['compile']}"
    )
    write_result(args.out, result, vars(args))


if __name__ == "__main__":
    main()
