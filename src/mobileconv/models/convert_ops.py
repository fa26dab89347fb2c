"""Turn the depthwise convs of any model into MixConv2d (``mixify``) or XSepConv2d (``xsepify``).

Both walk the module tree, find "same"-padded square depthwise convs (``nn.Conv2d`` with
``groups == in_channels == out_channels``, odd kernel, no dilation, zero padding of ``(k - 1) // 2``,
``padding="same"`` or TF SAME) and replace them in place; everything else (channel counts, strides,
BNs, activations, the model's other parameters) is kept. Other convs (dilated, "valid"-padded, or
with a ``padding_mode`` other than ``"zeros"``), subclasses of ``nn.Conv2d`` and convs with hooks
(which may compute something else: weight standardisation, QAT fake quantisation, ``torch.nn.utils``
parametrizations, pruning, weight / spectral norm; a backward hook would be lost) and existing MixConv2d /
XSepConv2d / GroupedConv2d are left alone. A depthwise conv with a bias is wrapped as
:class:`ConvWithBias` so the bias survives. The new operator is built in the old conv's dtype and
device, in its train / eval mode, and its parameters take the old weight's ``requires_grad`` (a
frozen conv stays frozen).

Weight initialisation of the new operators:

* **MixConv** (``mixify``): group ``i`` (its channels chosen by the equal split) gets the original
  kernel of those channels, zero-padded to ``k_i`` when ``k_i`` is larger (the function is then
  preserved exactly: a centred zero-padded kernel computes the same output) or centre-cropped
  when ``k_i`` is smaller (an approximation). So with ``kernel_sizes`` all ``>=`` the original
  kernel, a mixified model computes the same function until it is trained.
* **XSepConv** (``xsepify``): the 2x2 / 1xK / Kx1 kernels get a fresh He (fan-out) init, as
  the zoo's models do, and the three inner BNs start as identity (weight 1, bias 0, running
  mean 0 / var 1). There is no exact factorisation of a KxK kernel through a ReLU, so the model
  needs fine-tuning.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Conv2dSame, GroupedConv2d, MixConv2d, XSepConv2d, xsep_padding_schedule
from ..layers.activations import get_act
from ..layers.helpers import as_int, check_kernel_sizes, check_module
from ..layers.mixconv import SPLITS
from ._builder import init_weights

_COMPOSITE = (MixConv2d, XSepConv2d, GroupedConv2d)


class ConvWithBias(nn.Module):
    """A bias-free conv operator followed by the per-channel bias of the conv it replaced."""

    def __init__(self, conv: nn.Module, bias: torch.Tensor) -> None:
        super().__init__()
        self.conv = conv
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.bias.view(1, -1, 1, 1)


def _plain_conv(module: nn.Module) -> bool:
    """``nn.Conv2d`` or :class:`Conv2dSame` itself, without hooks (forward, forward-pre, backward).

    A subclass may compute something else from its weight (weight standardisation, QAT fake
    quantisation, a ``torch.nn.utils.parametrize`` parametrization), and a hook may change the
    weight or output (pruning, ``weight_norm`` / ``spectral_norm``) or watch its gradients; the
    replacement would drop that.
    """
    return type(module) in (nn.Conv2d, Conv2dSame) and not (module._forward_pre_hooks or module._forward_hooks
                                                            or module._backward_hooks or module._backward_pre_hooks)


def is_same_depthwise(module: nn.Module) -> bool:
    """``True`` for a square, odd, undilated, zero- and "same"-padded depthwise ``nn.Conv2d``.

    "Same" padding is ``(k - 1) // 2`` on each side, ``padding="same"`` (the same thing for an odd,
    undilated kernel) or TF SAME (:class:`Conv2dSame`). Only plain convs count (see :func:`_plain_conv`).
    """
    if not _plain_conv(module):
        return False
    k = module.kernel_size[0]
    same = isinstance(module, Conv2dSame) or module.padding in ("same", ((k - 1) // 2,) * 2)
    return (module.groups == module.in_channels == module.out_channels and module.kernel_size == (k, k) and k % 2 == 1
            and module.dilation == (1, 1) and module.padding_mode == "zeros" and same
            and module.stride in ((1, 1), (2, 2)))


def _find(module: nn.Module, prefix: str = "") -> Iterator[tuple[nn.Module, str, str, nn.Conv2d]]:
    """Yield ``(parent, attribute, dotted name, conv)`` for every eligible depthwise conv, in module order."""
    for name, child in module.named_children():
        if isinstance(child, _COMPOSITE):
            continue
        if is_same_depthwise(child):
            yield module, name, prefix + name, child
        else:
            yield from _find(child, f"{prefix}{name}.")


def _replace(model: nn.Module, found: list, make) -> nn.Module:
    if is_same_depthwise(model):  # the model itself is one depthwise conv
        return _attach_bias(make(model, 0), model)
    for i, (parent, attr, _, conv) in enumerate(found):
        setattr(parent, attr, _attach_bias(make(conv, i), conv))
    return model


def _followed_by_norm(parent: nn.Module, attr: str) -> bool:
    """Whether the module registered right after ``parent.<attr>`` is a BatchNorm."""
    names = list(parent._modules)
    after = names.index(attr) + 1
    return after < len(names) and isinstance(parent._modules[names[after]], nn.modules.batchnorm._BatchNorm)


def _like(new: nn.Module, old: nn.Conv2d) -> nn.Module:
    """``new`` in ``old``'s dtype and device (call it before copying weights in, so they are copied exactly)."""
    return new.to(device=old.weight.device, dtype=old.weight.dtype)


