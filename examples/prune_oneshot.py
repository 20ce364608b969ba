"""One-shot pruning of the demo MLP to 90%: magnitude vs Wanda, in PyTorch, optax and Keras.

The demo's MLP (64-64-10 on scikit-learn's digits) is trained dense once (PyTorch, the
demo's recipe without pruning); its weights are then loaded into each framework, the
input-channel norms of four calibration batches are collected with the adapter's
``activation_norms`` helper (torch forward hooks, a JAX capture function, a Keras probe
model), and each rule prunes 90% of every kernel once through the adapter's real path
(``gradclip_torch.prune``, ``gradclip_optax.wrap``, ``gradclip_keras.Optimizer``). The
masks are checked to be identical across the three frameworks, and the test accuracy
is printed per rule and framework.

    KERAS_BACKEND=jax python examples/prune_oneshot.py [--steps 300] [--sparsity 0.9]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")

import gradclip_core as gc  # noqa: E402
from gradclip_demo import Config  # noqa: E402
from gradclip_demo._data import init_weights, load_digits  # noqa: E402


def rules(norms: dict, names: list[str], sparsity: float, labels: list[str] | None = None) -> dict:
    """The rules compared (those named in ``labels``; all if ``None``), Wanda's norms keyed by each framework's names."""
    out = {
        "dense (not pruned)": gc.magnitude_prune(0.0),
        "magnitude (uniform)": gc.magnitude_prune(sparsity),
        "magnitude (global)": gc.global_magnitude_prune(sparsity),
        "magnitude (ERK)": gc.score_prune(sparsity, allocation="erk"),
        "magnitude (LAMP)": gc.score_prune(sparsity, allocation="lamp"),
        "Wanda (uniform)": gc.wanda_prune(sparsity, act_norms={n: norms[n] for n in names}),
        "Wanda + OWL": gc.score_prune(sparsity, score=gc.wanda_score({n: norms[n] for n in names}),
                                      allocation=gc.owl_sparsity(m=3.0, lam=0.08)),
    }
    return out if labels is None else {k: out[k] for k in labels}


def run_torch(weights, data, calib, sparsity, labels=None):
    import torch

    import gradclip_torch
    from gradclip_demo._torch import build

    out = {}
    model0 = build(weights)
    norms = gradclip_torch.activation_norms(model0, [torch.from_numpy(b) for b in calib])
    x, y = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test).long()
    for label, rule in rules(norms, ["0.weight", "2.weight"], sparsity, labels).items():
        model = build(weights)
        pruner = gradclip_torch.prune(model, rule)
        with torch.no_grad():
            acc = float((model(x).argmax(1) == y).float().mean())
        masks = [pruner.masks[n].numpy().T for n in ("0.weight", "2.weight")]  # (in, out) like the others
        out[label] = (acc, masks)
    return out


def run_optax(weights, data, calib, sparsity, labels=None):
    import jax
    import jax.numpy as jnp
    import optax

    import gradclip_optax

    w1, b1, w2, b2 = (jnp.asarray(w) for w in weights)
    params = {"l1": {"w": w1, "b": b1}, "l2": {"w": w2, "b": b2}}

    def capture(x):
        return {"l1/w": x, "l2/w": jax.nn.relu(x @ w1 + b1)}

    def predict(p, x):
        return jax.nn.relu(x @ p["l1"]["w"] + p["l1"]["b"]) @ p["l2"]["w"] + p["l2"]["b"]

    norms = gradclip_optax.activation_norms(capture, [jnp.asarray(b) for b in calib])
    out = {}
    for label, rule in rules(norms, ["l1/w", "l2/w"], sparsity, labels).items():
        tx = gradclip_optax.wrap(rule, optax.sgd(0.0))
        state = tx.init(params)
        updates, state = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), state, params)
        pruned = optax.apply_updates(params, updates)
        acc = float(jnp.mean(jnp.argmax(predict(pruned, jnp.asarray(data.x_test)), 1) == jnp.asarray(data.y_test)))
        m = gradclip_optax.masks(pruned, state)
        out[label] = (acc, [np.asarray(m["l1"]["w"]), np.asarray(m["l2"]["w"])])
    return out


def run_keras(weights, data, calib, sparsity, labels=None):
    import keras

    import gradclip_keras

    def build():
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(weights[0].shape[1], activation="relu", name="l1"),
                                  keras.layers.Dense(weights[2].shape[1], name="l2")], name="mlp")
        model.set_weights(weights)
        return model

    model0 = build()
    norms = gradclip_keras.activation_norms(model0, calib)
    names = [w.path for w in model0.weights if len(w.shape) == 2]
    out = {}
    for label, rule in rules(norms, names, sparsity, labels).items():
        model = build()
        for w, n in zip([w for w in model.weights if len(w.shape) == 2], names):
            assert w.path == n  # (the same paths in a rebuilt model: the norms find their kernels)
        model.compile(optimizer=gradclip_keras.Optimizer(keras.optimizers.SGD(0.0), rule),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(calib[0], data.y_train[: len(calib[0])], batch_size=len(calib[0]), epochs=1, verbose=0)
        logits = keras.ops.convert_to_numpy(model(data.x_test))
        acc = float(np.mean(np.argmax(logits, 1) == data.y_test))
        masks = [keras.ops.convert_to_numpy(m) for m in gradclip_keras.masks(model) if len(m.shape) == 2]
        out[label] = (acc, masks)
    return out


def column(framework: str) -> str:
    """The table's column name of ``"torch"``, ``"optax"`` or ``"keras"`` (with the Keras backend)."""
    return f"keras ({os.environ['KERAS_BACKEND']})" if framework == "keras" else framework


