"""SGD with momentum, the optimizer of BiT's fine-tuning and upstream recipes.

`SGD` is Keras's SGD (same arguments, config, variables and update rule);
under the TensorFlow backend each momentum update runs as TensorFlow's fused
`ResourceApplyKerasMomentum` op, one pass over a variable and its momentum,
where Keras's own step is five ops per variable. For R50x1 at 128x128, batch
16, on a 2-core Xeon that made each training step about 3% faster and the
first step of `fit` 0.4-0.6 s shorter (a smaller graph to trace), with the
same weights after 14 steps (`tests/test_training.py` checks each update
against Keras's).
"""

import keras

from bitkeras import compat


@keras.saving.register_keras_serializable(package="bitkeras")
class SGD(keras.optimizers.SGD):
    """Keras's SGD; with momentum under TensorFlow, one fused op per variable update.

    Sparse gradients, other backends, no momentum, and updates under a
    distribution strategy (whose variables Keras's own assignments handle)
    take Keras's step.
    """

    def update_step(self, gradient, variable, learning_rate):
        if not self._fusable(gradient):
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        momentum = self.momentums[compat.variable_index(self, variable)]
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=momentum.handle,
            lr=tf.cast(learning_rate, variable.dtype), grad=tf.cast(gradient, variable.dtype),
            momentum=tf.constant(self.momentum, variable.dtype), use_nesterov=self.nesterov)

    def _fusable(self, gradient):
        if keras.backend.backend() != "tensorflow" or self.momentum == 0:
            return False
        import tensorflow as tf

        return not isinstance(gradient, tf.IndexedSlices) and not tf.distribute.has_strategy()
