"""RandAugment (Cubuk et al. 2020) and AutoAugment (Cubuk et al. 2019) as timm implements them, on whole batches.

Each image draws its own ops, magnitudes and signs, as timm's per-image PIL transform does; the ops
then run batched over the images that drew them. Every op computes what the Pillow call timm makes
computes (``timm/data/auto_augment.py``), on float tensors that hold uint8 values 0-255, and
``tests/data/test_auto_augment_ops.py`` checks each against Pillow, the geometric ops with both of the
resampling filters that timm's training default picks from at random (bilinear, bicubic).

The policy string is timm's ``--aa`` (:func:`auto_augment_transform`): ``rand-m9-mstd0.5`` is RandAugment at
magnitude 9 (of 10) with Gaussian magnitude noise of standard deviation 0.5, two ops per image, each applied
with probability 0.5; ``v0`` is AutoAugment with the ImageNet policy of the TPU EfficientNet code.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

LEVEL_DENOM = 10.0  # magnitudes are given out of 10
TRANSLATE_PCT = 0.45  # TranslateXRel / TranslateYRel move at most this fraction of the side


def _per_image(value, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A scalar or one value per image, as an ``(N, 1, 1, 1)`` tensor for broadcasting over ``x``."""
    return torch.as_tensor(value, dtype=dtype, device=x.device).expand(x.shape[0]).reshape(-1, 1, 1, 1)


# ---- colour ops: per-pixel look-up tables and blends ---------------------------------------------------------

