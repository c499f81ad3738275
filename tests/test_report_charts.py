"""The report's charts stay readable with many classes (QA 76: at 150-255 classes bar charts were 8,000-15,000 px
wide strips and the heat maps 90-megapixel PNGs with sub-pixel labels)."""
import base64
import io
import re

import numpy as np
from PIL import Image

from segbalance.pipeline import report_charts as charts


def _size(tag: str):
    data = re.search(r'src="data:image/png;base64,([^"]+)"', tag).group(1)
    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        return image.size


def test_most_pixels_keeps_the_largest_in_id_order():
    assert charts.most_pixels([5, 1, 9, 1, 7], 3) == [0, 2, 4]
    assert charts.most_pixels([1, 1, 1], 2) == [0, 1]  # ties: the lower ids
    assert charts.most_pixels([3, 2], 5) == [0, 1]


def test_many_classes_run_down_the_page_and_few_across():
    rng = np.random.default_rng(0)
    few, many = [f"c{i}" for i in range(6)], [f"class_{i}" for i in range(150)]
    for names in (few, many):
        freq = rng.random(len(names)) / len(names)
        tags = [charts.frequency_bars(names, freq, freq),
                charts.weight_bars(names, {"uniform": [1.0] * len(names), "enet": list(1 + freq)}),
                charts.iou_bars(names, [None] + list(freq[1:]))]
        for tag in tags:
            width, height = _size(tag)
            if names is few:
                assert width > height  # columns
            else:  # one row per class, within a page's width
                assert width <= 1100 and height >= 150 * 14, (width, height)  # >= 14 px a row (8-point labels: ~11)


def test_heat_maps_and_the_span_chart_show_the_classes_with_the_most_pixels():
    names = [f"class_{i}" for i in range(255)]
    matrix = np.zeros((255, 255), np.int64)
    np.fill_diagonal(matrix, np.arange(255))  # class 254 the most pixels, class 0 none
    tag = charts.heatmap(matrix, names, "confusion", "truth", "prediction")
    width, height = _size(tag)
    assert width * height < 4e6, (width, height)  # was 10,050 x 9,056
    assert f"confusion: the {charts.MANY_CLASSES} of 255 classes with the largest totals" in tag
    frequencies = np.tile(np.arange(150, dtype=float) / 150 ** 2, (3, 1))
    colours = [(i % 256, 0, 0) for i in range(150)]
    tag = charts.span_lines([0, 1, 2], names[:150], frequencies, colours, [False, True, False])
    width, height = _size(tag)
    assert height < 800, (width, height)  # the legend was 2,300 px tall
    few = charts.heatmap(matrix[:5, :5], names[:5], "confusion", "truth", "prediction")
    assert "largest totals" not in few


def test_a_rare_class_is_drawn_above_the_log_scale_floor():
    assert charts.log_floor([0.5, 0.0, 4.5e-8]) == 4.5e-9  # (it was drawn at 1e-7, as if it had no pixels)
    assert charts.log_floor([0.5, 0.0, 0.01]) == 1e-7 and charts.log_floor([0.0]) == 1e-7
