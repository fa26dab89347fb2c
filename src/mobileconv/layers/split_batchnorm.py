"""Split batch norm (AugMix's training, timm's ``--split-bn``): the clean split of a batch is normalised by the main
batch norm, each augmented split by an auxiliary one, so that the augmented images' statistics stay out of the
running statistics the model is evaluated with."""
from __future__ import annotations

import torch
from torch import nn

AUX_KEY = ".aux_bn."  # in the state_dict key of an auxiliary batch norm's tensor


class SplitBatchNorm2d(nn.BatchNorm2d):
    """A ``BatchNorm2d`` whose training batch is ``num_splits`` equal splits, ``[clean; augmented; ...]``.

    In training the first split goes through this batch norm and split ``i`` through ``aux_bn[i - 1]``; in
    evaluation the whole batch goes through this one, the plain ``BatchNorm2d`` whose weights it holds.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, num_splits: int = 2) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        if num_splits < 2:
            raise ValueError(f"num_splits must be >= 2 (a clean split and an augmented one), got {num_splits}")
        self.num_splits = num_splits
        self.aux_bn = nn.ModuleList(nn.BatchNorm2d(num_features, eps, momentum, affine, track_running_stats)
                                    for _ in range(num_splits - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        size = len(x) // self.num_splits
        if size * self.num_splits != len(x) or not size:
            raise ValueError(f"a batch of {len(x)} images does not split into {self.num_splits} equal splits "
                             f"(--split-bn needs the stacked splits of --aug-splits)")
        splits = x.split(size)
        return torch.cat([super().forward(splits[0]), *(bn(s) for bn, s in zip(self.aux_bn, splits[1:]))])


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """``module`` with every ``BatchNorm2d`` replaced by a :class:`SplitBatchNorm2d` holding its weights and
    statistics, its auxiliary batch norms starting as copies of them (timm's ``convert_splitbn_model``)."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SplitBatchNorm2d):
        split = SplitBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats, num_splits).to(device=_device_of(module))
        with torch.no_grad():
            for bn in (split, *split.aux_bn):
                for name, value in module.state_dict().items():  # weight, bias and the running statistics
                    getattr(bn, name).copy_(value)
        split.train(module.training)
        return split
    for name, child in module.named_children():
        converted = convert_split_bn(child, num_splits)
        if converted is not child:
            setattr(module, name, converted)
    return module


def without_aux_bn(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A split batch-norm model's ``state_dict`` as the plain model's: the auxiliary batch norms left out."""
    return {k: v for k, v in state_dict.items() if AUX_KEY not in k}


def _device_of(module: nn.Module) -> torch.device:
    tensor = next(iter(module.state_dict().values()), None)
    return tensor.device if tensor is not None else torch.device("cpu")