def invert(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.invert``."""
    return 255 - x


def posterize(x: torch.Tensor, bits) -> torch.Tensor:
    """``ImageOps.posterize(img, bits)``: keep the ``bits`` high bits (0 keeps none, 8 or more all)."""
    step = 2.0 ** (8 - _per_image(bits, x).clamp(0, 8))
    return torch.div(x, step, rounding_mode="floor") * step


def solarize(x: torch.Tensor, threshold) -> torch.Tensor:
    """``ImageOps.solarize(img, threshold)``: values at or above ``threshold`` are inverted."""
    return torch.where(x >= _per_image(threshold, x), 255 - x, x)


def solarize_add(x: torch.Tensor, add, threshold=128) -> torch.Tensor:
    """timm's ``solarize_add``: values below ``threshold`` get ``add`` added, up to 255."""
    return torch.where(x < _per_image(threshold, x), (x + _per_image(add, x)).clamp(max=255), x)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L conversion (ITU-R 601-2 luma in 16-bit fixed point), ``(N, 1, H, W)``."""
    r, g, b = x.to(torch.int32).unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1).to(x.dtype)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor) -> torch.Tensor:
    """``Image.blend(degenerate, img, factor)``: ``degenerate + factor * (img - degenerate)`` in float32,
    truncated to an integer and clipped to 0-255."""
    factor = _per_image(factor, x)
    return (degenerate + factor * (x - degenerate)).floor_().clamp_(0, 255)


def color(x: torch.Tensor, factor) -> torch.Tensor:
    """``ImageEnhance.Color(img).enhance(factor)``: blend with the image's greyscale."""
    return _blend(_grey(x), x, factor)


def contrast(x: torch.Tensor, factor) -> torch.Tensor:
    """``ImageEnhance.Contrast(img).enhance(factor)``: blend with the image's mean grey level, rounded."""
    mean = _grey(x).to(torch.float64).mean((1, 2, 3), keepdim=True)
    return _blend(torch.floor(mean + 0.5).to(x.dtype), x, factor)


def brightness(x: torch.Tensor, factor) -> torch.Tensor:
    """``ImageEnhance.Brightness(img).enhance(factor)``: blend with black."""
    return _blend(torch.zeros_like(x), x, factor)


def sharpness(x: torch.Tensor, factor) -> torch.Tensor:
    """``ImageEnhance.Sharpness(img).enhance(factor)``: blend with ``ImageFilter.SMOOTH``, the 3x3 kernel
    ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13`` rounded to the nearest integer, the 1-pixel border unfiltered."""
    if x.shape[-1] < 3 or x.shape[-2] < 3:
        return x.clone()  # all border: the smoothed image is the image
    kernel = torch.ones(3, 1, 3, 3, dtype=torch.float32, device=x.device)
    kernel[:, :, 1, 1] = 5
    total = F.conv2d(x.float(), kernel, groups=3)  # integers below 2 ** 24: exact in any order
    smooth = x.clone()
    # k / 13 is never a half, so round-half-up on the exact sum is Pillow's rounding of its float sum
    smooth[..., 1:-1, 1:-1] = torch.div(2 * total + 13, 26, rounding_mode="floor").to(x.dtype)
    return _blend(smooth, x, factor)


def _apply_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """``x`` through one 256-entry table per image and channel, ``lut`` of shape ``(N, C, 256)``."""
    n, c, h, w = x.shape
    index = x.reshape(n, c, h * w).long()
    return lut.to(x.dtype).gather(2, index).reshape(n, c, h, w)


def _histograms(x: torch.Tensor) -> torch.Tensor:
    """The 256-bin histogram of each image and channel, ``(N, C, 256)`` int64."""
    n, c, h, w = x.shape
    index = x.reshape(n, c, h * w).long()
    return torch.zeros(n, c, 256, dtype=torch.int64, device=x.device).scatter_add_(2, index, torch.ones_like(index))


def auto_contrast(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.autocontrast(img)``: each channel stretched so that its lowest value becomes 0 and its
    highest 255 (``int(i * scale + offset)`` in double precision); a constant channel is left as it is."""
    n, c = x.shape[:2]
    lo = x.amin((2, 3)).to(torch.float64)
    hi = x.amax((2, 3)).to(torch.float64)
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp(min=1)  # not 255.0 / t, which is 255.0 * (1 / t)
    offset = -lo * scale
    levels = torch.arange(256, dtype=torch.float64, device=x.device)
    lut = (levels * scale.unsqueeze(-1) + offset.unsqueeze(-1)).trunc().clamp(0, 255)
    lut = torch.where((hi > lo).unsqueeze(-1), lut, levels.expand(n, c, 256))
    return _apply_lut(x, lut)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.equalize(img)``: each channel's histogram equalised with Pillow's integer steps, ``(pixels
    below the highest value) // 255`` wide; a channel with one value, or a step of 0, is left as it is."""
    n, c = x.shape[:2]
    hist = _histograms(x)
    last = hist.gather(2, x.amax((2, 3)).long().unsqueeze(-1)).squeeze(-1)  # pixels at the highest value
    step = (hist.sum(-1) - last) // 255
    before = hist.cumsum(-1) - hist  # pixels below each value
    lut = ((step // 2).unsqueeze(-1) + before) // step.clamp(min=1).unsqueeze(-1)
    keep = ((hist > 0).sum(-1) <= 1) | (step == 0)
    levels = torch.arange(256, device=x.device).expand(n, c, 256)
    return _apply_lut(x, torch.where(keep.unsqueeze(-1), levels, lut.clamp(max=255)))


# ---- geometric ops: Pillow's affine transform, bilinear or bicubic ---------------------------------------------

def affine(x: torch.Tensor, matrices: torch.Tensor, fill: Sequence[int], bicubic=False) -> torch.Tensor:
    """``img.transform(img.size, Image.AFFINE, matrix, resample, fillcolor=fill)`` per image, ``resample``
    ``Image.BICUBIC`` where ``bicubic`` (a bool, or one per image) is true, else ``Image.BILINEAR``.

    ``matrices`` is ``(N, 6)``: the output pixel ``(x, y)`` samples the input at ``(a x' + b y' + c,
    d x' + e y' + f)``, with ``x' = x + 0.5`` and ``y' = y + 0.5`` (pixel centres), all in double precision as
    in Pillow. A point outside the image takes ``fill``; inside, the 2 x 2 (bilinear) or 4 x 4 (bicubic, Pillow's
    cubic with a = -1) nearest pixels, clamped to the border, are interpolated in Pillow's order and the result
    is clipped to 0-255 and truncated.
    """
    bicubic = torch.as_tensor(bicubic, dtype=torch.bool).expand(x.shape[0])
    if not bicubic.any() or bicubic.all():  # one filter for the whole batch
        return _affine(x, matrices, fill, bool(bicubic.any()))
    out = torch.empty_like(x)
    for mode in (False, True):
        index = torch.nonzero(bicubic == mode).flatten().to(x.device)
        out[index] = _affine(x[index], matrices[index], fill, mode)
    return out


def _cubic(v1: torch.Tensor, v2: torch.Tensor, v3: torch.Tensor, v4: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Pillow's ``BICUBIC`` macro, operation for operation."""
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def _affine(x: torch.Tensor, matrices: torch.Tensor, fill: Sequence[int], bicubic: bool) -> torch.Tensor:
    n, c, h, w = x.shape
    m = matrices.to(torch.float64).reshape(n, 6, 1, 1)
    cols = (torch.arange(w, dtype=torch.float64, device=x.device) + 0.5).reshape(1, 1, w)
    rows = (torch.arange(h, dtype=torch.float64, device=x.device) + 0.5).reshape(1, h, 1)
    xin = m[:, 0] * cols + m[:, 1] * rows + m[:, 2]  # (N, H, W)
    yin = m[:, 3] * cols + m[:, 4] * rows + m[:, 5]
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    xin, yin = xin - 0.5, yin - 0.5
    x0, y0 = xin.floor(), yin.floor()
    dx, dy = (xin - x0).unsqueeze(1), (yin - y0).unsqueeze(1)
    # where every sample falls on a whole column (or row), as in a vertical (horizontal) shear or translation, the
    # other taps are weighted by 0 and only the nearest one is read: the same value, a quarter of the work
    taps = range(-1, 3) if bicubic else range(2)
    xs = [(x0.long() + i).clamp(0, w - 1) for i in (taps if bool((dx != 0).any()) else [0])]
    ys = [(y0.long() + i).clamp(0, h - 1) * w for i in (taps if bool((dy != 0).any()) else [0])]
    flat = x.to(torch.float64).reshape(n, c, h * w)

    def pixel(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        return flat.gather(2, (row + col).reshape(n, 1, h * w).expand(n, c, h * w)).reshape(n, c, h, w)

    def interpolate(values: list[torch.Tensor], d: torch.Tensor) -> torch.Tensor:  # in Pillow's order
        if len(values) == 1:
            return values[0]
        return _cubic(*values, d) if bicubic else values[0] + (values[1] - values[0]) * d

    out = interpolate([interpolate([pixel(row, col) for col in xs], dx) for row in ys], dy)
    out = out.clamp_(0, 255).trunc_()
    fill = torch.tensor(fill, dtype=torch.float64, device=x.device).reshape(1, c, 1, 1)
    return torch.where(inside.unsqueeze(1), out, fill).to(x.dtype)


def _matrices(rows: list[list[float]], x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64, device=x.device).reshape(-1, 6)


def _values(value, x: torch.Tensor) -> list[float]:
    return torch.as_tensor(value, dtype=torch.float64).expand(x.shape[0]).tolist()


def rotate(x: torch.Tensor, degrees, fill: Sequence[int], bicubic=False) -> torch.Tensor:
    """``img.rotate(degrees, resample, fillcolor=fill)``: counter-clockwise about the centre, with Pillow's matrix
    (the angle taken modulo 360, sines and cosines rounded to 15 decimals); ``resample`` as :func:`affine`."""
    h, w = x.shape[-2:]
    cx, cy = w / 2, h / 2
    angles = [angle % 360.0 for angle in _values(degrees, x)]
    rows = []
    for angle in angles:
        angle = -math.radians(angle)
        a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
        d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
        rows.append([a, b, a * -cx + b * -cy + 0.0 + cx, d, e, d * -cx + e * -cy + 0.0 + cy])
    out = affine(x, _matrices(rows, x), fill, bicubic)
    unrotated = torch.tensor([angle == 0 for angle in angles], device=x.device)
    return torch.where(unrotated.reshape(-1, 1, 1, 1), x, out)  # Pillow returns a copy for 0 degrees


def shear_x(x: torch.Tensor, factor, fill: Sequence[int], bicubic=False) -> torch.Tensor:
    """``img.transform(size, AFFINE, (1, factor, 0, 0, 1, 0), resample, fillcolor=fill)``."""
    return affine(x, _matrices([[1, f, 0, 0, 1, 0] for f in _values(factor, x)], x), fill, bicubic)


def shear_y(x: torch.Tensor, factor, fill: Sequence[int], bicubic=False) -> torch.Tensor:
    """``img.transform(size, AFFINE, (1, 0, 0, factor, 1, 0), resample, fillcolor=fill)``."""
    return affine(x, _matrices([[1, 0, 0, f, 1, 0] for f in _values(factor, x)], x), fill, bicubic)


def translate_x(x: torch.Tensor, pixels, fill: Sequence[int], bicubic=False) -> torch.Tensor:
    """``img.transform(size, AFFINE, (1, 0, pixels, 0, 1, 0), resample, fillcolor=fill)``."""
    return affine(x, _matrices([[1, 0, p, 0, 1, 0] for p in _values(pixels, x)], x), fill, bicubic)


def translate_y(x: torch.Tensor, pixels, fill: Sequence[int], bicubic=False) -> torch.Tensor:
    """``img.transform(size, AFFINE, (1, 0, 0, 0, 1, pixels), resample, fillcolor=fill)``."""
    return affine(x, _matrices([[1, 0, 0, 0, 1, p] for p in _values(pixels, x)], x), fill, bicubic)


# ---- the policy --------------------------------------------------------------------------------------------

def _signed(level: torch.Tensor, negate: torch.Tensor) -> torch.Tensor:
    return torch.where(negate, -level, level)


def _enhance(m: torch.Tensor, negate: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return m / LEVEL_DENOM * 1.8 + 0.1  # 0.1 to 1.9, unsigned


def _enhance_increasing(m: torch.Tensor, negate: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (1.0 + _signed(m / LEVEL_DENOM * 0.9, negate)).clamp(min=0.1)  # 1 +- 0.9, at least 0.1


# name -> (op, argument from (magnitude, random sign, image)); timm's LEVEL_TO_ARG, with the sign drawn per image
OPS: dict[str, tuple[Callable, Callable | None]] = {
    "AutoContrast": (auto_contrast, None),
    "Equalize": (equalize, None),
    "Invert": (invert, None),
    "Rotate": (rotate, lambda m, neg, x: _signed(m / LEVEL_DENOM * 30.0, neg)),
    "Posterize": (posterize, lambda m, neg, x: (m / LEVEL_DENOM * 4).trunc()),
    "PosterizeIncreasing": (posterize, lambda m, neg, x: 4 - (m / LEVEL_DENOM * 4).trunc()),
    "PosterizeOriginal": (posterize, lambda m, neg, x: (m / LEVEL_DENOM * 4).trunc() + 4),
    "Solarize": (solarize, lambda m, neg, x: (m / LEVEL_DENOM * 256).trunc()),
    "SolarizeIncreasing": (solarize, lambda m, neg, x: 256 - (m / LEVEL_DENOM * 256).trunc()),
    "SolarizeAdd": (solarize_add, lambda m, neg, x: (m / LEVEL_DENOM * 110).trunc()),
    "Color": (color, _enhance),
    "ColorIncreasing": (color, _enhance_increasing),
    "Contrast": (contrast, _enhance),
    "ContrastIncreasing": (contrast, _enhance_increasing),
    "Brightness": (brightness, _enhance),
    "BrightnessIncreasing": (brightness, _enhance_increasing),
    "Sharpness": (sharpness, _enhance),
    "SharpnessIncreasing": (sharpness, _enhance_increasing),
    "ShearX": (shear_x, lambda m, neg, x: _signed(m / LEVEL_DENOM * 0.3, neg)),
    "ShearY": (shear_y, lambda m, neg, x: _signed(m / LEVEL_DENOM * 0.3, neg)),
    "TranslateXRel": (translate_x, lambda m, neg, x: _signed(m / LEVEL_DENOM * TRANSLATE_PCT, neg) * x.shape[-1]),
    "TranslateYRel": (translate_y, lambda m, neg, x: _signed(m / LEVEL_DENOM * TRANSLATE_PCT, neg) * x.shape[-2]),
}
GEOMETRIC = {rotate, shear_x, shear_y, translate_x, translate_y}


def draw_magnitudes(magnitude, std: float, upper: float, n: int) -> torch.Tensor:
    """``n`` magnitudes as timm's ``AugmentOp`` draws them: ``magnitude``, or ``N(magnitude, std)`` (uniform in
    ``[0, magnitude]`` for an infinite ``std``), clipped to ``[0, upper]``."""
    if math.isinf(std):
        drawn = torch.rand(n, dtype=torch.float64) * magnitude
    else:
        drawn = magnitude + std * torch.randn(n, dtype=torch.float64)
    return drawn.clamp(0.0, upper)


def apply_op(x: torch.Tensor, name: str, index: torch.Tensor, magnitude: torch.Tensor, negate: torch.Tensor,
             bicubic: torch.Tensor, fill: Sequence[int]) -> None:
    """Op ``name`` applied in place to the images ``x[index]``, at their own ``magnitude`` (0-10) and sign; the
    geometric ops resample bicubically where ``bicubic`` is true, else bilinearly."""
    if len(index) == 0:
        return
    op, argument = OPS[name]
    on_device = index.to(x.device)
    images = x[on_device]
    args = [] if argument is None else [argument(magnitude, negate, images)]
    if op in GEOMETRIC:
        args += [fill, bicubic]
    x.index_copy_(0, on_device, op(images, *args))


def apply_chosen(x: torch.Tensor, names: Sequence[str], choice: torch.Tensor, active: torch.Tensor,
                 magnitude: torch.Tensor, interpolation: str, fill: Sequence[int]) -> None:
    """Each ``active`` image of ``x`` gets op ``names[choice[i]]`` in place at its ``magnitude``, the sign of the
    signed ops and the geometric ops' filter drawn here per image (RandAugment's layer, an AugMix chain's step)."""
    n = x.shape[0]
    negate = torch.rand(n, dtype=torch.float64) > 0.5
    bicubic = draw_bicubic(interpolation, n)
    for k, name in enumerate(names):
        index = torch.nonzero(active & (choice == k)).flatten()
        apply_op(x, name, index, magnitude[index], negate[index], bicubic[index], fill)


INTERPOLATIONS = ("random", "bilinear", "bicubic")


def draw_bicubic(interpolation: str, n: int) -> torch.Tensor:
    """Per image, whether a geometric op resamples bicubically: timm's ``"random"`` picks bilinear or bicubic with
    equal odds at each op call (its training default); ``"bilinear"`` / ``"bicubic"`` fix the choice."""
    drawn = torch.rand(n, dtype=torch.float64) < 0.5  # drawn in every mode, so the other draws stay the same
    return drawn if interpolation == "random" else torch.full((n,), interpolation == "bicubic")


def check_interpolation(interpolation: str) -> str:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    return interpolation


# timm's _RAND_TRANSFORMS, and with "inc1" the variants whose strength grows with the magnitude
RAND_TRANSFORMS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
                   "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
RAND_INCREASING_TRANSFORMS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                              "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
                              "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
                              "TranslateYRel")
# timm's _RAND_CHOICE_WEIGHTS_0 ("w0"): ops drawn with these weights, without replacement
CHOICE_WEIGHTS_0 = {"Rotate": 0.3, "ShearX": 0.2, "ShearY": 0.2, "TranslateXRel": 0.1, "TranslateYRel": 0.1,
                    "Color": 0.025, "Sharpness": 0.025, "AutoContrast": 0.025, "Solarize": 0.005,
                    "SolarizeAdd": 0.005, "Contrast": 0.005, "Brightness": 0.005, "Equalize": 0.005,
                    "Posterize": 0.0, "Invert": 0.0}

POLICY_HELP = ("timm's RandAugment string: 'rand' followed by any of -m<magnitude 0-10+> (default 10), -n<ops per "
               "image> (default 2), -mstd<magnitude noise std; above 100: uniform in [0, m]>, -mmax<largest magnitude> "
               "(default 10), -inc<0|1> (ops that grow stronger with the magnitude), -w0 (timm's op weights); "
               "e.g. rand-m9-mstd0.5")


def parse_rand_augment(policy: str) -> dict:
    """timm's ``rand-m9-n2-mstd0.5-mmax10-inc1-w0`` as keyword arguments of :class:`RandAugment`.

    Raises ``ValueError`` naming the expected form for anything else (timm asserts, or skips a section
    without a number).
    """
    if not isinstance(policy, str) or policy.split("-")[0] != "rand":
        raise ValueError(f"--aa {policy!r}: expected {POLICY_HELP}")
    settings = {}
    parsers = {"m": float, "n": int, "mstd": float, "mmax": float, "inc": int, "w": int}
    for section in policy.split("-")[1:]:
        match = re.fullmatch(r"([a-z]+)(\d.*)", section)
        if match is None or match[1] not in parsers or match[1] in settings:
            reason = "repeated" if match and match[1] in settings else "unknown"
            raise ValueError(f"--aa {policy!r}: {reason} section {section!r}; expected {POLICY_HELP}")
        try:
            value = parsers[match[1]](match[2])
        except ValueError:
            raise ValueError(f"--aa {policy!r}: section {section!r} needs a number; expected {POLICY_HELP}") from None
        settings[match[1]] = value
    if settings.get("n", 2) < 1 or not math.isfinite(settings.get("m", 10)) or settings.get("m", 10) < 0:
        raise ValueError(f"--aa {policy!r}: needs n >= 1 ops per image and a finite magnitude m >= 0")
    if settings.get("mstd", 0) < 0 or settings.get("mmax", 10) <= 0 or settings.get("w", 0) != 0 \
            or settings.get("inc", 0) not in (0, 1):
        raise ValueError(f"--aa {policy!r}: needs mstd >= 0, mmax > 0, w0 (timm's only weights) and inc0 / inc1")
    mstd = settings.get("mstd", 0.0)
    return {"magnitude": settings.get("m", LEVEL_DENOM), "num_layers": settings.get("n", 2),
            "magnitude_std": math.inf if mstd > 100 else mstd, "magnitude_max": settings.get("mmax", LEVEL_DENOM),
            "increasing": bool(settings.get("inc", 0)), "weighted": "w" in settings}


class RandAugment(nn.Module):
    """timm's RandAugment on a batch: every image applies ``num_layers`` ops drawn for it, each with
    probability ``prob``.

    Input and output are batches ``(N, 3, H, W)`` holding uint8 values 0-255 (any dtype that holds them: the ops
    compute in float32 and the result has the input's dtype). The magnitude of each
    op application is ``magnitude``, or with ``magnitude_std`` drawn from ``N(magnitude, magnitude_std)``
    (uniform in ``[0, magnitude]`` when it is infinite), clipped to ``[0, magnitude_max]``. Signed ops
    (rotate, shear, translate) are negated with probability 1/2. All randomness comes from torch's global
    generator. Build one from timm's policy string with :meth:`from_policy`.

    Args:
        fill: RGB colour of the area that the geometric ops uncover (timm: the dataset mean, ``round(255 *
            mean)``).
        interpolation: the geometric ops' resampling, ``"random"`` (timm's training default: bilinear or bicubic
            with equal odds at each op), ``"bilinear"`` or ``"bicubic"``.
        increasing: timm's ``inc1`` op set.
        weighted: timm's ``w0`` op weights, ops then drawn without replacement.
    """

    def __init__(self, magnitude: float = LEVEL_DENOM, num_layers: int = 2, magnitude_std: float = 0.0,
                 magnitude_max: float = LEVEL_DENOM, increasing: bool = False, weighted: bool = False,
                 fill: Sequence[int] = (128, 128, 128), prob: float = 0.5, interpolation: str = "random") -> None:
        super().__init__()
        self.interpolation = check_interpolation(interpolation)
        self.magnitude, self.num_layers, self.prob = float(magnitude), int(num_layers), float(prob)
        self.magnitude_std, self.magnitude_max = float(magnitude_std), float(magnitude_max)
        self.fill = tuple(int(v) for v in fill)
        self.names = RAND_INCREASING_TRANSFORMS if increasing else RAND_TRANSFORMS
        # with inc1 too, timm takes the weights of the plain op set by position
        weights = [CHOICE_WEIGHTS_0[name] for name in RAND_TRANSFORMS] if weighted else [1.0] * len(self.names)
        # a plain attribute, not a buffer: the draws stay on the CPU generator when the batch is on a GPU
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.weighted = weighted
        if weighted and self.num_layers > int((self.weights > 0).sum()):
            raise ValueError(f"--aa: n={self.num_layers} ops per image drawn without replacement, but w0 gives only "
                             f"{int((self.weights > 0).sum())} ops a weight above 0; use a smaller n")

    @classmethod
    def from_policy(cls, policy: str, fill: Sequence[int] = (128, 128, 128),
                    interpolation: str = "random") -> RandAugment:
        """From timm's ``--aa`` string (:func:`parse_rand_augment`)."""
        return cls(**parse_rand_augment(policy), fill=fill, interpolation=interpolation)

    def extra_repr(self) -> str:
        return (f"n={self.num_layers}, m={self.magnitude:g}, mstd={self.magnitude_std:g}, "
                f"mmax={self.magnitude_max:g}, p={self.prob:g}, fill={self.fill}, {self.interpolation}")

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, dtype = x.shape[0], x.dtype
        x = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)  # the ops gather over planes
        weights = self.weights.expand(n, -1)
        choices = torch.multinomial(weights, self.num_layers, replacement=not self.weighted)  # (N, layers)
        for layer in range(self.num_layers):
            applied = torch.rand(n, dtype=torch.float64) <= self.prob
            magnitude = draw_magnitudes(self.magnitude, self.magnitude_std, self.magnitude_max, n)
            apply_chosen(x, self.names, choices[:, layer], applied, magnitude, self.interpolation, self.fill)
        return x.to(dtype)


# timm's AutoAugment policies: sub-policies of (op, probability, magnitude). "v0": the ImageNet policy of the TPU
# EfficientNet code's autoaugment.py; "original": the AutoAugment paper's (Cubuk et al. 2019); the "r" forms take
# Posterize from Google research's code, its strength growing with the magnitude.
POLICY_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)), (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)), (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)), (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)), (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)), (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)), (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)), (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)), (("Rotate", 1.0, 7), ("TranslateYRel", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)), (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)), (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)), (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)), (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)
POLICY_ORIGINAL = (
    (("PosterizeOriginal", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)), (("PosterizeOriginal", 0.6, 7), ("PosterizeOriginal", 0.6, 6)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)), (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)), (("PosterizeOriginal", 0.8, 5), ("Equalize", 1.0, 2)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, 8), ("PosterizeOriginal", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)), (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)), (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
)


