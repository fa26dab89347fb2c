"""summarize() on what the zoo does not exercise: matrix products outside ``nn.Linear``, attention,
odd non-square inputs, tuple / dict outputs, half precision and the meta device.

Oracles: ``FlopCounterMode`` on the same arithmetic written with 2-D / batched matmuls (which it
counts), multiply-adds written out by hand, forward hooks for shapes, ``numel * element_size``
for bytes.
"""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

import mobileconv
from mobileconv.layers import GroupedConv2d, MixConv2d, XSepConv2d, set_layer_impl
from mobileconv.profile import summarize, summary_table
from mobileconv.profile.summary import _layer_modules

from .oracles import flop_counter_macs, new_output_bytes


class VectorPooling(nn.Module):
    """Attention pooling with a learned query vector: ``tokens @ query`` and ``query @ query``.

    With ``as_matrices`` the same products are written with 2-D operands (``aten.mm``, which
    ``FlopCounterMode`` counts); without, they run as ``aten.mv`` and ``aten.dot``.
    """

    def __init__(self, as_matrices: bool = False) -> None:
        super().__init__()
        self.proj = nn.Parameter(torch.randn(16, 8))
        self.query = nn.Parameter(torch.randn(8))
        self.as_matrices = as_matrices

    def forward(self, x):
        tokens = x.flatten(2).transpose(1, 2) @ self.proj  # (N, H*W, 8)
        if self.as_matrices:
            scores = (tokens @ self.query[:, None]).squeeze(-1)
            norm = (self.query[None] @ self.query[:, None]).squeeze()
        else:
            scores = tokens @ self.query
            norm = self.query @ self.query
        return scores / norm


def test_matrix_vector_and_dot_products_are_counted():
    n, h, w = 2, 5, 7
    s = summarize(VectorPooling(), input_size=(16, h, w), batch_size=n)
    oracle = flop_counter_macs(VectorPooling(as_matrices=True), torch.zeros(n, 16, h, w))
    assert s.macs == oracle == n * h * w * 16 * 8 + n * h * w * 8 + 8


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels, fused (``F.scaled_dot_product_attention``) or spelled out."""

    def __init__(self, dim: int, heads: int, fused: bool) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, c, h, w = x.shape
        qkv = self.qkv(x.flatten(2).transpose(1, 2)).reshape(n, h * w, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = torch.softmax(q @ k.transpose(-2, -1) / (c // self.heads) ** 0.5, -1) @ v
        return self.proj(out.transpose(1, 2).reshape(n, h * w, c))


def attention_macs(n: int, tokens: int, dim: int, hidden: int = 0) -> int:
    """Multiply-adds of one self-attention block by hand: q/k/v and output projections, scores and
    their weighted sum (``2 * L * L * dim`` over all heads), and an optional two-layer MLP."""
    return n * (tokens * dim * 3 * dim + 2 * tokens * tokens * dim + tokens * dim * dim + 2 * tokens * dim * hidden)


def test_fused_attention_counts_its_two_matmuls():
    n, c, h, w = 2, 16, 5, 7
    s = summarize(SelfAttention(c, 2, fused=True), input_size=(c, h, w), batch_size=n)
    oracle = flop_counter_macs(SelfAttention(c, 2, fused=False), torch.zeros(n, c, h, w))
    assert s.macs == oracle == attention_macs(n, h * w, c)


class Recurrent(nn.Module):
    """A recurrent layer run over a sequence of feature vectors; its output sequence."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


@pytest.mark.parametrize("make, gates", [
    (lambda: nn.LSTM(8, 16, batch_first=True), 4),
    (lambda: nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True), 4),
    (lambda: nn.GRU(8, 16, batch_first=True), 3),
    (lambda: nn.RNN(8, 16, batch_first=True), 1),
])
def test_recurrent_layers_count_their_matmuls(make, gates):
    """nn.LSTM on a float32 CPU input runs oneDNN's fused layer, which FlopCounterMode counts as 0 MACs.

    Oracle: FlopCounterMode on the same layer with oneDNN off (PyTorch's own RNN, one matmul per
    gate block), and the formula steps * gates * hidden * (input + hidden) per layer and direction.
    """
    n, steps = 3, 5
    torch.manual_seed(0)
    rnn = make()
    s = summarize(Recurrent(rnn), input_size=(steps, 8), batch_size=n)
    with torch.backends.mkldnn.flags(enabled=False):
        oracle = flop_counter_macs(Recurrent(copy.deepcopy(rnn)), torch.zeros(n, steps, 8))
    directions = 2 if rnn.bidirectional else 1
    by_hand = sum(n * steps * directions * gates * 16 * (inputs + 16)
                  for inputs in [8] + [16 * directions] * (rnn.num_layers - 1))
    assert s.macs == oracle == by_hand
    assert [layer.macs for layer in s.layers] == [by_hand]


