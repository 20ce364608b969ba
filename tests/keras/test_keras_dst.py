"""RigL under gradclip_keras.Optimizer: constant sparsity, regrown weights and the inner Adam slots at 0."""

import keras
import numpy as np

import gradclip_core as gc
import gradclip_keras


def test_optimizer_rigl_restarts_inner_slots_of_regrown_weights():
    rng = np.random.default_rng(0)
    shapes = [(6, 8), (8,), (8, 3)]
    variables = [keras.Variable(rng.standard_normal(s).astype("float32"), name=f"v{i}") for i, s in enumerate(shapes)]
    rule = gc.rigl(0.5, allocation="uniform", drop_fraction=0.5, update_every=2, end_step=20)
    opt = gradclip_keras.Optimizer(keras.optimizers.Adam(0.05), rule)
    opt.build(variables)
    inner = [v for v in opt.inner_optimizer.variables if len(v.shape) > 0]
    grew = 0
    for t in range(6):
        for v in inner:                                       # moments everywhere, pruned elements too
            v.assign(np.ones(v.shape, "float32"))
        grads = [keras.ops.convert_to_tensor(rng.standard_normal(s).astype("float32")) for s in shapes]
        opt.apply(grads, variables)
        leaves = [np.asarray(keras.ops.convert_to_numpy(v)) for v in opt.gradclip_state]
        masks, regrown = leaves[1:4], leaves[4:7]             # DSTState(count, masks, regrown), 3 arrays
        for i in (0, 2):
            m, r, w = masks[i], regrown[i], keras.ops.convert_to_numpy(variables[i])
            assert m.sum() == m.size // 2
            assert (w[~m] == 0).all() and (w[r] == 0).all()
            prefix = variables[i].path.replace("/", "_") + "_"
            slots = [keras.ops.convert_to_numpy(v) for v in inner if v.name.startswith(prefix)]
            assert len(slots) == 2                           # Adam's momentum and velocity
            for s in slots:
                assert (s[r] == 0).all() and (s[~r] != 0).all()
            grew += int(r.sum())
    assert grew > 0
