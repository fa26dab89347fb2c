"""Speed measurement: the same weights, several implementations, timed in alternating rounds.

Timings on a shared machine drift by tens of percent within a minute, so a speed-up is only
meaningful when both sides are timed side by side in one process. :func:`benchmark_model` builds
every *variant* of one model from the same weights, warms each up, then runs ``rounds`` rounds in
which every variant runs ``iters`` timed calls in turn. It reports per variant the median
images/s over the rounds, the per-call latency p50 / p90, the peak memory of one call and the
MACs per second; the speed-up of a variant is the median over rounds of
``reference time / variant time`` measured in the same round.

Variants (``VARIANTS``):

* inference: ``optimized`` = :func:`mobileconv.optimize_for_inference` (BN folded, MixConv /
  XSepConv as plain convs, channels_last); ``compiled`` = the same with ``compile=True`` (Inductor,
  weights frozen; compiled in the warm-up); ``eager`` = the eval-mode model with ``impl="fast"``;
  ``reference`` = the eval-mode model with ``impl="reference"`` (split / conv per group / concat,
  BN not folded, PyTorch's default memory format); ``reference_cl`` = the same in channels_last.
* training (one SGD step: forward, cross-entropy, backward, step): ``fast`` = ``impl="fast"`` in
  channels_last; ``reference`` = ``impl="reference"`` in the default format; ``reference_cl``.
* ``onnxruntime`` (inference): the optimised model exported to ONNX and run by onnxruntime
  (:func:`mobileconv.deploy.onnxrt.make_ort_callable`).

MACs per image are the multiply-adds of conv and linear layers (SPEC.md: ``FlopCounterMode`` / 2),
counted on the ``impl="reference"`` model, so the zero taps of fused MixConv kernels do not count.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` during one call. On CPU no allocator
statistics exist (``tracemalloc`` does not see torch's allocations and ``ru_maxrss`` is a
process-wide high-water mark), so two extra, untimed calls run under ``torch.profiler`` with
``profile_memory=True`` and the peak is the running sum of the tensor allocations and frees it
records during the second call, one by one in time order, above what was live before that call
(the first call lets the profiler see the blocks that the second frees, such as the gradients of
the previous training step). This is the tensor memory a call needs (activations, gradients,
workspaces allocated through torch, inside an op included); oneDNN's private scratch
buffers and the Python heap are not included, and the memory of onnxruntime and of a compiled
model on CPU (its buffers are not recorded by the profiler) is not measured.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..deploy.export import memory_errors_as_value_errors
from ..layers import set_layer_impl

MODES = ("infer", "train")
DEVICES = ("cpu", "cuda")
VARIANTS = {
    "infer": ("optimized", "compiled", "eager", "reference", "reference_cl", "onnxruntime"),
    "train": ("fast", "reference", "reference_cl"),
}
# The variant timed by default, and the one it is compared with.
MAIN_VARIANT = {"infer": "optimized", "train": "fast"}
REFERENCE_VARIANT = "reference"
TRAIN_LR = 0.01  # SGD with momentum 0.9; the value does not change the cost of a step


@dataclass(frozen=True)
class BenchConfig:
    """How to time: mode, shapes, threads, device, and how many warm-up / timed calls.

    Args:
        mode: ``"infer"`` or ``"train"``.
        batch_size: images per call.
        image_size: square input size; ``None`` uses the model's ``pretrained_cfg["input_size"]``.
        threads: ``torch.set_num_threads`` for the run (restored after); ``None`` keeps the current.
        device: ``"cpu"`` or ``"cuda"``.
        amp: autocast (bfloat16 on CPU, float16 on CUDA).
        compile: ``torch.compile`` the timed (non-reference) variants; in inference the
            ``optimized`` variant becomes ``optimize_for_inference(..., compile=True)``.
        warmup: untimed calls per variant before the first round.
        rounds: timed rounds; each runs every variant ``iters`` times, variants alternating.
        iters: timed calls per variant per round.
        memory: also measure the peak memory of one call.
        grad_checkpointing: in training, every variant's model with ``set_grad_checkpointing()`` (each block's
            activations computed again in the backward pass: less memory, more time).
    """

    mode: str = "infer"
    batch_size: int = 32
    image_size: int | None = None
    threads: int | None = None
    device: str = "cpu"
    amp: bool = False
    compile: bool = False
    warmup: int = 2
    rounds: int = 5
    iters: int = 2
    memory: bool = True
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.grad_checkpointing and self.mode != "train":
            raise ValueError("grad_checkpointing saves memory in training only: use mode='train' (--mode train)")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        for name, low in (("batch_size", 1), ("warmup", 0), ("rounds", 1), ("iters", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name, low in (("image_size", 8), ("threads", 1)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise ValueError(f"{name} must be an integer >= {low} or None, got {value!r}")
        cpus = available_cpus()
        if self.threads is not None and self.threads > cpus:  # torch segfaulted at 100000
            raise ValueError(f"threads must be at most {cpus} (the CPUs this process may use), got {self.threads}")


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass
class Measurement:
    """One variant's timings: median images/s over the rounds, per-call latency, peak memory."""

    variant: str
    images_per_s: float
    latency_p50_ms: float
    latency_p90_ms: float
    peak_memory_mb: float | None
    round_images_per_s: list[float]
    speedup: float | None = None  # median over rounds of reference time / this variant's time


