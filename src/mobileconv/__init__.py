"""mobileconv: efficient convolution operators and mobile CNN families for PyTorch."""
__version__ = "0.1.0"

from . import layers  # noqa: F401
from .models import create_model, list_models, mixify, register_model, xsepify  # noqa: F401
from .deploy.optimize import optimize_for_inference  # noqa: F401