def dense_and_oneshot(steps: int, sparsity: float, labels: list[str] | None = None,
                      frameworks: tuple = ("torch", "optax", "keras")) -> tuple:
    """Train the demo MLP dense (torch, the demo's recipe without pruning), then prune it once in each framework.

    Args:
      steps: dense training steps.
      sparsity: the target sparsity of every one-shot rule.
      labels: the rules of :func:`rules` to run (``None``: all).
      frameworks: some of ``"torch"``, ``"optax"``, ``"keras"``.

    Returns:
      ``(cfg, data, dense_accuracy, results)``, ``results[framework][label] = (accuracy, masks)``
      (masks: one bool array per kernel, ``(in, out)`` layout).
    """
    cfg = Config(steps=steps, sparsity=0.0, max_unit_norm=1e9)
    data = load_digits(cfg.seed)
    from gradclip_demo._torch import train

    hist = train(cfg, data, init_weights(cfg), log=lambda *a: None)
    calib = [data.x_train[i * 128:(i + 1) * 128] for i in range(4)]
    run = {"torch": run_torch, "optax": run_optax, "keras": run_keras}
    results = {column(f): run[f](hist.weights, data, calib, sparsity, labels) for f in frameworks}
    return cfg, data, float(hist.accuracy[-1]), results


def agreement(masks: list) -> float:
    """The fraction of kernel elements whose keep/prune decision is the same in every framework.

    Args:
      masks: one list of bool arrays per framework (the same shapes).

    Returns:
      1.0 when the masks are identical.

    Example:
      >>> a, b = [np.array([True, False])], [np.array([True, True])]
      >>> agreement([a, a]), agreement([a, b])
      (1.0, 0.5)
    """
    same = sum(int(np.sum(np.all([m[i] == masks[0][i] for m in masks], axis=0))) for i in range(len(masks[0])))
    return same / sum(m.size for m in masks[0])


def table(results: dict) -> list[str]:
    """Markdown rows: the test accuracy of each rule per framework, and whether the masks are identical.

    Args:
      results: ``results[framework][label] = (accuracy, masks)``.

    Returns:
      The table's lines (a row whose masks differ gives the fraction of elements that agree).
    """
    frameworks = list(results)
    lines = [f"| rule | {' | '.join(frameworks)} | masks identical |", "|---|" + "---|" * (len(frameworks) + 1)]
    for label in results[frameworks[0]]:
        accs = [results[f][label][0] for f in frameworks]
        agree = agreement([results[f][label][1] for f in frameworks])
        same = "—" if len(frameworks) == 1 else "yes" if agree == 1.0 else f"no ({agree:.1%} agree)"
        lines.append(f"| {label} | {' | '.join(f'{a:.3f}' for a in accs)} | {same} |")
    return lines


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="dense training steps (torch, the demo's recipe)")
    ap.add_argument("--sparsity", type=float, default=0.9)
    args = ap.parse_args(argv)
    _, _, dense, results = dense_and_oneshot(args.steps, args.sparsity)
    print(f"demo MLP, dense test accuracy {dense:.3f}; one-shot pruning of both kernels to {args.sparsity:.0%}")
    print("\n".join(table(results)))
    for label in results["torch"]:
        assert agreement([r[label][1] for r in results.values()]) == 1.0, f"{label}: masks differ between frameworks"
    return results


if __name__ == "__main__":
    main()
