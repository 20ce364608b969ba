"""Keras tests run once per Keras backend, each in its own process.

Keras picks its backend at import (``KERAS_BACKEND``), so one pytest process can test
one backend only. ``bash scripts/dev.sh test`` runs this folder (and the Keras parity
backend) under ``KERAS_BACKEND=tensorflow``, ``jax`` and ``torch`` with
``GRADCLIP_KERAS_RUN=1``; without that variable nothing here is collected (so the main
pytest process never imports Keras). By hand::

    GRADCLIP_KERAS_RUN=1 KERAS_BACKEND=jax .venv/bin/python -m pytest tests/keras
"""

import os

if os.environ.get("GRADCLIP_KERAS_RUN") != "1":
    collect_ignore_glob = ["test_*.py"]
