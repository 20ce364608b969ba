"""Weight rules, applied after the optimizer step (``project``): proximal steps and constraints.

Soft and firm (MCP) thresholding, weight clipping and non-negativity, and Keras' norm
constraints (max-norm, min-max-norm, unit-norm) over explicit unit axes. The public
names are re-exported by :mod:`gradclip_core`.
"""

from ._norm import max_norm, min_max_norm, unit_norm
from ._proximal import group_lasso, mcp_threshold, soft_threshold
from ._value import clip_weights, non_neg

__all__ = ["soft_threshold", "mcp_threshold", "group_lasso", "clip_weights", "non_neg", "max_norm", "min_max_norm", "unit_norm"]
