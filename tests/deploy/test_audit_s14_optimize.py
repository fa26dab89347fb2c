"""optimize_for_inference audit (s14): micro-batched stages that pass on something other than a batch tensor or
whose ``blocks`` has a hook, squeeze-excites applied to tensors the model holds, 5-d weights, and images smaller
than a oneDNN conv's kernel.

Oracle: the eval-mode model itself (plain PyTorch modules and ops), never anything the optimiser computed.
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mobileconv
from mobileconv.deploy.onednn import onednn_available
from mobileconv.deploy.optimize import InplaceSqueezeExcite, optimize_for_inference
from mobileconv.layers import SqueezeExcite

from .test_optimize import assert_close_to_scale, randomize


# --- a stage of `blocks` that returns a tuple (the next stage unpacks it) --------------------------------------

class TupleStage(nn.Module):
    """Returns its activation and its input: legal in an ``nn.Sequential`` whose next stage takes the pair."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x))), x


class PairStage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(32, 8, 3, stride=4, padding=1)

    def forward(self, pair):
        y, x = pair
        return self.conv(y) + F.avg_pool2d(x, 4).mean(1, keepdim=True)


class TupleBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(TupleStage(), PairStage())

    def forward(self, x):
        return self.blocks(x).mean((2, 3))


def test_stages_that_pass_on_a_tuple_keep_whole_batches():
    """Stage 0's 32 x 128 x 128 activation (2 MiB per image) made the stages run in chunks of 8 images, and the
    chunks' tuples went to torch.cat: a TypeError on any batch larger than a chunk (verify's batch of 2 is not)."""
    torch.manual_seed(0)
    model = TupleBlocks().eval()
    fast = optimize_for_inference(model, example_input=torch.randn(2, 3, 128, 128))
    x = torch.randn(9, 3, 128, 128)  # one chunk of 8 and a last, smaller one
    with torch.no_grad():
        assert_close_to_scale(fast(x.clone()), model(x.clone()))


# --- a squeeze-excite on a tensor the model holds -------------------------------------------------------------

class SEOnHeldTensor(nn.Module):
    """The squeeze-excite scales a learned map (a parameter) or a fixed one (a buffer, a tensor attribute)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.conv, self.se = nn.Conv2d(3, 8, 3, padding=1), SqueezeExcite(8, 4)
        prior = torch.randn(1, 8, 4, 4)
        if kind == "parameter":
            self.prior = nn.Parameter(prior)
        elif kind == "buffer":
            self.register_buffer("prior", prior)
        else:
            self.prior = prior

    def forward(self, x):
        return self.conv(x) + self.se(self.prior)


def test_a_squeeze_excite_never_scales_a_tensor_the_model_holds():
    """Nothing read the map after the SE within one pass, so it was scaled in place: every call scaled the
    parameter again (verify raised "changed the output"; with verify=False the outputs drifted)."""
    for kind in ("parameter", "buffer", "attribute"):
        torch.manual_seed(0)
        model = SEOnHeldTensor(kind).eval()
        fast = optimize_for_inference(model, example_input=torch.randn(2, 3, 4, 4))
        assert not isinstance(fast.se, InplaceSqueezeExcite), kind
        x = torch.randn(3, 3, 4, 4)
        with torch.no_grad():
            expected = model(x.clone())
            for _ in range(2):
                assert_close_to_scale(fast(x.clone()), expected)


# --- an image smaller than a conv's kernel -----------------------------------------------------------------------

@pytest.mark.skipif(not onednn_available(), reason="PyTorch built without oneDNN")
@pytest.mark.parametrize("shape", [(2, 3, 1, 9), (2, 3, 0, 5)])
def test_an_image_smaller_than_the_kernel_says_so(shape):
    """The eval model's conv names the sizes ("Kernel size can't be greater than actual input size"); the oneDNN
    call said only "could not construct a memory descriptor using a format tag"."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
    fast = optimize_for_inference(model)
    with pytest.raises(RuntimeError, match="Kernel size can't be greater than actual input size"):
        with torch.no_grad():
            model(torch.randn(*shape))
    message = f"expected input of shape (N, 3, H, W) with H >= 3 and W >= 3 (3 x 3 kernel), got {shape}"
    with pytest.raises(ValueError, match=re.escape(message)):
        with torch.no_grad():
            fast(torch.randn(*shape))


# --- a model with 5-d weights (a Conv3d over frames made from the image) --------------------------------------------

class FramesThenConv(nn.Module):
    """A Conv3d over two views of the image, then a conv -> BN -> ReLU: the Conv3d's weight is 5-d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv3d = nn.Conv3d(3, 4, (2, 3, 3), padding=(0, 1, 1))
        self.conv, self.bn = nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        frames = torch.stack([x, x.flip(-1)], 2)  # (N, 3, 2, H, W)
        return F.relu(self.bn(self.conv(self.conv3d(frames).squeeze(2))))


def test_a_model_with_5d_weights_gets_channels_last_where_it_applies():
    """``model.to(memory_format=torch.channels_last)`` raised "required rank 4 tensor to use channels_last format"
    for the Conv3d's weight: 4-d weights become channels_last, the others stay as they are."""
    torch.manual_seed(0)
    model = FramesThenConv().eval()
    fast = optimize_for_inference(model)
    assert fast.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.conv3d.weight.is_contiguous()
    x = torch.randn(3, 3, 17, 23)
    with torch.no_grad():
        assert_close_to_scale(fast(x.clone()), model(x.clone()))


# --- a hook on a MobileNet's `blocks` (a feature extractor's) -------------------------------------------------------

def test_a_hook_on_the_blocks_of_a_micro_batched_mobilenet_still_runs():
    """MicroBatchedMobileNet ran the stem and the stages of ``blocks`` one by one on each chunk, never calling
    ``blocks`` itself: a hook on it (the last feature map) silently did not run for batches larger than a chunk."""
    torch.manual_seed(0)
    model = randomize(mobileconv.create_model("mobilenetv1_025", num_classes=10))
    kept: list[torch.Tensor] = []
    model.blocks.register_forward_hook(lambda module, args, output: kept.append(output))
    fast = optimize_for_inference(model)
    x = torch.randn(11, 3, 320, 320)  # the stem and stages 0-1 in chunks of 10, then a chunk of 1
    kept.clear()  # (what the passes of optimize_for_inference kept)
    with torch.no_grad():
        expected = model(x.clone())
        want = kept.pop()
        got = fast(x.clone())
    assert_close_to_scale(got, expected)
    assert len(kept) == 1
    assert_close_to_scale(kept.pop(), want)
