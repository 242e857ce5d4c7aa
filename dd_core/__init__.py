"""Distillery's engine: datasets, networks, distillation methods, evaluation. Never imports gradio."""
from .data import DATASETS, Dataset, DatasetUnavailable, load_dataset  # noqa: F401
from .distill import Snapshot, distill, run_to_end  # noqa: F401
from .evaluate import EvalConfig, EvalResult, evaluate, protocol  # noqa: F401
from .methods import METHODS, make_method  # noqa: F401
from .synthetic import SyntheticFileError, SyntheticSet, init_synthetic  # noqa: F401

__version__ = "0.1.0"
