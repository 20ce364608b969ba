"""gradclip's main job: one training recipe, three frameworks, the same numbers.

Trains the same small MLP (64-64-10) on scikit-learn's digits, from the same initial
weights and on the same batches, in PyTorch, optax and Keras 3, with one gradclip recipe
(global-norm clip + gradual global magnitude pruning to 80% + a max-norm constraint),
each through its adapter's real integration path; then prints per-step loss, gradient
norm, sparsity and test accuracy per framework with the largest cross-framework
difference, and writes a PNG of the curves.

Run it with ``bash scripts/dev.sh demo`` (or ``python -m gradclip_demo --help``).
This package lives outside ``gradclip_core`` because it imports the frameworks.
"""

from ._config import Config
from ._history import History

__all__ = ["Config", "History"]
