"""Independent measurements that the profile tests compare summarize() against."""
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mobileconv.layers import set_layer_impl


def flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    """The oracle: FlopCounterMode's FLOPs / 2 on the reference formulation, in eval mode."""
    model.eval()
    set_layer_impl(model, "reference")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def new_output_bytes(model: nn.Module, x: torch.Tensor, layer_types: tuple = ()) -> int:
    """Measured: bytes of the distinct tensors that the leaf modules (or ``layer_types``) output.

    Every output is kept alive so that storage addresses cannot be reused; an output whose
    storage was already seen (the model input, an earlier output: in-place ops, pass-throughs,
    views) is not new memory.
    """
    seen = {x.untyped_storage().data_ptr()}
    kept, total = [], 0

    def hook(module, args, output):
        nonlocal total
        kept.append(output)
        if output.untyped_storage().data_ptr() not in seen:
            seen.add(output.untyped_storage().data_ptr())
            total += output.numel() * output.element_size()

    inside = {id(sub) for m in model.modules() if isinstance(m, layer_types) for sub in m.modules() if sub is not m}
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if (isinstance(m, layer_types) or not list(m.children())) and id(m) not in inside]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total
