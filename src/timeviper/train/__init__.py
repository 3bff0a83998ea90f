"""Training: config, optimizer and schedule, distributed setup, checkpoints, metrics and the loop."""

from timeviper.train.checkpoint import latest_checkpoint, load_checkpoint, load_model_weights, save_checkpoint
from timeviper.train.config import Config, config_from_dict, load_config
from timeviper.train.distributed import DistEnv, close_distributed, init_distributed, parallelize
from timeviper.train.trainer import Trainer

__all__ = [
    "Config",
    "DistEnv",
    "Trainer",
    "close_distributed",
    "config_from_dict",
    "init_distributed",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "load_model_weights",
    "parallelize",
    "save_checkpoint",
]