def _attach_bias(new: nn.Module, old: nn.Conv2d) -> nn.Module:
    new.train(old.training)
    new.requires_grad_(old.weight.requires_grad)
    return ConvWithBias(new, old.bias).train(old.training) if old.bias is not None else new


def _fit_kernel(weight: torch.Tensor, k: int) -> torch.Tensor:
    """Centre-crop or zero-pad a ``(C, 1, K, K)`` kernel to ``k x k`` (both odd, so centres align)."""
    K = weight.shape[-1]
    if k >= K:
        p = (k - K) // 2
        return F.pad(weight, [p, p, p, p])
    c = (K - k) // 2
    return weight[..., c:c + k, c:c + k]


def mixify(model: nn.Module, kernel_sizes: Sequence[int] = (3, 5, 7), *, split: str = "equal") -> nn.Module:
    """Replace every "same" depthwise conv by a :class:`MixConv2d` with ``kernel_sizes`` (MixConv paper, Sec. 3).

    The MixConv paper's study (Fig. 4) swaps each 3x3 depthwise conv of MobileNetV1/V2 for a
    MixConv ``{3, 5, ..., k}``. Channels, stride and padding mode ("tf" for :class:`Conv2dSame`)
    are kept; a conv with too few channels for the split (fewer than ``len(kernel_sizes)``, or than
    ``2 ** (len(kernel_sizes) - 1)`` for ``split="exponential"``) is left alone. Weights: see the module
    docstring (function preserved when every ``k_i`` is at least the original kernel).

    Args:
        model: any ``nn.Module`` (modified in place and returned).
        kernel_sizes: odd kernel sizes, one per channel group.
        split: ``"equal"`` or ``"exponential"`` channel split.

    Returns:
        The model (a new module if ``model`` itself was a depthwise conv).
    """
    check_module(model)
    kernel_sizes = check_kernel_sizes(kernel_sizes)
    if split not in SPLITS:  # an error even where no conv qualifies
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    # fewest channels the split can give every group one: g (equal) or 2^(g-1) (exponential)
    min_channels = len(kernel_sizes) if split == "equal" else 2 ** (len(kernel_sizes) - 1)
    found = [f for f in _find(model) if f[3].in_channels >= min_channels]

    def make(conv: nn.Conv2d, _: int) -> MixConv2d:
        mix = _like(MixConv2d(conv.in_channels, kernel_sizes, conv.stride[0], split=split,
                              padding="tf" if isinstance(conv, Conv2dSame) else ""), conv)
        with torch.no_grad():
            start = 0
            for group, c in zip(mix, mix.splits):
                group.weight.copy_(_fit_kernel(conv.weight[start:start + c], group.kernel_size[0]))
                start += c
        return mix

    if is_same_depthwise(model) and model.in_channels < min_channels:
        return model
    return _replace(model, found, make)


def xsepify(model: nn.Module, min_kernel: int = 5, *, act_layer: str = "relu",
            last_norm: bool | None = None) -> nn.Module:
    """Replace every stride-1 "same" depthwise conv with ``K >= min_kernel`` by an :class:`XSepConv2d`.

    As in the XSepConv paper (Sec. 4) stride-2 convs keep the plain depthwise form. The ``n``
    replaced layers take their 2x2 padding directions from ``xsep_padding_schedule(n)`` in
    module order (improved symmetric padding, Sec. 3.2). A conv with fewer than 4 channels is
    left alone, as the schedule's ``"symmetric"`` padding needs four channel groups. Per channel
    an XSepConv has ``4 + 2K`` weights and three BNs instead of ``K^2`` weights; they are freshly
    initialised (module docstring).

    Args:
        model: any ``nn.Module`` (modified in place and returned).
        min_kernel: smallest kernel size to replace (the paper uses 5).
        act_layer: activation inside the XSepConvs.
        last_norm: whether each XSepConv has its own BN after the Kx1 conv. ``None``: not when
            the conv is followed by a BN already (the module registered right after it is a
            BatchNorm, as in MobileNet blocks and ``nn.Sequential(conv, BN, ...)``), since two BNs
            in a row leave the first without gradient; otherwise yes.
    """
    check_module(model)
    if as_int(min_kernel) is None or as_int(min_kernel) < 2:
        raise ValueError(f"min_kernel must be an integer >= 2, got {min_kernel!r}")
    min_kernel = as_int(min_kernel)
    get_act(act_layer, arg_name="act_layer")  # a bad name is an error even where no conv qualifies
    if last_norm is not None and not isinstance(last_norm, bool):
        raise ValueError(f"last_norm must be True, False or None (decided per conv), got {last_norm!r}")

    def eligible(conv: nn.Conv2d) -> bool:
        return conv.stride == (1, 1) and conv.kernel_size[0] >= min_kernel and conv.in_channels >= 4

    root = [(None, "", "", model)] if is_same_depthwise(model) else list(_find(model))
    found = [f for f in root if eligible(f[3])]
    schedule = xsep_padding_schedule(len(found))

    def make(conv: nn.Conv2d, i: int) -> XSepConv2d:
        parent, attr = found[i][:2]
        followed = parent is not None and _followed_by_norm(parent, attr)
        own_norm = not followed if last_norm is None else last_norm
        xsep = _like(XSepConv2d(conv.in_channels, conv.kernel_size[0], 1, padding=schedule[i], act_layer=act_layer,
                                last_norm=own_norm), conv)
        init_weights(xsep)  # drawn in the conv's dtype, on its device
        return xsep

    if is_same_depthwise(model) and not found:
        return model
    return _replace(model, found, make)
