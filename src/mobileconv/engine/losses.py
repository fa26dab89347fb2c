"""Training losses beyond ``nn.CrossEntropyLoss``: timm's binary cross-entropy (``--bce-loss``) and AugMix's
Jensen-Shannon consistency loss (``--jsd-loss``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import one_hot_smooth


class BinaryCrossEntropy(nn.Module):
    """One sigmoid per class against (smoothed) one-hot or mixed targets, as timm's ``BinaryCrossEntropy``.

    The loss of ResNet strikes back (Wightman et al. 2021) and timm's ``--bce-loss``: each class is a
    binary problem, ``-t log s(x) - (1 - t) log(1 - s(x))`` per logit ``x`` and target ``t``.

    Args:
        smoothing: label smoothing of class-index targets (``1 - s + s/K`` on the label, ``s/K``
            elsewhere, as the cross-entropy's); soft targets (mixup / cutmix, already smoothed) are taken as
            they are.
        target_threshold: when set, targets above it become 1 and the others 0 (timm's
            ``--bce-target-thresh``: mixup's minority label and the smoothing vanish, a large enough mixed
            share becomes a full positive).
        sum_classes: sum the per-class losses of an image and average over images (timm's ``--bce-sum``),
            instead of averaging over every logit, which makes the loss ``K`` times smaller.
        pos_weight: weight of the positive term of every class (``F.binary_cross_entropy_with_logits``'s).
    """

    def __init__(self, smoothing: float = 0.0, target_threshold: float | None = None, sum_classes: bool = False,
                 pos_weight: float | None = None) -> None:
        super().__init__()
        if not 0 <= smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
        self.smoothing, self.target_threshold, self.sum_classes = smoothing, target_threshold, sum_classes
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor(float(pos_weight)))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.shape != logits.shape:
            if targets.shape != logits.shape[:1]:
                raise ValueError(f"targets must be class indices of shape ({len(logits)},) or soft targets of "
                                 f"shape {tuple(logits.shape)}, got shape {tuple(targets.shape)}")
            targets = one_hot_smooth(targets, logits.shape[1], self.smoothing)
        logits, targets = logits.float(), targets.float()
        if self.target_threshold is not None:
            targets = (targets > self.target_threshold).float()
        loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight,
                                                  reduction="none" if self.sum_classes else "mean")
        return loss.sum(1).mean() if self.sum_classes else loss

    def extra_repr(self) -> str:
        return (f"smoothing={self.smoothing}, target_threshold={self.target_threshold}, "
                f"sum_classes={self.sum_classes}, pos_weight={self.pos_weight}")


class JsdCrossEntropy(nn.Module):
    """AugMix's loss (Hendrycks et al. 2020, Sec. 3), as timm's ``JsdCrossEntropy``: the cross-entropy of the
    clean split plus ``alpha`` times the Jensen-Shannon divergence of the splits' predictions.

    The logits are ``num_splits`` equal splits of a batch, ``[clean; augmented; ...]`` (``--aug-splits``), and
    the targets class indices in the same layout. With ``p_i`` the softmax of split ``i`` and ``M`` their mean
    (clamped to ``[1e-7, 1]``), the divergence is ``mean_i KL(p_i || M)``, summed over classes and averaged over
    images. ``alpha`` = 12 is the paper's and timm's.
    """

    def __init__(self, num_splits: int = 3, alpha: float = 12.0, smoothing: float = 0.0) -> None:
        super().__init__()
        if num_splits < 2:
            raise ValueError(f"num_splits must be >= 2 (a clean split and an augmented one), got {num_splits}")
        self.num_splits, self.alpha, self.smoothing = num_splits, alpha, smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        size = len(logits) // self.num_splits
        if size * self.num_splits != len(logits) or not size:
            raise ValueError(f"a batch of {len(logits)} logits does not split into {self.num_splits} equal splits")
        splits = logits.float().split(size)
        loss = F.cross_entropy(splits[0], targets[:size], label_smoothing=self.smoothing)
        probs = [split.softmax(1) for split in splits]
        log_mixture = torch.stack(probs).mean(0).clamp(1e-7, 1).log()
        divergence = sum(F.kl_div(log_mixture, p, reduction="batchmean") for p in probs) / len(probs)
        return loss + self.alpha * divergence

    def extra_repr(self) -> str:
        return f"num_splits={self.num_splits}, alpha={self.alpha}, smoothing={self.smoothing}"
