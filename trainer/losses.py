"""Segmentation losses in ``keras.ops``: class-weighted and missing-annotation-aware.

Every function takes an integer mask ``y_true`` [B,H,W] (or [B,H,W,1]), **logits** [B,H,W,C]
and an ``ignore_index`` (default 255), and returns a float32 scalar.

Conventions (the same for every function):

- *Numerics*: logits are cast to float32 first (safe under ``mixed_float16``);
  log-probabilities come from ``log_softmax`` / ``logsumexp``, never from the log of a sum
  of probabilities; no boolean masking, so shapes are static and ``jit_compile=True`` works.
- *Reduction* of pixel losses (CE, focal, the missing-annotation CEs, exclusion CE):
  ``sum(weight * loss) / number of valid (non-ignored) pixels`` in the batch (TF Model
  Garden's convention): class weights change the balance between pixels, not the scale
  of the loss; a batch with no valid pixel gives 0 (not NaN). Under a
  ``tf.distribute`` strategy with R replicas the denominator is the *global* number of valid
  pixels (an all-reduce) and each replica returns its share (global loss / R): the
  per-replica losses sum to the single-device loss of the global batch, and so do the
  gradients Keras sums over replicas (``SegmentationModel`` reports the global value).
- *Region losses* (Dice, generalized Dice, Tversky, exclusion Dice): sums over the whole
  (global) batch per class, then ``1 - weighted mean over classes``. Each pixel enters every
  sum once, times its pixel weight; the pixel weights are rescaled to mean 1 over the valid
  pixels, so these losses do not depend on the weights' scale (``smooth`` counts pixels).
- ``pixel_weights`` [B,H,W] multiplies each pixel's weight (region masks, the weight maps
  of ``trainer/weight_maps.py``); ``class_weights`` [C] weights each pixel by its true class.
- ``fn_weights`` / ``fp_weights`` [C] (CE family): a pixel of true class c whose arg-max
  is another class k is a false negative of c and a false positive of k; its weight is
  multiplied by ``fn_weights[c]`` and ``fp_weights[k]`` (0 ignores those errors, > 1
  penalises them). ``low_confidence=(tau, alpha)`` (or the config's ``{"tau": .., "alpha": ..}``):
  pixels whose max probability is below tau get their weight multiplied by alpha. These factors are computed under
  ``stop_gradient``.

- *Arguments*: a mask, weight map or ``labeled`` whose static shape does not fit the logits, a
  hyper-parameter out of its range (``gamma``, ``alpha``, ``beta``, ``smooth``, a weight vector:
  finite and >= 0; ``label_smoothing`` in [0, 1); ``low_confidence`` tau in (0, 1]) and, when the
  mask's values are known (an eager call), a class id outside [0, C) that is not the
  ``ignore_index`` are a ``ValueError`` naming the argument. Inside a traced train step the
  values are symbolic and only static shapes are checked (ClassStatsGen has checked the data).

Missing annotations: ``labeled`` [B,C] multi-hot marks the classes annotated in each image
(background always counts as labelled). See ``docs/losses.md`` for the maths.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import keras
import numpy as np
from keras import ops

from segbalance.contract import DEFAULT_IGNORE_INDEX  # noqa: E402
_NEG = -1e9  # "minus infinity" for masked logits that keeps gradients finite


# --------------------------------------------------------------------------- helpers
def num_replicas_in_sync() -> int:
    """Replicas of the current ``tf.distribute`` replica context (1 outside a strategy)."""
    return _num_replicas_and_context()[0]


def _num_replicas_and_context():
    if keras.backend.backend() != "tensorflow":
        return 1, None
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return 1, None
    return ctx.num_replicas_in_sync, ctx


def _global_sum(x):
    """Sum of ``x`` over replicas when running inside a multi-replica strategy."""
    replicas, ctx = _num_replicas_and_context()
    if ctx is None:
        return x
    import tensorflow as tf

    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)


def _replica_share(loss):
    """A global (already all-reduced) loss split evenly over replicas, so their sum is the loss."""
    replicas, _ = _num_replicas_and_context()
    return loss / float(replicas) if replicas > 1 else loss


# --------------------------------------------------------------------------- argument checks
# Values known when a function is called (Python numbers, NumPy arrays, eager tensors) are
# checked, and a bad one is a ValueError naming the argument. Inside a traced function (a Keras
# train step) tensors are symbolic and are not inspected; there the pipeline has checked the data
# (ClassStatsGen quarantines masks with ids outside the classes).


def _concrete(value) -> Optional[np.ndarray]:
    """``value`` as a float64 NumPy array when its values are known now, None when symbolic."""
    if isinstance(value, (bool, int, float, list, tuple, np.ndarray, np.generic)):
        try:
            return np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError, NotImplementedError):  # a list of symbolic tensors, say
            return None
    try:
        return np.asarray(ops.convert_to_numpy(value), dtype=np.float64)
    except Exception:  # a symbolic tensor (traced function, Keras functional input)
        return None


def _shown(array: np.ndarray) -> str:
    return str(array.tolist()) if array.size <= 8 else f"{array.size} values, min {array.min():g}"


def check_non_negative(**values) -> None:
    """ValueError naming the first argument (a number or a vector) that is not finite and >= 0."""
    for name, value in values.items():
        array = None if value is None else _concrete(value)
        if array is not None and not (np.isfinite(array).all() and (array >= 0).all()):
            raise ValueError(f"{name} must be finite and >= 0, got {_shown(array)}")


def check_scalar(**values) -> None:
    """ValueError naming the first argument that is not one number (a list where a number is
    expected failed in TensorFlow's broadcasting, naming no argument: QA 62)."""
    for name, value in values.items():
        if value is not None and len(getattr(value, "shape", np.shape(value))) != 0:
            raise ValueError(f"{name} must be one number, got shape {tuple(np.shape(value))}")


def check_non_negative_number(**values) -> None:
    """ValueError naming the first argument that is not one finite number >= 0 (``check_scalar`` and
    ``check_non_negative``): a smoothing term, an exponent, a weight parameter."""
    check_scalar(**values)
    check_non_negative(**values)


def check_in_range(name: str, value, low: float, high: float, low_open: bool = False,
                   high_open: bool = False) -> None:
    """ValueError naming ``name`` when its (known) value is not one number inside the interval."""
    check_scalar(**{name: value})  # (QA 65: a list of values in range failed later, naming nothing)
    array = _concrete(value)
    if array is None:
        return
    above = array > low if low_open else array >= low
    below = array < high if high_open else array <= high
    if not (np.isfinite(array).all() and above.all() and below.all()):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {_shown(array)}")


def _check_shape(name: str, tensor, expected, what: str) -> None:
    """ValueError when ``tensor``'s static shape differs from ``expected`` (unknown dims match)."""
    shape, expected = tuple(tensor.shape), tuple(expected)
    if len(shape) != len(expected) or any(a is not None and b is not None and int(a) != int(b)
                                          for a, b in zip(shape, expected)):
        raise ValueError(f"{name} has shape {shape}; expected {expected} ({what})")


def _check_broadcastable(name: str, tensor, expected, what: str) -> None:
    """ValueError unless ``tensor``'s static shape broadcasts to ``expected`` without changing it: no
    more dims, each trailing one equal, 1 or unknown (a shared [H, W] map, one [1, C] label set)."""
    shape, expected = tuple(tensor.shape), tuple(expected)
    if len(shape) > len(expected) or any(a is not None and b is not None and int(a) not in (1, int(b))
                                         for a, b in zip(reversed(shape), reversed(expected))):
        raise ValueError(f"{name} has shape {shape}; expected {expected} ({what})")


def _check_label_ids(labels, num_classes: int, ignore_index: int) -> None:
    """ValueError listing mask ids outside ``[0, num_classes)`` that are not ``ignore_index`` (known
    masks only): CE would fail in the kernel (or give NaN on a GPU) and the region losses would
    count such a pixel as no class at all."""
    ids = _concrete(labels)
    if ids is None:
        return
    bad = np.unique(ids[((ids < 0) | (ids >= num_classes)) & (ids != ignore_index)])
    if bad.size:
        raise ValueError(f"y_true holds class ids {[int(b) for b in bad[:8]]} outside [0, {num_classes}) that are "
                         f"not the ignore_index ({ignore_index}): remap them, or mark them with the ignore_index")


def _check_whole_ids(y_true) -> None:
    """ValueError for a float mask (known values) holding values that are not class ids: the cast to
    int32 would truncate 1.7 to class 1 without a word (a resized mask interpolated, say)."""
    ids = _concrete(y_true)
    if ids is None:
        return
    bad = np.unique(ids[~(np.isfinite(ids) & (ids == np.round(ids)))])
    if bad.size:
        raise ValueError(f"y_true holds values {bad[:8].tolist()} that are not whole class ids: masks must "
                         f"hold integers (resize them with nearest-neighbour interpolation)")


def prepare(y_true, logits, ignore_index: int = DEFAULT_IGNORE_INDEX):
    """(labels int32 [B,H,W] with ignore -> 0, valid float32 [B,H,W], logits float32, C).

    The logits of ignored pixels are replaced by 0 (their gradient is exactly 0): whatever the
    model emits there (a -inf logit on class 0, the class ignored pixels are mapped to) cannot
    turn into an infinite per-pixel loss whose product with weight 0 is NaN.
    """
    logits = ops.cast(ops.convert_to_tensor(logits), "float32")
    if len(logits.shape) != 4:  # blamed on y_true before, asking for an impossible shape (QA 62)
        raise ValueError(f"logits has shape {tuple(logits.shape)}; expected [B,H,W,C] (one score per class, "
                         f"the last axis)")
    y_true = ops.convert_to_tensor(y_true)
    if "float" in str(y_true.dtype):
        _check_whole_ids(y_true)
    labels = ops.cast(y_true, "int32")
    if len(labels.shape) == len(logits.shape) and labels.shape[-1] in (1, None):
        labels = ops.squeeze(labels, axis=-1)
    _check_shape("y_true", labels, logits.shape[:-1], "class ids [B,H,W] or [B,H,W,1] for logits [B,H,W,C]")
    _check_label_ids(labels, int(logits.shape[-1]), ignore_index)
    valid = ops.not_equal(labels, ignore_index)
    labels = ops.where(valid, labels, ops.zeros_like(labels))
    logits = ops.where(ops.expand_dims(valid, -1), logits, 0.0)
    return labels, ops.cast(valid, "float32"), logits, int(logits.shape[-1])


def _pick(values, labels, num_classes: int):
    """values[..., labels] by selection (``where`` on the one-hot), not a product with it: a -inf in
    another class stays out (-inf * 0 is NaN) and its gradient is 0. Static shapes, XLA-friendly
    with a dynamic batch."""
    return ops.sum(ops.where(ops.one_hot(labels, num_classes) > 0, values, 0.0), axis=-1)


def _ratio(num, den, empty: float):
    """num / den where den > 0, ``empty`` where den == 0 (with smooth = 0: a class or an image with
    nothing to overlap); the gradient there is 0, not NaN (the division sees a denominator of 1)."""
    nonzero = ops.greater(den, 0.0)
    return ops.where(nonzero, num / ops.where(nonzero, den, 1.0), empty)


def _class_vector(values, num_classes: int, name: str):
    """values as float32 [C]; ValueError when its (static) length is not C."""
    if isinstance(values, (str, bytes)):  # a scheme name is the loss config's (a bare TypeError: QA 62)
        raise ValueError(f"{name} must be {num_classes} numbers, got {values!r}: a scheme name is resolved by "
                         f"SegmentationLoss(config, pixel_counts=...) or class_weights.compute_class_weights")
    vector = ops.convert_to_tensor(values, dtype="float32")
    if len(vector.shape) != 1 or (vector.shape[0] is not None and int(vector.shape[0]) != num_classes):
        raise ValueError(f"{name} must have one value per class ({num_classes}), got shape {tuple(vector.shape)}")
    check_non_negative(**{name: vector})
    return vector


def _gather_class(values, labels, num_classes: int, name: str = "class_weights"):
    """values [C] -> values[labels] as float32 [B,H,W]."""
    return ops.take(_class_vector(values, num_classes, name), labels)


def _labeled_mask(labeled, num_classes: int, batch=None):
    """[B,C] float32 multi-hot with background forced to 1, shaped [B,1,1,C] (``batch``: the
    logits' batch size, checked when known)."""
    lab = ops.cast(ops.convert_to_tensor(labeled), "float32")
    if len(lab.shape) != 2 or (lab.shape[-1] is not None and int(lab.shape[-1]) != num_classes) or \
            (batch is not None and lab.shape[0] is not None and int(lab.shape[0]) not in (1, int(batch))):
        raise ValueError(f"labeled must be [B, {num_classes}] multi-hot (one row per image of the batch"
                         f"{'' if batch is None else ', B = ' + str(batch)}, one column per class), "
                         f"got shape {tuple(lab.shape)}")
    lab = ops.maximum(lab, ops.one_hot(ops.zeros((ops.shape(lab)[0],), "int32"), num_classes))
    return ops.reshape(lab, (-1, 1, 1, num_classes))


def _tau_alpha(low_confidence) -> Tuple[float, float]:
    """``(tau, alpha)`` of ``low_confidence``: a pair, or the configuration's mapping ``{"tau", "alpha"}``
    (QA 27: the mapping gave a bare ``KeyError: 0``); ValueError naming what is expected otherwise."""
    if isinstance(low_confidence, dict) and set(low_confidence) == {"tau", "alpha"}:
        return low_confidence["tau"], low_confidence["alpha"]
    if not isinstance(low_confidence, (str, bytes, dict)):
        try:
            tau, alpha = low_confidence
            return tau, alpha
        except (TypeError, ValueError):
            pass
    raise ValueError(f"low_confidence must be (tau, alpha) or {{'tau': ..., 'alpha': ...}}, got {low_confidence!r}")


def pixel_weight_map(labels, valid, logits, class_weights=None, pixel_weights=None, fn_weights=None,
                     fp_weights=None, low_confidence: Optional[Tuple[float, float]] = None):
    """Per-pixel weights [B,H,W] (0 on ignored pixels); the data-dependent parts use stop_gradient."""
    weight = valid
    c = int(logits.shape[-1])
    if class_weights is not None:
        weight = weight * _gather_class(class_weights, labels, c)
    if pixel_weights is not None:
        weight = weight * _squeeze_weights(pixel_weights, valid)
    if low_confidence is not None:
        low_confidence = _tau_alpha(low_confidence)
        check_in_range("low_confidence tau", low_confidence[0], 0.0, 1.0, low_open=True)
        check_non_negative_number(**{"low_confidence alpha": low_confidence[1]})
    if fn_weights is not None or fp_weights is not None or low_confidence is not None:
        probs = ops.stop_gradient(ops.softmax(logits, axis=-1))
        pred = ops.cast(ops.argmax(probs, axis=-1), "int32")
        wrong = ops.cast(ops.not_equal(pred, labels), "float32")
        factor = ops.ones_like(weight)
        if fn_weights is not None:
            factor = factor * (1.0 + wrong * (_gather_class(fn_weights, labels, c, "fn_weights") - 1.0))
        if fp_weights is not None:
            factor = factor * (1.0 + wrong * (_gather_class(fp_weights, pred, c, "fp_weights") - 1.0))
        if low_confidence is not None:
            tau, alpha = low_confidence
            unsure = ops.cast(ops.less(ops.max(probs, axis=-1), tau), "float32")
            factor = factor * (1.0 + unsure * (alpha - 1.0))
        weight = weight * ops.stop_gradient(factor)
    return weight


def top_k_count(pixels, fraction: float):
    """``ceil(fraction * pixels)`` (at least 1) as int32, ``pixels`` a number or an integer tensor: the
    product in float64 to a relative 1e-12 first, since 0.3 * 100 is 30.000000000000004 (float32:
    30.000002), whose ceiling kept 31 (QA 62); float32 with a tolerance of 1e-6 lost a pixel from
    fraction * pixels = 1e6 on (QA 65)."""
    scaled = ops.cast(pixels, "float64") * (fraction * (1.0 - 1e-12))
    return ops.maximum(1, ops.cast(ops.ceil(scaled), "int32"))


def reduce_pixels(per_pixel, weight, valid, top_k_percent_pixels: float = 1.0):
    """sum(weight * loss) / global number of valid pixels (see module docstring).

    Pixels of weight 0 (ignored ones included) contribute exactly 0, even where their loss is
    infinite (an ignored pixel, mapped to class 0, whose class-0 logit is -inf): inf * 0 would be NaN.
    """
    weighted = ops.where(ops.not_equal(weight, 0.0), per_pixel * weight, 0.0)
    count = valid
    check_in_range("top_k_percent_pixels", top_k_percent_pixels, 0.0, 1.0, low_open=True)
    if top_k_percent_pixels < 1.0:
        # the image size from the tensor, not its static shape: a training step traces with [B, None, None]
        pixels = math.prod(ops.shape(weighted)[1:])
        k = top_k_count(pixels, top_k_percent_pixels)
        flat = ops.reshape(weighted, (-1, pixels))
        flat_valid = ops.reshape(valid, (-1, pixels))
        # exactly k pixels per image: ignored pixels last (score -1 < any loss), ties at the k-th value
        # taken in pixel order. Keeping every tie kept all pixels of weighted loss 0 when fewer than k
        # had a non-zero one (class weight 0, say) and divided by them (QA 26).
        score = ops.where(flat_valid > 0, ops.stop_gradient(flat), -1.0)
        kth = ops.top_k(score, k=k, sorted=True)[0][:, k - 1:k]
        above = ops.greater(score, kth)
        tied = ops.equal(score, kth)
        room = k - ops.sum(ops.cast(above, "int32"), axis=1, keepdims=True)
        tied_first = ops.logical_and(tied, ops.less_equal(ops.cumsum(ops.cast(tied, "int32"), axis=1), room))
        keep = ops.cast(ops.logical_or(above, tied_first), "float32") * flat_valid
        weighted = ops.where(keep > 0, flat, 0.0)  # not flat * keep: an infinite loss left out is 0, not NaN
        count = keep
    total = _global_sum(ops.sum(weighted))
    num = _global_sum(ops.sum(count))
    return _replica_share(total / ops.maximum(num, 1.0))


# --------------------------------------------------------------------------- CE family
def weighted_cross_entropy(y_true, logits, class_weights=None, ignore_index=DEFAULT_IGNORE_INDEX,
                           pixel_weights=None, label_smoothing=0.0, top_k_percent_pixels=1.0,
                           fn_weights=None, fp_weights=None, low_confidence=None):
    """Softmax cross entropy weighted per class / pixel; optional label smoothing and top-k pixels."""
    check_in_range("label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)
    labels, valid, logits, c = prepare(y_true, logits, ignore_index)
    if label_smoothing:
        target = ops.one_hot(labels, c) * (1.0 - label_smoothing) + label_smoothing / c
        per_pixel = -ops.sum(target * ops.log_softmax(logits, axis=-1), axis=-1)
    else:  # the backend's fused softmax cross entropy (one kernel for value and gradient)
        per_pixel = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    weight = pixel_weight_map(labels, valid, logits, class_weights, pixel_weights, fn_weights, fp_weights,
                              low_confidence)
    return reduce_pixels(per_pixel, weight, valid, top_k_percent_pixels)


def _focal_terms(labels, logits, gamma, num_classes: int):
    """Per-pixel ``-(1 - p_y)^gamma log p_y`` with finite, accurate gradients for any gamma >= 0.

    ``1 - p_y`` is never formed by subtraction: ``log(1 - p_y) = logsumexp(z_k, k != y) - logsumexp(z)``
    (exact to float32 rounding even when p_y rounds to 1), the factor is ``exp(gamma log(1 - p_y))``
    and, when p_y > 1/2, ``log p_y = log1p(-(1 - p_y))`` (log_softmax would round it to 0 from a
    margin of about 17 on). The derivative of ``x^gamma`` at x = 0 (infinite for gamma < 1, which
    times 0 gave NaN) never appears: every factor of the chain rule is bounded.
    """
    log_z = ops.logsumexp(logits, axis=-1)
    log_p = _pick(logits, labels, num_classes) - log_z
    log_q = _log_rest(logits, ops.one_hot(labels, num_classes) > 0, log_z)  # log(1 - p_y)
    near_one = ops.less(log_q, -math.log(2.0))  # p_y > 1/2: log p_y from 1 - p_y
    safe_q = ops.where(near_one, log_q, -1.0)  # keeps the unused branch (and its gradient) finite
    log_p = ops.where(near_one, ops.log1p(-ops.exp(safe_q)), log_p)
    return -ops.exp(gamma * log_q) * log_p


def focal_loss(y_true, logits, gamma=2.0, alpha=None, class_weights=None, ignore_index=DEFAULT_IGNORE_INDEX,
               pixel_weights=None, fn_weights=None, fp_weights=None, low_confidence=None):
    """Focal loss ``-alpha[y] (1 - p_y)^gamma log p_y`` (Lin et al. 2017); alpha per class or scalar.

    gamma = 0 is cross entropy (the same fused kernel as ``weighted_cross_entropy``: equal values and
    gradients); for gamma > 0 see ``_focal_terms`` (finite gradients for 0 < gamma < 1 too).
    """
    check_non_negative_number(gamma=gamma)
    check_non_negative(alpha=alpha)
    labels, valid, logits, c = prepare(y_true, logits, ignore_index)
    if isinstance(gamma, (int, float)) and float(gamma) == 0.0:
        per_pixel = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    else:
        per_pixel = _focal_terms(labels, logits, gamma, c)
    if alpha is not None:
        scalar = isinstance(alpha, (int, float)) or getattr(alpha, "ndim", 1) == 0
        alpha_t = float(alpha) if scalar else _gather_class(alpha, labels, c, "alpha")
        per_pixel = per_pixel * alpha_t
    weight = pixel_weight_map(labels, valid, logits, class_weights, pixel_weights, fn_weights, fp_weights,
                              low_confidence)
    return reduce_pixels(per_pixel, weight, valid)


def unlabelled_prediction_on_background(labels, pred, labeled, num_classes: int):
    """float32 [B,H,W]: 1 where the label is background and the predicted class ``pred`` (ids
    [B,H,W]) is one the image's ``labeled`` set ([B,C]) lacks, else 0. Such a pixel may be that
    class, so neither the loss (``ignore_predicted_cross_entropy``) nor the IoU metrics
    (``metrics.metric_truth``) count it."""
    unlabeled = 1.0 - _labeled_mask(labeled, num_classes, labels.shape[0])  # [B,1,1,C], background 0
    pred_unlabeled = ops.sum(ops.one_hot(pred, num_classes) * unlabeled, axis=-1)  # 1 if pred not in L
    return ops.cast(ops.equal(labels, 0), "float32") * pred_unlabeled


def ignore_predicted_cross_entropy(y_true, logits, labeled, class_weights=None, ignore_index=DEFAULT_IGNORE_INDEX,
                                   pixel_weights=None, **ce_options):
    """CE where background pixels predicted (arg-max) as a class missing from ``labeled`` get weight 0.

    The idea of seed 004, done right: the test is on the arg-max class, per image.
    """
    labels, valid, logits, c = prepare(y_true, logits, ignore_index)
    pred = ops.argmax(ops.stop_gradient(logits), axis=-1)
    keep = 1.0 - unlabelled_prediction_on_background(labels, pred, labeled, c)
    pixel_weights = keep if pixel_weights is None else keep * _squeeze_weights(pixel_weights, valid)
    return weighted_cross_entropy(y_true, logits, class_weights, ignore_index, pixel_weights, **ce_options)


def _squeeze_weights(pixel_weights, like):
    """pixel_weights [B,H,W] (or [B,H,W,1]) as float32 [B,H,W]; ValueError unless shaped like ``like``."""
    pw = ops.cast(ops.convert_to_tensor(pixel_weights), "float32")
    if len(pw.shape) == len(like.shape) + 1 and pw.shape[-1] in (1, None):
        pw = ops.squeeze(pw, axis=-1)
    _check_broadcastable("pixel_weights", pw, like.shape,
                         "one weight per pixel of the mask, [B,H,W] or [B,H,W,1], or a shape that broadcasts to it")
    check_non_negative(pixel_weights=pw)  # a negative or NaN weight turned CE negative and Dice into 0 (QA 26)
    return pw


def marginal_log_probs(labels, logits, labeled):
    """log q(y) with background merged with every unlabelled class (logsumexp), [B,H,W]."""
    c = int(logits.shape[-1])
    # background + the classes the image's annotator left out
    merge = 1.0 - _labeled_mask(labeled, c, logits.shape[0]) + ops.one_hot(ops.zeros((1,), "int32"), c)[0]
    merged_logit = ops.logsumexp(ops.where(merge > 0, logits, _NEG), axis=-1)
    own_logit = _pick(logits, labels, c)
    target_logit = ops.where(ops.equal(labels, 0), merged_logit, own_logit)
    return target_logit - ops.logsumexp(logits, axis=-1)


def marginal_cross_entropy(y_true, logits, labeled, class_weights=None, ignore_index=DEFAULT_IGNORE_INDEX,
                           pixel_weights=None, fn_weights=None, fp_weights=None, low_confidence=None):
    """Marginal CE (Shi et al., MedIA 2021): background pixels may be any unlabelled class.

    ``-log q`` with ``log q_bg = logsumexp(logits[bg or not labelled]) - logsumexp(logits)``;
    with every class labelled it equals ``weighted_cross_entropy``.
    """
    labels, valid, logits, c = prepare(y_true, logits, ignore_index)
    per_pixel = -marginal_log_probs(labels, logits, labeled)
    weight = pixel_weight_map(labels, valid, logits, class_weights, pixel_weights, fn_weights, fp_weights,
                              low_confidence)
    return reduce_pixels(per_pixel, weight, valid)


def _log_rest(logits, picked, log_z):
    """``log(1 - p_k) = logsumexp(z_j, j != k) - logsumexp(z)`` [B,H,W] for the class k marked by the
    boolean one-hot ``picked`` [B,H,W,C] (``log_z``: logsumexp(z), [B,H,W]): never formed as 1 - p, so
    exact to float32 rounding even where p_k rounds to 1; the masked logit is _NEG, not -inf, so
    gradients stay finite."""
    return ops.logsumexp(ops.where(picked, _NEG, logits), axis=-1) - log_z


def _log_one_minus_softmax(logits, num_classes: int):
    """``log(1 - p_c)`` for every class c, [B,H,W,C], accurate however confident the model is.

    Only the top class can have p > 1/2: there ``_log_rest`` (from log_softmax it would round to
    log(0) from a margin of about 17 on, a loss capped near 16 with no gradient); every other
    class has p <= 1/2, where
    ``log1p(-p)`` is exact. The unused branches are kept finite, so are their gradients.
    """
    log_z = ops.logsumexp(logits, axis=-1)
    top = ops.one_hot(ops.argmax(logits, axis=-1), num_classes) > 0
    log_q_top = _log_rest(logits, top, log_z)[..., None]
    log_p = ops.where(top, -1.0, logits - log_z[..., None])
    return ops.where(top, log_q_top, ops.log1p(-ops.exp(log_p)))


def exclusion_loss(y_true, logits, labeled, form="ce", ignore_index=DEFAULT_IGNORE_INDEX, pixel_weights=None,
                   smooth=1.0):
    """Mutual exclusion (Shi et al. 2021): a pixel annotated as a labelled foreground class is not any
    unlabelled class c.

    ``form="ce"``: ``sum over those pixels and c of -log(1 - p_c)``, reduced like CE (divided by
    the valid pixels). ``form="dice"``: mean over (image, unlabelled c) of the Dice overlap
    ``2 sum(w p_c R) / (sum w p_c + sum w R + smooth)`` between p_c and the annotated region R
    (sums over the image's valid pixels, each pixel once with its weight w, the pixel weights
    rescaled to mean 1 as in the region losses, so the value is in [0, 1) and does not depend
    on the weights' scale; images without annotated foreground are skipped).
    """
    check_non_negative_number(smooth=smooth)
    labels, valid, logits, c = prepare(y_true, logits, ignore_index)
    labeled_mask = _labeled_mask(labeled, c, logits.shape[0])  # [B,1,1,C]
    unlabeled = 1.0 - labeled_mask
    # annotated as a labelled foreground class (0 on ignored pixels, and on a class the image's
    # labelled set lacks: contradictory data must not make the loss push against the mask)
    foreground = ops.cast(ops.greater(labels, 0), "float32") * _pick(
        ops.broadcast_to(labeled_mask, ops.shape(logits)), labels, c)
    if form == "ce":
        weight = valid if pixel_weights is None else valid * _squeeze_weights(pixel_weights, valid)
        per_pixel = -ops.sum(_log_one_minus_softmax(logits, c) * unlabeled, axis=-1)
        return reduce_pixels(per_pixel, weight * foreground, valid)
    if form != "dice":
        raise ValueError(f"exclusion_loss form must be 'ce' or 'dice', got {form!r}")
    weight = _region_weight(valid, pixel_weights)[..., None]  # [B,H,W,1], mean 1 over valid pixels
    probs = ops.softmax(logits, axis=-1)
    region = foreground[..., None]
    # each pixel counts once with its weight: sum w p_c R, sum w p_c, sum w R (not w^2 in the overlap)
    overlap = ops.sum(weight * probs * region, axis=(1, 2))  # [B,C]
    region_size = ops.sum(weight * region, axis=(1, 2))  # [B,1]
    size = ops.sum(weight * probs, axis=(1, 2)) + region_size
    dice = _ratio(2.0 * overlap, size + smooth, 0.0)  # nothing to overlap (smooth = 0): no overlap
    pairs = ops.reshape(unlabeled, (-1, c)) * ops.cast(region_size > 0, "float32")
    total = _global_sum(ops.sum(dice * pairs))
    num = _global_sum(ops.sum(pairs))
    return _replica_share(total / ops.maximum(num, 1.0))


# --------------------------------------------------------------------------- region losses
def _region_weight(valid, pixel_weights):
    """Pixel weights of the region losses: ``valid * pixel_weights`` rescaled to mean 1 over the
    valid pixels of the (global) batch.

    Sums are then in pixels, whatever the weights' unit: ``smooth`` keeps its meaning and a
    uniform weight (0.01 or 100) gives the unweighted loss. Without pixel weights: ``valid``.
    All weights 0: all 0 (the sums are 0, as for a batch with no valid pixel).
    """
    if pixel_weights is None:
        return valid
    weight = valid * _squeeze_weights(pixel_weights, valid)
    total = _global_sum(ops.sum(weight))
    count = _global_sum(ops.sum(valid))
    positive = ops.greater(total, 0.0)
    return weight * ops.where(positive, count / ops.where(positive, total, 1.0), 0.0)


def _class_sums(y_true, logits, ignore_index, pixel_weights, labeled=None):
    """Global per-class sums: (sum p*g, sum p, sum g) [C] each, over valid pixels. With ``labeled``
    ([B,C]), each image's unlabelled classes are merged into background (their probabilities
    count as background's there), as in marginal Dice."""
    labels, valid, logits, c = prepare(y_true, logits, ignore_index)
    weight = _region_weight(valid, pixel_weights)
    probs = ops.softmax(logits, axis=-1)
    if labeled is not None:
        keep = _labeled_mask(labeled, c, logits.shape[0])  # [B,1,1,C], background always 1
        moved = ops.sum(probs * (1.0 - keep), axis=-1, keepdims=True)
        probs = probs * keep + moved * ops.one_hot(ops.zeros((1,), "int32"), c)[0]
    probs = probs * weight[..., None]
    onehot = ops.one_hot(labels, c)
    axes = (0, 1, 2)
    # each pixel counts once with its weight: sum w p g, sum w p, sum w g (not w^2 in the intersection)
    inter = _global_sum(ops.sum(probs * onehot, axis=axes))
    pred = _global_sum(ops.sum(probs, axis=axes))
    truth = _global_sum(ops.sum(onehot * weight[..., None], axis=axes))
    return inter, pred, truth, c


def _weighted_class_mean(values, class_weights, c):
    if class_weights is None:
        return ops.mean(values)
    w = _class_vector(class_weights, c, "class_weights")
    return ops.sum(values * w) / ops.maximum(ops.sum(w), 1e-12)


def dice_loss(y_true, logits, class_weights=None, ignore_index=DEFAULT_IGNORE_INDEX, smooth=1.0,
              pixel_weights=None, labeled=None):
    """``1 - weighted mean_c (2 sum p_c g_c + s) / (sum p_c + sum g_c + s)`` over the batch.

    A class absent from the batch scores ``s / (sum p_c + s)``: 1 when it is not predicted
    (no penalty), lower the more it is predicted; never NaN. With ``s = 0`` a class with
    ``P_c + G_c = 0`` (a batch with no valid pixel, probabilities that underflow) scores 1 too,
    with a zero gradient, so such a batch gives 0 as with ``s > 0``.

    ``labeled`` ([B,C] multi-hot): marginal Dice (Shi et al., MedIA 2021), the Dice counterpart of
    ``marginal_cross_entropy``: in each image the probabilities of its unlabelled classes are
    added to background's, so predicting a class that image's annotator did not label is not
    counted against that class (in the plain form it is a false positive wherever the mask says
    background). With every class labelled it equals the plain form.
    """
    check_non_negative_number(smooth=smooth)
    inter, pred, truth, c = _class_sums(y_true, logits, ignore_index, pixel_weights, labeled)
    dice = _ratio(2.0 * inter + smooth, pred + truth + smooth, 1.0)
    return _replica_share(1.0 - _weighted_class_mean(dice, class_weights, c))


def generalized_dice_loss(y_true, logits, class_weights=None, ignore_index=DEFAULT_IGNORE_INDEX, smooth=1e-6,
                          pixel_weights=None):
    """Generalized Dice (Sudre et al. 2017): ``1 - (2 sum_c w_c I_c + s) / (sum_c w_c (P_c + G_c) + s)``.

    Default ``w_c`` proportional to ``1 / G_c^2`` (Sudre et al.), from the batch under
    stop_gradient, computed as ``(G_min / G_c)^2`` with G_min the smallest volume of the classes
    present: the rarest present class has weight 1. The score is a ratio, so this common factor
    changes nothing (beyond the tiny smoothing s) and cannot overflow, whatever the pixel
    weights' unit; there is no lower clamp on G_c (``1 / max(G_c, 1)^2`` changed the loss when
    weighted volumes fell below 1). Absent classes (G_c = 0, where 1 / G_c^2 is infinite) get
    the largest weight of the present classes, as MONAI's ``GeneralizedDiceLoss`` does: their
    false positives (P_c) still count in the denominator. ``class_weights`` replaces w_c.
    With ``s = 0`` and a zero denominator (no valid pixel) the score is 1: loss 0, zero gradient.
    """
    check_non_negative_number(smooth=smooth)
    inter, pred, truth, c = _class_sums(y_true, logits, ignore_index, pixel_weights)
    if class_weights is None:
        present = ops.greater(truth, 0.0)
        volume = ops.where(present, truth, ops.max(truth))  # absent classes: do not lower the minimum
        smallest = ops.min(volume)
        w = ops.where(present, ops.square(smallest / ops.where(present, truth, 1.0)), 1.0)
        w = ops.stop_gradient(w)
    else:
        w = _class_vector(class_weights, c, "class_weights")
    score = _ratio(2.0 * ops.sum(w * inter) + smooth, ops.sum(w * (pred + truth)) + smooth, 1.0)
    return _replica_share(1.0 - score)


def tversky_loss(y_true, logits, alpha=0.5, beta=0.5, class_weights=None, ignore_index=DEFAULT_IGNORE_INDEX,
                 smooth=1.0, pixel_weights=None):
    """``1 - weighted mean_c (TP_c + s) / (TP_c + alpha FP_c + beta FN_c + s)`` (Salehi et al. 2017).

    alpha weights false positives, beta false negatives (beta > alpha favours recall).
    Note: ``keras.losses.Tversky`` in Keras 3.6 applies its ``alpha`` to false negatives
    and ``beta`` to false positives (the reverse of its docstring); ours follow the paper.
    A zero denominator (``s = 0``, nothing in the class) scores 1, as in ``dice_loss``.
    """
    check_non_negative_number(alpha=alpha, beta=beta, smooth=smooth)
    tp, pred, truth, c = _class_sums(y_true, logits, ignore_index, pixel_weights)
    fp = pred - tp
    fn = truth - tp
    index = _ratio(tp + smooth, tp + alpha * fp + beta * fn + smooth, 1.0)
    return _replica_share(1.0 - _weighted_class_mean(index, class_weights, c))


__all__ = [
    "weighted_cross_entropy", "focal_loss", "dice_loss", "generalized_dice_loss", "tversky_loss",
    "ignore_predicted_cross_entropy", "marginal_cross_entropy", "exclusion_loss", "pixel_weight_map",
    "reduce_pixels", "prepare", "marginal_log_probs", "num_replicas_in_sync", "unlabelled_prediction_on_background",
]