@dataclass
class BenchResult:
    """Every variant of one model under one :class:`BenchConfig`."""

    model: str
    mode: str
    batch_size: int
    image_size: int
    device: str
    threads: int
    amp: bool
    compile: bool
    macs_per_image: int
    measurements: dict[str, Measurement] = field(default_factory=dict)
    grad_checkpointing: bool = False

    def macs_per_s(self, variant: str) -> float:
        """True MACs (``impl="reference"`` count) per second of ``variant``."""
        return self.macs_per_image * self.measurements[variant].images_per_s

    def speedup(self, variant: str, over: str = REFERENCE_VARIANT) -> float:
        """Median over rounds of ``variant``'s images/s / ``over``'s images/s in the same round."""
        return paired_ratio(self.measurements[variant].round_images_per_s, self.measurements[over].round_images_per_s)

    def to_dict(self) -> dict:
        d = asdict(self)
        for name, m in d["measurements"].items():
            m["gmacs_per_s"] = self.macs_per_s(name) / 1e9
        return d


def check_device(device: str) -> torch.device:
    """``torch.device(device)``, or a ``ValueError`` saying why it cannot be used here."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device 'cuda' (--device cuda) was requested but CUDA is not available "
                         f"(torch {torch.__version__}, torch.cuda.is_available() is False); use --device cpu")
    return torch.device(device)


def check_variants(mode: str, variants: Sequence[str]) -> list[str]:
    variants = list(variants)
    if not variants:
        raise ValueError("variants must name at least one variant")
    allowed = VARIANTS.get(mode, ())
    for v in variants:
        if v not in allowed:
            raise ValueError(f"variant {v!r} is not defined for mode={mode!r}; expected one of {allowed}")
    if len(set(variants)) != len(variants):
        raise ValueError(f"variants must not repeat, got {variants}")
    return variants


def count_macs(model: nn.Module, image_size: int, in_chans: int = 3) -> int:
    """Multiply-adds of one image (``FlopCounterMode`` / 2) on an ``impl="reference"`` eval copy."""
    from torch.utils.flop_counter import FlopCounterMode

    ref = set_layer_impl(copy.deepcopy(model), "reference").eval()
    p = next(ref.parameters(), None)
    x = torch.zeros(1, in_chans, image_size, image_size, device=p.device if p is not None else "cpu")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        ref(x)
    return counter.get_total_flops() // 2


def default_image_size(model: nn.Module) -> int:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size", (3, 224, 224))
    return int(size[-1])


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """Run with ``torch.set_num_threads(threads)``; restore the previous value afterwards."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _autocast(config: BenchConfig):
    if not config.amp:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if config.device == "cpu" else torch.float16
    return torch.autocast(config.device, dtype=dtype)


def make_inference_step(model: nn.Module, config: BenchConfig) -> Callable[[tuple], torch.Tensor]:
    """``step(batch)``: one forward under ``torch.inference_mode`` (and autocast with ``amp``)."""
    def step(batch):
        with torch.inference_mode(), _autocast(config):
            return model(batch[0])
    return step


