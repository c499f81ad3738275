"""A record whose image TensorFlow cannot decode (ClassStatsGen checks images' PNG chunks, not their pixel data)
stops a run inside Transform; `segbalance run` then names the record: file, record number, source id."""
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image

from segbalance.pipeline import cli
from segbalance.pipeline.span_records import SpanRecordError
from segbalance.pipeline.undecodable_records import (name_undecodable_records, undecodable_images,
                                                     undecodable_message)
from segbalance.trainer.example_codec import build_example
from tests.kubeflow_inputs import TINY, write_span_data


def _png(seed: int = 0, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _damaged_png(data: bytes) -> bytes:
    """``data`` with a byte of its zlib stream flipped and the IDAT CRC made right again: every chunk reads well."""
    at = data.find(b"IDAT")
    body = bytearray(data[at + 4:at + 4 + int.from_bytes(data[at - 4:at], "big")])
    body[5] ^= 0xFF
    return data[:at] + b"IDAT" + bytes(body) + struct.pack(">I", zlib.crc32(b"IDAT" + bytes(body))) + \
        data[at + 8 + len(body):]


def _mask() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _write_span(folder: Path, images: list, name: str = "data-00000-of-00001.tfrecord") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(folder / name)) as writer:
        for i, image in enumerate(images):
            writer.write(build_example(image, _mask(), source_id=f"img{i}", height=16, width=16).SerializeToString())
    return folder / name


def test_the_damaged_images_are_named_in_file_and_record_order(tmp_path):
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(jpeg, "JPEG")
    cut_jpeg = jpeg.getvalue()[:40]
    first = _write_span(tmp_path / "Span-3", [_png(0), _damaged_png(_png(1)), _png(2), cut_jpeg])
    second = _write_span(tmp_path / "Span-3", [_damaged_png(_png(3))], "data-00001-of-00002.tfrecord")
    with pytest.raises(tf.errors.InvalidArgumentError):  # the premise: Transform's decoder refuses both
        tf.io.decode_image(_damaged_png(_png(1)), channels=3, expand_animations=False)
    found = undecodable_images(tmp_path, [3])
    assert [(f.path, f.index, f.source_id) for f in found] == [(first, 1, "img1"), (first, 3, "img3"),
                                                               (second, 0, "img0")]
    assert found[0].reason.startswith("Invalid PNG data") and "JPEG" in found[1].reason
    assert undecodable_images(tmp_path, [2]) == []  # another span is not read


def test_a_window_s_link_is_named_by_the_user_s_own_file(tmp_path):
    own = _write_span(tmp_path / "Span-1", [_damaged_png(_png(0))])
    (tmp_path / "Span-2").mkdir()
    (tmp_path / "Span-2" / own.name).symlink_to(own)
    assert [f.path for f in undecodable_images(tmp_path, [2])] == [own]


def test_the_message_names_three_records_and_counts_the_rest(tmp_path):
    found = undecodable_images(tmp_path, [0]) or None
    assert found is None
    own = _write_span(tmp_path / "Span-0", [_damaged_png(_png(i)) for i in range(5)])
    message = undecodable_message(undecodable_images(tmp_path, [0]))
    assert message.startswith(f"TensorFlow cannot decode the image of 5 records: {own} record 1 (image/source_id "
                              f"'img0': Invalid PNG data")
    assert f"{own} record 3 (image/source_id 'img2'" in message and "record 4 (" not in message
    assert "; and 2 more: remove them from the span" in message and "\n" not in message
    one = undecodable_message(undecodable_images(tmp_path, [0])[:1])
    assert "of 1 record:" in one and "remove it from the span (write the file again without it)" in one


def _decode_error(data: bytes) -> BaseException:
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.InvalidArgumentError as exc:
        try:  # wrapped as TFX's launcher wraps a component's failure
            raise RuntimeError("the component failed") from exc
        except RuntimeError as outer:
            return outer
    raise AssertionError("decoded")


