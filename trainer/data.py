"""tf.data input: raw examples -> transform graph -> (image, {"mask", "labeled"}) batches.

- Reads the ExampleGen TFRecords (GZIP) and applies the tf.Transform graph in ``map``
  (see ``trainer/preprocessing.py`` for why nothing is materialised).
- ``labeled`` [C] per image is joined from the ClassStats per-image table by ``source_id``
  (a ``tf.lookup.StaticHashTable``), so the labelled-set policy of the statistics (complete
  or partial) is the one the loss and the validation metrics see (the eval split's rows are in
  the artifact's ``uncounted_per_image`` table). Images not in the table (an artifact written
  before that table existed) count as completely labelled.
- Training batches (only) are augmented on the CPU, each part set in ``training.augmentation``
  (``trainer/training_config.py``): random flips, 90-degree rotations (square images; 180
  degrees otherwise), a random zoom in ``scale`` (> 1 crops a random window, < 1 shrinks the
  image into a random place) resized back to the same size, then brightness / contrast
  jitter of the image. The geometry is applied to the image (bilinear), the mask (nearest
  neighbour, so only its own values appear) and the pixel weights (nearest) together; where
  a shrunk image leaves a border, the image is 0 (then shifted by the brightness / contrast
  jitter with the rest), the mask ``ignore_index`` (not background) and the weight 0. Stateless random ops seeded by (``seed``, batch number):
  the same seed gives the same batches.
- ``pixel_weights`` (optional): a weight map [B,H,W] for the loss (``training.pixel_weights``:
  ``edge``, ``unet_border``, ``intensity_range`` or ``feature_extractor``, parameters in
  ``trainer/training_config.py``, formulas in ``trainer/weight_maps.py``), computed on the fly
  from the transformed image and mask before augmentation (so it is cropped and flipped with
  them; ``unet_border`` runs in NumPy through ``tf.numpy_function``). Without it no map is
  yielded (the loss uses 1).
- Shuffle (training), batch, parallel map, prefetch; deterministic order for a seed: pass p
  over the files is shuffled with (seed, p), batch i of the stream augmented with (seed, i),
  so a training resumed at an epoch (``start_batch``) sees the batches an uninterrupted one saw.
  ``repeat=True`` makes the training set endless (used with ``steps_per_epoch``);
  ``drop_remainder=True`` (used on several replicas) keeps every replica's batch non-empty.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from segbalance.contract import DEFAULT_IGNORE_INDEX, UserError
from segbalance.trainer.preprocessing import IMAGE, MASK, SOURCE_ID

# Every function given to tf.data is traced as written (its Python `if`s test Python values, never
# tensors): AutoGraph would rewrite it and all it calls, the Transform layer's tf_keras internals
# included, about 10 s of Python per training on a 2-core CPU (make_dataset 11.3 s -> 0.9 s)
no_autograph = tf.autograph.experimental.do_not_convert


def labeled_table(labeled_by_id: Dict[str, Sequence[int]], num_classes: int):
    """(StaticHashTable source_id -> row, multi-hot matrix [N+1, C] whose last row is all ones)."""
    ids = list(labeled_by_id)
    matrix = np.zeros((len(ids) + 1, num_classes), np.float32)
    for row, sid in enumerate(ids):
        classes = [int(c) for c in labeled_by_id[sid]]
        outside = [c for c in classes if not 0 <= c < num_classes]
        if outside:  # (QA 66: an IndexError naming nothing, and a negative id marked a class from the end)
            raise ValueError(f"labelled classes of {sid!r}: ids {outside} outside [0, {num_classes}) (a per-image "
                             f"table of another class count? ClassStatsGen quarantines such records)")
        matrix[row, classes] = 1.0
        matrix[row, 0] = 1.0
    matrix[-1] = 1.0
    if ids:
        init = tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.range(len(ids), dtype=tf.int64))
        table = tf.lookup.StaticHashTable(init, default_value=len(ids))
    else:
        table = None
    return table, tf.constant(matrix)


def augment(image, mask, weights, seed, config=None, ignore_index: int = DEFAULT_IGNORE_INDEX):
    """Batched (image [B,H,W,3], mask [B,H,W], weights [B,H,W]) augmented as ``config`` (an
    ``Augmentation``; None: its defaults) says, with stateless ops seeded by ``seed`` [2]."""
    from segbalance.trainer.training_config import Augmentation

    config = config or Augmentation()
    batch = tf.shape(image)[0]
    size = tf.shape(image)[1:3]
    image_shape = image.shape
    seeds = tf.random.experimental.stateless_split(seed, 7)
    labels = [tf.cast(mask, tf.float32)[..., None], tf.cast(weights, tf.float32)[..., None]]

    def geometric(fn):
        nonlocal image, labels
        image, labels = fn(image), [fn(x) for x in labels]

    def maybe(flag, fn):
        return lambda x: tf.where(flag[:, None, None, None], fn(x), x)

    if config.flip_horizontal:
        geometric(maybe(tf.random.stateless_uniform([batch], seeds[0]) < 0.5, lambda x: tf.reverse(x, [2])))
    if config.flip_vertical:
        geometric(maybe(tf.random.stateless_uniform([batch], seeds[1]) < 0.5, lambda x: tf.reverse(x, [1])))
    if config.rotate90:
        square = image.shape[1] is not None and image.shape[1] == image.shape[2]
        k = tf.random.stateless_uniform([batch], seeds[2], 0, 4, tf.int32)
        for turns in ((1, 2, 3) if square else (2,)):
            geometric(maybe(tf.equal(k, turns) if square else k >= 2, lambda x, t=turns: tf.image.rot90(x, t)))
    lo, hi = config.scale
    if (lo, hi) != (1.0, 1.0):
        zoom = tf.random.stateless_uniform([batch], seeds[3], lo, hi)
        side = 1.0 / zoom  # box side in normalised coordinates; > 1 reaches outside the image
        offset = tf.random.stateless_uniform([batch, 2], seeds[4]) * (1.0 - side[:, None])
        boxes = tf.concat([offset, offset + side[:, None]], axis=1)
        index = tf.range(batch)
        image = tf.image.crop_and_resize(image, boxes, index, size, method="bilinear", extrapolation_value=0.0)
        labels = [tf.image.crop_and_resize(x, boxes, index, size, method="nearest", extrapolation_value=fill)
                  for x, fill in zip(labels, (float(ignore_index), 0.0))]
    if config.brightness or config.contrast:
        mean = tf.reduce_mean(image, axis=[1, 2], keepdims=True)
        if config.contrast:
            factor = tf.random.stateless_uniform([batch, 1, 1, 1], seeds[5], 1.0 - config.contrast,
                                                 1.0 + config.contrast)
            image = (image - mean) * factor + mean
        if config.brightness:
            spread = tf.math.reduce_std(image, axis=[1, 2, 3], keepdims=True)
            shift = tf.random.stateless_uniform([batch, 1, 1, 1], seeds[6], -config.brightness, config.brightness)
            image = image + shift * spread
    # every step keeps the size; crop_and_resize to a size tensor loses the static one, which the loss
    # and XLA use
    image, labels = tf.ensure_shape(image, image_shape), [tf.ensure_shape(x, image_shape[:-1] + [1]) for x in labels]
    return image, tf.cast(labels[0][..., 0], mask.dtype), labels[1][..., 0]


def pixel_weights_config(config) -> Optional["PixelWeights"]:
    """The typed weight-map config (``trainer/training_config.py``) of ``config``: None, a mapping
    with a ``type`` or already typed. ValueError (ConfigError) naming the problem."""
    from segbalance.trainer.training_config import PIXEL_WEIGHT_TYPES, PixelWeights
    from segbalance.trainer.typed_config import convert, validate_tree

    if config is None or isinstance(config, tuple(PIXEL_WEIGHT_TYPES.values())):
        typed = config
    else:
        typed = convert(config, Optional[PixelWeights], "pixel_weights")
    validate_tree(typed, "pixel_weights")
    return typed


def validate_pixel_weights(config) -> None:
    """ValueError naming the problem in a ``pixel_weights`` config (None = no map)."""
    pixel_weights_config(config)


def pixel_weight_map(image, mask, config, num_classes: int, ignore_index: int):
    """float32 [B,H,W] weight map of ``config`` (a ``training.pixel_weights`` type; the formulas are in
    ``trainer/weight_maps.py``), from the transformed image and the mask."""
    from segbalance.trainer import weight_maps
    from segbalance.trainer.training_config import (EdgeWeights, FeatureExtractorWeights, IntensityRangeWeights,
                                                    UnetBorderWeights)

    config = pixel_weights_config(config)
    if isinstance(config, EdgeWeights):
        weights = weight_maps.edge_weights(image, mask, num_classes=num_classes, ignore_index=ignore_index,
                                           image_weight=config.image_weight, boundary_weight=config.boundary_weight)
    elif isinstance(config, IntensityRangeWeights):
        weights = weight_maps.intensity_range_weights(image, [list(r) for r in config.ranges],
                                                      default=config.default, channel=config.channel)
    elif isinstance(config, UnetBorderWeights):
        def border(m):
            return weight_maps.unet_border_weights(m, w0=config.w0, sigma=config.sigma, ignore_index=ignore_index,
                                                   connectivity=config.connectivity)

        weights = tf.numpy_function(border, [mask], tf.float32, stateful=False)
        weights = tf.ensure_shape(weights, mask.shape)
    elif isinstance(config, FeatureExtractorWeights):
        with tf.init_scope():  # load eagerly even inside a tf.data / tf.function trace (else: fresh weights)
            extractor = feature_extractor(config.model, config.layer)
        weights = weight_maps.feature_extractor_weights(image, extractor, strength=config.strength,
                                                        reduce=config.reduce)
    else:  # pragma: no cover - pixel_weights_config accepts only the types above
        raise ValueError(f"no weight map for {config!r}")
    return tf.cast(weights, tf.float32)


_EXTRACTORS: Dict[tuple, object] = {}


class PixelWeightsModelError(UserError, ValueError):
    """``training.pixel_weights`` names a feature-extractor model that is not there, does not load or has
    no such layer: the user's to fix (`segbalance run` checks it before any component runs)."""


