"""RandAugment's image ops (``mobileconv.data.auto_augment``) against the Pillow calls timm makes.

Oracle: Pillow itself, image by image (``timm/data/auto_augment.py``'s calls), on batches of a real photo
(scikit-learn's ``china.jpg``, cropped and resized small: 48x40 and 37x53, non-square and odd) and of seeded
random images, with edge cases (constant images, two grey levels, very dark images, histograms that sit on
``equalize``'s step boundaries). Every image of a batch gets its own parameter value, so that mixing up images
and parameters fails.

Tolerances, from what Pillow computes (Pillow 13 C sources: Blend.c, Filter.c, Convert.c, Geometry.c):

* look-up-table ops (invert, posterize, solarize, solarize_add, auto_contrast, equalize): integer tables,
  exact.
* blends (color, contrast, brightness, sharpness): exact. ``Image.blend`` computes
  ``(UINT8)(in1 + alpha * (in2 - in1))`` in float32 (clipped to 0..255 outside [0, 1]); the degenerate images
  are integers (RGB->L is ``(19595 R + 38470 G + 7471 B + 0x8000) >> 16``; Contrast's mean is rounded;
  SMOOTH is ``round(k / 13)``, which never sits on a half, with the border copied). The same float32
  operations give the same bits, so any difference is an error; float64 arithmetic, for one, truncates
  differently on some pixels (``test_blend_tolerance_is_tight``).
* geometric ops (bilinear affine): Pillow maps each output pixel centre to the input in double precision,
  samples it when ``0 <= x < W and 0 <= y < H`` (else fill: a hard per-pixel decision, no blending with the
  fill colour), interpolates the four nearest pixels clamped to the border as ``a + (b - a) * d`` and
  truncates. The tests evaluate that maths themselves (checked to be Pillow's, bit for bit) and allow what a
  float32-or-better evaluation of it can give: the truncated value over input points up to 1e-4 pixel away,
  widened by 1e-4 grey level (float32 coordinates are off by a few 1e-5 pixel). Where that range straddles no
  integer, Pillow's value is required exactly; where it does (the exact value sits at an integer, common with
  round parameters such as a 0.6-pixel shift), Pillow's value or the one next to it; so never more than 1 grey
  level, and rounding instead of truncating fails. Every pixel whose input point is outside the image by more
  than 1e-4 pixel must be exactly ``fill``; only pixels whose input point lies within 1e-4 pixel of the
  image's edge (where a float32 coordinate can land on either side) are left unchecked, and there are almost
  none. Integer and half-integer translations and 0 degrees / 0 shear are exact. The module itself computes
  in double precision in Pillow's order, so on top of the range its values must equal Pillow's exactly; the
  range check stays as the statement of what any float32-or-better evaluation may give.
"""
from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from mobileconv.data import auto_augment as ra

FILL = (124, 116, 104)  # timm's fill: round(255 * ImageNet mean)
FILL2 = (0, 255, 7)  # a different colour per channel, so that a channel mix-up shows
EDGE_EPS = 1e-4  # pixels: how close an input point may come to the image edge before fill-vs-sample is moot


# ---- images --------------------------------------------------------------------------------------------------

def _tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) uint8 arrays -> (N, 3, H, W) float32."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().float()


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = image.permute(1, 2, 0).numpy()
    assert np.array_equal(array, array.round()) and array.min() >= 0 and array.max() <= 255
    return Image.fromarray(np.ascontiguousarray(array.astype(np.uint8)))


def _from_pil(image: Image.Image) -> torch.Tensor:
    assert image.mode == "RGB"
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float()


def _photo(width: int, height: int) -> list[np.ndarray]:
    from sklearn.datasets import load_sample_image

    photo = Image.fromarray(load_sample_image("china.jpg"))  # 640x427
    boxes = [(0, 0, 640, 427), (300, 150, 300 + 4 * width, 150 + 4 * height), (10, 200, 10 + 2 * width, 200 + 2 * height),
             (500, 20, 500 + 3 * width, 20 + 3 * height), (200, 300, 200 + width, 300 + height)]  # last: no resize
    return [np.array(photo.crop(box).resize((width, height), Image.BILINEAR)) for box in boxes]


