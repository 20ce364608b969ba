#!/usr/bin/env bash
# gradclip developer entry point: sets up .venv/ (once, or again when the
# dependency files change) and runs the main job or the test suite.
#
#   bash scripts/dev.sh demo [args]     set up, then run the main job (python -m gradclip_demo:
#                                       --framework, --steps, --out, ...; --help lists them)
#   bash scripts/dev.sh test [args]     set up, then run the whole test suite
#                                       (extra args go to pytest, e.g. -m slow;
#                                       GRADCLIP_SERIAL=1: one process at a time)
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

# Keras reads KERAS_BACKEND once, at import: its tests (tests/keras, the keras_* parity
# backend, gradclip_keras' doctests) run in one process per backend, enabled by
# GRADCLIP_KERAS_RUN=1; the main process never collects them.
KERAS_BACKENDS=(tensorflow jax torch)
KERAS_PATHS=(tests/keras tests/parity adapters/gradclip_keras gradclip_core/backend/_tensorflow.py)
KERAS_FILTER="keras_ or gradclip_keras or _tensorflow"  # keras test files, keras_<backend> parity ids, doctests

run_tests() {
    export PYTHONDONTWRITEBYTECODE=1
    local arg opts=() main_opts=() main_paths=() keras_paths=() given=0 rc=0 status
    local filter=$KERAS_FILTER next_k=0
    for arg in "$@"; do
        if [ "$next_k" = 1 ]; then filter="($KERAS_FILTER) and ($arg)"; next_k=0; main_opts+=("$arg"); continue; fi
        if [ "$arg" = -k ]; then next_k=1; main_opts+=("$arg"); continue; fi
        if [[ $arg != -* && -e ${arg%%::*} ]]; then
            given=1
            case "${arg%/}" in
                tests | . ) main_paths+=("$arg"); keras_paths+=("${KERAS_PATHS[@]}") ;;
                tests/keras* | adapters/gradclip_keras* ) keras_paths+=("$arg") ;;
                tests/parity* ) main_paths+=("$arg"); keras_paths+=("$arg") ;;
                * ) main_paths+=("$arg") ;;
            esac
        else
            opts+=("$arg"); main_opts+=("$arg")
        fi
    done
    if [ "$given" = 0 ]; then keras_paths=("${KERAS_PATHS[@]}"); fi
    # Main process: everything but Keras (tests/keras collects nothing without GRADCLIP_KERAS_RUN).
    # With Keras processes to run too, it runs beside them (its output is printed when it ends):
    # the two halves take about as long, so a run takes half the time on 2 cores.
    # GRADCLIP_SERIAL=1 runs them one after the other, the main process streaming.
    local main_pid="" main_log=""
    if [ "$given" = 0 ] || [ ${#main_paths[@]} -gt 0 ]; then
        if [ ${#keras_paths[@]} -gt 0 ] && [ "${GRADCLIP_SERIAL:-0}" != 1 ]; then
            main_log=$(mktemp)
            echo "=== main tests (torch, optax, core, parity; output when done) beside the Keras tests" >&2
            "$VENV/bin/python" -m pytest -p no:cacheprovider "${main_opts[@]}" "${main_paths[@]}" >"$main_log" 2>&1 &
            main_pid=$!
        else
            "$VENV/bin/python" -m pytest -p no:cacheprovider "${main_opts[@]}" "${main_paths[@]}" || rc=$?
        fi
    fi
    if [ ${#keras_paths[@]} -gt 0 ]; then
        for backend in "${KERAS_BACKENDS[@]}"; do
            echo "=== Keras tests, KERAS_BACKEND=$backend" >&2
            status=0
            GRADCLIP_KERAS_RUN=1 KERAS_BACKEND=$backend "$VENV/bin/python" -m pytest -p no:cacheprovider \
                -k "$filter" "${opts[@]}" "${keras_paths[@]}" || status=$?
            # 5: nothing selected (e.g. a -k of the user's matched no Keras test)
            if [ "$status" != 0 ] && [ "$status" != 5 ]; then rc=$status; fi
        done
    fi
    if [ -n "$main_pid" ]; then
        status=0
        wait "$main_pid" || status=$?
        echo "=== main tests (torch, optax, core, parity)" >&2
        cat "$main_log"
        rm -f "$main_log"
        if [ "$status" != 0 ]; then rc=$status; fi
    fi
    return "$rc"
}

cmd=${1:-}
shift || true
case "$cmd" in
    demo) setup; exec "$VENV/bin/python" -m gradclip_demo "$@" ;;
    test) setup; run_tests "$@" ;;
    setup) setup ;;
    *) echo "usage: bash scripts/dev.sh demo|test|setup [args]" >&2; exit 2 ;;
esac