def make_train_step(model: nn.Module, config: BenchConfig) -> Callable[[tuple], torch.Tensor]:
    """``step(batch)``: one SGD step (zero_grad, forward, cross-entropy, backward, step)."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=TRAIN_LR, momentum=0.9)
    scaler = torch.amp.GradScaler(config.device, enabled=config.amp and config.device == "cuda")

    def step(batch):
        x, y = batch
        optimizer.zero_grad(set_to_none=True)
        with _autocast(config):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss
    return step


def build_variant(model: nn.Module, variant: str, config: BenchConfig,
                  example: torch.Tensor) -> Callable[[tuple], torch.Tensor]:
    """A step function for one variant, built from a copy of ``model`` (the same weights for all)."""
    device = check_device(config.device)
    mode = config.mode
    check_variants(mode, [variant])
    if variant == "onnxruntime":
        from ..deploy.onnxrt import make_ort_callable  # noqa: PLC0415 - optional dependency

        if config.device != "cpu":
            raise ValueError("the onnxruntime variant runs on the CPU; use --device cpu")
        if config.amp:  # it would silently run float32 beside autocast variants
            raise ValueError("the onnxruntime variant runs the float32 ONNX model; use amp=False")
        run = make_ort_callable(copy.deepcopy(model).eval(), tuple(example.shape), threads=config.threads)
        return lambda batch: run(batch[0])
    compiled = _is_compiled(variant, config)
    optimized = mode == "infer" and variant in ("optimized", "compiled")
    if optimized:  # compiled by optimize_for_inference itself
        from ..deploy.optimize import optimize_for_inference  # noqa: PLC0415

        net = optimize_for_inference(copy.deepcopy(model).to(device), example_input=example[:1].to(device),
                                     compile=compiled)
    else:
        net = copy.deepcopy(model).to(device)
        set_layer_impl(net, "reference" if variant.startswith("reference") else "fast")
        if config.grad_checkpointing:
            if not hasattr(net, "set_grad_checkpointing"):
                raise ValueError(f"grad_checkpointing: {type(net).__name__} has no set_grad_checkpointing() (the zoo's "
                                 f"models have it)")
            net.set_grad_checkpointing(True)
        if variant in ("reference_cl", "fast"):
            net = net.to(memory_format=torch.channels_last)
        if mode == "infer":
            net.eval()
    if compiled and not optimized:
        net = torch.compile(net)
    return make_inference_step(net, config) if mode == "infer" else make_train_step(net, config)


def _is_compiled(variant: str, config: BenchConfig) -> bool:
    return variant == "compiled" or (config.compile and not variant.startswith("reference"))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 (C++ logging included) to /dev/null for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_mb(step: Callable[[tuple], object], batch: tuple, device: str) -> float:
    """Peak tensor memory of one call of ``step`` above what was live before it, in MiB (see module doc)."""
    if device == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(batch)
        _sync(device)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    from torch.profiler import ProfilerActivity, profile, record_function

    # The profiler backend logs its start / stop (and frees of blocks it did not see allocated) to
    # file descriptor 2; the step already ran untimed, so nothing else is expected there.
    # The first call is not measured: the profiler drops the free of any block allocated before it
    # started (the gradients that zero_grad(set_to_none=True) frees: they would count twice). The
    # allocations and frees are read one by one, in time order, not as each op's net total at the
    # op's start (a composite op such as cross_entropy frees its intermediate inside itself).
    label = "mobileconv.bench.peak_memory_call"
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(batch)
        with record_function(label):
            step(batch)
    events = prof.profiler.kineto_results.events()
    call = next(e for e in events if e.name() == label)
    records = sorted((e.start_ns(), e.nbytes()) for e in events
                     if e.name() == "[memory]" and call.start_ns() <= e.start_ns() <= call.end_ns())
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def time_variants(steps: dict[str, Callable[[tuple], object]], batch: tuple, config: BenchConfig,
                  progress: bool = False, desc: str = "") -> dict[str, list[list[float]]]:
    """Warm up every step, then time them in alternating rounds: ``{variant: [[seconds per call] per round]}``."""
    from tqdm.auto import tqdm

    times: dict[str, list[list[float]]] = {name: [] for name in steps}
    bar = tqdm(total=(config.warmup + config.rounds) * len(steps), desc=desc, unit="run", disable=not progress,
               leave=False)
    with bar:
        for name, step in steps.items():  # a compiled variant compiles here, on its first call
            bar.set_postfix_str(f"warm-up {name}")
            for _ in range(config.warmup):
                step(batch)
                bar.update()
            _sync(config.device)
        for _ in range(config.rounds):
            for name, step in steps.items():
                calls = []
                for _ in range(config.iters):
                    start = time.perf_counter()
                    step(batch)
                    _sync(config.device)
                    calls.append(time.perf_counter() - start)
                times[name].append(calls)
                bar.set_postfix_str(f"{name} {config.batch_size * len(calls) / sum(calls):.1f} img/s")
                bar.update()
    return times


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), ``q`` in [0, 100]."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize_times(name: str, rounds: list[list[float]], batch_size: int) -> Measurement:
    calls = [t for r in rounds for t in r]
    per_round = [batch_size * len(r) / sum(r) for r in rounds]
    return Measurement(variant=name, images_per_s=statistics.median(per_round),
                       latency_p50_ms=percentile(calls, 50) * 1e3, latency_p90_ms=percentile(calls, 90) * 1e3,
                       peak_memory_mb=None, round_images_per_s=per_round)


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median of ``numerator[i] / denominator[i]``: a ratio of two things measured in the same rounds."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"need the same non-zero number of rounds, got {len(numerator)} and {len(denominator)}")
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def compare_models(models: dict[str, nn.Module], batch_sizes: Sequence[int], image_size: int, rounds: int, *,
                   in_chans: int = 3, progress: bool = True) -> list[dict]:
    """Two inference models on the same random batches, in alternating rounds, at each batch size.

    For the benchmark scripts that compare a model with a variant of it. One row per batch size:
    ``{"batch_size", "<name>_ms" (median latency of each), "speedup"}``, the speed-up being the
    second model's over the first's, the median of the per-round ratios (:func:`paired_ratio`).
    Batch 1 gets 20 calls per round (a call is short), larger batches 2.
    """
    if len(models) != 2:
        raise ValueError(f"compare_models takes two models, got {len(models)}")
    rows = []
    for batch_size in batch_sizes:
        config = BenchConfig(batch_size=batch_size, rounds=rounds, iters=20 if batch_size == 1 else 2,
                             warmup=5 if batch_size == 1 else 2)
        batch = torch.randn(batch_size, in_chans, image_size, image_size)
        rows.append({"batch_size": batch_size, **compare_on(models, batch, config, progress=progress,
                                                            desc=f"whole model, batch {batch_size}")})
    return rows


def compare_on(models: dict[str, Callable[[torch.Tensor], object]], batch: torch.Tensor, config: BenchConfig, *,
               progress: bool = False, desc: str = "") -> dict:
    """Two inference callables on ``batch`` in alternating rounds (:func:`time_variants`).

    ``{"<name>_ms" (median latency of each), "speedup"}``: the second's speed over the first's, the
    median of the per-round ratios (:func:`paired_ratio`).
    """
    (first, _), (second, _) = models.items()
    times = time_variants({name: make_inference_step(m, config) for name, m in models.items()}, (batch,), config,
                          progress=progress, desc=desc)
    m = {name: summarize_times(name, t, len(batch)) for name, t in times.items()}
    return {**{f"{name}_ms": m[name].latency_p50_ms for name in models},
            "speedup": paired_ratio(m[second].round_images_per_s, m[first].round_images_per_s)}


def script_environment(script: str, argv: Sequence[str], **extra) -> dict:
    """What a benchmark script's report records about its run: the command, the date, torch's version, ``extra``."""
    import datetime

    return {"command": " ".join([f"python benchmarks/{script}", *argv]),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__, **extra}


def write_report(out: str | os.PathLike, stem: str, report: str, payload: dict) -> None:
    """A benchmark script's results: ``out/stem.md`` (the report) and ``out/stem.json`` (``payload``), atomically."""
    import json
    from pathlib import Path

    from .checkpoint import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stem}.md", report + "\n")
    atomic_write_text(out / f"{stem}.json", json.dumps(payload, indent=2) + "\n")


