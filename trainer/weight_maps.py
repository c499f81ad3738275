"""Image- and mask-dependent pixel weight maps [B,H,W] for the ``pixel_weights`` of the losses.

Each function returns a float32 map [B,H,W] that multiplies the per-pixel loss
(``pixel_weights=`` of ``trainer/losses.py``, or ``y["pixel_weights"]`` of the dict a
dataset yields to ``SegmentationModel``). The maps carry no gradient: they are targets,
not functions of the model's output.

=========================== ============================================= =====================================
function                    weight                                        where it is computed
=========================== ============================================= =====================================
``edge_weights``            ``1 + image_weight * |Sobel(image)| / max``   on the fly: ``keras.ops``, in a
                            ``+ boundary_weight * [mask boundary]``       ``tf.data`` map (or inside a train
                                                                          step); XLA-compatible
``unet_border_weights``     ``w_c(x) + w0 exp(-(d1 + d2)^2 / (2 sigma^2))`` offline (NumPy/SciPy distance
                            (Ronneberger et al. 2015)                     transforms), once per mask; from
                                                                          ``tf.data`` via ``tf.numpy_function``
``intensity_range_weights`` ``w_i`` where ``lo_i <= intensity < hi_i``,   on the fly (``keras.ops``,
                            else ``default``                              ``tf.data`` or train step)
``feature_extractor_weights`` ``1 + strength * normalised activation``   on the fly in ``tf.data`` with a
                            of a user Keras model, resized to [H,W]       frozen extractor, or offline for
                                                                          a large extractor
=========================== ============================================= =====================================

``benchmarks/loss_overhead.py --weight-maps`` times each one on a batch (``docs/benchmarks.md``).
Images are float [B,H,W,Ch] (any range; intensities of ``intensity_range_weights`` are
in the image's own units), masks integer [B,H,W] (or [B,H,W,1]) with ``ignore_index``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import keras
from keras import ops

from segbalance.contract import DEFAULT_IGNORE_INDEX  # noqa: E402
from segbalance.trainer.losses import check_non_negative, check_non_negative_number, check_scalar

_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], np.float32)


def _squeeze_mask(mask):
    mask = ops.cast(ops.convert_to_tensor(mask), "int32")
    return ops.squeeze(mask, axis=-1) if len(mask.shape) == 4 else mask


def _intensity(image, channel: Optional[int] = None):
    """[B,H,W] float32: one channel, or the mean over channels."""
    image = ops.cast(ops.convert_to_tensor(image), "float32")
    if len(image.shape) == 3:
        return image
    return image[..., channel] if channel is not None else ops.mean(image, axis=-1)


def sobel_magnitude(image):
    """Sobel gradient magnitude [B,H,W] of the channel-mean intensity (edges mirrored at the border)."""
    gray = _intensity(image)[..., None]  # [B,H,W,1]
    padded = ops.pad(gray, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="symmetric")
    kernel = np.stack([_SOBEL_X, _SOBEL_X.T], axis=-1)[:, :, None, :]  # [3,3,1,2]: d/dx, d/dy
    grads = ops.conv(padded, ops.convert_to_tensor(kernel), padding="valid")
    return ops.sqrt(ops.sum(ops.square(grads), axis=-1))


def mask_boundaries(mask, num_classes: int, ignore_index: int = DEFAULT_IGNORE_INDEX):
    """1.0 where a pixel's 3x3 neighbourhood holds two or more different (non-ignored) classes.

    Ignored pixels never create a boundary (their one-hot row is empty).
    """
    labels = _squeeze_mask(mask)
    valid = ops.not_equal(labels, ignore_index)
    onehot = ops.one_hot(ops.where(valid, labels, 0), num_classes) * ops.cast(valid, "float32")[..., None]
    seen = ops.max_pool(onehot, pool_size=3, strides=1, padding="same")  # [B,H,W,C]: class c within 3x3
    return ops.cast(ops.greater(ops.sum(seen, axis=-1), 1.5), "float32")


def edge_weights(image=None, mask=None, *, num_classes: Optional[int] = None, image_weight: float = 1.0,
                 boundary_weight: float = 1.0, ignore_index: int = DEFAULT_IGNORE_INDEX):
    """Edge emphasis: ``1 + image_weight * g / max(g) + boundary_weight * boundary``.

    ``g`` is the Sobel gradient magnitude of the image (normalised by its per-image
    maximum, so the term is in [0, 1]; a flat image gives 0), ``boundary`` marks pixels
    next to a different class in the mask (``mask_boundaries``; needs ``num_classes``).
    Pass ``image``, ``mask`` or both. Runs in ``keras.ops`` (``tf.data`` or XLA).
    """
    if image is None and mask is None:
        raise ValueError("edge_weights needs an image, a mask or both")
    # a negative or NaN weight parameter made the map so, which a traced fit step uses unchecked (QA 62)
    check_non_negative_number(image_weight=image_weight, boundary_weight=boundary_weight)
    weight = None
    if image is not None:
        g = sobel_magnitude(image)
        peak = ops.max(g, axis=(1, 2), keepdims=True)
        weight = 1.0 + image_weight * g / ops.maximum(peak, 1e-6)
    if mask is not None:
        if num_classes is None:
            raise ValueError("edge_weights: mask boundaries need num_classes")
        boundary = boundary_weight * mask_boundaries(mask, num_classes, ignore_index)
        weight = 1.0 + boundary if weight is None else weight + boundary
    return ops.stop_gradient(weight)


def intensity_range_weights(image, ranges: Sequence[Tuple[float, float, float]], *, default: float = 1.0,
                            channel: Optional[int] = None):
    """Weight ``w`` for pixels whose intensity lies in ``[lo, hi)``, for each ``(lo, hi, w)`` in ``ranges``.

    Intensity is ``image[..., channel]`` or the channel mean. Where ranges overlap, the
    later one wins; pixels in no range get ``default``.
    """
    if not ranges:
        raise ValueError("intensity_range_weights needs at least one (lo, hi, weight) range")
    check_non_negative_number(default=default)
    value = _intensity(image, channel)
    weight = ops.full(ops.shape(value), float(default), dtype="float32")
    for i, item in enumerate(ranges):
        if len(item) != 3:
            raise ValueError(f"intensity range {i} must be (lo, hi, weight), got {item!r}")
        lo, hi, w = (float(v) for v in item)
        check_non_negative_number(**{f"intensity range {i} weight": w})
        if not lo < hi:
            raise ValueError(f"intensity range {i}: lo={lo} must be < hi={hi}")
        inside = ops.logical_and(ops.greater_equal(value, lo), ops.less(value, hi))
        weight = ops.where(inside, w, weight)
    return ops.stop_gradient(weight)


def feature_extractor_weights(image, extractor, *, strength: float = 1.0, reduce: str = "l2"):
    """``1 + strength * a``: ``a`` = per-pixel activation magnitude of ``extractor(image)``.

    ``extractor`` is any Keras model / callable mapping [B,H,W,Ch] to features [B,h,w,F]
    (e.g. a frozen ImageNet backbone truncated at a layer). The activation magnitude
    (``"l2"`` norm or ``"mean_abs"`` over F) is resized bilinearly to [H,W] and min-max
    normalised per image to [0, 1]; a constant activation gives 0 (weights 1).
    """
    check_non_negative_number(strength=strength)
    if reduce not in ("l2", "mean_abs"):
        raise ValueError(f"feature_extractor_weights: reduce must be 'l2' or 'mean_abs', got {reduce!r}")
    image = ops.convert_to_tensor(image)
    features = ops.cast(extractor(image, training=False) if isinstance(extractor, keras.Model)
                        else extractor(image), "float32")
    if len(features.shape) != 4:
        raise ValueError(f"feature extractor must return [B,h,w,F] features, got shape {features.shape}")
    if reduce == "l2":
        act = ops.sqrt(ops.sum(ops.square(features), axis=-1, keepdims=True))
    else:
        act = ops.mean(ops.abs(features), axis=-1, keepdims=True)
    height, width = ops.shape(image)[1], ops.shape(image)[2]  # tensors where the static size is unknown
    act = ops.image.resize(act, (height, width), interpolation="bilinear")[..., 0]
    low = ops.min(act, axis=(1, 2), keepdims=True)
    high = ops.max(act, axis=(1, 2), keepdims=True)
    scaled = (act - low) / ops.maximum(high - low, 1e-6)
    return ops.stop_gradient(1.0 + strength * scaled)


# --------------------------------------------------------------------------- offline (NumPy)
def unet_border_weights(mask, *, w0: float = 10.0, sigma: float = 5.0, class_weights=None,
                        ignore_index: int = DEFAULT_IGNORE_INDEX, connectivity: int = 1) -> np.ndarray:
    """U-Net border weights (Ronneberger et al. 2015, eq. 2), NumPy float32 [B,H,W].

    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))`` with ``d1``, ``d2`` the
    Euclidean distances to the nearest and second-nearest object. Objects are the
    connected components (4-connected with ``connectivity=1``, 8 with 2) of each
    foreground class separately, so touching objects of different classes are separate.
    ``w_c`` is ``class_weights[mask]`` (1 without class weights; 0 on ignored pixels). As in the
    paper's equation 2, the border term is added on every pixel (object pixels next to a gap too,
    and ignored ones, which the losses leave out anyway).
    With fewer than two objects in an image the border term is 0. Offline: SciPy
    distance transforms, one per object; call it once per mask and store the map, or
    from ``tf.data`` through ``tf.numpy_function``.
    """
    from scipy import ndimage

    mask = np.asarray(mask)
    if mask.ndim == 4:
        mask = mask[..., 0]
    if mask.ndim != 3:
        raise ValueError(f"unet_border_weights expects masks [B,H,W], got shape {mask.shape}")
    check_non_negative_number(w0=w0)
    check_scalar(sigma=sigma)
    if not (np.isfinite(sigma) and sigma > 0):  # NaN passed 'sigma <= 0' and made every border term NaN
        raise ValueError(f"sigma must be finite and > 0, got {sigma}")
    valid = mask != ignore_index
    if class_weights is None:
        base = valid.astype(np.float32)
    else:
        check_non_negative(class_weights=class_weights)
        cw = np.asarray(class_weights, np.float32)
        if mask[valid].size and mask[valid].max() >= cw.size:
            raise ValueError(f"mask has class id {int(mask[valid].max())} but class_weights has {cw.size} values")
        base = np.where(valid, cw[np.where(valid, mask, 0)], 0.0).astype(np.float32)
    structure = ndimage.generate_binary_structure(2, connectivity)
    out = np.empty(mask.shape, np.float32)
    for b in range(mask.shape[0]):
        distances = []
        for cls in np.unique(mask[b][valid[b]]):
            if cls == 0:
                continue
            components, n = ndimage.label(mask[b] == cls, structure=structure)
            for k in range(1, n + 1):
                distances.append(ndimage.distance_transform_edt(components != k))
        border = np.zeros(mask.shape[1:], np.float64)
        if len(distances) >= 2:
            stacked = np.partition(np.stack(distances), 1, axis=0)
            border = w0 * np.exp(-np.square(stacked[0] + stacked[1]) / (2.0 * sigma ** 2))
        out[b] = base[b] + border
    return out


__all__ = ["edge_weights", "sobel_magnitude", "mask_boundaries", "intensity_range_weights",
           "feature_extractor_weights", "unet_border_weights"]
