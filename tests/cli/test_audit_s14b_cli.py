"""CLI audit: image sizes beyond the memory in eval / predict / train, a --plot through a broken symbolic link,
summary of an enormous width multiplier, predict's --help, and models --plot with nothing to plot.

The too-large sizes are far beyond any machine (100000 x 100000 px: 120 GB per float32 image; width multiplier
1000: 3.4 TB of weights), so the up-front check refuses them without allocating anything. Where the code before
the fix would have started the big work (PIL resizing, allocating the layers), that work is replaced by a
failing stub, so a regression fails the test instead of running out of memory.
"""
import pytest
import torch

import mobileconv
from mobileconv.cli import main
from mobileconv.engine import inference, trainer
from mobileconv.profile.report import check_plot_path

from ..engine.test_eval_predict_errors import ckpt, image  # noqa: F401 (fixtures: a trainer checkpoint, a PNG)

MODEL = "mobilenetv3_small_100_cifar"
HUGE = "100000"
def run(capsys, *argv):
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, command, start):
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"mobileconv {command}: error: {start}"), err


def no_call(what):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} although the size cannot fit in memory")
    return fail


# ---- 1. --img-size beyond the memory ----------------------------------------------------------------

def test_eval_img_size_beyond_the_memory_is_refused_before_any_data(ckpt, capsys, monkeypatch):
    # before: the synthetic set's 100000 px images failed to allocate, a RuntimeError traceback (exit 1)
    monkeypatch.setattr(inference, "build_test_dataset", no_call("built the dataset"))
    code, out, err = run(capsys, "eval", "--checkpoint", ckpt, "--img-size", HUGE, "--batch-size", "4",
                         "--device", "cpu")
    one_line_error(code, err, "eval", f"not enough memory for batches of 4 images of {HUGE}x{HUGE} px (")
    assert "can't allocate memory" in err and err.endswith("; use a smaller --batch-size or --img-size\n")
    assert out == ""


def test_eval_memory_error_during_the_evaluation_is_one_line(ckpt, capsys, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes")

    monkeypatch.setattr(inference, "evaluate", out_of_memory)
    code, _, err = run(capsys, "eval", "--checkpoint", ckpt, "--max-val-samples", "1", "--img-size", "32",
                       "--device", "cpu")
    one_line_error(code, err, "eval", "not enough memory for an image of 32x32 px (DefaultCPUAllocator: can't "
                                      "allocate memory")


def test_predict_img_size_beyond_the_memory_is_refused_before_reading_an_image(ckpt, image, capsys, monkeypatch):
    # before: PIL resized the image to 100000 x 100000 px until the OOM killer ended the process
    monkeypatch.setattr(inference, "load_image", no_call("read an image"))
    code, out, err = run(capsys, "predict", image, "--checkpoint", ckpt, "--img-size", HUGE, "--device", "cpu")
    one_line_error(code, err, "predict", f"not enough memory for an image of {HUGE}x{HUGE} px (")
    assert err.endswith("; use a smaller --img-size\n") and out == ""


def test_predict_still_works_at_a_normal_size(ckpt, image, capsys):
    code, out, err = run(capsys, "predict", image, "--checkpoint", ckpt, "--img-size", "32", "--device", "cpu")
    assert code == 0, err
    assert out.startswith(f"{image}: class_")


def test_train_img_size_beyond_the_memory_is_refused_before_any_data(capsys, monkeypatch, tmp_path):
    # before: the synthetic set's 100000 px images failed to allocate, a RuntimeError traceback (exit 1)
    monkeypatch.setattr(trainer, "build_datasets", no_call("built the dataset"))
    out_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", "--model", MODEL, "--data", "synthetic", "--img-size", HUGE,
                       "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--out", out_dir, "--quiet")
    one_line_error(code, err, "train", f"not enough memory for batches of 8 images of {HUGE}x{HUGE} px (")
    assert not out_dir.exists()


