"""The model zoo: registry, architecture tables (one file per family) and the builder.

Importing this package registers every family; ``create_model`` / ``list_models`` are the entry points.
"""
from . import mixnet, mobilenetv1, mobilenetv2, mobilenetv3, xsep  # noqa: F401  (registers the families)
from ._builder import ArchSpec, BlockSpec, FeatureListNet, HeadSpec, MobileNet, SESpec
from ._registry import create_model, get_model_fn, list_models, register_model
from .convert_ops import mixify, xsepify

__all__ = ["ArchSpec", "BlockSpec", "FeatureListNet", "HeadSpec", "MobileNet", "SESpec", "create_model",
           "get_model_fn", "list_models", "mixify", "register_model", "xsepify"]
