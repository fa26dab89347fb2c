"""What RandAugment (``--aa``) costs per training batch: mobileconv's batched ops against timm's way, Pillow per image.

Times, alternating in one process: ``RandAugment`` on a batch (each image draws its own ops, which then
run batched over the images that drew them); the same policy as timm runs it, one Pillow image at a time
(the Pillow calls of timm's ``auto_augment.py``, on images already in PIL form, so no conversion is
counted; both pick bilinear or bicubic at random for each geometric op, timm's training default); and, for scale, one training step (SGD, forward + backward + step) of ``--model`` at the same
batch size. Images are crops of scikit-learn's sample photos. Pillow runs in this one process; timm spreads
it over its data-loader workers, mobileconv's ``--workers`` load images but the batched ops run in the
training process.

    python benchmarks/randaugment_speed.py --threads 2
    python benchmarks/randaugment_speed.py --policy augmix-m3-w3 --out benchmarks/results/augmix_speed

Another ``--policy`` (AutoAugment, AugMix) times the batched module and the training step only.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

import mobileconv
from mobileconv.cli._args import cpu_threads, positive_int, registered_model
from mobileconv.data.auto_augment import RAND_TRANSFORMS, RandAugment, auto_augment_transform, parse_rand_augment

RESULTS = Path(__file__).parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", default="rand-m9-mstd0.5",
                   help="timm's --aa string (RandAugment, AutoAugment or AugMix; Pillow is timed beside RandAugment "
                        "only)")
    p.add_argument("--model", type=registered_model, default="mixnet_s", help="the training step timed for scale")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--threads", type=cpu_threads, default=2)
    p.add_argument("--rounds", type=positive_int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS / "randaugment_speed")
    return p.parse_args(argv)


def photos(n: int, size: int) -> list[Image.Image]:
    """``n`` random ``size`` x ``size`` crops of scikit-learn's two sample photos (427 x 640)."""
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(0)
    sources = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]
    crops = []
    for i in range(n):
        image = sources[i % 2]
        side = int(rng.integers(size // 2, min(image.shape[:2]) + 1))
        top, left = (int(rng.integers(0, image.shape[k] - side + 1)) for k in (0, 1))
        crop = Image.fromarray(image[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
        crops.append(crop)
    return crops


def pillow_rand_augment(policy: str, fill: tuple[int, int, int]):
    """timm's RandAugment as timm runs it: Pillow calls per image, ``random`` / ``np.random`` draws."""
    settings = parse_rand_augment(policy)
    m, mstd, mmax, n = (settings[k] for k in ("magnitude", "magnitude_std", "magnitude_max", "num_layers"))

    def kwargs() -> dict:  # timm's training default picks bilinear or bicubic at random for each op
        return {"resample": random.choice((Image.BILINEAR, Image.BICUBIC)), "fillcolor": fill}

    def signed(v: float) -> float:
        return -v if random.random() > 0.5 else v

    ops = {
        "AutoContrast": lambda img, level: ImageOps.autocontrast(img),
        "Equalize": lambda img, level: ImageOps.equalize(img),
        "Invert": lambda img, level: ImageOps.invert(img),
        "Rotate": lambda img, level: img.rotate(signed(level / 10 * 30), **kwargs()),
        "Posterize": lambda img, level: ImageOps.posterize(img, int(level / 10 * 4)),
        "Solarize": lambda img, level: ImageOps.solarize(img, int(level / 10 * 256)),
        "SolarizeAdd": lambda img, level: img.point(
            [min(255, i + int(level / 10 * 110)) if i < 128 else i for i in range(256)] * 3),
        "Color": lambda img, level: ImageEnhance.Color(img).enhance(level / 10 * 1.8 + 0.1),
        "Contrast": lambda img, level: ImageEnhance.Contrast(img).enhance(level / 10 * 1.8 + 0.1),
        "Brightness": lambda img, level: ImageEnhance.Brightness(img).enhance(level / 10 * 1.8 + 0.1),
        "Sharpness": lambda img, level: ImageEnhance.Sharpness(img).enhance(level / 10 * 1.8 + 0.1),
        "ShearX": lambda img, level: img.transform(img.size, Image.AFFINE, (1, signed(level / 10 * 0.3), 0, 0, 1, 0),
                                                   **kwargs()),
        "ShearY": lambda img, level: img.transform(img.size, Image.AFFINE, (1, 0, 0, signed(level / 10 * 0.3), 1, 0),
                                                   **kwargs()),
        "TranslateXRel": lambda img, level: img.transform(
            img.size, Image.AFFINE, (1, 0, signed(level / 10 * 0.45) * img.size[0], 0, 1, 0), **kwargs()),
        "TranslateYRel": lambda img, level: img.transform(
            img.size, Image.AFFINE, (1, 0, 0, 0, 1, signed(level / 10 * 0.45) * img.size[1]), **kwargs()),
    }
    names = list(RAND_TRANSFORMS)

    def augment(img: Image.Image) -> Image.Image:
        for name in np.random.choice(names, n, replace=True):
            if random.random() > 0.5:
                continue
            level = random.gauss(m, mstd) if mstd > 0 else m
            img = ops[name](img, max(0.0, min(level, mmax)))
        return img

    return augment


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    images = photos(args.batch_size, args.image_size)
    batch = torch.from_numpy(np.stack([np.asarray(img) for img in images])).permute(0, 3, 1, 2).float()
    fill = (124, 116, 104)  # timm's img_mean for the ImageNet mean
    batched = auto_augment_transform(args.policy, fill=fill)
    per_image = pillow_rand_augment(args.policy, fill) if isinstance(batched, RandAugment) else None
    model = mobileconv.create_model(args.model).train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch_size,))

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    variants = {f"mobileconv {type(batched).__name__}, batched": lambda: batched(batch)}
    if per_image is not None:
        variants["timm's way: Pillow, image by image"] = lambda: [per_image(img) for img in images]
    variants[f"{args.model} training step (channels_last)"] = train_step
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    median = {name: statistics.median(t) for name, t in times.items()}
    step = median[f"{args.model} training step (channels_last)"]
    lines = [f"# {type(batched).__name__} cost per batch ({args.policy})", "",
             f"Batch {args.batch_size}, {args.image_size} px, {args.threads} threads, {args.rounds} alternating "
             f"rounds, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| variant | ms per batch (median) | ms per image | share of a training step |",
             "| --- | --- | --- | --- |"]
    for name, ms in median.items():
        lines.append(f"| {name} | {ms:.1f} | {ms / args.batch_size:.2f} | {ms / step:.2f} |")
    if per_image is not None:
        ratio = median["timm's way: Pillow, image by image"] / median["mobileconv RandAugment, batched"]
        lines += ["", f"Batched over Pillow image by image: {ratio:.2f}x as fast."]
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(report)
    args.out.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                         "times_ms": times, "median_ms": median}, indent=1))


if __name__ == "__main__":
    main()