class OnTokens(nn.Module):
    """A torch attention layer applied to the pixels of an image as tokens."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        tokens = x.flatten(2).transpose(1, 2)
        if isinstance(self.layer, nn.MultiheadAttention):
            return self.layer(tokens, tokens, tokens)[0]
        return self.layer(tokens)


@pytest.mark.parametrize("layer, hidden", [
    (nn.MultiheadAttention(16, 2, batch_first=True), 0),
    (nn.TransformerEncoderLayer(16, 2, dim_feedforward=24, dropout=0.0, batch_first=True), 24),
])
def test_torch_attention_layers_count_their_projections_and_matmuls(layer, hidden):
    # in eval mode without gradients these layers run one fused kernel that hides every product
    n, c, h, w = 2, 16, 5, 7
    s = summarize(OnTokens(layer), input_size=(c, h, w), batch_size=n)
    assert s.macs == attention_macs(n, h * w, c, hidden)
    assert torch.backends.mha.get_fastpath_enabled()  # restored after the count
    assert s.params == sum(p.numel() for p in layer.parameters())


def output_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, list]:
    """The oracle for shapes: forward hooks on summarize()'s layers, first call, on the reference formulation."""
    layers, _ = _layer_modules(model)
    shapes = {}

    def hook(name):
        def record(module, args, output):
            if name not in shapes and isinstance(output, torch.Tensor):
                shapes[name] = list(output.shape)
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in layers.items()]
    model.eval()
    set_layer_impl(model, "reference")
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return shapes


@pytest.mark.parametrize("name", mobileconv.list_models())
def test_registered_models_at_an_odd_non_square_size_match_a_separate_pass(name):
    size = (3, 97, 65)
    model = mobileconv.create_model(name)
    s = summarize(model, input_size=size)
    x = torch.zeros(1, *size)
    assert s.macs == flop_counter_macs(copy.deepcopy(model), x)
    assert s.params == sum(p.numel() for p in model.parameters())
    rows = {r.name: r.output_shape for r in s.layers if r.output_shape is not None}
    assert rows == output_shapes(copy.deepcopy(model), x)


class TwoHeads(nn.Module):
    """Returns a tuple holding a tensor and a dict, as detection / feature models do."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2)
        self.box = nn.Conv2d(8, 4, 1)
        self.cls = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        return self.box(x), {"logits": self.cls(x.mean((2, 3)))}


def test_tuple_and_dict_outputs():
    n, h, w = 3, 21, 34
    model = TwoHeads()
    s = summarize(model, input_size=(3, h, w), batch_size=n)
    x = torch.zeros(n, 3, h, w)
    oh, ow = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    assert s.macs == flop_counter_macs(model, x) == n * oh * ow * (8 * 27 + 4 * 8) + n * 8 * 5
    assert {r.name: r.output_shape for r in s.layers} == output_shapes(model, x)
    assert s.activation_bytes == 4 * n * (8 * oh * ow + 4 * oh * ow + 5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_bytes_are_two_per_value(dtype):
    h, w = 15, 22
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10)).to(dtype)
    s = summarize(model, input_size=(3, h, w), batch_size=2)
    assert s.dtype == str(dtype).removeprefix("torch.")
    # conv, BN and ReLU each make a new 2x8xHxW tensor; the pool 2x8x1x1; Flatten is a view
    assert [r.activation_bytes for r in s.layers] == [2 * 2 * 8 * h * w] * 3 + [2 * 2 * 8, 0, 2 * 2 * 10]
    assert s.activation_bytes == new_output_bytes(model, torch.zeros(2, 3, h, w, dtype=dtype))


def test_bfloat16_zoo_model_memory_matches_measured_layer_outputs():
    model = mobileconv.create_model("mixnet_s").to(torch.bfloat16)
    s = summarize(model, input_size=(3, 64, 64))
    x = torch.zeros(1, 3, 64, 64, dtype=torch.bfloat16)
    assert s.activation_bytes == new_output_bytes(model, x, layer_types=(MixConv2d, GroupedConv2d, XSepConv2d))


def test_meta_device_counts_memory_like_the_real_model():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    s = summarize(copy.deepcopy(model).to("meta"), input_size=(3, 16, 16))
    x = torch.zeros(1, 3, 16, 16)
    assert s.macs == flop_counter_macs(model, x)
    assert s.activation_bytes == new_output_bytes(model, x) == 4 * (3 * 8 * 8 * 8 + 8 + 10)


class Twice(nn.Module):
    """A layer returning one new tensor twice."""

    def forward(self, x):
        y = x + 1
        return y, {"again": y}


def test_a_tensor_returned_twice_is_counted_once():
    s = summarize(Twice(), input_size=(3, 4, 5))
    assert s.activation_bytes == 3 * 4 * 5 * 4
    assert s.layers[0].output_shape == [[1, 3, 4, 5], [1, 3, 4, 5]]


class Logs(nn.Module):
    """Returns nothing: a layer called for its side effects."""

    def forward(self, x):
        return None


class WithLoggerAndSpare(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.log = Logs()
        self.conv = nn.Conv2d(3, 4, 1)
        self.spare = nn.Linear(4, 4)  # never called

    def forward(self, x):
        self.log(x)
        return self.conv(x)


def test_table_tells_a_layer_without_tensor_output_from_one_never_called():
    console = Console(file=io.StringIO(), width=200)
    console.print(summary_table(summarize(WithLoggerAndSpare(), input_size=(3, 4, 4))))
    lines = {line.split()[1]: line for line in console.file.getvalue().splitlines() if line.startswith("│ ")}
    assert "not called" not in lines["log"] and " - " in lines["log"]
    assert "- (not called)" in lines["spare"]
