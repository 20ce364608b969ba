"""Import boundaries: the core loads no framework; adapters use only the core's public API, never each other."""

import ast
import pathlib
import subprocess
import sys

import gradclip_core

FRAMEWORKS = ["torch", "jax", "jaxlib", "tensorflow", "keras", "optax", "flax"]
ROOT = pathlib.Path(gradclip_core.__file__).resolve().parent.parent
ADAPTERS = ["gradclip_torch", "gradclip_optax", "gradclip_keras"]
# The per-framework kernel modules: imported by the core only when an array of their
# framework is first seen (gradclip_core.backend._namespace.ensure_kernels).
LAZY_KERNELS = {"backend/_torch.py", "backend/_jax.py", "backend/_tensorflow.py"}
PUBLIC_CORE = {"gradclip_core", "gradclip_core.backend"}


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import statement in a file (absolute names; relative ones as ``.x``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            if node.level == 0 and node.module in PUBLIC_CORE | {"gradclip_core.backend"}:
                out += [(node.lineno, f"{module}.{a.name}") for a in node.names if a.name.startswith("_")]
            out.append((node.lineno, module))
    return out


def test_importing_core_loads_no_framework():
    code = (
        "import sys, gradclip_core, gradclip_core.backend\n"
        "import numpy as np\n"
        "r = gradclip_core.clip_by_global_norm(1.0)\n"
        "r.update([np.ones(3, np.float32)], r.init([]))\n"
        "p = gradclip_core.global_magnitude_prune(0.5)\n"
        "p.project([np.ones(3, np.float32)], p.init([np.ones(3, np.float32)]))\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_core_sources_import_frameworks_only_in_the_lazy_kernel_modules():
    core = ROOT / "gradclip_core"
    offenders = []
    for path in core.rglob("*.py"):
        rel = path.relative_to(core).as_posix()
        if rel in LAZY_KERNELS:
            continue
        for line, module in _imports(path):
            if module.split(".")[0] in FRAMEWORKS:
                offenders.append(f"{rel}:{line}: {module}")
    assert offenders == []


def test_adapters_import_only_public_core_names_and_no_other_adapter():
    offenders = []
    for adapter in ADAPTERS:
        for path in (ROOT / "adapters" / adapter).rglob("*.py"):
            for line, module in _imports(path):
                top = module.split(".")[0]
                where = f"{adapter}/{path.name}:{line}: {module}"
                if top == "gradclip_core" and module not in PUBLIC_CORE:
                    offenders.append(where)  # a private core module, or a private name of a public one
                elif top in ADAPTERS and top != adapter:
                    offenders.append(where)
                elif top == "adapters":
                    offenders.append(where)
    assert offenders == []


def test_the_boundary_check_catches_private_imports(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from gradclip_core._rule import Rule\nfrom gradclip_core.backend import _torch\nimport gradclip_optax\n")
    found = [m for _, m in _imports(bad)]
    assert "gradclip_core._rule" in found and "gradclip_core.backend._torch" in found and "gradclip_optax" in found


def test_every_package_has_the_version_and_py_typed():
    # Read statically: importing gradclip_keras here would import Keras into the main test process.
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert gradclip_core.__version__ == version
    for folder in [ROOT / "gradclip_core"] + [ROOT / "adapters" / a for a in ADAPTERS]:
        assert (folder / "py.typed").exists(), folder
        assert f'__version__ = "{version}"' in (folder / "__init__.py").read_text(), folder


def test_every_core_subpackage_is_in_the_distribution():
    import tomllib

    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    core = ROOT / "gradclip_core"
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in core.rglob("__init__.py")}
    assert found <= declared, sorted(found - declared)
