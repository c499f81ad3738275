"""A U-Net (Ronneberger et al. 2015) with configurable depth and width, as a SegmentationModel.

``depth`` down-sampling levels, ``base_filters`` channels at full resolution doubling per
level; each block is two 3x3 Conv-BatchNorm-ReLU. Decoder: 2x2 transposed convolutions and
skip concatenations. Outputs logits [B, H, W, C] in float32 (so the loss stays float32 under
``mixed_float16``). Input height and width must be divisible by ``2 ** depth``. No weights
are downloaded: the model starts from a random initialisation.

``build_backbone_unet`` swaps the encoder for a ``keras.applications`` model (e.g.
``"MobileNetV2"``, ``"ResNet50"``, ``"EfficientNetB0"``), nested as the layer ``encoder``
(a model whose outputs are the last feature maps at strides 2, 4, 8 and 16, found by
output shape, so any application whose features halve in size works). Its weights
(``training.backbone_weights``): None (random init), ``"imagenet"`` (keras.applications'
file from the Keras cache; ``imagenet_weights_guard`` stops with a ``UserError`` naming the
file when it is not cached and the weights host is unreachable, before anything
downloads or trains) or the path of a weights file of that backbone. The family's own
``preprocess_input`` (``keras.applications.<family>``) runs first in the model
(``BackbonePreprocess``), on the 0..255 pixels Transform passes with a backbone.
``build_model(training)`` picks one of the two from the ``training`` config section;
``training.image_size`` is checked against ``2 ** depth`` (``2 ** (depth + 1)`` with a
backbone) when the config is loaded (``trainer/training_config.py``).
"""
from __future__ import annotations

import contextlib
import os
import socket
import warnings
from typing import Optional, Sequence
from urllib.parse import urlparse

import keras

from segbalance.contract import UserError, message_excerpt
from segbalance.trainer.remote_files import is_remote, local_copy_of
from segbalance.trainer.segmentation_model import SegmentationModel
from segbalance.trainer.training_config import weights_file_problem

ENCODER = "encoder"  # the nested backbone's layer name (frozen by training.freeze_encoder_epochs)


class BackboneWeightsError(ValueError, UserError):
    """``training.backbone_weights`` cannot be used; the message says what to do."""


@keras.saving.register_keras_serializable(package="segbalance")
class BackbonePreprocess(keras.layers.Layer):
    """``keras.applications.<family>.preprocess_input`` as a (serialisable) layer."""

    def __init__(self, family: str, **kwargs):
        super().__init__(**kwargs)
        self.family = family

    def call(self, inputs):
        return getattr(keras.applications, self.family).preprocess_input(inputs)

    def get_config(self):
        return {**super().get_config(), "family": self.family}


def backbone_family(backbone: str) -> str:
    """The keras.applications module of a class name, e.g. MobileNetV2 -> mobilenet_v2."""
    factory = getattr(keras.applications, backbone)
    family = factory.__module__.rsplit(".", 1)[-1]
    if not hasattr(getattr(keras.applications, family, None), "preprocess_input"):
        raise ValueError(f"backbone {backbone!r}: no keras.applications.{family}.preprocess_input")
    return family


def keras_cache_dir() -> str:
    """Where keras.utils.get_file caches application weights (``$KERAS_HOME`` or ~/.keras, then models/)."""
    from keras.src.backend.config import keras_home

    base = os.path.expanduser(keras_home())
    if not os.access(base, os.W_OK) and not os.path.isdir(os.path.join(base, "models")):
        base = os.path.join("/tmp", ".keras")  # get_file's own fallback
    return os.path.join(base, "models")


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """A TCP connection to the URL's host opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def imagenet_weights_guard(backbone: str):
    """While keras.applications fetches ImageNet weights: a cached file is used; an uncached one is
    downloaded only when its host answers, else ``BackboneWeightsError`` naming the file to place
    in the Keras cache (checked before any download starts, so offline runs stop at once)."""
    from keras.src.utils import file_utils

    real_get_file = file_utils.get_file

    def get_file(fname=None, origin=None, *args, **kwargs):
        cache = (os.path.join(os.path.expanduser(kwargs["cache_dir"]), kwargs.get("cache_subdir", "datasets"))
                 if kwargs.get("cache_dir") else keras_cache_dir())
        name = fname or os.path.basename(urlparse(origin).path)
        if not os.path.exists(os.path.join(cache, name)) and not host_reachable(origin):
            raise BackboneWeightsError(
                f"training.backbone_weights: imagenet: the {backbone} weights file {name} is not in the Keras cache "
                f"and {urlparse(origin).hostname} is unreachable; download {origin} and place it as "
                f"{os.path.join(cache, name)} (or set training.backbone_weights: null)")
        return real_get_file(fname, origin, *args, **kwargs)

    file_utils.get_file = get_file
    try:
        yield
    finally:
        file_utils.get_file = real_get_file


class _WeightsAvailable(Exception):
    """Raised by ``check_backbone_weights``'s stand-in download once the guard has passed."""


