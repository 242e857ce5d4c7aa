"""Distillation methods, one paper (or family) per file; importing this package registers them all."""
from . import coresets, datadam, dm, dq, gradient_matching, ncfm, pca  # noqa: F401  (registration side effect)
from .base import METHODS, Method, hyperparameters, make_method  # noqa: F401
