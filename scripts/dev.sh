#!/usr/bin/env bash
# gradclip developer entry point: sets up .venv/ (once, or again when the
# dependency files change) and runs the main job or the test suite.
#
#   bash scripts/dev.sh demo [args]     set up, then run the main job
#   bash scripts/dev.sh test [args]     set up, then run the whole test suite
#                                       (extra args go to pytest, e.g. -m slow)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PY=${GRADCLIP_PYTHON:-$(command -v python3.11 || command -v python3)}

pip_install() {
    # The machine's pip config lists optional local indexes; hide their noise.
    "$VENV/bin/pip" install -q --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}

setup() {
    local stamp
    # Re-install only when what pip sees changes (not pytest settings).
    stamp=$( { sed '/^\[tool.pytest/,$d' pyproject.toml; cat constraints.txt; } | sha256sum | cut -c1-16)
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.gradclip-stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    echo "setting up $VENV (torch, jax/optax, keras/tensorflow-cpu; about 3 GB, 1-2 minutes)..." >&2
    "$PY" -m venv "$VENV"
    # constraints.txt pins torch to the CPU build (an unpinned torch pulls CUDA).
    pip_install -c constraints.txt -e ".[all,dev]"
    echo "$stamp" > "$VENV/.gradclip-stamp"
}

run_tests() {
    export PYTHONDONTWRITEBYTECODE=1
    "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
}

cmd=${1:-}
shift || true
case "$cmd" in
    demo) setup; exec "$VENV/bin/python" -m gradclip_core.demo "$@" ;;
    test) setup; run_tests "$@" ;;
    setup) setup ;;
    *) echo "usage: bash scripts/dev.sh demo|test|setup [args]" >&2; exit 2 ;;
esac
