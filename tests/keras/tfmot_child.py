"""A new process for ``test_keras_tfmot.py``: reload a saved model and check it (run as a script only).

``stripped PATH DIR``: plain Keras (gradclip_keras is not imported): the stripped model loads,
its pruned kernels are exactly the saved zeros, its predictions those of the pruned model.
``resume PATH DIR``: ``import gradclip_keras``, load the mid-schedule checkpoint without
``custom_objects`` and train the second epoch; the pruning variables go to ``DIR/resumed.npz``.
"""

import sys


def main(mode, path, out):
    import numpy as np
    import keras

    x = np.load(f"{out}/x.npy")
    if mode == "stripped":
        assert "gradclip_keras" not in sys.modules
        model = keras.saving.load_model(path)
        assert "gradclip_keras" not in sys.modules
        kernels = np.load(f"{out}/kernels.npz")
        for layer, name in zip((model.layers[0], model.layers[3]), ("arr_0", "arr_1")):
            got = keras.ops.convert_to_numpy(layer.kernel)
            np.testing.assert_array_equal(got, kernels[name])
            assert (got == 0).mean() > 0.7
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.predict(x, verbose=0)), np.load(f"{out}/expected.npy"))
    elif mode == "resume":
        import gradclip_keras as gk

        model = keras.saving.load_model(path)  # no custom_objects: the classes are registered
        model.fit(x, np.load(f"{out}/y.npy"), batch_size=4, epochs=1, verbose=0, shuffle=False,
                  callbacks=[gk.UpdatePruningStep()])
        arrays = {}
        for layer in gk.collect_prunable_layers(model):
            for v in (layer.pruning_vars[0][0], layer.pruning_vars[0][1], layer.pruning_step):
                arrays[f"a{len(arrays)}"] = keras.ops.convert_to_numpy(v)
        np.savez(f"{out}/resumed.npz", **arrays)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
