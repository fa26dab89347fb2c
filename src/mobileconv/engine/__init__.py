"""Training and evaluation: loops, checkpoints, distributed data parallel, optimizers, EMA, configuration."""
from .checkpoint import atomic_write, load_state, load_weights, save_state, save_weights  # noqa: F401
from .config import TrainConfig  # noqa: F401
from .distributed import exit_process  # noqa: F401
from .ema import ModelEma  # noqa: F401
from .loop import NonFiniteLossError, evaluate, train_one_epoch  # noqa: F401
from .optim import create_optimizer, create_scheduler, param_groups_weight_decay  # noqa: F401
from .trainer import fit  # noqa: F401