def _research_posterize(policy):
    return tuple(tuple(("PosterizeIncreasing" if name.startswith("Posterize") else name, p, m) for name, p, m in sub)
                 for sub in policy)


AUTO_AUGMENT_POLICIES = {"v0": POLICY_V0, "v0r": _research_posterize(POLICY_V0), "original": POLICY_ORIGINAL,
                         "originalr": _research_posterize(POLICY_ORIGINAL)}


class AutoAugment(nn.Module):
    """timm's AutoAugment on a batch: every image draws one sub-policy and applies its ops in turn, each with
    the sub-policy's probability and magnitude (``N(magnitude, magnitude_std)`` with noise, clipped to
    [0, 10]).

    Input, output and ``interpolation`` as :class:`RandAugment`'s; randomness from torch's global generator.
    Build one from timm's policy string (``v0``, ``v0r``, ``original``, ``originalr``, optionally
    ``-mstd<std>``) with :meth:`from_policy`.
    """

    def __init__(self, policy: Sequence[Sequence[tuple[str, float, float]]], magnitude_std: float = 0.0,
                 fill: Sequence[int] = (128, 128, 128), interpolation: str = "random") -> None:
        super().__init__()
        self.interpolation = check_interpolation(interpolation)
        unknown = sorted({name for sub in policy for name, _, _ in sub} - set(OPS))
        if unknown or not policy:
            raise ValueError(f"a policy needs at least one sub-policy of ops among {sorted(OPS)}; unknown: {unknown}")
        self.policy = tuple(tuple((name, float(p), float(m)) for name, p, m in sub) for sub in policy)
        self.magnitude_std = float(magnitude_std)
        self.fill = tuple(int(v) for v in fill)

    @classmethod
    def from_policy(cls, policy: str, fill: Sequence[int] = (128, 128, 128),
                    interpolation: str = "random") -> AutoAugment:
        """From timm's ``--aa`` string (:func:`parse_auto_augment`)."""
        return cls(**parse_auto_augment(policy), fill=fill, interpolation=interpolation)

    def extra_repr(self) -> str:
        return f"{len(self.policy)} sub-policies, mstd={self.magnitude_std:g}, fill={self.fill}, {self.interpolation}"

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, dtype = x.shape[0], x.dtype
        x = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        chosen = torch.randint(len(self.policy), (n,))
        for position in range(max(len(sub) for sub in self.policy)):
            draw = torch.rand(n, dtype=torch.float64)
            negate = torch.rand(n, dtype=torch.float64) > 0.5
            bicubic = draw_bicubic(self.interpolation, n)
            for s, sub in enumerate(self.policy):
                if position >= len(sub):
                    continue
                name, prob, level = sub[position]
                index = torch.nonzero((chosen == s) & (draw <= prob)).flatten()
                magnitude = draw_magnitudes(level, self.magnitude_std, LEVEL_DENOM, len(index))
                apply_op(x, name, index, magnitude, negate[index], bicubic[index], self.fill)
        return x.to(dtype)


