"""tf.data input: raw examples -> transform graph -> (image, {"mask", "labeled"}) batches.

- Reads the ExampleGen TFRecords (GZIP) and applies the tf.Transform graph in ``map``
  (see ``trainer/preprocessing.py`` for why nothing is materialised).
- ``labeled`` [C] per image is joined from the ClassStats per-image table by ``source_id``
  (a ``tf.lookup.StaticHashTable``), so the labelled-set policy of the statistics (complete
  or partial) is the one the loss sees. Images not in the table (e.g. the eval split,
  whose statistics were not computed) count as completely labelled.
- Training batches are augmented with random flips and a random crop (scale 0.7 to 1)
  resized back, applied to the image, the mask (nearest) and the pixel weights together.
- ``pixel_weights`` (optional): a weight map [B,H,W] for the loss, computed on the fly from
  the transformed image and mask before augmentation (so it is cropped and flipped with
  them); ``{"type": "edge", "image_weight": 1.0, "boundary_weight": 1.0}`` uses
  ``segbalance.trainer.weight_maps.edge_weights``. Without it no map is yielded (the loss uses 1).
- Shuffle (training), batch, parallel map, prefetch; deterministic order for a seed.
  ``repeat=True`` makes the training set endless (used with ``steps_per_epoch``);
  ``drop_remainder=True`` (used on several replicas) keeps every replica's batch non-empty.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from segbalance.trainer.preprocessing import IMAGE, MASK, SOURCE_ID


def labeled_table(labeled_by_id: Dict[str, Sequence[int]], num_classes: int):
    """(StaticHashTable source_id -> row, multi-hot matrix [N+1, C] whose last row is all ones)."""
    ids = list(labeled_by_id)
    matrix = np.zeros((len(ids) + 1, num_classes), np.float32)
    for row, sid in enumerate(ids):
        matrix[row, [int(c) for c in labeled_by_id[sid]]] = 1.0
        matrix[row, 0] = 1.0
    matrix[-1] = 1.0
    if ids:
        init = tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.range(len(ids), dtype=tf.int64))
        table = tf.lookup.StaticHashTable(init, default_value=len(ids))
    else:
        table = None
    return table, tf.constant(matrix)


def augment(image, mask, weights, seed):
    """Same random flip + crop for image (bilinear), mask and weights (nearest). Batched inputs."""
    batch = tf.shape(image)[0]
    size = tf.shape(image)[1:3]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    flip_lr = tf.random.stateless_uniform([batch], seeds[0]) < 0.5
    flip_ud = tf.random.stateless_uniform([batch], seeds[1]) < 0.5

    def flip(x):
        x = tf.where(flip_lr[:, None, None, None], tf.reverse(x, [2]), x)
        return tf.where(flip_ud[:, None, None, None], tf.reverse(x, [1]), x)

    scale = tf.random.stateless_uniform([batch], seeds[2], 0.7, 1.0)
    offset = tf.random.stateless_uniform([batch, 2], seeds[3]) * (1.0 - scale[:, None])
    boxes = tf.concat([offset, offset + scale[:, None]], axis=1)
    index = tf.range(batch)
    image = tf.image.crop_and_resize(flip(image), boxes, index, size, method="bilinear")
    labels = tf.stack([tf.cast(mask, tf.float32), weights], axis=-1)
    labels = tf.image.crop_and_resize(flip(labels), boxes, index, size, method="nearest")
    return image, tf.cast(labels[..., 0], mask.dtype), labels[..., 1]


PIXEL_WEIGHT_TYPES = {"edge": {"image_weight", "boundary_weight"}}


def validate_pixel_weights(config: Optional[dict]) -> None:
    """ValueError naming the problem in a ``pixel_weights`` config (None = no map)."""
    if config is None:
        return
    if not isinstance(config, dict) or config.get("type") not in PIXEL_WEIGHT_TYPES:
        raise ValueError(f"pixel_weights must be null or a mapping with type one of {sorted(PIXEL_WEIGHT_TYPES)}, "
                         f"got {config!r}")
    extra = sorted(set(config) - {"type"} - PIXEL_WEIGHT_TYPES[config["type"]])
    if extra:
        raise ValueError(f"pixel_weights ({config['type']}): unknown parameter {extra[0]!r}; "
                         f"allowed: {sorted(PIXEL_WEIGHT_TYPES[config['type']])}")


def pixel_weight_map(image, mask, config: dict, num_classes: int, ignore_index: int):
    """float32 [B,H,W] weight map of ``config`` (see module docstring)."""
    from segbalance.trainer import weight_maps

    params = {k: float(v) for k, v in config.items() if k != "type"}
    return tf.cast(weight_maps.edge_weights(image, mask, num_classes=num_classes, ignore_index=ignore_index,
                                            **params), tf.float32)


def example_files(file_patterns: List[str]) -> List[str]:
    return sorted({f for pattern in file_patterns for f in tf.io.gfile.glob(pattern)})


def make_dataset(file_patterns: List[str], tf_transform_output, batch_size: int, num_classes: int,
                 labeled_by_id: Optional[Dict[str, Sequence[int]]] = None, training: bool = False,
                 seed: int = 0, pixel_weights: Optional[dict] = None, ignore_index: int = 255,
                 repeat: bool = False, shuffle_buffer: int = 512, drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches of (image float32 [B,H,W,3], {"mask": int32 [B,H,W], "labeled": float32 [B,C]
    (, "pixel_weights": float32 [B,H,W] when ``pixel_weights`` is given)})."""
    validate_pixel_weights(pixel_weights)
    files = example_files(file_patterns)
    if not files:
        raise ValueError(f"no example files match {file_patterns}")
    compression = "GZIP" if files[0].endswith(".gz") else None
    feature_spec = tf_transform_output.raw_feature_spec()
    transform = tf_transform_output.transform_features_layer()
    table, matrix = labeled_table(labeled_by_id or {}, num_classes)

    def to_model_inputs(serialized):
        features = transform(tf.io.parse_example(serialized, feature_spec))
        mask = tf.cast(features[MASK], tf.int32)
        # ids >= C were quarantined and counted by ClassStatsGen: never train on them
        mask = tf.where((mask >= num_classes) & (mask != ignore_index), ignore_index, mask)
        if table is not None:
            rows = table.lookup(tf.reshape(features[SOURCE_ID], [-1]))
        else:
            rows = tf.fill([tf.shape(mask)[0]], tf.cast(tf.shape(matrix)[0] - 1, tf.int64))
        y = {"mask": mask, "labeled": tf.gather(matrix, rows)}
        image = tf.cast(features[IMAGE], tf.float32)
        if pixel_weights is not None:
            y["pixel_weights"] = pixel_weight_map(image, mask, pixel_weights, num_classes, ignore_index)
        elif training:  # carried through the augmentation, dropped below
            y["pixel_weights"] = tf.ones_like(mask, tf.float32)
        return image, y

    ds = tf.data.TFRecordDataset(files, compression_type=compression, num_parallel_reads=tf.data.AUTOTUNE)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if training:
        counter = tf.data.Dataset.counter()
        ds = tf.data.Dataset.zip((ds, counter)).map(
            lambda inputs, step: _augment_batch(inputs, tf.stack([tf.cast(seed, tf.int64), step])),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if pixel_weights is None:
            ds = ds.map(lambda image, y: (image, {k: v for k, v in y.items() if k != "pixel_weights"}))
    return ds.prefetch(tf.data.AUTOTUNE)


def _augment_batch(inputs, seed):
    image, y = inputs
    image, mask, weights = augment(image, y["mask"], y["pixel_weights"], seed)
    return image, {**y, "mask": mask, "pixel_weights": weights}


def count_records(file_patterns: List[str]) -> int:
    """Number of records in the files (0 when no file matches)."""
    files = example_files(file_patterns)
    if not files:
        return 0
    compression = "GZIP" if files[0].endswith(".gz") else None
    return int(tf.data.TFRecordDataset(files, compression_type=compression).reduce(0, lambda n, _: n + 1))
