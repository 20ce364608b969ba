"""Repository-wide pytest settings.

The core's TensorFlow kernel module imports TensorFlow; its doctests run in the Keras
TensorFlow process of ``bash scripts/dev.sh test`` only, never in the main process
(which imports no Keras / TensorFlow).
"""

import os

collect_ignore = []
if not (os.environ.get("GRADCLIP_KERAS_RUN") == "1" and os.environ.get("KERAS_BACKEND") == "tensorflow"):
    collect_ignore.append("gradclip_core/backend/_tensorflow.py")