def parse_auto_augment(policy: str) -> dict:
    """timm's AutoAugment string, ``v0`` / ``v0r`` / ``original`` / ``originalr`` with an optional ``-mstd<std>``,
    as keyword arguments of :class:`AutoAugment`."""
    name, *sections = policy.split("-")
    if name not in AUTO_AUGMENT_POLICIES:
        raise ValueError(f"--aa {policy!r}: expected {AUGMENT_HELP}")
    std = None
    for section in sections:
        match = re.fullmatch(r"mstd(\d.*)", section)
        value = _number(match[1]) if match else None
        if value is None or std is not None or value < 0:
            raise ValueError(f"--aa {policy!r}: section {section!r} is not one -mstd<std >= 0>; expected "
                             f"{AUGMENT_HELP}")
        std = value
    return {"policy": AUTO_AUGMENT_POLICIES[name], "magnitude_std": std or 0.0}  # no "above 100: uniform" here


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# timm's _AUGMIX_TRANSFORMS: the AugMix paper's ops and the enhance ops that grow stronger with the magnitude
AUGMIX_TRANSFORMS = ("AutoContrast", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                     "SharpnessIncreasing", "Equalize", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "ShearX",
                     "ShearY", "TranslateXRel", "TranslateYRel")
AUGMIX_HELP = ("timm's AugMix string: 'augmix' followed by any of -m<severity> (default 3), -w<chains> (default 3), "
               "-d<ops per chain; -1: 1 to 3 at random> (default -1), -a<alpha of the Dirichlet / Beta draws> "
               "(default 1), -mstd<magnitude noise std; default: uniform in [0, m]>; e.g. augmix-m5-w4-d2")


