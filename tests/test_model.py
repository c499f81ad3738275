"""U-Net and backbone U-Net: shapes, sizes, errors, float32 logits under mixed precision, no downloads."""
import keras
import numpy as np
import pytest

from segbalance.trainer.model import build_backbone_unet, build_model, build_unet
from segbalance.trainer.segmentation_model import SegmentationModel


def conv_params(k, cin, cout, bias=True):
    return k * k * cin * cout + (cout if bias else 0)


def test_unet_shapes_and_parameter_count_match_a_hand_count():
    model = build_unet((16, 24), 3, depth=1, base_filters=4)
    assert isinstance(model, SegmentationModel)
    out = model(np.zeros((2, 16, 24, 3), np.float32))
    assert out.shape == (2, 16, 24, 3) and out.dtype.name == "float32"
    bn = lambda c: 4 * c  # noqa: E731  gamma, beta, moving mean, moving variance
    expected = (conv_params(3, 3, 4, False) + bn(4) + conv_params(3, 4, 4, False) + bn(4)          # down0
                + conv_params(3, 4, 8, False) + bn(8) + conv_params(3, 8, 8, False) + bn(8)        # bottom
                + conv_params(2, 8, 4)                                                             # up0
                + conv_params(3, 8, 4, False) + bn(4) + conv_params(3, 4, 4, False) + bn(4)        # dec0
                + conv_params(1, 4, 3))                                                            # logits
    assert model.count_params() == expected


def test_depth_and_width_change_the_model():
    small = build_unet((32, 32), 2, depth=2, base_filters=4)
    deeper = build_unet((32, 32), 2, depth=3, base_filters=4)
    wider = build_unet((32, 32), 2, depth=2, base_filters=8)
    assert len(deeper.layers) > len(small.layers)
    assert small.count_params() < wider.count_params() and small.count_params() < deeper.count_params()
    assert min(layer.output.shape[1] for layer in deeper.layers if len(layer.output.shape) == 4) == 32 // 8


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="divisible by 2\\*\\*depth = 8"):
        build_unet((20, 32), 3, depth=3)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        build_unet((16, 16), 1, depth=1)
    with pytest.raises(ValueError, match="unknown backbone 'NoSuchNet'"):
        build_backbone_unet((32, 32), 3, "NoSuchNet", depth=2)


def test_mixed_float16_keeps_float32_logits():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_unet((16, 16), 3, depth=2, base_filters=4)
        assert model.layers[1].compute_dtype == "float16"
        assert model(np.zeros((1, 16, 16, 3), np.float32)).dtype.name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_backbone_unet_random_init_without_download(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a weight download was attempted")

    from keras.src.utils import file_utils

    monkeypatch.setattr(keras.utils, "get_file", no_download)
    monkeypatch.setattr(file_utils, "get_file", no_download)  # what keras.applications calls
    model = build_model({"image_size": [32, 32], "backbone": "MobileNetV2", "depth": 3, "base_filters": 4}, 3)
    assert model(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 32, 32, 3)
    assert any(layer.name.startswith("block_") for layer in model.get_layer("encoder").layers)  # MobileNetV2
    assert build_model({"image_size": [16, 16], "depth": 1, "base_filters": 4}, 2).name == "unet_d1_f4"
