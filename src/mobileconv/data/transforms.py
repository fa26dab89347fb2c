"""Batched augmentation on whole uint8 batches (kornia), and mixup / cutmix with soft targets.

Train: resize to the training size when the stored size differs -> random resized crop ->
horizontal, vertical flip -> Rand/AutoAugment -> colour jitter -> greyscale -> Gaussian blur -> normalise -> random
erasing (timm's order). Eval:
resize -> normalise. All randomness comes from torch's global generator, which the trainer seeds from
``(seed, epoch, rank)`` at the start of every epoch, so a resumed run replays the same augmentations.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .auto_augment import auto_augment_transform, check_interpolation, draw_bicubic
from .datasets import INTERPOLATIONS

ERASE_MODES = ("const", "rand", "pixel")
BLUR_KERNEL, BLUR_SIGMA = (23, 23), (0.1, 2.0)  # timm's --gaussian-blur-prob: torchvision's GaussianBlur(23)


class BatchTransform(nn.Module):
    """uint8 ``(N, C, H, W)`` -> normalised float ``(N, C, size, size)``, augmented when ``train``.

    Args:
        size: output side length.
        mean, std: per-channel normalisation of [0, 1] images.
        train: apply the random augmentations below.
        scale: area range of the random resized crop; ``(1, 1)`` keeps the whole image.
        ratio: aspect-ratio range (width / height) of the crop.
        interpolation: the crop's resampling, ``"bilinear"``, ``"bicubic"`` or ``"random"`` (either, per image,
            with equal odds: timm's ``--train-interpolation`` default).
        hflip: probability of a horizontal flip.
        vflip: probability of a vertical flip (after the horizontal one, as timm flips).
        color_jitter: brightness / contrast / saturation strength (0 disables it).
        color_jitter_prob: probability per image of the colour jitter (timm's ``--color-jitter-prob``).
        grayscale_prob: probability per image of turning it grey, ITU-R 601 luma in each channel (timm's
            ``--grayscale-prob``, torchvision's ``RandomGrayscale``).
        gaussian_blur_prob: probability per image of a Gaussian blur with a 23 x 23 kernel, its sigma drawn from
            [0.1, 2] per image, reflected at the borders (timm's ``--gaussian-blur-prob``, torchvision's
            ``GaussianBlur(23)``).
        reprob: probability per image of random erasing (Zhong et al. 2020; timm's ``--reprob``,
            :class:`RandomErasing`): a rectangle of 2-33% of the area, aspect ratio 0.3-3.3, filled after
            normalisation as ``remode`` says.
        remode: ``"const"``: the rectangle is set to 0, the mean colour; ``"rand"``: to one value per channel drawn
            from ``N(0, 1)``; ``"pixel"``: to values drawn from ``N(0, 1)`` per pixel and channel (timm's ``--remode``).
        recount: most rectangles per erased image (timm's ``--recount``): 1 to ``recount``, uniformly, each
            of ``1 / count`` of the area.
        auto_augment: timm's RandAugment or AutoAugment policy string (``"rand-m9-mstd0.5"``, ``"v0"``;
            :func:`.auto_augment.auto_augment_transform`), applied to the crop rounded to 8-bit values, as timm
            applies it to PIL images; the area that its geometric ops uncover takes the mean colour,
            ``round(255 * mean)``.
        splits: augmentation splits (timm's ``--aug-splits``, AugMix's setting): the output stacks ``splits``
            versions of the batch, ``[clean; augmented; ...]``. All share one crop and flip of each image; the
            clean one is only normalised, each other one draws its own ``auto_augment``, colour jitter, greyscale
            and blur.
            Random erasing applies to every split, or with ``resplit`` to all but the clean one (timm's).
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], *, train: bool = False,
                 scale: Sequence[float] = (1.0, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 interpolation: str = "bilinear", hflip: float = 0.0, vflip: float = 0.0,
                 color_jitter: float = 0.0, color_jitter_prob: float = 1.0, grayscale_prob: float = 0.0,
                 gaussian_blur_prob: float = 0.0, reprob: float = 0.0, remode: str = "const", recount: int = 1,
                 auto_augment: str | None = None, splits: int = 1, resplit: bool = False) -> None:
        super().__init__()
        import kornia.augmentation as K

        if splits < 1:
            raise ValueError(f"splits must be >= 1, got {splits}")
        if train and gaussian_blur_prob > 0 and size <= BLUR_KERNEL[0] // 2:
            raise ValueError(f"gaussian_blur_prob > 0 (--gaussian-blur-prob): the {BLUR_KERNEL[0]} x {BLUR_KERNEL[1]} "
                             f"blur reflects {BLUR_KERNEL[0] // 2} pixels at each border and needs images of at least "
                             f"{BLUR_KERNEL[0] // 2 + 1} px (--img-size), got {size} px")
        self.size, self.splits, self.resplit = size, splits, resplit
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.interpolation = check_interpolation(interpolation)
        self.crops = nn.ModuleDict()
        if train and tuple(scale) != (1.0, 1.0):
            for mode in INTERPOLATIONS if interpolation == "random" else (interpolation,):
                self.crops[mode] = K.RandomResizedCrop((size, size), scale=tuple(scale), ratio=tuple(ratio),
                                                       resample=mode.upper())
        flips = [K.RandomHorizontalFlip(p=hflip)] if train and hflip > 0 else []
        flips += [K.RandomVerticalFlip(p=vflip)] if train and vflip > 0 else []
        self.flip = nn.Sequential(*flips) if flips else None
        self.auto_augment = None
        if train and auto_augment:
            fill = [min(255, round(255 * m)) for m in mean]  # timm's img_mean
            self.auto_augment = auto_augment_transform(auto_augment, fill=fill)
        self.color_jitter = K.ColorJitter(color_jitter, color_jitter, color_jitter, 0.0, p=color_jitter_prob) \
            if train and color_jitter > 0 else None
        self.grayscale = K.RandomGrayscale(p=grayscale_prob) if train and grayscale_prob > 0 else None
        self.blur = K.RandomGaussianBlur(BLUR_KERNEL, BLUR_SIGMA, p=gaussian_blur_prob) \
            if train and gaussian_blur_prob > 0 else None
        erase = RandomErasing(reprob, remode, recount)  # checks remode and recount also where nothing is erased
        self.remode = remode
        # on the normalised batch, as timm erases: 0 there is the mean colour
        self.erase = erase if train and reprob > 0 else None

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        x = self.random_resized_crop(x)
        if self.flip is not None:
            x = self.flip(x)
        if self.splits == 1:
            return self.erased(self.normalised(self.augmented(x)))
        clean = self.normalised(x)
        if not self.resplit:
            clean = self.erased(clean)
        return torch.cat([clean, *(self.erased(self.normalised(self.augmented(x))) for _ in range(self.splits - 1))])

    def augmented(self, x: torch.Tensor) -> torch.Tensor:
        """Rand/AutoAugment, colour jitter, greyscale and blur (a new tensor: ``x`` is left as it is)."""
        if self.auto_augment is not None:
            x = self.auto_augment(x.mul(255).round_().clamp_(0, 255)).div_(255)
        # after Rand/AutoAugment, where timm puts a colour jitter it keeps, and the rest after it
        for op in (self.color_jitter, self.grayscale, self.blur):
            if op is not None:
                x = op(x)
        return x

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def erased(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.erase is None else self.erase(x)

    def random_resized_crop(self, x: torch.Tensor) -> torch.Tensor:
        """kornia's random resized crop of each image, resampled as ``interpolation`` says."""
        if len(self.crops) < 2:
            return x if not self.crops else next(iter(self.crops.values()))(x)
        bicubic = draw_bicubic(self.interpolation, len(x))
        out = torch.empty(x.shape[:2] + (self.size, self.size), dtype=x.dtype, device=x.device)
        for mode, chosen in (("bilinear", ~bicubic), ("bicubic", bicubic)):
            if chosen.any():
                out[chosen.to(x.device)] = self.crops[mode](x[chosen.to(x.device)])
        return out


class RandomErasing:
    """timm's ``RandomErasing`` (Zhong et al. 2020) on a normalised batch, in place, its sampler written out.

    Each image, with probability ``prob``, gets ``count`` rectangles (``count`` uniform in 1..``max_count``;
    1 by default). For each, up to 10 tries draw an area uniformly from 2-33% of the image divided by ``count``
    and an aspect ratio log-uniformly from 0.3-3.3; the first rectangle that fits strictly inside the image is
    placed uniformly and filled as ``mode`` says: ``"const"`` 0 (the mean colour), ``"rand"`` one ``N(0, 1)``
    value per channel, ``"pixel"`` ``N(0, 1)`` per pixel and channel. All rectangles of a batch are drawn before
    any is filled, so the fill mode does not change where they fall. Draws come from torch's global generator.
    """

    MIN_AREA, MAX_AREA, MIN_ASPECT, TRIES = 0.02, 1 / 3, 0.3, 10

    def __init__(self, prob: float, mode: str = "const", max_count: int = 1) -> None:
        if mode not in ERASE_MODES:
            raise ValueError(f"remode must be one of {ERASE_MODES}, got {mode!r}")
        if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 1:
            raise ValueError(f"recount must be an integer >= 1, got {max_count!r}")
        self.prob, self.mode, self.max_count = prob, mode, max_count

    def boxes(self, n: int, height: int, width: int) -> list[tuple[int, int, int, int, int]]:
        """``(image, top, left, box_height, box_width)`` of every rectangle of a batch of ``n`` images."""
        log_ratio = (math.log(self.MIN_ASPECT), -math.log(self.MIN_ASPECT))
        found = []
        for image in range(n):
            if torch.rand(()).item() >= self.prob:
                continue
            count = 1 if self.max_count == 1 else int(torch.randint(1, self.max_count + 1, ()))
            for _ in range(count):
                for _ in range(self.TRIES):
                    area = torch.empty(()).uniform_(self.MIN_AREA, self.MAX_AREA).item() * height * width / count
                    aspect = math.exp(torch.empty(()).uniform_(*log_ratio).item())
                    h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
                    if w < width and h < height:
                        top, left = int(torch.randint(0, height - h + 1, ())), int(torch.randint(0, width - w + 1, ()))
                        found.append((image, top, left, h, w))
                        break
        return found

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for image, top, left, h, w in self.boxes(len(x), x.shape[-2], x.shape[-1]):
            region = x[image, :, top:top + h, left:left + w]
            if self.mode == "const":
                region.zero_()
            else:
                shape = region.shape if self.mode == "pixel" else (x.shape[1], 1, 1)
                region.copy_(torch.randn(shape, dtype=x.dtype, device=x.device).expand_as(region))
        return x


def one_hot_smooth(targets: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets with label smoothing: ``1 - s + s/K`` on the label, ``s/K`` elsewhere (Szegedy 2016, 7)."""
    off = smoothing / num_classes
    return torch.full((len(targets), num_classes), off, device=targets.device).scatter_(
        1, targets.view(-1, 1), 1.0 - smoothing + off)


MIXUP_MODES = ("batch", "pair", "elem")


class MixupCutmix:
    """Mixup (Zhang 2018) or CutMix (Yun 2019) of a batch with its reverse, with soft (smoothed) targets.

    ``lam ~ Beta(alpha, alpha)``. Mixup: ``x = lam*x + (1-lam)*x.flip(0)``. CutMix pastes a box
    of area ``(1-lam)*H*W`` from the reversed batch and sets ``lam`` to the area actually kept.
    Targets mix with the same ``lam``. When both alphas are positive each batch picks one with
    probability ``switch_prob`` for CutMix. A batch is mixed with probability ``prob`` (timm's ``mixup_prob``),
    and not at all while ``mixing`` is False (timm's ``mixup_off_epoch``); an unmixed batch keeps its images and
    gets the smoothed one-hot targets.

    ``mode`` (timm's ``--mixup-mode``): ``"batch"``, one draw for the batch; ``"elem"``, each image draws its
    own ``lam``, mixup or CutMix, box, and whether it is mixed at all (``prob``), still mixing with its partner in
    the reversed batch; ``"pair"``, an image and its partner share one draw, so both are mixed with the same
    ``lam`` and box (the middle image of an odd batch, its own partner, stays as it is). ``cutmix_minmax``
    (timm's ``--cutmix-minmax``): CutMix boxes whose height and width are drawn uniformly from these fractions of
    the image's (Darknet's CutMix; ``lam`` the area kept) instead of from ``lam``; it turns CutMix on, whose
    ``lam`` draw then takes alpha 1 as in timm.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 smoothing: float = 0.0, switch_prob: float = 0.5, prob: float = 1.0, mode: str = "batch",
                 cutmix_minmax: Sequence[float] | None = None) -> None:
        if mode not in MIXUP_MODES:
            raise ValueError(f"mode must be one of {MIXUP_MODES}, got {mode!r}")
        if cutmix_minmax is not None and not 0 < cutmix_minmax[0] < cutmix_minmax[1] <= 1:
            raise ValueError(f"cutmix_minmax must be two fractions 0 < MIN < MAX <= 1, got {cutmix_minmax!r}")
        self.num_classes, self.smoothing, self.switch_prob = num_classes, smoothing, switch_prob
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, 1.0 if cutmix_minmax is not None else cutmix_alpha
        self.prob, self.mode, self.mixing = prob, mode, True
        self.cutmix_minmax = None if cutmix_minmax is None else tuple(cutmix_minmax)

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        soft = one_hot_smooth(targets, self.num_classes, self.smoothing)
        if self.mode != "batch":
            return self.mix_per_image(images, soft)
        if not self.mixing or (self.prob < 1 and torch.rand(()).item() >= self.prob):
            return images, soft
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or torch.rand(()).item() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        flipped = images.flip(0)
        if use_cutmix:
            images, lam = cutmix_images(images, flipped, lam, self.cutmix_minmax)
        else:
            images = images * lam + flipped * (1 - lam)
        return images, soft * lam + soft.flip(0) * (1 - lam)

    def mix_per_image(self, images: torch.Tensor, soft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mode`` ``"elem"`` / ``"pair"``: image ``i`` mixes with image ``n - 1 - i`` on a draw of its own (or
        of its pair), as timm's ``Mixup._mix_elem`` / ``_mix_pair``."""
        n = len(images)
        draws = n if self.mode == "elem" else n // 2
        lam, use_cutmix = self.draw_per_image(draws)
        if self.mode == "pair":  # image n - 1 - i takes image i's draw; the middle one of an odd batch is left
            lam = torch.cat([lam, torch.ones(n % 2), lam.flip(0)])
            use_cutmix = torch.cat([use_cutmix, torch.zeros(n % 2, dtype=torch.bool), use_cutmix.flip(0)])
        flipped, out = images.flip(0), images.clone()
        blend = (lam < 1) & ~use_cutmix
        weight = lam.to(images.dtype).view(-1, *[1] * (images.dim() - 1))[blend]
        out[blend] = images[blend] * weight + flipped[blend] * (1 - weight)
        for i in range(draws):
            if lam[i] < 1 and use_cutmix[i]:
                pair = [i, n - 1 - i] if self.mode == "pair" else [i]
                (y0, y1, x0, x1), lam[i] = cutmix_box(images.shape[-2:], float(lam[i]), self.cutmix_minmax)
                for k in pair:
                    out[k, ..., y0:y1, x0:x1] = flipped[k, ..., y0:y1, x0:x1]
                    lam[k] = lam[i]
        lam = lam.to(soft.dtype).unsqueeze(1)
        return out, soft * lam + soft.flip(0) * (1 - lam)

    def draw_per_image(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lam, use_cutmix)`` for ``n`` images: each mixed with probability ``prob`` (``lam`` 1 otherwise), by
        CutMix with probability ``switch_prob`` when both are on (timm's ``Mixup._params_per_elem``)."""
        lam, use_cutmix = torch.ones(n), torch.zeros(n, dtype=torch.bool)
        if not self.mixing or not n:
            return lam, use_cutmix
        if self.cutmix_alpha > 0:
            use_cutmix = torch.rand(n) < self.switch_prob if self.mixup_alpha > 0 else torch.ones(n, dtype=torch.bool)
        drawn = torch.zeros(n)
        for alpha, chosen in ((self.mixup_alpha, ~use_cutmix), (self.cutmix_alpha, use_cutmix)):
            if alpha > 0:
                drawn = torch.where(chosen, torch.distributions.Beta(alpha, alpha).sample((n,)), drawn)
        return torch.where(torch.rand(n) < self.prob, drawn, lam), use_cutmix


def cutmix_box(size: Sequence[int], lam: float,
               minmax: Sequence[float] | None = None) -> tuple[tuple[int, int, int, int], float]:
    """A CutMix box ``(y0, y1, x0, x1)`` of an ``(H, W)`` image and the fraction of the image it leaves.

    timm's ``cutmix_bbox_and_lam`` (with its ``correct_lam``): sides ``sqrt(1 - lam)`` of the image's around a
    uniform centre, clipped to the image; with ``minmax``, a height and width drawn uniformly from
    ``[int(MIN * side), int(MAX * side))`` at a uniform position inside the image."""
    h, w = size
    if minmax is None:
        cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    else:
        cut_h, cut_w = (_uniform_int(int(side * minmax[0]), int(side * minmax[1])) for side in (h, w))
        y0, x0 = int(torch.randint(h - cut_h + 1, ())), int(torch.randint(w - cut_w + 1, ()))
        y1, x1 = y0 + cut_h, x0 + cut_w
    return (y0, y1, x0, x1), 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


def cutmix_images(images: torch.Tensor, other: torch.Tensor, lam: float,
                  minmax: Sequence[float] | None = None) -> tuple[torch.Tensor, float]:
    """Paste a random box of ``other`` covering about ``1 - lam`` of the area (:func:`cutmix_box`); returns the
    kept fraction."""
    (y0, y1, x0, x1), lam = cutmix_box(images.shape[-2:], lam, minmax)
    images = images.clone()
    images[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
    return images, lam


def _uniform_int(low: int, high: int) -> int:
    """An integer drawn uniformly from ``[low, high)`` (``low`` when the range is empty)."""
    return int(torch.randint(low, max(high, low + 1), ()))