def _random(width: int, height: int, seed: int) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    size = (height, width, 3)
    images = [torch.randint(0, 256, size, generator=g),  # full range
              torch.randint(60, 121, size, generator=g),  # narrow range
              torch.randint(0, 256, size, generator=g) // 32 * 32,  # few levels
              torch.randint(200, 256, size, generator=g),  # bright
              torch.randint(0, 256, size, generator=g)]
    return [image.to(torch.uint8).numpy() for image in images]


def _from_histogram(counts: dict[int, int], width: int, height: int, g: torch.Generator) -> np.ndarray:
    """An image whose every channel holds exactly ``counts[level]`` pixels of each level, shuffled."""
    assert sum(counts.values()) == width * height
    levels = torch.cat([torch.full((n,), level) for level, n in counts.items()])
    channels = [levels[torch.randperm(len(levels), generator=g)].reshape(height, width) for _ in range(3)]
    return torch.stack(channels, -1).to(torch.uint8).numpy()


def _edge_cases(width: int, height: int) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(7)
    n = width * height
    size = (height, width)
    constant = np.full((height, width, 3), 97, np.uint8)
    per_channel = np.empty((height, width, 3), np.uint8)
    per_channel[...] = (10, 200, 255)  # each channel constant, at different levels (255 included)
    mask = torch.rand(size, generator=g) < 0.5
    two_grey = torch.where(mask, 60, 180).to(torch.uint8).unsqueeze(-1).expand(*size, 3).numpy()  # 2 levels, grey
    dark = torch.randint(0, 8, (*size, 3), generator=g).to(torch.uint8).numpy()  # very dark
    dark_outlier = dark.copy() // 2
    dark_outlier[3, 5] = (40, 3, 90)  # one brighter pixel sets auto_contrast's range
    # equalize: step = (pixels below the top level) // 255, and 0 (identity) below 255 pixels
    few_dark = _from_histogram({30: 254, 220: n - 254}, width, height, g)  # step 0
    step_1 = _from_histogram({30: 255, 200: n - 255}, width, height, g)  # step 1 (255 // 256 would be 0)
    step_2 = _from_histogram({10: 200, 90: 150, 160: 160, 240: n - 510}, width, height, g)  # 510: step 2, not 1
    step_7 = _from_histogram({**{5 + 13 * k: 119 for k in range(15)}, 250: n - 1785}, width, height, g)  # 1785
    return [constant, per_channel, two_grey, dark, dark_outlier, few_dark, step_1, step_2, step_7]


@cache
def _batch(name: str) -> torch.Tensor:
    kind, size = name.split("-")
    width, height = map(int, size.split("x"))
    if kind == "photo":
        arrays = _photo(width, height)
    elif kind == "random":
        arrays = _random(width, height, seed=width)
    else:
        arrays = _edge_cases(width, height)
    return _tensor(arrays)


SETS = ["photo-48x40", "photo-37x53", "random-48x40", "random-37x53", "edge-37x53"]


def batch(name: str) -> torch.Tensor:
    return _batch(name).clone()


# ---- parameters: every image its own value, every value on every image over the rounds -----------------------

def rounds(values: list[float], n: int) -> list[torch.Tensor]:
    """``len(values)`` float32 parameter vectors of length ``n``: in each, the images get distinct values
    (``n <= len(values)``), spread with a stride so that neighbours differ a lot; over all of them each image
    meets every value."""
    assert n <= len(values)
    stride = next(s for s in (3, 7, 11, 13, 1) if math.gcd(s, len(values)) == 1 and s < len(values))
    return [torch.tensor([values[(r + stride * i) % len(values)] for i in range(n)], dtype=torch.float32)
            for r in range(len(values))]