def augmix_combine(x: torch.Tensor, chains: Sequence[torch.Tensor], weights: torch.Tensor,
                   mix: torch.Tensor) -> torch.Tensor:
    """AugMix's mixing as timm computes it on 8-bit images: ``sum_j weights[:, j] * chains[j]`` in float32, clipped
    to 0-255 and truncated to integers (``astype(uint8)``), then ``Image.blend(x, mixed, mix)`` per image."""
    mixed = torch.zeros_like(x)
    for j, chain in enumerate(chains):
        mixed += weights[:, j].to(torch.float32).view(-1, 1, 1, 1) * chain
    return _blend(x, mixed.clamp_(0, 255).trunc_(), mix.to(torch.float32))


class AugMix(nn.Module):
    """timm's AugMix on a batch (Hendrycks et al. 2020, "AugMix", Algorithm 1; timm's ``augmix-m3-w3``): per image,
    ``width`` chains of ``depth`` ops (1 to 3 at random per chain and image for ``depth=-1``) drawn uniformly from
    :data:`AUGMIX_TRANSFORMS`, each always applied at a magnitude drawn uniformly in ``[0, magnitude]`` (or
    ``N(magnitude, magnitude_std)``) and clipped to ``[0, magnitude_max]``; the chains mixed with Dirichlet(``alpha``)
    weights and the mix blended into the image with a Beta(``alpha``, ``alpha``) factor (:func:`augmix_combine`).

    Input, output and ``interpolation`` as :class:`RandAugment`'s; randomness from torch's global generator. Build
    one from timm's ``--aa augmix-...`` string with :meth:`from_policy`. (timm's ``-b1`` "blended" shortcut is not
    here; the JSD loss over augmented splits is ``mobileconv train --aug-splits 3 --jsd-loss``.)
    """

    def __init__(self, magnitude: float = 3.0, width: int = 3, depth: int = -1, alpha: float = 1.0,
                 magnitude_std: float = math.inf, magnitude_max: float = LEVEL_DENOM,
                 fill: Sequence[int] = (128, 128, 128), interpolation: str = "random") -> None:
        super().__init__()
        self.interpolation = check_interpolation(interpolation)
        if width < 1 or not (depth == -1 or depth >= 1) or not (math.isfinite(alpha) and alpha > 0) \
                or not (math.isfinite(magnitude) and magnitude >= 0):
            raise ValueError(f"AugMix needs width >= 1, depth >= 1 or -1, alpha > 0 and a finite magnitude >= 0; got "
                             f"width={width}, depth={depth}, alpha={alpha}, magnitude={magnitude}")
        self.magnitude, self.width, self.depth, self.alpha = float(magnitude), int(width), int(depth), float(alpha)
        self.magnitude_std, self.magnitude_max = float(magnitude_std), float(magnitude_max)
        self.fill = tuple(int(v) for v in fill)

    @classmethod
    def from_policy(cls, policy: str, fill: Sequence[int] = (128, 128, 128), interpolation: str = "random") -> AugMix:
        """From timm's ``--aa`` string (:func:`parse_augmix`)."""
        return cls(**parse_augmix(policy), fill=fill, interpolation=interpolation)

    def extra_repr(self) -> str:
        return (f"m={self.magnitude:g}, width={self.width}, depth={self.depth}, alpha={self.alpha:g}, "
                f"mstd={self.magnitude_std:g}, fill={self.fill}, {self.interpolation}")

    def chain(self, x: torch.Tensor) -> torch.Tensor:
        """One chain of ops per image on a copy of ``x``."""
        n = x.shape[0]
        out = x.clone()
        depth = torch.full((n,), self.depth) if self.depth > 0 else torch.randint(1, 4, (n,))
        for step in range(int(depth.max())):
            choice = torch.randint(len(AUGMIX_TRANSFORMS), (n,))
            magnitude = draw_magnitudes(self.magnitude, self.magnitude_std, self.magnitude_max, n)
            apply_chosen(out, AUGMIX_TRANSFORMS, choice, depth > step, magnitude, self.interpolation, self.fill)
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, dtype = x.shape[0], x.dtype
        x = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        weights = torch.distributions.Dirichlet(torch.full((self.width,), self.alpha, dtype=torch.float64)).sample((n,))
        mix = torch.distributions.Beta(torch.tensor(self.alpha, dtype=torch.float64),
                                       torch.tensor(self.alpha, dtype=torch.float64)).sample((n,))
        return augmix_combine(x, [self.chain(x) for _ in range(self.width)], weights, mix).to(dtype)