def check_backbone_weights(training) -> None:
    """Before a pipeline starts: ``BackboneWeightsError`` (a UserError) when ``training.backbone_weights``
    cannot be had: a PATH that is not a file or does not load into the backbone, or ImageNet weights neither in the Keras cache nor
    downloadable (the same check SegTrainer's ``imagenet_weights_guard`` makes, without downloading:
    keras.applications names the file, then the stand-in download stops). Nothing to check without
    a backbone or weights."""
    weights, backbone = training.backbone_weights, training.backbone
    if not backbone or weights is None:
        return
    if weights != "imagenet":  # loaded once here: a damaged or another model's file stops the run now
        height, width = (int(s) for s in training.image_size)
        load_backbone(backbone, height, width, weights)
        keras.backend.clear_session()
        return
    from keras.src.utils import file_utils

    real_get_file = file_utils.get_file

    def stop_before_download(*args, **kwargs):
        raise _WeightsAvailable()

    file_utils.get_file = stop_before_download
    try:
        with imagenet_weights_guard(backbone):  # wraps the stand-in: checks the cache and the host first
            height, width = (int(s) for s in training.image_size)
            with warnings.catch_warnings():  # "input_shape is undefined or non-square": a note for training, not here
                warnings.simplefilter("ignore", UserWarning)
                getattr(keras.applications, backbone)(include_top=False, weights="imagenet",
                                                      input_shape=(height, width, 3))
    except _WeightsAvailable:
        pass
    finally:
        file_utils.get_file = real_get_file