# ---- running an op and comparing ---------------------------------------------------------------------------

def run(op, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``op(x, *args)`` with the contract's checks: a new float32 tensor of x's shape holding integers 0..255,
    the input (and the parameter tensors) left as they were."""
    x_before = x.clone()
    args_before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    out = op(x, *args, **kwargs)
    assert isinstance(out, torch.Tensor)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.data_ptr() != x.data_ptr(), "the output must be a new tensor"
    assert torch.equal(x, x_before), "the input tensor was modified"
    for a, before in zip(args, args_before):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, before), "a parameter tensor was modified"
    assert torch.isfinite(out).all()
    assert torch.equal(out, out.round()), "non-integer values"
    assert out.min() >= 0 and out.max() <= 255
    return out


def expected(x: torch.Tensor, pillow, params: torch.Tensor | None = None) -> torch.Tensor:
    """Pillow's result image by image: ``pillow(img)`` or ``pillow(img, float(params[i]))``."""
    images = []
    for i in range(len(x)):
        img = _to_pil(x[i])
        images.append(_from_pil(pillow(img) if params is None else pillow(img, float(params[i]))))
    return torch.stack(images)


def assert_exact(got: torch.Tensor, want: torch.Tensor, x: torch.Tensor, what: str,
                 params: torch.Tensor | None = None) -> None:
    if torch.equal(got, want):
        return
    wrong = (got != want).nonzero()
    i, c, y, xx = wrong[0].tolist()
    per_image = (got != want).flatten(1).sum(1).tolist()
    param = "" if params is None else f" (parameter {float(params[i])!r})"
    raise AssertionError(
        f"{what}: {len(wrong)} values differ (per image {per_image}); first: image {i}{param}, channel {c}, "
        f"pixel (x={xx}, y={y}): input {x[i, :, y, xx].tolist()}, Pillow {want[i, :, y, xx].tolist()}, "
        f"got {got[i, :, y, xx].tolist()}; largest difference {(got - want).abs().max().item():g}")


# ---- LUT ops: exact ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SETS)
def test_invert(name):
    x = batch(name)
    assert_exact(run(ra.invert, x), expected(x, ImageOps.invert), x, "invert")


@pytest.mark.parametrize("name", SETS)
def test_auto_contrast(name):
    x = batch(name)
    assert_exact(run(ra.auto_contrast, x), expected(x, ImageOps.autocontrast), x, "auto_contrast")


@pytest.mark.parametrize("name", SETS)
def test_equalize(name):
    x = batch(name)
    assert_exact(run(ra.equalize, x), expected(x, ImageOps.equalize), x, "equalize")


def test_auto_contrast_and_equalize_leave_constant_images_unchanged():
    x = batch("edge-37x53")[:2]  # one grey constant, one constant per channel (10, 200, 255)
    assert torch.equal(run(ra.auto_contrast, x), x)
    assert torch.equal(run(ra.equalize, x), x)


def _posterize(img: Image.Image, bits: float) -> Image.Image:
    """timm's posterize: 8 bits or more unchanged. Pillow 13 refuses 0 bits, which older Pillow (and timm with
    magnitudes below 2.5) took through the same table, ``i & ~(2 ** 8 - 1)``: all black."""
    if bits >= 8:
        return img.copy()
    if bits == 0:
        return img.point([i & ~(2 ** 8 - 1) for i in range(256)] * 3)
    return ImageOps.posterize(img, int(bits))


@pytest.mark.parametrize("name", SETS)
def test_posterize(name):
    x = batch(name)
    for bits in rounds([0, 1, 2, 3, 4, 5, 6, 7, 8, 10], len(x)):
        assert_exact(run(ra.posterize, x, bits), expected(x, _posterize, bits), x, "posterize", bits)


@pytest.mark.parametrize("name", SETS)
def test_solarize(name):
    x = batch(name)
    for threshold in rounds([0, 1, 32, 64, 100, 127, 128, 129, 200, 255, 256], len(x)):
        want = expected(x, lambda img, t: ImageOps.solarize(img, int(t)), threshold)
        assert_exact(run(ra.solarize, x, threshold), want, x, "solarize", threshold)


def _solarize_add(img: Image.Image, add: float, threshold: int = 128) -> Image.Image:
    lut = [min(255, i + int(add)) if i < threshold else i for i in range(256)]
    return img.point(lut * 3)  # timm's solarize_add


@pytest.mark.parametrize("name", SETS)
def test_solarize_add(name):
    x = batch(name)
    for add in rounds([0, 1, 10, 27, 44, 55, 66, 88, 99, 110], len(x)):
        assert_exact(run(ra.solarize_add, x, add), expected(x, _solarize_add, add), x, "solarize_add", add)


def test_solarize_add_with_another_threshold():
    x = batch("random-48x40")
    add = torch.tensor([0.0, 110.0, 37.0, 5.0, 80.0])
    for threshold in (0, 1, 100, 255, 256):
        want = expected(x, lambda img, a: _solarize_add(img, a, threshold), add)
        assert_exact(run(ra.solarize_add, x, add, threshold=threshold), want, x, f"solarize_add threshold {threshold}",
                     add)


# ---- blends: exact -------------------------------------------------------------------------------------------

FACTORS = [0.0, 0.1, 0.28, 0.3, 0.46, 0.64, 0.7, 0.82, 1.0, 1.18, 1.3, 1.36, 1.54, 1.7, 1.72, 1.9, 2.0]
ENHANCERS = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
             "brightness": ImageEnhance.Brightness, "sharpness": ImageEnhance.Sharpness}