def parse_augmix(policy: str) -> dict:
    """timm's ``augmix-m5-w4-d2-a1-mstd0.5`` as keyword arguments of :class:`AugMix` (the depth's default, -1, cannot
    be written in the string, as in timm)."""
    if not isinstance(policy, str) or policy.split("-")[0] != "augmix":
        raise ValueError(f"--aa {policy!r}: expected {AUGMIX_HELP}")
    keys = {"m": "magnitude", "w": "width", "d": "depth", "a": "alpha", "mstd": "magnitude_std"}
    settings = {}
    for section in policy.split("-")[1:]:
        match = re.fullmatch(r"([a-z]+)(\d.*)", section)
        if match and match[1] == "b":
            raise ValueError(f"--aa {policy!r}: timm's -b (blended) shortcut, which timm marks as not well tested, is "
                             f"not here: leave {section!r} out")
        key = keys.get(match[1]) if match else None
        value = _number(match[2]) if key else None
        if value is None or key in settings:
            what = "repeated" if key in settings else "unknown"
            raise ValueError(f"--aa {policy!r}: {what} section {section!r}; expected {AUGMIX_HELP}")
        if key in ("width", "depth") and value != int(value):
            raise ValueError(f"--aa {policy!r}: section {section!r} needs a whole number; expected {AUGMIX_HELP}")
        settings[key] = int(value) if key in ("width", "depth") else value
    if settings.get("width", 3) < 1 or settings.get("depth", -1) == 0 or settings.get("alpha", 1.0) <= 0:
        raise ValueError(f"--aa {policy!r}: needs w >= 1 chains, d >= 1 ops per chain and a > 0; expected "
                         f"{AUGMIX_HELP}")
    return settings


AUGMENT_HELP = (f"{POLICY_HELP}; or an AutoAugment policy {'/'.join(AUTO_AUGMENT_POLICIES)} (timm's names; v0 is "
                f"the TPU EfficientNet code's), optionally with -mstd<std>, e.g. v0 or original-mstd0.5; or "
                f"{AUGMIX_HELP}")


def auto_augment_transform(policy: str, fill: Sequence[int] = (128, 128, 128),
                           interpolation: str = "random") -> nn.Module:
    """timm's ``--aa`` string as a module: ``rand...`` -> :class:`RandAugment`, ``augmix...`` -> :class:`AugMix`,
    ``v0`` / ``original`` / their ``r`` forms -> :class:`AutoAugment`. Raises ``ValueError`` naming the accepted forms for anything else."""
    if not isinstance(policy, str) or not policy:
        raise ValueError(f"--aa {policy!r}: expected {AUGMENT_HELP}")
    if policy.split("-")[0] == "rand":
        return RandAugment.from_policy(policy, fill=fill, interpolation=interpolation)
    if policy.split("-")[0] == "augmix":
        return AugMix.from_policy(policy, fill=fill, interpolation=interpolation)
    return AutoAugment.from_policy(policy, fill=fill, interpolation=interpolation)