def test_only_a_decoder_s_failure_is_diagnosed_and_an_unreadable_span_keeps_the_first_error(tmp_path):
    _write_span(tmp_path / "Span-0", [_damaged_png(_png(0))])
    name_undecodable_records(RuntimeError("a bug"), tmp_path)  # not a decoder's error: returns
    with pytest.raises(SpanRecordError, match="img0") as caught:
        name_undecodable_records(_decode_error(_damaged_png(_png(0))), tmp_path)
    assert isinstance(caught.value.__cause__, RuntimeError)  # the failure it explains stays its cause
    (tmp_path / "Span-0" / "data-00000-of-00001.tfrecord").write_bytes(b"not a TFRecord file")
    name_undecodable_records(_decode_error(_damaged_png(_png(0))), tmp_path)  # cannot read: returns
    # a file that cannot be read, or a record that is no Example, is passed over; the rest is still named
    # (QA 87 L2: the whole scan was given up)
    (tmp_path / "Span-0" / "data-00001-of-00002.tfrecord").write_bytes(b"not a TFRecord file either")
    damaged = _write_span(tmp_path / "Span-0", [_damaged_png(_png(1))], "data-00002-of-00003.tfrecord")
    with tf.io.TFRecordWriter(str(tmp_path / "Span-0" / "data-00000-of-00001.tfrecord")) as writer:
        writer.write(b"\x0a\xff not an Example")
    assert [(f.path, f.source_id) for f in undecodable_images(tmp_path, [0])] == [(damaged, "img0")]
    (tmp_path / "Span-0" / "data-00002-of-00003.tfrecord").unlink()
    _write_span(tmp_path / "Span-1", [_png(0)])
    name_undecodable_records(_decode_error(_damaged_png(_png(0))), tmp_path)  # every image decodes: returns


def test_a_run_that_stops_in_transform_names_the_record(tmp_path, capsys):
    """End to end: ingest's records, one image then damaged by hand (its report is then stale, so the records are
    read like a user's own); the run stops inside Transform and says which record, in one line."""
    from tensorflow.core.example import example_pb2

    root = write_span_data(tmp_path, num_images=12)
    shard = next((root / "data" / "Span-0").glob("data-*"))
    records = [example_pb2.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(shard))]
    victim = records[4]
    image = victim.features.feature["image/encoded"].bytes_list.value
    image[0] = _damaged_png(image[0])
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    source_id = victim.features.feature["image/source_id"].bytes_list.value[0].decode()
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**TINY, "data": {"dir": str(root / "data")}}))
    assert cli.main(["run", "--config", str(config), "--output-dir", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert ("decoding the images of the span's 1 data file(s) again to name those TensorFlow cannot decode"
            in captured.out)
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert (f"error: TensorFlow cannot decode the image of 1 record: {shard} record 5 (image/source_id "
            f"{source_id!r}: Invalid PNG data, size ") in captured.err
    summary = yaml.safe_load((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["status"] == "refused" and source_id in summary["error"]


def test_a_stop_during_the_scan_stands_and_still_says_what_stopped_the_run(tmp_path, monkeypatch, capsys):
    """QA 87 L1: Ctrl-C while the records were decoded again lost the decoder's words (only 'interrupted' was said)."""
    from segbalance.pipeline import undecodable_records

    _write_span(tmp_path / "Span-0", [_damaged_png(_png(0))])

    def interrupted(*args):
        raise KeyboardInterrupt()

    monkeypatch.setattr(undecodable_records, "undecodable_images", interrupted)
    with pytest.raises(KeyboardInterrupt):
        name_undecodable_records(_decode_error(_damaged_png(_png(0))), tmp_path)
    said = capsys.readouterr().out.splitlines()
    assert said[-1].startswith("segbalance run: stopped while naming them; the run had failed on an image "
                               "TensorFlow cannot decode (Invalid PNG data, size "), said
    assert "run again to name the records" in said[-1]
