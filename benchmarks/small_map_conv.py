"""Does PyTorch's own conv kernel beat the oneDNN call on small maps at batch 1? (Answer: no.)

``OneDNNConv2d`` sends every conv of an optimised model to oneDNN with a packed weight. A
oneDNN call costs about 24 us however small the layer, and PyTorch's own kernel, which plain
``F.conv2d`` picks for small layers, costs less per call. This script times the optimised model
as it is against the same model whose convs on maps of at most ``--max-pixels`` pixels run
``F.conv2d`` + activation instead, alternating in one process on the same weights, and prints
the speed-up of the oneDNN-everywhere model (above 1: oneDNN is faster). Same outputs either way.

    python benchmarks/small_map_conv.py --max-pixels 49 196 784
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import mobileconv
from mobileconv.cli._args import cpu_threads, positive_int, registered_model
from mobileconv.deploy import onednn


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=registered_model, default="xsep_mobilenetv3_small_100")
    p.add_argument("--max-pixels", type=positive_int, nargs="+", default=[49, 196, 784],
                   help="maps of at most this many pixels (H x W) go to F.conv2d; one comparison each")
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--threads", type=cpu_threads, default=2)
    p.add_argument("--rounds", type=positive_int, default=7)
    p.add_argument("--calls", type=positive_int, default=20, help="calls per variant and round")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = mobileconv.optimize_for_inference(mobileconv.create_model(args.model).eval())
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    use_onednn = onednn.OneDNNConv2d._use_onednn
    limit = {"pixels": 0}  # 0: every conv goes to oneDNN

    def small_maps_native(self, inp: torch.Tensor) -> bool:
        return inp.shape[-1] * inp.shape[-2] > limit["pixels"] and use_onednn(self, inp)

    onednn.OneDNNConv2d._use_onednn = small_maps_native
    print(f"{args.model}, batch {args.batch_size}, {args.image_size} px, {args.threads} threads, "
          f"{args.rounds} rounds of {args.calls} calls")
    with torch.inference_mode():
        for max_pixels in args.max_pixels:
            times: dict[int, list[float]] = {0: [], max_pixels: []}
            outputs = []
            for pixels in times:  # warm-up, and both variants give the same output
                limit["pixels"] = pixels
                outputs.append(model(x))
            torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-6)
            for _ in range(args.rounds):
                for pixels in times:
                    limit["pixels"] = pixels
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        model(x)
                    times[pixels].append((time.perf_counter() - start) / args.calls * 1e3)
            ratios = [native / fused for fused, native in zip(times[0], times[max_pixels])]
            print(f"maps <= {max_pixels:5d} px in F.conv2d: {statistics.median(times[max_pixels]):.2f} ms, "
                  f"oneDNN everywhere {statistics.median(times[0]):.2f} ms; oneDNN speed-up "
                  f"x{statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
