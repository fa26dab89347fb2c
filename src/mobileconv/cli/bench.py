"""`mobileconv bench`: images/s, latency, peak memory and MACs/s of models, side by side."""
from __future__ import annotations

import argparse
import json
import sys

from ._args import check_image_size, cpu_threads, non_negative_int, positive_int


BACKENDS = ("torch", "onnxruntime")


def _backends(text: str) -> list[str]:
    names = ["torch" if n.strip() == "pytorch" else n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in BACKENDS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {BACKENDS}, got {text!r}")
    return list(dict.fromkeys(names))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="time models: images/s, latency p50/p90, peak memory, MACs/s",
        description="Time registered models with random weights. Inference runs the model through "
                    "optimize_for_inference (BN folded, MixConv / XSepConv as plain convs, channels_last; "
                    "on CPU also oneDNN conv + activation calls and micro-batched early stages); "
                    "training times one SGD step with the fast operators in channels_last. "
                    "--compare-reference also times the reference implementation (impl='reference', split / "
                    "conv per group / concat, BN not folded) of the same weights in alternating rounds and "
                    "prints the speed-up.",
        epilog="example: mobileconv bench mixnet_s mobilenetv3_large_100 --threads 2 --compare-reference")
    p.add_argument("models", nargs="+", metavar="MODEL", help="registered model names (see `mobileconv models`)")
    p.add_argument("--mode", choices=("infer", "train"), default="infer",
                   help="infer: forward under inference_mode; train: forward + backward + SGD step (default infer)")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="images per call (default 32)")
    p.add_argument("--image-size", type=positive_int, default=None, metavar="N",
                   help="square input size (default: the model's own, e.g. 224)")
    p.add_argument("--threads", type=cpu_threads, default=None, metavar="N",
                   help="torch.set_num_threads for the run (default: torch's current setting)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    p.add_argument("--amp", action="store_true", help="autocast: bfloat16 on CPU, float16 on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the timed model (not the reference); in inference: "
                        "optimize_for_inference(model, compile=True), Inductor with the weights frozen")
    p.add_argument("--backend", type=_backends, default=["torch"], metavar="NAME[,NAME]",
                   help="inference runtime(s), timed side by side in one run: torch (default), onnxruntime "
                        "(the optimised model exported to ONNX; needs the 'export' extra), or both: "
                        "--backend torch,onnxruntime")
    p.add_argument("--compare-reference", action="store_true",
                   help="also time impl='reference' (same weights, alternating rounds) and print the speed-up")
    p.add_argument("--rounds", type=positive_int, default=5, metavar="N", help="timed rounds (default 5)")
    p.add_argument("--iters", type=positive_int, default=2, metavar="N", help="timed calls per round (default 2)")
    p.add_argument("--heap-malloc", action="store_true",
                   help="glibc: keep large tensors on the heap instead of fresh zeroed pages per call, for every "
                        "variant (what jemalloc / tcmalloc do)")
    p.add_argument("--warmup", type=non_negative_int, default=2, metavar="N", help="untimed calls first (default 2)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="--mode train: every variant with gradient checkpointing (set_grad_checkpointing(): less "
                        "memory, a second forward pass of the blocks)")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    p.set_defaults(func=run_bench)


def variants_for(args: argparse.Namespace) -> list[str]:
    """The variants that ``args`` asks for: the timed one, then the reference if compared."""
    from ..engine.bench import MAIN_VARIANT, REFERENCE_VARIANT

    if args.compile and args.warmup < 1:
        raise ValueError("--compile needs --warmup 1 or more: a compiled model compiles on its first call, "
                         "which must not be timed")
    if "onnxruntime" in args.backend and args.mode != "infer":
        raise ValueError("--backend onnxruntime times inference only; use --mode infer")
    if "onnxruntime" in args.backend and args.amp:
        raise ValueError("--backend onnxruntime runs the float32 ONNX model; leave out --amp")
    if args.compile and "torch" not in args.backend:  # the result would say compile: true of an ONNX model
        raise ValueError("--compile compiles the torch model; with --backend onnxruntime alone nothing is compiled "
                         "(use --backend torch,onnxruntime, or leave out --compile)")
    torch_variant = "compiled" if args.compile and args.mode == "infer" else MAIN_VARIANT[args.mode]
    timed = [torch_variant if b == "torch" else "onnxruntime" for b in args.backend]
    return timed + [REFERENCE_VARIANT] if args.compare_reference else timed


def run_bench(args: argparse.Namespace) -> int:
    from ..engine.bench import BenchConfig, benchmark_model, check_device, format_table
    from ..engine.malloc import keep_large_allocations_on_heap
    from ..models import list_models
    from ..profile.zoo import model_name_hint

    check_device(args.device)  # before any model is built
    if args.heap_malloc and not keep_large_allocations_on_heap():
        raise ValueError("--heap-malloc needs glibc's malloc (Linux); this C library has no mallopt")
    known = set(list_models())
    unknown = [m for m in args.models if m not in known]
    if unknown:
        raise ValueError("unknown model(s) " + "; ".join(f"{m} ({model_name_hint(m)})" for m in unknown))
    # every model, before the first is timed: a later model's forward refused a too small --image-size only
    # after the earlier ones had been benchmarked for minutes, and their results were lost
    check_image_size(args.models, args.image_size)
    config = BenchConfig(mode=args.mode, batch_size=args.batch_size, image_size=args.image_size,
                         threads=args.threads, device=args.device, amp=args.amp, compile=args.compile,
                         warmup=args.warmup, rounds=args.rounds, iters=args.iters, memory=not args.no_memory,
                         grad_checkpointing=args.grad_checkpointing)
    variants = variants_for(args)
    progress = sys.stderr.isatty()
    results = [benchmark_model(name, config, variants, progress=progress) for name in args.models]
    if args.format == "json":
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(format_table(results))
    return 0
