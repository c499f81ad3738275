"""`SegmentationModel`: a Keras model whose loss and metrics accept ``y`` as a dict.

A dataset may yield ``(image, {"mask": ..., "labeled": ..., "pixel_weights": ...})``.
Keras' compiled loss would try to match that dict against the single logits output, so
``compute_loss`` hands ``y`` to the compiled loss object itself (a ``SegmentationLoss``,
which reads the dict), and ``compute_metrics`` gives the metrics only the mask (with the
pixels a partial annotation cannot score set to the ignore index, ``metrics.metric_truth``). Build it
like a functional model::

    model = SegmentationModel(inputs=image, outputs=logits)
    model.compile(optimizer="adam", loss=SegmentationLoss(config, class_weights=w))
    model.fit(dataset_of_image_and_dict)

Verified with Keras 3.6 / TF 2.16: ``train_step`` and ``test_step`` pass ``y`` unchanged
(the dict) to ``compute_loss`` and ``compute_metrics``, with and without ``jit_compile``
(``tests/test_segmentation_loss.py``). With a plain mask and a built-in Keras loss it
behaves exactly like ``keras.Model``.

Distribution (``tf.distribute.MirroredStrategy``): the functions of ``trainer/losses.py``
all-reduce their numerator and denominator and return each replica's *share* of the
global-batch loss, so the gradients that Keras 3.6 sums over replicas are the gradients
of the single-device loss. Keras 3.6 would then *report* the mean of the shares (1/R of
the loss), so ``compute_loss`` returns a value equal to the global-batch loss whose
gradient is still the share's (``share + stop_gradient(global - share)``);
regularisation losses (added on every replica) are likewise divided by R for the
gradient. ``fit``/``evaluate`` therefore report the same loss as one device.
"""
from __future__ import annotations

import keras
from keras import ops

from segbalance.contract import DEFAULT_IGNORE_INDEX
from segbalance.trainer.losses import num_replicas_in_sync
from segbalance.trainer.metrics import metric_truth
from segbalance.trainer.segmentation_loss import SegmentationLoss


@keras.saving.register_keras_serializable(package="segbalance")
class SegmentationModel(keras.Model):
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(y, dict) and not isinstance(self.loss, SegmentationLoss):
            return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        if not isinstance(self.loss, keras.losses.Loss):
            raise ValueError("SegmentationModel with dict targets needs compile(loss=<a keras.losses.Loss that "
                             "reads the dict, e.g. SegmentationLoss>), got loss={!r}".format(self.loss))
        if sample_weight is not None:
            raise ValueError("SegmentationModel: per-sample weights are not supported with SegmentationLoss; "
                             "put a per-pixel weight map in y['pixel_weights'] instead")
        share = ops.cast(self.loss(y, y_pred), "float32")
        replicas = num_replicas_in_sync()
        regularisation = ops.zeros((), "float32")
        for extra in self.losses:
            regularisation = regularisation + ops.sum(ops.cast(extra, "float32"))
        if replicas == 1:
            return share + regularisation
        if not isinstance(self.loss, SegmentationLoss):
            # A user loss on a dict: Keras' own convention (its value per replica, summed gradients).
            return share + regularisation
        grad_part = share + regularisation / float(replicas)
        value = share * float(replicas) + regularisation
        return grad_part + ops.stop_gradient(value - grad_part)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y, dict):
            # Partial annotations: background pixels predicted as a class the image left unlabelled
            # are not scored (metrics.metric_truth), with the loss's ignore index (the config's).
            y = metric_truth(y, y_pred, getattr(self.loss, "ignore_index", DEFAULT_IGNORE_INDEX))
        return super().compute_metrics(x, y, y_pred, sample_weight)