def make_batch(config: BenchConfig, image_size: int, in_chans: int, num_classes: int) -> tuple:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(config.batch_size, in_chans, image_size, image_size, generator=g)
    y = torch.randint(0, max(num_classes, 1), (config.batch_size,), generator=g)
    return x.to(config.device), y.to(config.device)


def benchmark_model(model: nn.Module | str, config: BenchConfig, variants: Sequence[str] | None = None, *,
                    progress: bool = False, name: str | None = None) -> BenchResult:
    """Time ``variants`` of one model side by side (see the module docstring).

    Args:
        model: an ``nn.Module`` or a registered model name (created with random weights).
        config: shapes, threads, device, rounds.
        variants: names from ``VARIANTS[config.mode]``; default: the main variant
            (``optimized`` / ``fast``) only. When ``"reference"`` is among them, every other
            variant gets its ``speedup`` over it.
        progress: show a progress bar with the running throughput.
        name: the model's name in the result (default: the registered name or the class name).

    Returns:
        A :class:`BenchResult`.
    """
    check_device(config.device)
    variants = check_variants(config.mode, variants or [MAIN_VARIANT[config.mode]])
    if isinstance(model, str):
        from ..models import create_model  # noqa: PLC0415

        name = name or model
        model = create_model(model)
    name = name or type(model).__name__
    image_size = config.image_size or default_image_size(model)
    in_chans = getattr(model, "in_chans", 3)
    too_large = f"batches of {config.batch_size} images of {image_size}x{image_size}"
    with num_threads(config.threads), memory_errors_as_value_errors(too_large, "use a smaller batch or image size"), \
            _single_value_batch_norm_errors(config, image_size, name):
        macs = count_macs(model, image_size, in_chans)
        batch = make_batch(config, image_size, in_chans, getattr(model, "num_classes", 1000))
        steps = {v: build_variant(model, v, config, batch[0]) for v in variants}
        times = time_variants(steps, batch, config, progress=progress, desc=name)
        result = BenchResult(model=name, mode=config.mode, batch_size=config.batch_size, image_size=image_size,
                             device=config.device, threads=torch.get_num_threads(), amp=config.amp,
                             compile=config.compile, macs_per_image=macs,
                             grad_checkpointing=config.grad_checkpointing)
        for v in variants:
            m = summarize_times(v, times[v], config.batch_size)
            # onnxruntime's own allocator is invisible to torch; so are the buffers of an Inductor CPU
            # graph (the profiler records none of them: it would read 0)
            invisible = v == "onnxruntime" or (config.device == "cpu" and _is_compiled(v, config))
            if config.memory and not invisible:
                m.peak_memory_mb = peak_memory_mb(steps[v], batch, config.device)
            result.measurements[v] = m
        if REFERENCE_VARIANT in times:
            for v, m in result.measurements.items():
                if v != REFERENCE_VARIANT:
                    m.speedup = result.speedup(v)
    return result


