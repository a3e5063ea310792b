"""BatchNormalization as one fused kernel on TensorFlow.

Keras 3 composes BatchNormalization from a dozen element-wise ops (moments, then scale and shift,
each with its gradient); on TensorFlow every one is a kernel launch over the whole activation, and
they took 54 % of the op time of MobileNetV2's CPU training step (52 % of the wall step;
docs/performance.md, figure 13). TensorFlow's fused kernel (`FusedBatchNormV3`, oneDNN's on CPUs,
cuDNN's on GPUs) does the same in one op forward and one backward: figure 13's MobileNetV2 step ran
1.44x (2 threads) and 1.62x (1 thread) faster. It rounds differently from Keras's ops, so runs from
before and after it differ (each stays bit-identical per seed on CPU). Same variables, names and
semantics as Keras's layer (the moving variance is the biased batch variance, as Keras keeps it);
other backends, masked or synchronized or renormalised batch norm, inputs that are not NHWC images
and float64 (SynFlow's copies) take Keras's own path.
"""

from __future__ import annotations

import keras

# cuDNN rejects a smaller epsilon; TensorFlow's own wrapper raises it to this.
_MIN_EPSILON = 1.001e-5


@keras.saving.register_keras_serializable(package="tickets")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    def _fusable(self, inputs, mask) -> bool:
        return (keras.backend.backend() == "tensorflow" and mask is None and not self.renorm
                and not self.synchronized and self.scale and self.center and len(inputs.shape) == 4
                and self.axis in (3, -1) and self.epsilon >= _MIN_EPSILON
                and keras.backend.standardize_dtype(inputs.dtype) in ("float16", "bfloat16", "float32"))

    def call(self, inputs, training=None, mask=None):
        # On a GPU, TensorFlow refuses this kernel's gradient in inference mode (SNIP's and GraSP's
        # copies) while op determinism is on: tickets turns determinism on for CPU processes only.
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = inputs
        gamma, beta = tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32)
        if training and self.trainable:
            empty = tf.constant([], tf.float32)
            y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=self.epsilon,
                exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
            # The kernel returns the unbiased variance (n / (n - 1)) for running averages; Keras's
            # moving variance averages the biased one.
            n = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
            variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon, data_format="NHWC",
                is_training=False)
        return tf.cast(y, self.compute_dtype)
