"""preprocessing_fn: decoding, nearest-neighbour masks, and train-split mean/std from tf.Transform."""
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests import trainer_inputs as ti
from segbalance.trainer import example_codec as codec
from segbalance.trainer.preprocessing import (IMAGE, MASK, SOURCE_ID, decode_resize_image, decode_resize_mask,
                                   dense_column)


def test_dense_column_from_dense_and_sparse():
    dense = tf.constant([[b"a"], [b"b"]])
    assert dense_column(dense, b"").numpy().tolist() == [b"a", b"b"]
    sparse = tf.sparse.from_dense(tf.constant([[b"x"], [b"y"]]))
    assert dense_column(sparse, b"").numpy().tolist() == [b"x", b"y"]


def test_mask_resize_is_nearest_and_keeps_ids():
    blocks = np.kron(np.array([[0, 3], [255, 1]], np.uint8), np.ones((8, 8), np.uint8))  # 16x16
    down = decode_resize_mask(tf.constant([codec.encode_png(blocks)]), [8, 8]).numpy()[0]
    np.testing.assert_array_equal(down, blocks[::2, ::2])
    odd = np.random.default_rng(0).choice(np.array([0, 2, 255], np.uint8), (10, 7))
    up = decode_resize_mask(tf.constant([codec.encode_png(odd)]), [16, 16]).numpy()
    assert up.dtype == np.int64 and set(np.unique(up)) <= {0, 2, 255}
    empty = decode_resize_mask(tf.constant([b"", codec.encode_png(blocks)]), [4, 4], ignore_index=9).numpy()
    np.testing.assert_array_equal(empty[0], np.full((4, 4), 9))  # what serving's unfed mask becomes
    np.testing.assert_array_equal(empty[1], blocks[::4, ::4])


def test_image_decode_grey_png_and_jpeg_to_three_channels():
    grey = np.full((6, 6), 100, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 6, 3), 50, np.uint8)).save(buffer, format="JPEG", quality=95)
    out = decode_resize_image(tf.constant([codec.encode_png(grey), buffer.getvalue()]), [4, 4]).numpy()
    assert out.shape == (2, 4, 4, 3)
    np.testing.assert_allclose(out[0], 100.0)
    np.testing.assert_allclose(out[1], 50.0, atol=2.0)


def raw_batch(tf_transform_output, split):
    uris = ti.tiny_pipeline()
    files = tf.io.gfile.glob(os.path.join(uris["examples"], f"Split-{split}", "*"))
    records = list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())
    return records, tf.io.parse_example(records, tf_transform_output.raw_feature_spec())


@pytest.mark.slow
def test_transform_normalises_with_train_split_statistics_only():
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(ti.tiny_pipeline()["transform_graph"])
    layer = output.transform_features_layer()
    size = ti.CONFIG["image_size"]
    for split in ("train", "eval"):
        records, raw = raw_batch(output, split)
        transformed = layer(raw)
        resized = []
        for record in records:
            parsed = codec.parse_record(record)
            image = codec.decode_array(parsed.image_bytes)
            resized.append(tf.image.resize(image.astype(np.float32), size, method="bilinear").numpy())
        resized = np.stack(resized).reshape(-1, 3)
        if split == "train":
            mean, std = resized.mean(0), resized.std(0)  # NumPy reference over the train split
        got = transformed[IMAGE].numpy().reshape(-1, 3)
        np.testing.assert_allclose(got, (resized - mean) / std, rtol=1e-4, atol=1e-4)
        assert transformed[MASK].shape == (len(records), *size)
        assert [s.decode() for s in transformed[SOURCE_ID].numpy()] == [
            codec.parse_record(r).source_id for r in records]
    # serving passes only the image: the outputs that need the mask are dropped, not failed
    served = layer({codec.IMAGE_KEY: raw[codec.IMAGE_KEY]})
    assert set(served) == {IMAGE}


def test_channel_statistics_are_the_same_to_the_bit_in_any_record_order(tmp_path):
    """Session 31: tft.mean / tft.var accumulate in float32, and two runs of `make run` (same data, seed and
    machine) normalised pixels 3e-5 apart, so their trainings parted in the first batch and pushed models 0.026
    mIoU apart. The float64 sums give the NumPy float64 figures, whatever order Beam combines the records in."""
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    from segbalance.trainer.preprocessing import channel_statistics

    rng = np.random.default_rng(0)
    rows = [{"pixels": rng.uniform(0, 255, (64, 3)).astype(np.float32) * rng.uniform(0.2, 1.0)} for _ in range(60)]
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(
        {"pixels": tf.io.FixedLenFeature([64, 3], tf.float32)}))

    def statistics(inputs):
        mean, std = channel_statistics(tf.reshape(inputs["pixels"], [-1, 3]))
        batch = tf.shape(inputs["pixels"])[0]
        return {"mean": tf.tile(mean[None], [batch, 1]), "std": tf.tile(std[None], [batch, 1])}

    def analysed(ordered, name):
        with beam.Pipeline(argv=["--direct_running_mode=in_memory", "--direct_num_workers=1"]) as pipeline, \
                tft_beam.Context(temp_dir=str(tmp_path / name)):
            data = pipeline | beam.Create(ordered, reshuffle=False)
            (transformed, _), _ = (data, metadata) | tft_beam.AnalyzeAndTransformDataset(statistics)
            _ = (transformed | beam.Map(lambda row: json.dumps({k: v.tolist() for k, v in row.items()}))
                 | beam.io.WriteToText(str(tmp_path / name / "out"), shard_name_template=""))
        out = [json.loads(line) for line in (tmp_path / name / "out").read_text().splitlines()]
        assert len(out) == len(ordered)
        return (np.array([row["mean"] for row in out], np.float32), np.array([row["std"] for row in out], np.float32))

    pixels = np.concatenate([r["pixels"] for r in rows]).astype(np.float64)
    for name, ordered in (("given", rows), ("reversed", rows[::-1]),
                          ("shuffled", [rows[i] for i in rng.permutation(len(rows))])):
        mean, std = analysed(ordered, name)
        np.testing.assert_array_equal(mean, np.broadcast_to(pixels.mean(0).astype(np.float32), mean.shape))
        np.testing.assert_array_equal(std, np.broadcast_to(pixels.std(0).astype(np.float32), std.shape))
