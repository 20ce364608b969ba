"""``gradclip_torch`` imports without the trainers; ``LightningCallback`` / ``TransformersCallback`` load them on use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


def test_importing_gradclip_torch_loads_no_trainer() -> None:
    code = ("import sys, gradclip_torch\n"
            "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers', 'accelerate') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "adapters")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_unknown_attribute_raises() -> None:
    import gradclip_torch

    with pytest.raises(AttributeError, match="no attribute 'NoSuchCallback'"):
        gradclip_torch.NoSuchCallback  # noqa: B018


def test_callbacks_resolve_lazily() -> None:
    pytest.importorskip("lightning.pytorch")
    pytest.importorskip("transformers")
    import gradclip_torch
    from gradclip_torch._lightning import LightningCallback
    from gradclip_torch._transformers import TransformersCallback

    assert gradclip_torch.LightningCallback is LightningCallback
    assert gradclip_torch.TransformersCallback is TransformersCallback