@pytest.mark.parametrize("op", list(ENHANCERS))
@pytest.mark.parametrize("name", SETS)
def test_blend_ops(op, name):
    x = batch(name)
    enhancer = ENHANCERS[op]
    for factor in rounds(FACTORS, len(x)):
        want = expected(x, lambda img, f: enhancer(img).enhance(f), factor)
        assert_exact(run(getattr(ra, op), x, factor), want, x, op, factor)


# ---- geometric ops -------------------------------------------------------------------------------------------

def rotate_matrix(degrees: float, width: int, height: int) -> list[float]:
    """``Image.rotate``'s matrix (output pixel centre -> input point), as Pillow 13 computes it."""
    angle = -math.radians(degrees % 360.0)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
    cx, cy = width / 2, height / 2
    return [a, b, a * -cx + b * -cy + 0.0 + cx, d, e, d * -cx + e * -cy + 0.0 + cy]


GEOMETRIC = {
    "rotate": (lambda v, w, h: rotate_matrix(v, w, h),
               lambda img, v, fill: img.rotate(v, resample=Image.BILINEAR, fillcolor=fill)),
    "shear_x": (lambda v, w, h: [1, v, 0, 0, 1, 0], None),
    "shear_y": (lambda v, w, h: [1, 0, 0, v, 1, 0], None),
    "translate_x": (lambda v, w, h: [1, 0, v, 0, 1, 0], None),
    "translate_y": (lambda v, w, h: [1, 0, 0, 0, 1, v], None),
}


def pillow_geometric(op: str, img: Image.Image, value: float, fill) -> Image.Image:
    matrix, call = GEOMETRIC[op]
    if call is not None:
        return call(img, value, fill)
    return img.transform(img.size, Image.AFFINE, tuple(matrix(value, *img.size)), resample=Image.BILINEAR,
                         fillcolor=fill)


