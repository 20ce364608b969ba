"""Under tf.distribute the wrapper clips the cross-replica sum, where Keras clips per replica.

Two replicas on two logical CPUs (a fresh process: logical devices must be configured
before TensorFlow starts). Replica gradients [3, 0] and [0, 4] sum to [3, 4], norm 5:
the wrapper's global clip to 1 gives the step [0.6, 0.8]; Keras' own ``global_clipnorm``
clips each replica's gradient to norm 1 first and then sums, giving [1, 1]. The wrapper's result equals the same step in one process (no strategy).
"""

import os
import subprocess
import sys

import keras
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("tf.distribute exists only under KERAS_BACKEND=tensorflow", allow_module_level=True)

SCRIPT = r"""
import numpy as np, tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, gradclip_core as gc, gradclip_keras
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
out = []
for make in (lambda: gradclip_keras.Optimizer(keras.optimizers.SGD(1.0), gc.clip_by_global_norm(1.0)),
             lambda: keras.optimizers.SGD(1.0, global_clipnorm=1.0)):
    with strategy.scope():
        w = keras.Variable(np.zeros(2, np.float32))
        opt = make()
        opt.build([w])
    @tf.function
    def step():
        def replica_fn():
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            opt.apply([tf.where(rid == 0, tf.constant([3.0, 0.0]), tf.constant([0.0, 4.0]))], [w])
        strategy.run(replica_fn)
    step()
    out.append([round(float(x), 5) for x in w.numpy()])
# the same step in one process, no strategy: the summed gradient [3, 4]
w = keras.Variable(np.zeros(2, np.float32))
opt = gradclip_keras.Optimizer(keras.optimizers.SGD(1.0), gc.clip_by_global_norm(1.0))
opt.build([w])
opt.apply([tf.constant([3.0, 4.0])], [w])
out.append([round(float(x), 5) for x in w.numpy()])
print(out)
"""


def test_wrapper_clips_global_gradient_keras_clips_per_replica():
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    wrapper, native, single = eval(res.stdout.strip().splitlines()[-1])
    assert wrapper == single == [-0.6, -0.8]  # the one-process result
    assert native == [-1.0, -1.0]
