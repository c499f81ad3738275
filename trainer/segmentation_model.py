"""`SegmentationModel`: a Keras model whose loss and metrics accept ``y`` as a dict.

A dataset may yield ``(image, {"mask": ..., "labeled": ..., "pixel_weights": ...})``.
Keras' compiled loss would try to match that dict against the single logits output, so
``compute_loss`` hands ``y`` to the compiled loss object itself (a
``SegmentationLoss``, which reads the dict), and ``compute_metrics`` gives the metrics only
the mask. Build it like a functional model::

    model = SegmentationModel(inputs=image, outputs=logits)
    model.compile(optimizer="adam", loss=SegmentationLoss(config, class_weights=w))
    model.fit(dataset_of_image_and_dict)

With a plain mask as ``y`` it behaves exactly like ``keras.Model``. Works with
``jit_compile=True`` and under ``tf.distribute`` strategies.
"""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="segbalance")
class SegmentationModel(keras.Model):
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(y, dict):
            return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        if not isinstance(self.loss, keras.losses.Loss):
            raise ValueError("SegmentationModel with dict targets needs compile(loss=<a keras.losses.Loss that "
                             "reads the dict, e.g. SegmentationLoss>)")
        total = self.loss(y, y_pred)
        for extra in self.losses:  # regularisation terms
            total = total + ops.sum(ops.cast(extra, "float32"))
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y, dict):
            y = y["mask"]
        return super().compute_metrics(x, y, y_pred, sample_weight)
