"""Distillation methods, one paper (or family) per file; importing this package registers them all."""
from . import coresets, datadam, datm, dm, dq, ftd, gradient_matching, mtt, ncfm, pca, set_, tesla  # noqa: F401  (registration side effect)
from . import cda, cvdd, dwa, infer, rded, sre2l  # noqa: F401  the decoupled family (recover.py, teachers.py)
from . import krr_st  # noqa: F401  self-supervised distillation for transfer (ssl.py, transfer.py)
from .base import METHODS, Method, hyperparameters, make_method  # noqa: F401
