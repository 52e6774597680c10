"""Methods: one short file each, all driving ``longtail.engine``."""
from .base import METHODS, Batch, Feed, Method, get_method, register  # noqa: F401
from . import balance_aux, cbd, ce, experts, ldam, proco, rebalance, ssd  # noqa: F401  (registers)
