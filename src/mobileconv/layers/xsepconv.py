"""XSepConv: extremely separated depthwise convolution (Chen et al., arXiv 2002.12046)."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .activations import ActLayer, create_act
from .conv import runs_as_plain_conv
from .helpers import (FixedLayout, as_int, cached_derived, check_impl, check_input_channels, check_kernel_size,
                      check_norm_layer, check_positive, check_stride, pad_kernel, reuses_derived_weights,
                      split_channels)

# One-sided paddings of a 2x2 conv, as (left, right, top, bottom). "right_top" pads one column
# on the right and one row on the top; the four directions cancel each other's half-pixel shift.
DIRECTIONS: dict[str, tuple[int, int, int, int]] = {
    "right_top": (0, 1, 1, 0),
    "right_bottom": (0, 1, 0, 1),
    "left_top": (1, 0, 1, 0),
    "left_bottom": (1, 0, 0, 1),
}
PADDINGS = (*DIRECTIONS, "symmetric")
_OPPOSITE = {"right_top": "left_bottom", "right_bottom": "left_top", "left_top": "right_bottom",
             "left_bottom": "right_top"}


def xsep_padding_schedule(n: int) -> list[str]:
    """Padding directions for the ``n`` 2x2 depthwise convs of a network (XSepConv paper, Sec. 3.2).

    Improved symmetric padding: the four one-sided directions cycle, so that their half-pixel
    shifts cancel every four layers. The rest ``r = n % 4``:

    * ``r == 0``: the plain cycle;
    * ``r == 2``: the last two layers take opposite directions;
    * ``r == 1``: the last layer uses conventional ``"symmetric"`` padding (four channel groups);
    * ``r == 3`` (not specified by the paper; our rule): the last three are a pair of opposite
      directions followed by one ``"symmetric"`` layer.

    Each one-sided layer moves a channel's features half a pixel away from its padded sides.
    For ``r`` even every channel ends up centred. For ``r`` odd no schedule can centre every
    channel (an odd number of +-1/2 steps per axis), so the best possible is what ``r == 1`` does
    and our ``r == 3`` rule does too: the average over channels is exactly centred and each
    channel is off by the minimum, half a pixel per axis (three one-sided layers would leave
    every channel, and the average, off by 1/2; three ``"symmetric"`` layers 3/2 per channel).
    ``tests/layers/test_xsep_padding.py`` checks this against all 125 choices for the last three.
    """
    if as_int(n) is None or n < 0:
        raise ValueError(f"n must be a non-negative number of 2x2 layers, got {n!r}")
    n = as_int(n)
    cycle = list(DIRECTIONS)
    full, rest = divmod(n, 4)
    schedule = cycle * full
    if rest >= 2:
        schedule += ["right_top", _OPPOSITE["right_top"]]
    if rest % 2 == 1:
        schedule.append("symmetric")
    return schedule


def _embed_2x2(weight: torch.Tensor, pad: list[int]) -> torch.Tensor:
    """Place a 2x2 kernel in a 3x3 one so that a pad-1 conv equals the one-sided pad-then-2x2 conv."""
    row, col = 1 - pad[2], 1 - pad[0]
    return pad_kernel(weight, col, 1 - col, row, 1 - row)


class XSepConv2d(FixedLayout, nn.Module):
    """Extremely separated depthwise conv, a drop-in for a ``K x K`` depthwise conv (XSepConv, Fig. 2).

    ``2x2 depthwise (one-sided padding) -> BN -> act -> 1xK depthwise -> BN -> act -> Kx1 depthwise -> BN``:
    ``4 + 2K`` weights per channel instead of ``K^2``. With ``stride=2`` it is the paper's
    down-sampling form: the 1xK conv strides horizontally and the Kx1 conv vertically.

    Args:
        channels: input = output channels.
        kernel_size: odd ``K`` of the 1xK / Kx1 convs.
        stride: 1 or 2.
        padding: the 2x2 conv's padding direction, one of ``"right_top"``, ``"right_bottom"``,
            ``"left_top"``, ``"left_bottom"``, or ``"symmetric"`` (channels in four groups, each
            padded towards a different corner). Use :func:`xsep_padding_schedule` for a network.
        act_layer: activation after the first two convs (a class or name, ``None`` for none).
        norm_layer: a callable taking the channel count (``nn.BatchNorm2d`` by default), or ``None``
            for no normalisation (each BN is then an ``nn.Identity``; the convs stay bias-free).
        last_norm: ``False`` leaves out the BN after the Kx1 conv (``bn3`` is an ``nn.Identity``), for
            a host block whose own BN follows the XSepConv (two BNs in a row would leave the first
            one's scale and shift without gradient in training).
        impl: ``"fast"`` runs the 2x2 conv as one pad-1 3x3 depthwise conv, each 2x2 kernel placed
            in the 3x3 corner that matches its padding direction (one conv for every direction,
            no ``F.pad`` of the input); ``"reference"`` pads with ``F.pad`` and runs the 2x2 conv(s).
            Both read ``conv_2x2.weight`` (and its bias, if any); a ``conv_2x2`` with hooks or a forward of
            its own (prune, QAT) is called as a module instead (:func:`.conv.runs_as_plain_conv`), also
            once scripted. Checked whenever it is assigned.

    The geometry (channels, kernel size, stride, padding) is fixed by the constructor, and a child conv may
    only be replaced by one of the same geometry (:class:`.helpers.FixedLayout`).
    """

    _layout = ("channels", "kernel_size", "stride", "padding", "splits", "directions", "pads")

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, *, padding: str = "symmetric",
                 act_layer: ActLayer = nn.ReLU, norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
                 last_norm: bool = True, impl: str = "fast") -> None:
        super().__init__()
        channels = check_positive(channels, "channels")
        k = check_kernel_size(kernel_size)
        stride = check_stride(stride)
        check_impl(impl)
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS} (the 2x2 conv's padding direction), got {padding!r}")
        if padding == "symmetric" and channels < 4:
            raise ValueError(f"channels={channels} is fewer than 4: padding='symmetric' pads four channel groups "
                             f"towards different corners; need channels >= 4 or a one-sided padding {tuple(DIRECTIONS)}")
        self.splits = split_channels(channels, 4) if padding == "symmetric" else [channels]
        self.directions = list(DIRECTIONS) if padding == "symmetric" else [padding]
        self.pads = [list(DIRECTIONS[d]) for d in self.directions]  # (left, right, top, bottom) per group
        self.channels, self.kernel_size, self.stride, self.padding = channels, k, stride, padding
        self.impl = impl  # checked again on every assignment (FixedLayout)
        if not isinstance(last_norm, bool):
            raise ValueError(f"last_norm must be True or False, got {last_norm!r}")
        check_norm_layer(norm_layer)
        norm_layer = nn.Identity if norm_layer is None else norm_layer  # nn.Identity(channels) ignores its argument
        self.conv_2x2 = nn.Conv2d(channels, channels, 2, groups=channels, bias=False)
        self.bn1 = norm_layer(channels)
        self.act1 = create_act(act_layer, inplace=True, arg_name="act_layer")
        self.conv_1xk = nn.Conv2d(channels, channels, (1, k), (1, stride), (0, k // 2), groups=channels, bias=False)
        self.bn2 = norm_layer(channels)
        self.act2 = create_act(act_layer, inplace=True, arg_name="act_layer")
        self.conv_kx1 = nn.Conv2d(channels, channels, (k, 1), (stride, 1), (k // 2, 0), groups=channels, bias=False)
        self.bn3 = norm_layer(channels) if last_norm else nn.Identity()

    def extra_repr(self) -> str:
        return f"k={self.kernel_size} padding={self.padding} stride={self.stride}"

    def embedded_2x2_weight(self) -> torch.Tensor:
        """The 2x2 kernels as ``(C, 1, 3, 3)`` kernels for a pad-1 conv (see ``impl="fast"``)."""
        ws = torch.split(self.conv_2x2.weight, self.splits, 0)
        return torch.cat([_embed_2x2(w, p) for w, p in zip(ws, self.pads)], 0)

    def _cached_embedded_2x2_weight(self) -> torch.Tensor:
        """``embedded_2x2_weight()``, rebuilt only when the 2x2 kernel changes (:class:`.helpers.DerivedTensorCache`)."""
        return cached_derived(self, "_embedded_cache", [self.conv_2x2.weight], self.embedded_2x2_weight)

    def __prepare_scriptable__(self) -> XSepConv2d:
        """Called by ``torch.jit.script``: whether the scripted forward must call ``conv_2x2`` as a module.

        TorchScript compiles the conv's hooks as they are now, and a scripted forward cannot look at them.
        """
        self.scripted_calls_conv_2x2 = not runs_as_plain_conv(self.conv_2x2)
        return self

    def conv2x2(self, x: torch.Tensor) -> torch.Tensor:
        # hooked (prune, ...) or QAT: the conv must run as a module
        if torch.jit.is_scripting():
            if self.scripted_calls_conv_2x2:
                return self._conv2x2_as_module(x)
        elif not runs_as_plain_conv(self.conv_2x2):
            return self._conv2x2_as_module(x)
        bias = self.conv_2x2.bias  # None unless a BN was folded into the conv
        if self.impl == "fast":
            if not torch.jit.is_scripting():
                if reuses_derived_weights([self.conv_2x2.weight]):  # eager inference, or a frozen weight
                    return F.conv2d(x, self._cached_embedded_2x2_weight(), bias, 1, 1, 1, self.channels)
            return F.conv2d(x, self.embedded_2x2_weight(), bias, 1, 1, 1, self.channels)
        xs = torch.split(x, self.splits, 1)
        ws = torch.split(self.conv_2x2.weight, self.splits, 0)
        out = [F.conv2d(F.pad(xi, p), wi, None, 1, 0, 1, wi.shape[0]) for xi, wi, p in zip(xs, ws, self.pads)]
        y = torch.cat(out, 1) if len(out) > 1 else out[0]
        return y if bias is None else y + bias.view(1, -1, 1, 1)

    def _conv2x2_as_module(self, x: torch.Tensor) -> torch.Tensor:
        """The 2x2 conv by calling ``conv_2x2``, for a conv with hooks (prune, ...) or a forward of its own (QAT).

        Both impls otherwise read ``conv_2x2.weight`` directly. With one direction the conv gets that
        direction's one-sided padding; with ``"symmetric"`` it runs once on the input padded by one on
        every side and each channel group takes its window: direction ``(l, r, t, b)`` starts at row
        ``1 - t``, column ``1 - l``. So there the conv's own hooks (and a QAT observer) see an
        ``(H + 2) x (W + 2)`` input and an ``(H + 1) x (W + 1)`` output, a row and a column more than the
        layer keeps.
        """
        if len(self.pads) == 1:
            return self.conv_2x2(F.pad(x, self.pads[0]))
        h, w = x.shape[-2], x.shape[-1]
        y = self.conv_2x2(F.pad(x, [1, 1, 1, 1]))  # (N, C, H + 1, W + 1)
        ys = torch.split(y, self.splits, 1)
        return torch.cat([yi[:, :, 1 - p[2]:1 - p[2] + h, 1 - p[0]:1 - p[0] + w] for yi, p in zip(ys, self.pads)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_channels(x, self.channels, "XSepConv2d")
        x = self.act1(self.bn1(self.conv2x2(x)))
        x = self.act2(self.bn2(self.conv_1xk(x)))
        return self.bn3(self.conv_kx1(x))
