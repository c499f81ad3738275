"""A U-Net (Ronneberger et al. 2015) with configurable depth and width, as a SegmentationModel.

``depth`` down-sampling levels, ``base_filters`` channels at full resolution doubling per
level; each block is two 3x3 Conv-BatchNorm-ReLU. Decoder: 2x2 transposed convolutions and
skip concatenations. Outputs logits [B, H, W, C] in float32 (so the loss stays float32 under
``mixed_float16``). Input height and width must be divisible by ``2 ** depth``. No weights
are downloaded: the model starts from a random initialisation.

``build_backbone_unet`` swaps the encoder for a ``keras.applications`` model (e.g.
``"MobileNetV2"``, ``"ResNet50"``, ``"EfficientNetB0"``) built with ``weights=None`` (random
init, nothing downloads); its skip connections are the last feature maps at strides 2, 4,
8 and 16, found by output shape, so any application whose features halve in size works.
``build_model(training)`` picks one of the two from the ``training`` config section;
``training.image_size`` is checked against ``2 ** depth`` (``2 ** (depth + 1)`` with a
backbone) when the config is loaded (``trainer/training_config.py``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import keras

from segbalance.trainer.segmentation_model import SegmentationModel


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


def build_backbone_unet(image_size: Sequence[int], num_classes: int, backbone: str, base_filters: int = 16,
                        depth: int = 3) -> SegmentationModel:
    """U-Net decoder on a randomly initialised ``keras.applications.<backbone>`` encoder."""
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
    encoder = factory(include_top=False, weights=None, input_tensor=inputs)
    features = _backbone_features(encoder, height, width)
    strides = [2 ** k for k in range(1, depth + 2)]
    missing = [s for s in strides if s not in features]
    if missing:
        raise ValueError(f"backbone {backbone!r} has no feature map at stride(s) {missing} for {height}x{width}")
    x = features[strides[-1]]
    for level in reversed(range(depth)):  # strides[level] is the skip at this level
        filters = base_filters * 2 ** (level + 1)
        x = keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}")(x)
        x = keras.layers.Concatenate(name=f"skip{level}")([x, features[strides[level]]])
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
                                   training.depth)
    return build_unet(training.image_size, num_classes, training.depth, training.base_filters)