def _block(x, filters: int, name: str):
    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        # momentum 0.9: short trainings (a few hundred steps) still get usable moving statistics
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = keras.layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def build_unet(image_size: Sequence[int], num_classes: int, depth: int = 3, base_filters: int = 16,
               dropout: float = 0.0) -> SegmentationModel:
    height, width = (int(s) for s in image_size)
    factor = 2 ** depth
    if height % factor or width % factor:
        raise ValueError(f"image_size {height}x{width} must be divisible by 2**depth = {factor}; "
                         f"change training.image_size or training.depth")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    inputs = keras.Input((height, width, 3), name="image")
    x, skips = inputs, []
    for level in range(depth):
        x = _block(x, base_filters * 2 ** level, f"down{level}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(name=f"pool{level}")(x)
    x = _block(x, base_filters * 2 ** depth, "bottom")
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    for level in reversed(range(depth)):
        x = keras.layers.Conv2DTranspose(base_filters * 2 ** level, 2, strides=2, name=f"up{level}")(x)
        x = keras.layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _block(x, base_filters * 2 ** level, f"dec{level}")
    logits = keras.layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
    return SegmentationModel(inputs=inputs, outputs=logits, name=f"unet_d{depth}_f{base_filters}")


def _backbone_features(backbone: keras.Model, height: int, width: int):
    """{stride: last layer output at that stride} for strides 2..32 of a keras.applications model."""
    features = {}
    for layer in backbone.layers:
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # layers with several outputs
            continue
        if len(shape) != 4 or not shape[1]:
            continue
        stride = height // shape[1]
        if stride > 1 and shape[1] * stride == height and shape[2] * stride == width:
            features[stride] = layer.output
    return features


def remote_weights_problem(weights: Optional[str]) -> Optional[str]:
    """Why a ``backbone_weights`` file on a remote file system (gs://, s3://) cannot be read here, or None."""
    if not weights or not is_remote(weights):
        return None
    import tensorflow as tf

    if not tf.io.gfile.exists(weights) or tf.io.gfile.isdir(weights):
        return (f"training.backbone_weights: {weights} is not a file this machine can read; give the path of a weights "
                f"file (model.save_weights), imagenet or null")
    return None


def load_backbone(backbone: str, height: int, width: int, weights: Optional[str] = None) -> keras.Model:
    """``keras.applications.<backbone>(include_top=False)`` at this input size with ``weights`` (None,
    "imagenet" or a file); BackboneWeightsError (a UserError) naming the field when they cannot be had."""
    factory = getattr(keras.applications, backbone)
    problem = weights_file_problem(backbone, weights) or remote_weights_problem(weights)
    if problem:
        raise BackboneWeightsError(problem)
    try:
        if weights == "imagenet":
            with imagenet_weights_guard(backbone):
                return factory(include_top=False, weights="imagenet", input_shape=(height, width, 3))
        with local_copy_of(weights) as local:  # a file on gs:// (a compiled pipeline's): h5py reads local files
            return factory(include_top=False, weights=local, input_shape=(height, width, 3))
    except BackboneWeightsError:
        raise
    except (ValueError, OSError) as exc:
        if weights is None:
            raise
        raise BackboneWeightsError(f"training.backbone_weights: {weights} does not load into {backbone} "
                                   f"(include_top=False): {first_reason(str(exc))}") from exc


def first_reason(text: str, limit: int = 400) -> str:
    """The first line of a library's message, with the line after it when it ends in a colon (Keras: "...
    Example error message for object <Conv2D name=Conv1, built=True>:" and the reason on the next line;
    QA 27: the line ended at the colon); cut at a word past ``limit`` characters."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    reason = lines[0] + (f" {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else "")
    return message_excerpt(reason, limit)


def build_encoder(backbone: str, height: int, width: int, depth: int, weights: Optional[str] = None) -> keras.Model:
    """``keras.applications.<backbone>`` (``weights``: None, "imagenet" or a file) as a model whose
    outputs are its feature maps at strides 2 .. 2**(depth+1)."""
    encoder = load_backbone(backbone, height, width, weights)
    features = _backbone_features(encoder, height, width)
    strides = [2 ** k for k in range(1, depth + 2)]
    missing = [s for s in strides if s not in features]
    if missing:
        raise ValueError(f"backbone {backbone!r} has no feature map at stride(s) {missing} for {height}x{width}")
    return keras.Model(encoder.input, [features[s] for s in strides], name=ENCODER)


def build_backbone_unet(image_size: Sequence[int], num_classes: int, backbone: str, base_filters: int = 16,
                        depth: int = 3, weights: Optional[str] = None) -> SegmentationModel:
    """U-Net decoder on a ``keras.applications.<backbone>`` encoder (``weights``: see module docstring)."""
    height, width = (int(s) for s in image_size)
    factor = 2 ** (depth + 1)
    if height % factor or width % factor:
        raise ValueError(f"image_size {height}x{width} must be divisible by {factor} for backbone {backbone!r} "
                         f"with depth {depth}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    factory = getattr(keras.applications, backbone, None)
    if not callable(factory) or backbone[:1].islower():
        known = [n for n in dir(keras.applications) if n[:1].isupper()]
        raise ValueError(f"unknown backbone {backbone!r}; use one of keras.applications: {', '.join(known)}")
    inputs = keras.Input((height, width, 3), name="image")
    encoder = build_encoder(backbone, height, width, depth, weights)
    features = encoder(BackbonePreprocess(backbone_family(backbone), name="preprocess")(inputs))
    x = features[-1]
    for level in reversed(range(depth)):  # features[level] is the skip at this level (stride 2**(level+1))
        filters = base_filters * 2 ** (level + 1)
        x = keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}")(x)
        x = keras.layers.Concatenate(name=f"skip{level}")([x, features[level]])
        x = _block(x, filters, f"dec{level}")
    x = keras.layers.Conv2DTranspose(base_filters, 2, strides=2, name="up_full")(x)
    x = _block(x, base_filters, "dec_full")
    logits = keras.layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
    return SegmentationModel(inputs=inputs, outputs=logits, name=f"unet_{backbone.lower()}")


def build_model(training, num_classes: int) -> SegmentationModel:
    """The model ``training`` (a ``TrainingConfig``, or its mapping: image_size, depth, base_filters,
    backbone) asks for."""
    if isinstance(training, dict):
        from segbalance.trainer.training_config import TrainingConfig
        from segbalance.trainer.typed_config import from_dict

        training = from_dict(TrainingConfig, training, "training")
    if training.backbone:
        return build_backbone_unet(training.image_size, num_classes, training.backbone, training.base_filters,
                                   training.depth, training.backbone_weights)
    return build_unet(training.image_size, num_classes, training.depth, training.base_filters)
