"""gradclip_core.backend.array_names: lazy, per thread, renames per-array info keys."""

from __future__ import annotations

import threading

import gradclip_core.backend as gcb


def test_lazy_names_are_computed_once_and_only_when_needed():
    calls = []

    def names():
        calls.append(1)
        return ["enc/w", "enc/b"]

    with gcb.array_names(names):
        assert calls == []
        assert gcb.array_label(1) == "'enc/b'" and gcb.array_label(0) == "'enc/w'"
    assert calls == [1]
    assert gcb.array_label(1) == "array 1"  # outside the block: positions
    with gcb.array_names(["0", "1"]):  # digit names are positions (a list's tree paths)
        assert gcb.array_label(1) == "array 1"


def test_name_info_renames_per_array_keys_only():
    info = {"sparsity": 0.5, "sparsity/0": 0.1, "prune/sparsity/1": 0.2, "norm": 3.0, "threshold": 1.0}
    assert gcb.name_info(info, ["a.weight", "b.weight"]) == {
        "sparsity": 0.5, "sparsity/a.weight": 0.1, "prune/sparsity/b.weight": 0.2, "norm": 3.0, "threshold": 1.0}
    assert gcb.name_info(info, None) == info


def test_names_do_not_leak_into_other_threads():
    inside, release, seen = threading.Event(), threading.Event(), []

    def named():
        with gcb.array_names(["mine"]):
            inside.set()
            release.wait(5)

    t = threading.Thread(target=named)
    t.start()
    inside.wait(5)
    seen.append(gcb.array_label(0))
    release.set()
    t.join()
    assert seen == ["array 0"]
