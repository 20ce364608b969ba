"""Keras tests run once per Keras backend, each in its own process.

Keras picks its backend at import (``KERAS_BACKEND``), so one pytest process can test
one backend only. ``bash scripts/dev.sh test`` runs this folder (and the Keras parity
backend) under ``KERAS_BACKEND=tensorflow``, ``jax`` and ``torch`` with
``GRADCLIP_KERAS_RUN=1``; without that variable nothing here is collected, not even
util.py's doctests (so the main pytest process never imports Keras). By hand::

    GRADCLIP_KERAS_RUN=1 KERAS_BACKEND=jax .venv/bin/python -m pytest tests/keras
"""

import os

if os.environ.get("GRADCLIP_KERAS_RUN") != "1":
    collect_ignore_glob = ["*.py"]  # util.py too: --doctest-modules would import it, and Keras with it


def pytest_sessionfinish(session, exitstatus):
    """Fail the main process if anything imported Keras into it after all."""
    import sys

    if os.environ.get("GRADCLIP_KERAS_RUN") != "1" and "keras" in sys.modules:
        print("\nERROR: Keras was imported into the main pytest process (run it in the Keras processes only)")
        session.exitstatus = 1
