"""The core never imports a framework."""

import subprocess
import sys

FRAMEWORKS = ["torch", "jax", "jaxlib", "tensorflow", "keras", "optax", "flax"]


def test_importing_core_loads_no_framework():
    code = (
        "import sys, gradclip_core, gradclip_core.demo\n"
        "import numpy as np\n"
        "r = gradclip_core.clip_by_global_norm(1.0)\n"
        "r.update([np.ones(3, np.float32)], r.init([]))\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_core_sources_do_not_name_frameworks_in_imports():
    import pathlib

    import gradclip_core

    root = pathlib.Path(gradclip_core.__file__).parent
    offenders = []
    for path in root.glob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")) and any(f" {f}" in stripped or f"{f}." in stripped for f in FRAMEWORKS):
                offenders.append(f"{path.name}: {stripped}")
    assert offenders == []
