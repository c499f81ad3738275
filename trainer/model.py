"""A U-Net (Ronneberger et al. 2015) with configurable depth and width, as a SegmentationModel.

``depth`` down-sampling levels, ``base_filters`` channels at full resolution doubling per
level; each block is two 3x3 Conv-BatchNorm-ReLU. Decoder: 2x2 transposed convolutions and
skip concatenations. Outputs logits [B, H, W, C] in float32 (so the loss stays float32 under
``mixed_float16``). Input height and width must be divisible by ``2 ** depth``. No weights
are downloaded: the model starts from a random initialisation.
"""
from __future__ import annotations

from typing import Sequence

import keras

from trainer.segmentation_model import SegmentationModel


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
