"""Audit of the per-layer summary and the summary / models / convert / bench CLIs against what users of
timm, torchinfo and fvcore meet: parametrized and scripted layers, wrapped models, keyword inputs, and
argument checks that come before the work. Oracles: FlopCounterMode, parameter sums, hand formulas."""
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize
from torch.utils.flop_counter import FlopCounterMode

from mobileconv.cli import main
from mobileconv.profile import summarize


def flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def run(capsys, *argv):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse refused an option
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def conv_relu() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())


def test_parametrized_layers_are_the_layer_they_parametrize():
    """weight_norm / orthogonal (torch.nn.utils.parametrizations): the conv's row kept its output and memory.

    The parametrized conv was a container: its row had no output shape and no activation memory, and the
    parametrization's output (the computed weight) was counted as an activation instead.
    """
    torch.manual_seed(0)
    model = nn.Sequential(parametrizations.weight_norm(nn.Conv2d(3, 8, 3)), nn.ReLU(),
                          nn.Flatten(), parametrizations.orthogonal(nn.Linear(8 * 6 * 6, 16)))
    s = summarize(model, (3, 8, 8))
    rows = {r.name: r for r in s.layers}
    assert list(rows) == ["0", "1", "2", "3"]  # no parametrizations.* rows
    conv, linear = rows["0"], rows["3"]
    assert conv.type.startswith("ParametrizedConv2d 3x3 3->8") and conv.output_shape == [1, 8, 6, 6]
    assert conv.params == sum(p.numel() for p in model[0].parameters())  # weight_g, weight_v, bias
    assert conv.activation_bytes == 8 * 6 * 6 * 4
    assert conv.macs == 8 * 3 * 9 * 6 * 6
    # the orthogonal map computes the weight with matmuls: part of the layer's cost, as the oracle sees it
    assert s.macs == flop_counter_macs(model, torch.zeros(1, 3, 8, 8))
    assert linear.macs == s.macs - conv.macs >= 16 * 288
    assert s.activation_bytes == (2 * 8 * 6 * 6 + 16) * 4  # conv, ReLU (new tensor), Linear; Flatten is a view
    assert s.params == sum(r.params for r in s.layers) == sum(p.numel() for p in model.parameters())


def test_parametrized_parameter_of_a_container_is_in_its_own_row():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1, bias=False)
            self.scale = nn.Parameter(torch.ones(4, 4))

        def forward(self, x):
            return self.conv(x) @ self.scale

    class Symmetric(nn.Module):
        def forward(self, w):
            return w.triu() + w.triu(1).transpose(-1, -2)

    model = Scaled()
    parametrize.register_parametrization(model, "scale", Symmetric())
    rows = {r.name: r for r in summarize(model, (4, 4, 4)).layers}
    assert set(rows) == {"", "conv"}
    assert rows[""].params == 16 and rows[""].macs == 4 * 4 * 4 * 4 and rows[""].type == "ParametrizedScaled (own ops)"