def test_memory_errors_become_value_errors_and_other_errors_pass():
    with pytest.raises(ValueError, match=r"^not enough memory for X \(MemoryError\); Y$"):
        with trainer.memory_errors_as_value_errors("X", "Y"):
            raise MemoryError
    with pytest.raises(RuntimeError, match="^shapes differ$"):
        with trainer.memory_errors_as_value_errors("X", "Y"):
            raise RuntimeError("shapes differ")
    trainer.check_images_fit(2, 32, "cpu")  # a size that fits: nothing to say


# ---- 2. --plot through a symbolic link ---------------------------------------------------------------

def test_plot_link_into_a_missing_folder_is_refused_up_front(capsys, monkeypatch, tmp_path):
    import mobileconv.profile as profile

    monkeypatch.setattr(profile, "profile_models", no_call("profiled"))
    link = tmp_path / "zoo.png"
    link.symlink_to(tmp_path / "missing" / "zoo.png")
    code, out, err = run(capsys, "models", "--filter", MODEL, "--plot", link)
    assert err == (f"mobileconv models: error: cannot write the plot {str(link)!r}: it is a symbolic link to a "
                   f"missing path ({str(tmp_path / 'missing' / 'zoo.png')!r}, whose folder does not exist)\n")
    assert code == 2 and out == ""


def test_eval_plot_link_into_a_missing_folder_is_refused_before_evaluating(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(inference, "evaluate_checkpoint", no_call("evaluated"))
    link = tmp_path / "confusion.png"
    link.symlink_to(tmp_path / "missing" / "confusion.png")
    code, _, err = run(capsys, "eval", "--checkpoint", tmp_path / "none.safetensors", "--plot", link)
    one_line_error(code, err, "eval", f"cannot write the plot {str(link)!r}: it is a symbolic link to a missing path")


def test_plot_links_that_work_pass_and_a_loop_is_refused(tmp_path):
    to_new_file = tmp_path / "a.png"
    to_new_file.symlink_to(tmp_path / "new.png")  # missing, in an existing folder: written there, as before
    assert check_plot_path(to_new_file) == to_new_file
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(ValueError, match=r"it is a symbolic link that cannot be followed \("):
        check_plot_path(loop)


# ---- 3. summary --width-mult beyond the memory -------------------------------------------------------

def test_summary_width_mult_beyond_the_memory_is_refused_before_building(capsys, monkeypatch):
    # before: the layers (3.4 TB in all) were allocated and initialised one by one, for minutes
    create = mobileconv.create_model

    def on_meta_only(*args, **kwargs):
        if torch.get_default_device().type != "meta":
            raise AssertionError("allocated the model's weights although they cannot fit in memory")
        return create(*args, **kwargs)

    monkeypatch.setattr(mobileconv, "create_model", on_meta_only)
    code, out, err = run(capsys, "summary", MODEL, "--width-mult", "1000")
    one_line_error(code, err, "summary", f"cannot build {MODEL} with width multiplier 1000: its weights take "
                                         f"3.39 TB, more than the memory can hold (")
    assert err.endswith("; use a smaller width multiplier\n") and out == ""


# ---- 4. predict --help --------------------------------------------------------------------------------

def test_predict_help_has_a_description(capsys):
    code, out, _ = run(capsys, "predict", "--help")
    assert code == 0
    assert "The top-k classes (name and probability) of each image file under a checkpoint." in " ".join(out.split())


# ---- 5. models --plot with nothing to plot ------------------------------------------------------------

def test_models_plot_without_any_published_top1_is_refused_before_profiling(capsys, monkeypatch, tmp_path):
    import mobileconv.profile as profile

    monkeypatch.setattr(profile, "profile_models", no_call("profiled"))
    code, out, err = run(capsys, "models", "--filter", "xsep*", "--plot", tmp_path / "zoo.png")
    assert err == ("mobileconv models: error: none of the models matching 'xsep*' has a published top-1, nothing "
                   "to plot; leave out --plot for their table\n")
    assert code == 2 and out == "" and not (tmp_path / "zoo.png").exists()
