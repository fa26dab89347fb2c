"""A faster CPU weight gradient for depthwise / MixConv convolutions (used by ``impl="fast"``).

On CPU, PyTorch computes a depthwise conv's weight gradient with oneDNN, whose fast depthwise
kernel handles 3x3 only; for 5x5 and larger it falls back to a generic grouped-conv kernel that
is 5-10x slower than the forward pass (measured: ``benchmarks/mixconv_speed.py``), which is most
of MixNet's training-time "MixConv tax". The weight gradient

    ``dW[c, i, j] = sum_{n, h, w} x_pad[n, c, h*s + i, w*s + j] * g[n, c, h, w]``

is, for each ``(n, c)``, a correlation of the padded input with the output gradient ``g`` (dilated
by the stride ``s``). With the batch folded into the channels it is one depthwise *forward* conv
with ``N * C`` channels and ``k x k`` outputs, which runs on the fast kernel.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

# Above this input size (pixels per channel) the batch-second copies of x and g cost more than
# oneDNN's generic weight-gradient kernel saves (measured on MixNet-S/M layers, 1 thread).
SWAP_MAX_PIXELS = 14 * 14

_conv_backward = torch.ops.aten.convolution_backward


def function_transforms_active() -> bool:
    """True inside a ``torch.func`` transform (``grad``, ``vmap``, ``jvp``, ``jacrev``, ``hessian``, ...) or
    a forward-mode AD ``dual_level``: there plain autograd of the fused conv must be used, because
    :class:`MixedDepthwiseConv` has neither a ``jvp`` nor a ``setup_context`` (which ``torch.func`` needs)."""
    return torch._C._are_functorch_transforms_active() or fwAD._current_level >= 0


def _eager_cpu_training(x: torch.Tensor, weights: list[torch.Tensor]) -> bool:
    """Autograd records on CPU for these weights, eagerly: no script, trace, compile, ``torch.func`` transform."""
    return (torch.is_grad_enabled() and x.device.type == "cpu" and any(w.requires_grad for w in weights)
            and not torch.jit.is_scripting() and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
            and not function_transforms_active())


def use_grouped_weight_grad(x: torch.Tensor, weights: list[torch.Tensor]) -> bool:
    """True when :class:`MixedDepthwiseConv` pays: eager CPU training in float32 / float64, no autocast,
    no ``torch.func`` transform or forward-mode AD."""
    return (x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled("cpu")
            and _eager_cpu_training(x, weights))


def low_precision_cpu_training(x: torch.Tensor, weights: list[torch.Tensor]) -> bool:
    """True for eager CPU training in bfloat16 / float16 (autocast or a half model): where
    :class:`MixedDepthwiseConv` does not apply and the fused conv's large-kernel weight gradient runs
    oneDNN's generic kernel (mixnet_s, bfloat16 autocast: 1.9x the split / concat step's time)."""
    return ((torch.is_autocast_enabled("cpu") or x.dtype in (torch.bfloat16, torch.float16))
            and _eager_cpu_training(x, weights))


def depthwise_weight_grad(x_t: torch.Tensor, grad_t: torch.Tensor, kernel_size: int, stride: int,
                          padding: int) -> torch.Tensor:
    """Weight gradient of a ``k x k`` depthwise conv (symmetric ``padding``), by a depthwise forward conv.

    Args:
        x_t: the conv input, batch second: ``(C, N, H, W)``, contiguous.
        grad_t: the output gradient, batch second: ``(C, N, Ho, Wo)``, contiguous.
        kernel_size: ``k``.
        stride: ``s``.
        padding: the conv's padding ``p``; a negative ``p`` crops ``-p`` rows / columns instead
            (a small kernel centred inside a TF-SAME-padded larger one).

    Returns:
        The ``(C, 1, k, k)`` weight gradient.
    """
    c, n, ho, wo = grad_t.shape
    k, s = kernel_size, stride
    if n == 0:  # an empty batch: a sum of no terms (and F.conv2d takes no 0 groups)
        return grad_t.new_zeros(c, 1, k, k)
    if padding < 0:  # read exactly the rows / columns the conv reads
        start = -padding
        x_t = x_t[:, :, start:start + (ho - 1) * s + k, start:start + (wo - 1) * s + k]
        padding = 0
    image = x_t.reshape(1, c * n, x_t.shape[-2], x_t.shape[-1])
    kernel = grad_t.reshape(c * n, 1, ho, wo)
    out = F.conv2d(image, kernel, None, 1, padding, s, c * n)  # (1, c*n, >= k, >= k)
    return out[..., :k, :k].reshape(c, n, k, k).sum(1).unsqueeze(1)


def _fuse(weights: tuple[torch.Tensor, ...], kernel_sizes: list[int]) -> torch.Tensor:
    """The groups' kernels centred, zero-padded to the largest, as one ``(C, 1, K, K)`` depthwise weight."""
    big = max(kernel_sizes)
    return torch.cat([F.pad(w, [(big - k) // 2] * 4) for w, k in zip(weights, kernel_sizes)], 0)


class MixedDepthwiseConv(torch.autograd.Function):
    """A MixConv as one fused ``K x K`` depthwise conv, with its weight gradient computed per group.

    ``apply(x, stride, padding, kernel_sizes, splits, *weights)``: ``weights[t]`` is group ``t``'s
    ``(c_t, 1, k_t, k_t)`` kernel, centred in the fused kernel. Forward and input gradient use the
    fused weight (one conv each). Each group's weight gradient is computed at its own ``k_t x k_t``
    size, so the zero taps of the padded kernels cost nothing: 3x3 (and 1x1) groups and inputs
    larger than ``SWAP_MAX_PIXELS`` by oneDNN's weight-gradient kernels, the others by
    :func:`depthwise_weight_grad`. The result is
    the same as autograd through the fused weight (MixConv paper, Eq. 2), up to summation order.

    Twice differentiable: a backward that records a graph (``create_graph=True``, e.g. for a
    gradient penalty) computes the gradients with ``convolution_backward`` of the fused weight,
    rebuilt from ``weights``, which autograd differentiates again.
    """

    @staticmethod
    def forward(ctx, x, stride, padding, kernel_sizes, splits, *weights):
        fused = _fuse(weights, kernel_sizes)
        ctx.save_for_backward(x, fused, *weights)
        ctx.conf = stride, padding, kernel_sizes, splits
        return F.conv2d(x, fused, None, stride, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated again
            return MixedDepthwiseConv._differentiable_backward(ctx, grad)
        x, fused = ctx.saved_tensors[:2]
        s, p, kernel_sizes, splits = ctx.conf
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _conv_backward(grad, x, fused, None, [s, s], [p, p], [1, 1], False, [0, 0], x.shape[1],
                                    [True, False, False])[0]
        big = max(kernel_sizes)
        grad_ws = []
        start = 0
        for i, (k, c) in enumerate(zip(kernel_sizes, splits)):
            p_i = p - (big - k) // 2  # the group's own padding inside the fused conv
            if not ctx.needs_input_grad[5 + i]:
                grad_ws.append(None)
            elif p_i >= 0 and (k <= 3 or x.shape[-2] * x.shape[-1] > SWAP_MAX_PIXELS):
                w = fused.new_empty(c, 1, k, k)
                grad_ws.append(_conv_backward(grad[:, start:start + c], x[:, start:start + c], w, None, [s, s],
                                              [p_i, p_i], [1, 1], False, [0, 0], c, [False, True, False])[1])
            else:
                x_t = x[:, start:start + c].transpose(0, 1).contiguous()  # batch second
                grad_t = grad[:, start:start + c].transpose(0, 1).contiguous()
                grad_ws.append(depthwise_weight_grad(x_t, grad_t, k, s, p_i))
            start += c
        return (grad_x, None, None, None, None, *grad_ws)

    @staticmethod
    def _differentiable_backward(ctx, grad):
        """The fused conv's gradients by differentiable ops: the fused weight's, cropped per group."""
        x, _, *weights = ctx.saved_tensors
        s, p, kernel_sizes, splits = ctx.conf
        fused = _fuse(weights, kernel_sizes)  # made again from the weights, so that the graph reaches them
        need_x, need_w = ctx.needs_input_grad[0], any(ctx.needs_input_grad[5:])
        grad_x, grad_w, _ = _conv_backward(grad, x, fused, None, [s, s], [p, p], [1, 1], False, [0, 0],
                                           x.shape[1], [need_x, need_w, False])
        big = max(kernel_sizes)
        grad_ws = []
        start = 0
        for i, (k, c) in enumerate(zip(kernel_sizes, splits)):
            o = (big - k) // 2
            grad_ws.append(grad_w[start:start + c, :, o:o + k, o:o + k] if ctx.needs_input_grad[5 + i] else None)
            start += c
        return (grad_x, None, None, None, None, *grad_ws)