@contextlib.contextmanager
def _single_value_batch_norm_errors(config: BenchConfig, image_size: int, name: str) -> Iterator[None]:
    """A training BatchNorm that sees one value per channel (batch 1, a 1x1 map) becomes an error naming the fix.

    torch's own message ("Expected more than 1 value per channel when training") names neither option.
    """
    try:
        yield
    except ValueError as e:
        if "Expected more than 1 value per channel when training" not in str(e):
            raise
        raise ValueError(f"{name} in --mode train at batch size {config.batch_size} and {image_size}x{image_size} "
                         f"images: a BatchNorm layer gets one value per channel ({e}); use --batch-size 2 or more, "
                         f"or a larger --image-size") from e


COLUMNS = ("model", "mode", "variant", "batch", "size", "img/s", "p50 ms", "p90 ms", "peak MiB", "GMAC/s",
           "speed-up")


def result_rows(results: Sequence[BenchResult]) -> list[list[str]]:
    """One row of strings per (model, variant), in ``COLUMNS`` order."""
    rows = []
    for r in results:
        for v, m in r.measurements.items():
            rows.append([r.model, r.mode, v, str(r.batch_size), str(r.image_size), f"{m.images_per_s:.1f}",
                         f"{m.latency_p50_ms:.1f}", f"{m.latency_p90_ms:.1f}",
                         _mib(m.peak_memory_mb),
                         f"{r.macs_per_s(v) / 1e9:.2f}", "-" if m.speedup is None else f"x{m.speedup:.2f}"])
    return rows


def _mib(value: float | None) -> str:
    """Peak memory for the table: whole MiB from 10 on, two decimals below (not "0" for 60 KiB)."""
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 10 else f"{value:.2f}"


def format_table(results: Sequence[BenchResult]) -> str:
    """A GitHub-markdown table of :func:`result_rows`."""
    rows = result_rows(results)
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(COLUMNS)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths]), *(line(row) for row in rows)])