def test_in_place_layer_called_with_a_keyword_input_adds_no_memory():
    class KeywordCall(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.act(input=self.conv(x))

    s = summarize(KeywordCall(), (3, 8, 8))
    rows = {r.name: r for r in s.layers}
    assert rows["act"].activation_bytes == 0 and rows["act"].output_shape == [1, 8, 6, 6]
    assert s.activation_bytes == 8 * 6 * 6 * 4


def test_compiled_and_data_parallel_models_keep_their_layer_names():
    """DataParallel would run replicas in threads that neither the hooks nor the MAC counter (thread-local) see."""
    torch.manual_seed(0)
    model = conv_relu()
    expected = summarize(model, (3, 8, 8))
    for wrapped in (torch.compile(model), nn.DataParallel(model), nn.DataParallel(torch.compile(model))):
        assert summarize(wrapped, (3, 8, 8)) == expected

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = torch.compile(conv_relu())

        def forward(self, x):
            return self.block(x)

    outer = Outer()
    rows = summarize(outer, (3, 8, 8)).layers
    assert [r.name for r in rows] == ["block.0", "block.1"]
    assert sum(r.macs for r in rows) == flop_counter_macs(outer.block._orig_mod, torch.zeros(1, 3, 8, 8))


def test_torchscript_model_is_one_layer():
    model = conv_relu()
    s = summarize(torch.jit.script(model), (3, 8, 8))  # was: "cannot run on an input of size ...": hooks refused
    assert [(r.name, r.output_shape, r.calls) for r in s.layers] == [("", [1, 8, 6, 6], 1)]
    assert s.macs == flop_counter_macs(model, torch.zeros(1, 3, 8, 8)) == 8 * 3 * 9 * 6 * 6
    assert s.params == sum(p.numel() for p in model.parameters())

    class WithScripted(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 3, 1)
            self.body = torch.jit.script(conv_relu())

        def forward(self, x):
            return self.body(self.stem(x))

    rows = {r.name: r for r in summarize(WithScripted(), (3, 8, 8)).layers}
    assert "TorchScript" in rows["body"].type and rows["body"].params == 224
    assert rows[""].macs == 8 * 3 * 9 * 6 * 6  # the scripted block's work, in its caller's row


def test_plot_path_that_is_a_directory_is_refused_before_profiling(capsys, monkeypatch, tmp_path):
    import mobileconv.profile as profile

    def must_not_profile(*args, **kwargs):
        raise AssertionError("profiled before checking the plot path")

    monkeypatch.setattr(profile, "profile_models", must_not_profile)
    (tmp_path / "zoo.png").mkdir()
    rc, out, err = run(capsys, "models", "--plot", tmp_path / "zoo.png")
    assert rc == 2 and out == ""
    assert err == f"mobileconv models: error: cannot write the plot '{tmp_path / 'zoo.png'}': it is a directory " \
                  f"(give a file name inside it)\n"


def test_convert_names_an_unknown_model_before_reading_the_checkpoint(capsys, tmp_path):
    src = tmp_path / "headless.pth"
    torch.save({"conv_stem.weight": torch.zeros(8, 3, 3, 3)}, src)
    rc, _, err = run(capsys, "convert", src, tmp_path / "out.safetensors", "--model", "mixnet_ss")
    assert rc == 2
    assert err.splitlines()[-1] == ("mobileconv convert: error: argument --model: expected a registered model name, "
                                    "got 'mixnet_ss'; did you mean mixnet_s, mixnet_m, mixnet_l?")


def test_convert_refuses_a_dst_that_torch_load_users_would_read(capsys, tmp_path):
    src = tmp_path / "headless.pth"
    torch.save({"conv_stem.weight": torch.zeros(8, 3, 3, 3)}, src)
    for name in ("out.pth", "model_best.pth.tar", "w.PT"):
        dst = tmp_path / name
        rc, _, err = run(capsys, "convert", src, dst, "--model", "mobilenetv1_025")
        assert rc == 2 and not dst.exists()
        assert err == (f"mobileconv convert: error: DST '{dst}' ends in {dst.suffix.lower()}, a torch.load name, but "
                       f"convert writes safetensors; name it '{dst.with_suffix('.safetensors')}'\n")


def test_bench_checks_the_image_size_of_every_model_before_timing_any(capsys, monkeypatch):
    import mobileconv.engine.bench as bench

    def must_not_time(*args, **kwargs):
        raise AssertionError("benchmarked before checking --image-size")

    monkeypatch.setattr(bench, "benchmark_model", must_not_time)
    rc, out, err = run(capsys, "bench", "mobilenetv3_small_100_cifar", "mobilenetv3_small_100", "--image-size", "16")
    assert rc == 2 and out == ""
    assert err == ("mobileconv bench: error: --image-size 16 is too small for mobilenetv3_small_100: it needs at "
                   "least 32 pixels\n")