def feature_extractor(path: str, layer: Optional[str] = None):
    """The saved Keras model at ``path`` (frozen), cut at ``layer`` when given; loaded once per process."""
    import keras

    key = (path, layer)
    if key not in _EXTRACTORS:
        if not tf.io.gfile.exists(path):
            raise PixelWeightsModelError(f"training.pixel_weights.model: {path} does not exist (a saved .keras model)")
        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as exc:  # not a Keras archive, or one of layers this Keras cannot build
            raise PixelWeightsModelError(f"training.pixel_weights.model: {path} does not load as a Keras model "
                                         f"({' '.join(str(exc).split())[:300]}); save it with model.save(PATH.keras)"
                                         ) from exc
        model.trainable = False
        if layer is not None:
            names = [lay.name for lay in model.layers]
            if layer not in names:
                raise PixelWeightsModelError(f"training.pixel_weights.layer: {layer!r} is not a layer of {path} "
                                             f"(layers: {', '.join(names)})")
            model = keras.Model(model.inputs, model.get_layer(layer).output)
        _EXTRACTORS[key] = model
    return _EXTRACTORS[key]


def example_files(file_patterns: List[str]) -> List[str]:
    return sorted({f for pattern in file_patterns for f in tf.io.gfile.glob(pattern)})


def make_dataset(file_patterns: List[str], tf_transform_output, batch_size: int, num_classes: int,
                 labeled_by_id: Optional[Dict[str, Sequence[int]]] = None, training: bool = False,
                 seed: int = 0, pixel_weights=None, ignore_index: int = DEFAULT_IGNORE_INDEX,
                 repeat: bool = False, shuffle_buffer: int = 512, drop_remainder: bool = False,
                 augmentation=None, start_batch: int = 0, num_records: Optional[int] = None,
                 batch_across_passes: bool = False) -> tf.data.Dataset:
    """Batches of (image float32 [B,H,W,3], {"mask": int32 [B,H,W], "labeled": float32 [B,C]
    (, "pixel_weights": float32 [B,H,W] when ``pixel_weights`` is given)}). ``training``: shuffled
    and augmented as ``augmentation`` says (an ``Augmentation``; None: its defaults).

    A training set is a stream of passes over the files, pass p shuffled with seeds of its own
    (``seed``, p) and batch i of the stream augmented with seeds (``seed``, i): every batch is a
    function of the seed and its place in the stream, not of how often the dataset was iterated.
    ``repeat``: the stream is endless (else one pass); ``batch_across_passes``: batches run on from
    one pass into the next (``training.steps_per_epoch``: every batch full), else each pass is
    batched alone (one pass is an epoch); ``start_batch``: the stream starts there, so a training
    resumed at epoch e (``start_batch`` = e x steps per epoch) gets the batches the uninterrupted
    one got; the passes before it are not read (``num_records``: the records in a pass, counted
    when not given)."""
    if start_batch and num_records is None:
        num_records = count_records(file_patterns)
    pixel_weights = pixel_weights_config(pixel_weights)
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

    def records():
        return tf.data.TFRecordDataset(files, compression_type=compression, num_parallel_reads=tf.data.AUTOTUNE)

    if not training:
        ds = records().repeat() if repeat else records()
        ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(
            no_autograph(to_model_inputs), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE)

    seed64 = tf.constant(int(seed), tf.int64)

    def one_pass(p):
        """Pass p over the records, shuffled in blocks of ``shuffle_buffer`` by stateless ops seeded
        (seed, p, block) (Dataset.shuffle takes no per-pass tensor seed with a global seed of 0)."""
        def shuffled(block_index, block):
            return tf.data.Dataset.from_tensor_slices(tf.random.experimental.stateless_shuffle(
                block, seed=tf.stack([seed64, p * 1_000_003 + block_index])))

        return records().batch(shuffle_buffer).enumerate().flat_map(no_autograph(shuffled))

    # where start_batch lies: the pass it falls in, and what to skip of that pass (records, or batches)
    if not start_batch:
        first_pass, skip = 0, 0
    elif batch_across_passes:
        first_pass, skip = divmod(start_batch * batch_size, num_records or 1)
    else:
        first_pass, skip = divmod(start_batch, max(1, num_records // batch_size if drop_remainder
                                                   else -(-num_records // batch_size)))
    passes = tf.data.Dataset.counter(first_pass) if repeat else tf.data.Dataset.range(first_pass, first_pass + 1)
    if batch_across_passes:  # batches run on from one pass into the next: all of them full
        ds = passes.flat_map(no_autograph(one_pass)).skip(skip).batch(batch_size, drop_remainder=drop_remainder)
    else:  # a pass is batched alone: one pass is one epoch
        ds = passes.flat_map(no_autograph(lambda p: one_pass(p).batch(batch_size, drop_remainder=drop_remainder)))
        ds = ds.skip(skip)
    ds = ds.enumerate(start=start_batch)  # (place in the stream, serialized batch); whole passes were not read
    ds = ds.map(no_autograph(lambda step, serialized: _augment_batch(
                    to_model_inputs(serialized), tf.stack([seed64, step]), augmentation, ignore_index)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if pixel_weights is None:
        ds = ds.map(no_autograph(lambda image, y: (image, {k: v for k, v in y.items() if k != "pixel_weights"})))
    return ds.prefetch(tf.data.AUTOTUNE)


def _augment_batch(inputs, seed, augmentation, ignore_index):
    image, y = inputs
    image, mask, weights = augment(image, y["mask"], y["pixel_weights"], seed, augmentation, ignore_index)
    return image, {**y, "mask": mask, "pixel_weights": weights}


def count_records(file_patterns: List[str]) -> int:
    """Number of records in the files (0 when no file matches)."""
    files = example_files(file_patterns)
    if not files:
        return 0
    compression = "GZIP" if files[0].endswith(".gz") else None
    return int(tf.data.TFRecordDataset(files, compression_type=compression).reduce(0, no_autograph(lambda n, _: n + 1)))
