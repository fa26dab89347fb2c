"""Multiply-accumulate counting at the ATen level, attributed to the module that runs each op.

Convention (SPEC.md, "Counting conventions"): MACs are the multiply-adds of convolution and
matrix-multiply (linear) ops only; bias additions, normalisation, activations, pooling and
other element-wise work count zero. With this convention one MAC is two of
``torch.utils.flop_counter.FlopCounterMode``'s FLOPs, and the totals match the papers' "mult-adds"
(MobileNetV1, Sec. 3.1; MixConv, Table 1).

Counting happens in a ``TorchDispatchMode``, so it sees every convolution and matmul however it
is called: ``nn.Conv2d``, ``F.conv2d`` with a fused weight, ``x @ w`` in a user's forward.
Matrix products that ``FlopCounterMode`` leaves at zero are counted too: matrix-vector and dot
products (``x @ v`` with a 1-D ``v`` runs ``aten.mv``) and the two matmuls inside the fused kernel
of ``F.scaled_dot_product_attention`` (``FlopCounterMode`` counts the CUDA kernels with the same
formula, but not the CPU one, ``_scaled_dot_product_flash_attention_for_cpu``), and the matmuls of
oneDNN's fused LSTM layer (``aten.mkldnn_rnn_layer``). The formulas here
are written out independently of ``FlopCounterMode``, which the tests use as the oracle.
"""
from __future__ import annotations

from collections.abc import Callable
from math import prod

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def conv_macs(args: tuple, out: torch.Tensor) -> int:
    """``aten.convolution(input, weight, bias, stride, padding, dilation, transposed, ...)``.

    A regular conv does ``(C_in / groups) * prod(kernel)`` multiply-adds per output element:
    ``out.numel() * prod(weight.shape[1:])`` (weight is ``(C_out, C_in / g, *kernel)``).
    A transposed conv scatters every *input* element through ``(C_out / g) * prod(kernel)``
    weights (weight is ``(C_in, C_out / g, *kernel)``): ``x.numel() * prod(weight.shape[1:])``.
    """
    x, weight = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    per_element = prod(weight.shape[1:])
    return (x.numel() if transposed else out.numel()) * per_element


def mm_macs(args: tuple, out: torch.Tensor) -> int:
    """``mm(a, b)``, ``bmm``, ``mv(a, v)``, ``dot``: each output element is a dot product of length ``a.shape[-1]``."""
    return out.numel() * args[0].shape[-1]


def addmm_macs(args: tuple, out: torch.Tensor) -> int:
    """``addmm(bias, a, b)`` / ``baddbmm(bias, a, b)`` / ``addmv(bias, a, v)``: the bias addition is not counted."""
    return out.numel() * args[1].shape[-1]


def addbmm_macs(args: tuple, out: torch.Tensor) -> int:
    """``addbmm(bias, a, b)``: the ``bmm(a, b)`` products are summed over the batch into ``out``."""
    return args[1].numel() * args[2].shape[-1]


def attention_macs(args: tuple, out) -> int:
    """Fused ``scaled_dot_product_attention(q, k, v)``: ``q @ k^T``, then ``scores @ v``.

    Per batch and head, ``(L x E) @ (E x S)`` and ``(L x S) @ (S x E_v)``: ``L * S * (E + E_v)``
    multiply-adds (causal masks are not discounted; ``FlopCounterMode``'s ``sdpa_flop_count``
    counts the same).
    """
    q, k, v = args[:3]
    query_rows = q.numel() // q.shape[-1]  # batch x heads x L
    return query_rows * k.shape[-2] * (q.shape[-1] + v.shape[-1])


def rnn_layer_macs(args: tuple, out) -> int:
    """oneDNN's fused RNN layer (``aten.mkldnn_rnn_layer(input, w_ih, w_hh, ...)``: one layer, one direction).

    Every time step of every sequence multiplies its input by ``w_ih`` (``gates * hidden x input``)
    and the previous hidden state by ``w_hh`` (``gates * hidden x hidden``): ``steps * (w_ih.numel() +
    w_hh.numel())``, with ``steps = input.numel() / input_size`` (packed sequences included), as
    the ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` that PyTorch runs without oneDNN counts through its matmuls.
    """
    x, w_ih, w_hh = args[:3]
    return x.numel() // x.shape[-1] * (w_ih.numel() + w_hh.numel())


MAC_FORMULAS: dict[object, Callable[[tuple, torch.Tensor], int]] = {
    aten.convolution: conv_macs,
    aten._convolution: conv_macs,
    aten.mm: mm_macs,
    aten.bmm: mm_macs,
    aten.mv: mm_macs,
    aten.dot: mm_macs,
    aten.vdot: mm_macs,
    aten.addmm: addmm_macs,
    aten.baddbmm: addmm_macs,
    aten.addmv: addmm_macs,
    aten.addbmm: addbmm_macs,
}
if hasattr(aten, "mkldnn_rnn_layer"):  # what nn.LSTM runs on a float32 CPU input
    MAC_FORMULAS[aten.mkldnn_rnn_layer] = rnn_layer_macs
# the fused kernels behind F.scaled_dot_product_attention (each takes query, key, value first); older
# torch releases lack some of them
ATTENTION_KERNELS = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu",
                     "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                     "_scaled_dot_product_fused_attention_overrideable")
MAC_FORMULAS.update({getattr(aten, name): attention_macs for name in ATTENTION_KERNELS if hasattr(aten, name)})


class MacCounter(TorchDispatchMode):
    """Count conv / matmul MACs per "owner", the name on top of :attr:`owners` when the op runs.

    The caller pushes and pops owner names (module hooks do it in :func:`summarize`); ops run
    with an empty stack are charged to ``""``. ``macs[name]`` is the running total per owner.
    """

    def __init__(self) -> None:
        super().__init__()
        self.owners: list[str] = []
        self.macs: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        formula = MAC_FORMULAS.get(func.overloadpacket)
        if formula is not None:
            owner = self.owners[-1] if self.owners else ""
            self.macs[owner] = self.macs.get(owner, 0) + formula(args, out)
        return out