def input_points(matrix: list[float], width: int, height: int, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel centre lands in the input (Geometry.c ``affine_transform``), ``(H, W)`` each."""
    a0, a1, a2, a3, a4, a5 = (dtype(v) for v in matrix)
    xo, yo = np.meshgrid(np.arange(width, dtype=dtype) + dtype(0.5), np.arange(height, dtype=dtype) + dtype(0.5))
    return a0 * xo + a1 * yo + a2, a3 * xo + a4 * yo + a5


def bilinear(image: np.ndarray, xin: np.ndarray, yin: np.ndarray) -> np.ndarray:
    """Geometry.c ``bilinear_filter32RGB`` before the truncation, at input points inside the image: the four
    nearest pixels (clamped to the border) as ``a + (b - a) * d``, in the dtype of ``xin``. ``image`` is
    ``(H, W, 3)``; the result ``(H', W', 3)``."""
    height, width = image.shape[:2]
    image = image.astype(xin.dtype)
    xi, yi = xin - xin.dtype.type(0.5), yin - yin.dtype.type(0.5)
    x0, y0 = np.floor(xi), np.floor(yi)
    dx, dy = (xi - x0)[..., None], (yi - y0)[..., None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    c0, c1 = np.clip(x0, 0, width - 1), np.clip(x0 + 1, 0, width - 1)
    r0, r1 = np.clip(y0, 0, height - 1), np.clip(y0 + 1, 0, height - 1)
    top = image[r0, c0] + (image[r0, c1] - image[r0, c0]) * dx
    bottom = image[r1, c0] + (image[r1, c1] - image[r1, c0]) * dx
    return top + (bottom - top) * dy


def regions(xin: np.ndarray, yin: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """``(inside, outside)`` masks: input point inside the image (``0 <= x < W``, ``0 <= y < H``) resp.
    outside, each by more than EDGE_EPS; pixels in neither are left unchecked."""
    e = EDGE_EPS
    inside = (xin >= e) & (xin < width - e) & (yin >= e) & (yin < height - e)
    outside = (xin < -e) | (xin >= width + e) | (yin < -e) | (yin >= height + e)
    return inside, outside


def allowed_range(image: np.ndarray, xin: np.ndarray, yin: np.ndarray) -> tuple[np.ndarray, ...]:
    """The values a float32-or-better evaluation of Pillow's maths may give, ``(lowest, highest)``, each
    ``(H, W, 3)``, and Pillow's own (truncated) value: the truncated bilinear value over input points up to
    EDGE_EPS away (extremes of a bilinear patch lie at the corners of a box; the centre is added), widened by
    EDGE_EPS grey levels for the arithmetic. Where that straddles no integer it is Pillow's value exactly;
    otherwise it and the next."""
    e = EDGE_EPS
    shifts = np.array([(0, 0), (-1, -1), (-1, 1), (1, -1), (1, 1)], dtype=np.float64)[:, :, None, None] * e
    values = bilinear(image, xin + shifts[:, 0], yin + shifts[:, 1])  # (5, H, W, 3)
    low = np.clip(np.floor(values.min(0) - e), 0, 255)
    high = np.clip(np.floor(values.max(0) + e), 0, 255)
    return low, high, np.trunc(values[0])


def assert_geometric(got: torch.Tensor, want: torch.Tensor, x: torch.Tensor, matrices: list[list[float]], fill,
                     what: str, params: torch.Tensor) -> None:
    height, width = x.shape[-2:]
    fill_colour = np.array(fill, dtype=np.float64)
    determined = checked = 0
    for i in range(len(x)):
        where = f"{what}, image {i}, parameter {float(params[i])!r}"
        image = x[i].permute(1, 2, 0).numpy().astype(np.float64)
        pillow, out = want[i].permute(1, 2, 0).numpy(), got[i].permute(1, 2, 0).numpy()
        xin, yin = input_points(matrices[i], width, height)
        inside, outside = regions(xin, yin, width, height)
        assert (~(inside | outside)).mean() <= 0.01, "test design: too many input points on the image edge"
        # the model is Pillow's: fill outside, the truncated bilinear value inside
        assert (pillow[outside] == fill_colour).all()
        low, high, model = allowed_range(image, xin, yin)
        assert (pillow[inside] == model[inside]).all()
        wrong = (out[outside] != fill_colour).any(-1)
        if wrong.any():
            ys, xs = np.nonzero(outside)
            k = int(np.argmax(wrong))
            raise AssertionError(
                f"{where}: {int(wrong.sum())} pixels whose input point is outside the image are not fill {fill}; "
                f"e.g. pixel (x={xs[k]}, y={ys[k]}) input point ({xin[ys[k], xs[k]]:.4f}, {yin[ys[k], xs[k]]:.4f}): "
                f"{out[ys[k], xs[k]].tolist()}")
        bad = ((out < low) | (out > high)).any(-1) & inside
        if bad.any():
            ys, xs = np.nonzero(bad)
            y, xx = ys[0], xs[0]
            raise AssertionError(
                f"{where}: {int(bad.sum())} pixels inside the image differ from Pillow by more than float32 "
                f"arithmetic can (largest difference {np.abs(out - pillow)[inside].max():g}); e.g. pixel (x={xx}, "
                f"y={y}) input point ({xin[y, xx]:.4f}, {yin[y, xx]:.4f}): Pillow {pillow[y, xx].tolist()}, allowed "
                f"{low[y, xx].tolist()}..{high[y, xx].tolist()}, got {out[y, xx].tolist()}")
        determined += int((low == high)[inside].sum())
        checked += int(inside.sum()) * 3
    # the range is a single value wherever the exact value is not at an integer: most values, except in flat areas
    # (constant images, few grey levels), where Pillow gives the integer itself and float32 may give the one below
    assert determined >= 0.25 * checked, "test design: too few values pinned down exactly"


GEOMETRIC_VALUES = {
    "rotate": lambda w, h: [-30.0, -23.5, -12.0, -4.2, 0.0, 0.7, 9.0, 17.25, 26.0, 30.0],
    "shear_x": lambda w, h: [-0.3, -0.21, -0.13, -0.05, 0.0, 0.02, 0.09, 0.17, 0.26, 0.3],
    "translate_x": lambda w, h: [f * w for f in (-0.45, -0.31, -0.2, -0.07, 0.0, 0.013, 0.11, 0.23, 0.38, 0.45)],
}
GEOMETRIC_VALUES["shear_y"] = GEOMETRIC_VALUES["shear_x"]
GEOMETRIC_VALUES["translate_y"] = lambda w, h: GEOMETRIC_VALUES["translate_x"](h, w)


def check_geometric(op: str, x: torch.Tensor, values: list[float], fill) -> None:
    height, width = x.shape[-2:]
    for params in rounds(values, len(x)):
        got = run(getattr(ra, op), x, params, fill)
        want = expected(x, lambda img, v: pillow_geometric(op, img, v, fill), params)
        matrices = [GEOMETRIC[op][0](float(v), width, height) for v in params]
        assert_geometric(got, want, x, matrices, fill, op, params)
        # the module evaluates Pillow's maths in double precision in Pillow's order: every value is Pillow's
        assert_exact(got, want, x, op, params)
        for i, v in enumerate(params.tolist()):
            if v == 0:  # Pillow: a copy (rotate's shortcut; the identity matrix otherwise)
                assert torch.equal(got[i], x[i]), f"{op} by 0 must leave image {i} unchanged"


@pytest.mark.parametrize("op", list(GEOMETRIC))
@pytest.mark.parametrize("name", SETS)
def test_geometric_ops(op, name):
    x = batch(name)
    check_geometric(op, x, GEOMETRIC_VALUES[op](x.shape[-1], x.shape[-2]), FILL)


@pytest.mark.parametrize("op", list(GEOMETRIC))
def test_geometric_ops_fill_each_channel(op):
    x = batch("photo-37x53")
    check_geometric(op, x, GEOMETRIC_VALUES[op](x.shape[-1], x.shape[-2]), FILL2)


@pytest.mark.parametrize("op", ["translate_x", "translate_y"])
@pytest.mark.parametrize("name", ["photo-48x40", "random-37x53"])
def test_whole_and_half_pixel_translations_are_exact(op, name):
    """Input points at whole or half pixels: no rounding anywhere (weights 0 or 1/2, edges exactly at 0 / W),
    so the result, fill included, is exact."""
    x = batch(name)
    side = x.shape[-1] if op == "translate_x" else x.shape[-2]
    values = [-side - 3, -side, -13, -2.5, -0.5, 0, 0.5, 1, 6, 17.5, side - 1, side]
    for params in rounds(values, len(x)):
        want = expected(x, lambda img, v: pillow_geometric(op, img, v, FILL), params)
        assert_exact(run(getattr(ra, op), x, params, FILL), want, x, op, params)


# ---- the checks themselves: they follow Pillow, and they can fail --------------------------------------------

@pytest.mark.parametrize("op", list(GEOMETRIC))
def test_input_points_model_pillow(op):
    """The inside / outside split used above is Pillow's: a constant white image comes out white exactly
    where the input point is inside, and fill (0) where it is outside."""
    width, height = 37, 53
    white = Image.new("L", (width, height), 255)
    for v in GEOMETRIC_VALUES[op](width, height):
        v = float(np.float32(v))
        matrix = GEOMETRIC[op][0](v, width, height)
        if op == "rotate":
            out = white.rotate(v, resample=Image.BILINEAR, fillcolor=0)
        else:
            out = white.transform(white.size, Image.AFFINE, tuple(matrix), resample=Image.BILINEAR, fillcolor=0)
        inside, outside = regions(*input_points(matrix, width, height), width, height)
        sampled = np.asarray(out) == 255
        assert sampled[inside].all() and not sampled[outside].any()
        assert (inside | outside).mean() >= 0.99


def _pillow_batch(x: torch.Tensor, op: str, params, fill) -> torch.Tensor:
    return expected(x, lambda img, v: pillow_geometric(op, img, v, fill), torch.as_tensor(params))


def test_geometric_check_fails_for_wrong_results():
    x = batch("photo-48x40")
    height, width = x.shape[-2:]
    degrees = torch.tensor([-30.0, -12.0, 4.5, 17.25, 30.0])
    matrices = [rotate_matrix(float(v), width, height) for v in degrees]
    want = _pillow_batch(x, "rotate", degrees, FILL)
    assert_geometric(want, want, x, matrices, FILL, "self", degrees)
    wrong = {"reversed direction": _pillow_batch(x, "rotate", -degrees, FILL),
             "parameters of other images": _pillow_batch(x, "rotate", degrees.roll(1), FILL),
             "half a degree off": _pillow_batch(x, "rotate", degrees + 0.5, FILL),
             "other fill": _pillow_batch(x, "rotate", degrees, FILL2)}
    # Geometry.c's maths in float32 (input points too) passes; rounded to nearest instead of truncated fails
    single, rounded = [], []
    for i, v in enumerate(degrees.tolist()):
        image = x[i].permute(1, 2, 0).numpy()
        for results, dtype, cut in ((single, np.float32, np.trunc), (rounded, np.float64, lambda v: np.floor(v + 0.5))):
            xin, yin = input_points(rotate_matrix(v, width, height), width, height, dtype)
            out = cut(bilinear(image, xin, yin)).astype(np.float64)
            out[~((xin >= 0) & (xin < width) & (yin >= 0) & (yin < height))] = FILL
            results.append(torch.from_numpy(out).permute(2, 0, 1).float())
    assert_geometric(torch.stack(single), want, x, matrices, FILL, "float32", degrees)
    wrong["rounded, not truncated"] = torch.stack(rounded)
    for name, got in wrong.items():
        with pytest.raises(AssertionError):
            assert_geometric(got, want, x, matrices, FILL, name, degrees)


def _blend(degenerate: np.ndarray, image: np.ndarray, factor: float, dtype) -> np.ndarray:
    """Blend.c: ``in1 + alpha * (in2 - in1)`` with the float32 ``alpha``, in ``dtype``, truncated and clipped."""
    alpha = dtype(np.float32(factor))
    a, b = degenerate.astype(dtype), image.astype(dtype)
    return np.clip(np.trunc(a + alpha * (b - a)), 0, 255)


def test_blend_tolerance_is_tight():
    """Pillow's blend is float32 arithmetic truncated: emulated so, it is exact, while float64 arithmetic or
    a wrong grey (BGR weights, or the plain channel mean) fails the exact comparison."""
    x = batch("photo-48x40")
    images = x.permute(0, 2, 3, 1).numpy().astype(np.int64)
    r, g, b = images[..., 0], images[..., 1], images[..., 2]
    greys = {"pillow": (19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16,
             "bgr": (7471 * r + 38470 * g + 19595 * b + 0x8000) >> 16,
             "mean": (r + g + b + 1) // 3}
    float64_differs = False
    for factor in rounds(FACTORS, len(x)):
        want = expected(x, lambda img, f: ImageEnhance.Color(img).enhance(f), factor)

        def emulated(grey: str, dtype) -> torch.Tensor:
            out = [_blend(np.repeat(greys[grey][i][..., None], 3, -1), images[i], float(factor[i]), dtype)
                   for i in range(len(x))]
            return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()

        assert_exact(emulated("pillow", np.float32), want, x, "float32 emulation", factor)
        for grey in ("bgr", "mean"):
            with pytest.raises(AssertionError):
                assert_exact(emulated(grey, np.float32), want, x, grey, factor)
        float64_differs |= not torch.equal(emulated("pillow", np.float64), want)
    assert float64_differs


def test_lut_checks_fail_for_a_mixup_of_parameters():
    x = batch("random-48x40")
    bits = torch.tensor([1.0, 7.0, 3.0, 0.0, 5.0])
    want = expected(x, _posterize, bits)
    with pytest.raises(AssertionError):
        assert_exact(expected(x, _posterize, bits.flip(0)), want, x, "flipped", bits)


# ---- bicubic: timm's training default picks bilinear or bicubic at random for every geometric op -----------------

def pillow_bicubic(op: str, img: Image.Image, value: float, fill) -> Image.Image:
    if op == "rotate":
        return img.rotate(value, resample=Image.BICUBIC, fillcolor=fill)
    return img.transform(img.size, Image.AFFINE, tuple(GEOMETRIC[op][0](value, *img.size)), resample=Image.BICUBIC,
                         fillcolor=fill)


@pytest.mark.parametrize("op", list(GEOMETRIC))
@pytest.mark.parametrize("name", SETS)
def test_geometric_ops_bicubic_equal_pillow(op, name):
    """Pillow's cubic (a = -1) over the 4 x 4 nearest pixels, clamped to the border, then clipped to 0..255 and
    truncated: computed in double precision in Pillow's order, so every value must be Pillow's."""
    x = batch(name)
    height, width = x.shape[-2:]
    fill = (124, 116, 104)
    for params in rounds(GEOMETRIC_VALUES[op](width, height), len(x)):
        got = run(getattr(ra, op), x, params, fill, True)
        want = expected(x, lambda img, v: pillow_bicubic(op, img, v, fill), params)
        assert_exact(got, want, x, f"{op} (bicubic)", params)
    # the filter flag is honoured: on a photo the two filters give different images
    if name.startswith("photo"):
        assert not torch.equal(got, run(getattr(ra, op), x, params, fill))  # bicubic differs from bilinear


def test_each_image_gets_its_own_resampling_filter():
    x = batch("photo-48x40")
    fill = (0, 255, 7)
    degrees = torch.linspace(-25, 25, len(x))
    bicubic = torch.arange(len(x)) % 2 == 0
    got = run(ra.rotate, x, degrees, fill, bicubic)
    for i in range(len(x)):
        call = Image.BICUBIC if bicubic[i] else Image.BILINEAR
        want = _from_pil(_to_pil(x[i]).rotate(float(degrees[i]), resample=call, fillcolor=fill))
        assert torch.equal(got[i], want), i
