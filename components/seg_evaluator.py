"""SegEvaluator: per-class IoU, mIoU, pixel accuracy and confusion matrix; blesses models.

TFMA has no segmentation metrics, so this component runs the exported serving model
(``serving_default`` on encoded image bytes) over the evaluation split and compares the
predicted class ids with the masks. With ``reference_masks_dir`` set (the sample data's
``masks_full/``), an image whose ``source_id`` has a PNG there is scored against that
complete mask instead of its (possibly partial) annotation, so the cost of missing
annotations shows in the numbers. Without it, ``span_references_root`` (a compiled Kubeflow pipeline:
the folder of ``Span-N/`` data) finds the complete masks that ``segbalance ingest --reference-masks``
kept with the span ExampleGen read at run time, ``Span-N/reference_masks/`` (``span_reference_dir``),
as a local run does before it starts.

Blessing: mIoU >= ``miou_threshold`` and, when a ``baseline_model`` (latest blessed model,
from a Resolver) is given, not worse than the baseline's mIoU on the same images by more
than ``tolerance``. A baseline whose classes are not this run's, id for id (its
``classes.json``, ``trainer/model_classes.py``: other names, count or order; a model without one:
the channel count of its ``probabilities`` output), is not compared: ``evaluation.json``'s
``baseline_skipped`` and the reason say why, and the threshold alone decides, except where the
baseline's classes are this run's first ones (classes added at the end, ``shared_classes``): both are
scored on those, and a model worse there by more than ``tolerance`` is not blessed. Outputs a
standard ``ModelEvaluation`` (``evaluation.json``) and a ``ModelBlessing`` with the ``blessed`` /
``current_model_id`` properties that ``Pusher`` and the latest-blessed-model resolver read.

For the data report the evaluation artifact also holds ``per_image.json`` (every image's
mIoU, pixel accuracy, per-class IoU and unlabelled classes) and ``per_image/*.png``:
downscaled image, truth and prediction of the ``WORST_IMAGES`` lowest-mIoU images and the
prediction of eval images with missing classes (``PerImageResults``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import io_utils, path_utils

from segbalance.components import evaluation_metrics
from segbalance.components.evaluation_metrics import PREDICT_BUDGET_BYTES, request_bytes  # noqa: F401 (re-exported)
from segbalance.components.artifacts import ClassStats, DriftReport
from segbalance.components.component_config import EvaluationConfig
from segbalance.trainer import example_codec as codec
from segbalance.trainer.model_classes import class_mismatch, read_model_classes, shared_prefix

from segbalance.contract import (DEFAULT_IGNORE_INDEX, EVALUATION_FILE, PUSH_RECORD_FILE,  # noqa: E402
                                 REFERENCE_MASKS_FOLDER, is_version_folder, source_id_of)

WORST_IMAGES = 8  # per_image.json: downscaled image, truth and prediction of the N lowest-mIoU eval images
MAX_GAP_PREDICTIONS = 100  # ... and the prediction of at most this many eval images with missing classes


# --------------------------------------------------------------------------- model + data
def load_predictor(model_dir: str, loaded=None) -> Callable[[List[bytes]], np.ndarray]:
    """Wrap a serving SavedModel: list of same-size encoded images -> class ids [B,H,W]
    (``loaded``: the SavedModel of ``model_dir`` when the caller has already loaded it)."""
    import tensorflow as tf

    loaded = loaded if loaded is not None else tf.saved_model.load(model_dir)
    signature = loaded.signatures["serving_default"]
    (input_name,) = list(signature.structured_input_signature[1].keys())

    def predict(images: List[bytes]) -> np.ndarray:
        outputs = signature(**{input_name: tf.constant(images)})
        if "class_ids" not in outputs:
            raise ValueError(f"serving signature of {model_dir} returns {sorted(outputs)}; expected 'class_ids'")
        ids = outputs["class_ids"].numpy()
        return ids[..., 0] if ids.ndim == 4 else ids

    return predict


def baseline_class_mismatch(model_dir: str, class_names: List[str]) -> Tuple[Optional[str], Any, Optional[list]]:
    """(why the serving model in ``model_dir`` does not predict ``class_names`` id for id, or None;
    the SavedModel when reading it was needed, else None; its recorded class names, or None): its recorded
    ``classes.json``; without one (exported before it existed), the class count of its ``probabilities`` output
    (names unknown: same count, compared). The caller scores with the returned SavedModel rather than
    loading it a second time."""
    import tensorflow as tf

    if not fileio.exists(os.path.join(model_dir, "saved_model.pb")):  # QA 91 H2: a blessed model's folder deleted
        # (a clean-up) stopped every later run here, after training
        return f"its {model_dir} is gone (deleted after it was blessed)", None, None
    recorded = read_model_classes(model_dir)
    channels, loaded = None, None
    if recorded is None:
        loaded = tf.saved_model.load(model_dir)
        outputs = loaded.signatures["serving_default"].structured_outputs
        probabilities = outputs.get("probabilities")
        if probabilities is not None and probabilities.shape.rank and probabilities.shape[-1] is not None:
            channels = int(probabilities.shape[-1])
    return class_mismatch(class_names, recorded, channels), loaded, recorded


def shared_classes(cm: np.ndarray, baseline_dir: str, loaded, baseline_names: Optional[list], class_names: List[str],
                   items, ignore_index: int, partial) -> Optional[dict]:
    """``{"classes", "miou", "baseline_miou"}``: this model's and the baseline's mIoU over the classes both
    predict, where the baseline's recorded classes are this run's first ones (``shared_prefix``: classes
    added at the end); None otherwise. QA 92 M3: a model trained after a fifth class was added scored 0.375
    over the four old classes where the model it replaced scored 0.721, and was pushed, the threshold alone
    deciding. The baseline predicts on the same images (its ids are this run's, below ``len(classes)``).
    ``baseline_names``: its recorded classes (``baseline_class_mismatch``)."""
    count = shared_prefix(class_names, baseline_names)
    if not count:
        return None
    baseline_cm = confusion_over(load_predictor(baseline_dir, loaded), items, len(class_names), ignore_index,
                                 partial=partial)
    ours, theirs = (evaluation_metrics.per_class_iou(m)[:count] for m in (cm, baseline_cm))
    mean = lambda iou: float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0  # noqa: E731
    return {"classes": list(class_names[:count]), "miou": mean(ours), "baseline_miou": mean(theirs)}


def iter_split_records(examples: types.Artifact, split: str) -> Iterator[bytes]:
    import tensorflow as tf

    uri = artifact_utils.get_split_uri([examples], split)
    files = sorted(tf.io.gfile.glob(os.path.join(uri, "*")))
    if not files:
        raise ValueError(f"split {split!r} of {examples.uri} has no files: nothing to evaluate")
    compression = "GZIP" if files[0].endswith(".gz") else None
    for record in tf.data.TFRecordDataset(files, compression_type=compression):
        yield record.numpy()


def reference_mask_problem(mask: np.ndarray, size: Optional[Tuple[int, int]], num_classes: int,
                           ignore_index: int) -> Optional[str]:
    """What makes a decoded reference mask unusable for an image of ``size`` (height, width; None:
    not checked), or None."""
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        return f"has {mask.shape[-1]} channels (colour); expected one channel of class ids"
    if size is not None and tuple(mask.shape) != tuple(size):
        return f"is {mask.shape[1]}x{mask.shape[0]} pixels, its image {size[1]}x{size[0]}"
    bad = np.unique(mask[(mask != ignore_index) & ((mask < 0) | (mask >= num_classes))])
    if bad.size:
        return (f"has class ids {bad[:10].tolist()} outside [0, {num_classes}) that are not the ignore index "
                f"{ignore_index}")
    return None


def _image_size(record) -> Optional[Tuple[int, int]]:
    if record.height and record.width:
        return int(record.height), int(record.width)
    if record.image_bytes is None:
        return None
    try:
        return codec.record_image_size(record.image_bytes)  # as shown: the model turns a JPEG or PNG upright
    except Exception:
        return None  # the prediction then names the image


def reference_paths(folder: str) -> Dict[str, str]:
    """{file stem as written: path} of the reference masks ``folder/<name>.png`` (or ``.PNG``); local or remote
    (``tf.io.gfile``). ``reference_lookup`` finds a record's file in it."""
    import tensorflow as tf

    paths: Dict[str, str] = {}
    if not tf.io.gfile.isdir(folder):  # checked before the run where it is local (config, reference_masks)
        return paths
    for name in sorted(tf.io.gfile.listdir(folder), key=lambda n: n.endswith(".png")):  # x.png over x.PNG
        name = name.rstrip("/")
        if name.lower().endswith(".png"):  # (QA 94 M2: a .PNG was passed over, unsaid, as masks/ reads it)
            paths[name[:-len(".png")]] = os.path.join(folder, name)
    return paths


def reference_lookup(paths: Dict[str, str]) -> Callable[[str], Optional[str]]:
    """source_id -> its reference mask in ``paths`` (``reference_paths``), or None: the file spelled as the
    source_id, else one whose stem has the same Unicode NFC form (macOS writes "café" in NFD; ingest's
    source_ids are NFC, other tools' may be either); of several such files the NFC-spelled one."""
    by_nfc: Dict[str, str] = {}
    for stem, path in paths.items():
        key = source_id_of(stem)
        if key not in by_nfc or stem == key:
            by_nfc[key] = path
    return lambda source_id: paths.get(source_id) or by_nfc.get(source_id_of(source_id))


def examples_span(examples: types.Artifact) -> Optional[int]:
    """The span ExampleGen read (a custom property after the Kubeflow driver, a property locally), or None."""
    if examples.has_custom_property("span"):
        return int(examples.get_int_custom_property("span"))
    if examples.has_property("span"):
        return int(examples.span)
    return None


def span_reference_dir(root: str, examples: types.Artifact) -> Optional[str]:
    """``root/Span-N/reference_masks`` of the span the examples came from, when that folder exists."""
    span = examples_span(examples)
    folder = f"{root.rstrip('/')}/Span-{span}/{REFERENCE_MASKS_FOLDER}"
    return folder if span is not None and fileio.isdir(folder) else None


class EncodedMask:
    """A truth mask the evaluation set keeps encoded (its PNG bytes, a few KB) and decodes again when it is scored:
    ``np.asarray(mask)`` is the decoded array, ``shape`` its shape. The set held every decoded mask before (4 MB a
    2000 x 2000 image: a 1,000-image eval split of such images took 4 GB, QA 80 M1); it now holds a batch's."""

    __slots__ = ("data", "what", "shape")

    def __init__(self, data: bytes, what: str, decoded: np.ndarray):
        self.data, self.what, self.shape = data, what, decoded.shape

    def __array__(self, dtype=None, copy=None):
        array = codec.decode_array(self.data, what=self.what)
        return array if dtype is None else array.astype(dtype)


def load_eval_set(records, reference_masks_dir: Optional[str],
                  labeled: Optional[Dict[str, Optional[List[int]]]] = None,
                  references: Optional[set] = None, num_classes: Optional[int] = None,
                  ignore_index: int = DEFAULT_IGNORE_INDEX) -> Tuple[list, dict]:
    """[(source_id, image_bytes, truth_mask)], counts of where truth came from / skipped. Each truth mask is
    decoded and checked here, and kept encoded (``EncodedMask``: ``np.asarray`` decodes it again).

    ``labeled``, when given, is filled with {source_id: the record's labelled class ids, or None
    when the record has no ``labeled`` field}; ``references`` with the source_ids whose truth is
    a reference (complete) mask. A reference mask that cannot be scored against (colour, another
    size than its image, ids outside ``num_classes`` when given) skips its image, counted in
    ``skipped_records`` with the file and the reason.
    """
    import tensorflow as tf

    items, counts = [], {"reference_masks": 0, "annotation_masks": 0, "skipped": 0, "skipped_records": [],
                         "unscored_pixels": 0}
    reference_for = reference_lookup(reference_paths(reference_masks_dir) if reference_masks_dir else {})
    for index, serialized in enumerate(records):
        try:
            record = codec.parse_record(serialized)
            reference = reference_for(record.source_id)
            if reference:
                data, what = tf.io.gfile.GFile(reference, "rb").read(), f"mask {reference}"
                mask = codec.decode_array(data, what=what)
                problem = reference_mask_problem(mask, _image_size(record), num_classes or 256, ignore_index)
                if problem:
                    raise ValueError(f"reference mask {reference} {problem}")
                counts["reference_masks"] += 1
                if references is not None:
                    references.add(record.source_id)
            else:
                if record.mask_bytes is None:
                    raise ValueError("record has no mask")
                data, what = record.mask_bytes, "mask"
                mask = codec.decode_array(data, what=what)
                counts["annotation_masks"] += 1
            if record.image_bytes is None:
                raise ValueError("record has no image")
            items.append((record.source_id, record.image_bytes, EncodedMask(data, what, mask)))
            if labeled is not None:
                labeled.setdefault(record.source_id, record.labeled)
        except ValueError as exc:
            counts["skipped"] += 1
            counts["skipped_records"].append({"record_index": index, "reason": str(exc)})
    return items, counts


def batch_size_for(size: Tuple[int, int], num_classes: int, largest: int = 16) -> int:
    """Images of ``size`` per serving request: at most ``largest``, within ``PREDICT_BUDGET_BYTES``, at least 1."""
    return max(1, min(largest, PREDICT_BUDGET_BYTES // max(1, request_bytes(size, num_classes))))


def confusion_over(predict, items, num_classes: int, ignore_index: int, batch_size: int = 16,
                   on_image: Optional[Callable] = None, partial: Optional[Dict[str, List[int]]] = None,
                   counts: Optional[dict] = None) -> np.ndarray:
    """Accumulated confusion matrix; images are batched by identical size, at most ``batch_size`` a request
    and fewer where large images of many classes would need more memory (``batch_size_for``).

    ``partial``: {source_id: labelled class ids} of the images scored against a partial
    annotation; there a background pixel predicted as an unlabelled class is not scored
    (``evaluation_metrics.partial_truth``), and ``counts["unscored_pixels"]`` adds them up.
    ``on_image(source_id, image_bytes, truth, prediction, image_confusion_matrix)`` is called
    for every image when given (PerImageResults records per-image scores with it), with the
    truth as scored. ``items``: ``load_eval_set``'s, (source_id, image bytes, truth: an array or an
    ``EncodedMask``)."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    by_size: Dict[tuple, list] = {}
    for item in items:
        by_size.setdefault(item[2].shape[:2], []).append(item)
    for size, group in by_size.items():
        step = batch_size_for(size, num_classes, batch_size)
        for start in range(0, len(group), step):
            chunk = group[start:start + step]
            pred = predict([image for _, image, _ in chunk])
            for (source_id, image, truth), p in zip(chunk, pred):
                truth = np.asarray(truth)  # (an EncodedMask: decoded now, one batch at a time)
                if p.shape != truth.shape:
                    raise ValueError(f"{source_id}: model returned a {p.shape} mask for a {truth.shape} image")
                if partial and source_id in partial:
                    scored = evaluation_metrics.partial_truth(truth, p, partial[source_id], num_classes, ignore_index)
                    if counts is not None:
                        unscored = int(np.count_nonzero((scored == ignore_index) & (np.asarray(truth) != ignore_index)))
                        counts["unscored_pixels"] = counts.get("unscored_pixels", 0) + unscored
                    truth = scored
                image_cm = evaluation_metrics.confusion_matrix(truth, p, num_classes, ignore_index)
                cm += image_cm
                if on_image is not None:
                    on_image(source_id, image, truth, p, image_cm)
    return cm


class PerImageResults:
    """Per-image scores of the evaluated model for the data report (``per_image.json``).

    Every image gets its mIoU, pixel accuracy and per-class IoU (over its own pixels) and the
    classes its record leaves unlabelled (``missing``). Downscaled PNGs go to ``per_image/``:
    image, truth and prediction of the ``worst`` images with the lowest mIoU (ties: source_id),
    and the prediction of up to ``max_gaps`` images with missing classes (most missing first),
    so the report reads files and never runs a model. Truth / prediction PNGs hold class ids,
    ignore pixels as ``ignore_value``.
    """

    def __init__(self, num_classes: int, ignore_index: int, labeled: Dict[str, Optional[List[int]]],
                 worst: int = WORST_IMAGES, max_gaps: int = MAX_GAP_PREDICTIONS, references: Optional[set] = None):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.labeled, self.worst, self.max_gaps = labeled, worst, max_gaps
        self.references = references or set()  # source_ids scored against a reference mask (else their annotation)
        self.ignore_value = 255 if num_classes < 255 else 65535
        self.rows: List[dict] = []
        self._worst: List[tuple] = []  # (miou, source_id, image, truth, prediction), downscaled
        self._gaps: List[tuple] = []  # (-len(missing), source_id, missing, prediction), downscaled

    def missing(self, source_id: str) -> List[int]:
        labeled = self.labeled.get(source_id)
        return [] if labeled is None else sorted(set(range(self.num_classes)) - set(labeled) - {0})

    def __call__(self, source_id, image_bytes, truth, prediction, image_cm) -> None:
        scores = evaluation_metrics.image_scores(image_cm)
        missing = self.missing(source_id)
        self.rows.append({"source_id": source_id, **scores, "missing": missing})
        small = lambda labels: evaluation_metrics.downscale_nearest(self._labels(labels))  # noqa: E731
        if scores["miou"] is not None:
            self._worst.append((scores["miou"], source_id, image_bytes, small(truth), small(prediction)))
            if len(self._worst) > self.worst:
                self._worst.remove(max(self._worst, key=lambda t: t[:2]))
        if missing:
            self._gaps.append((-len(missing), source_id, missing, small(prediction)))
            if len(self._gaps) > self.max_gaps:
                self._gaps.remove(max(self._gaps, key=lambda t: t[:2]))

    def _labels(self, labels: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels).astype(np.int64)
        labels = np.where((labels < 0) | (labels >= self.num_classes), self.ignore_value, labels)
        return labels.astype(np.uint8 if self.ignore_value == 255 else np.uint16)

    def write(self, folder: str) -> dict:
        """Write ``per_image.json`` and ``per_image/*.png`` into ``folder``; returns the JSON content."""
        from PIL import Image

        def save(array: np.ndarray, name: str) -> str:
            import io

            relative = f"{evaluation_metrics.PER_IMAGE_DIR}/{name}"
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="PNG")
            io_utils.write_bytes_file(os.path.join(folder, relative), buffer.getvalue())
            return relative

        worst = []
        for rank, (miou, source_id, image_bytes, truth, prediction) in enumerate(sorted(self._worst, key=lambda t: t[:2])):
            entry = {"source_id": source_id, "miou": miou, "truth": save(truth, f"worst-{rank:03d}-truth.png"),
                     "truth_from": "reference" if source_id in self.references else "annotation",
                     "prediction": save(prediction, f"worst-{rank:03d}-prediction.png")}
            try:
                image = codec.decode_array(image_bytes, what=f"image {source_id}")
                with Image.fromarray(image) as pil:
                    pil = pil.convert("RGB").resize(truth.shape[::-1], Image.BILINEAR)
                    entry["image"] = save(np.asarray(pil), f"worst-{rank:03d}-image.png")
            except ValueError as exc:
                entry["image_error"] = str(exc)
            worst.append(entry)
        gaps = [{"source_id": source_id, "missing": missing, "prediction": save(prediction, f"gap-{rank:03d}-prediction.png")}
                for rank, (_, source_id, missing, prediction) in enumerate(sorted(self._gaps, key=lambda t: t[:2]))]
        content = {"num_classes": self.num_classes, "ignore_value": self.ignore_value,
                   "thumbnail_size": evaluation_metrics.THUMBNAIL_SIZE, "images": self.rows, "worst": worst,
                   "gap_predictions": gaps}
        io_utils.write_string_file(os.path.join(folder, evaluation_metrics.PER_IMAGE_FILE), json.dumps(content))
        return content


def _tree_digest(folder: str) -> Optional[str]:
    """SHA-256 over every file below ``folder`` (relative path and bytes; the graph *and* the
    variables: two models of one architecture share saved_model.pb), or None if it is no folder. The
    Pusher's ``push_record.json`` at the top of a version folder is not part of the model: skipped."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(folder):
        return None
    digest = hashlib.sha256()
    for root, _, files in sorted(tf.io.gfile.walk(folder)):
        for name in sorted(files):
            path = os.path.join(root, name)
            if name == PUSH_RECORD_FILE and os.path.normpath(root) == os.path.normpath(folder):
                continue
            digest.update(os.path.relpath(path, folder).encode() + b"\0")
            with tf.io.gfile.GFile(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def pushed_copy(model_dir: str, destination: str) -> Optional[str]:
    """The version folder under ``destination`` (Pusher's layout: one folder per push) holding this
    serving model, file for file, or None."""
    import tensorflow as tf

    ours = _tree_digest(model_dir)
    if ours is None or not tf.io.gfile.isdir(destination):
        return None
    for version in sorted(v for v in tf.io.gfile.listdir(destination) if is_version_folder(v)):
        folder = os.path.join(destination, version.rstrip("/"))
        if _tree_digest(folder) == ours:
            return folder
    return None


# --------------------------------------------------------------------------- TFX component
class SegEvaluatorSpec(ComponentSpec):
    PARAMETERS = {
        "num_classes": ExecutionParameter(type=int),
        "class_names": ExecutionParameter(type=str),  # JSON list
        "ignore_index": ExecutionParameter(type=int),
        "miou_threshold": ExecutionParameter(type=float),
        "tolerance": ExecutionParameter(type=float),
        "split": ExecutionParameter(type=str),
        "reference_masks_dir": ExecutionParameter(type=str, optional=True),
        # without reference_masks_dir: the folder of Span-N/ data, whose read span's reference_masks/ is used
        "span_references_root": ExecutionParameter(type=str, optional=True),
        # the Pusher's base directory: a model blessed before but never pushed there (a run stopped
        # between SegEvaluator and Pusher) is blessed again, so the re-run pushes it
        "push_destination": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "model": ChannelParameter(type=standard_artifacts.Model),
        "baseline_model": ChannelParameter(type=standard_artifacts.Model, optional=True),
        "drift_report": ChannelParameter(type=DriftReport, optional=True),
        # each image's labelled set as validation reads it (ClassStats' per-image table: the recorded set,
        # or stats.labeled_policy's rule for a record without one, plus the classes present)
        "class_stats": ChannelParameter(type=ClassStats, optional=True),
    }
    OUTPUTS = {
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
    }


class SegEvaluatorExecutor(base_executor.BaseExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        num_classes = int(exec_properties["num_classes"])
        ignore_index = int(exec_properties["ignore_index"])
        split = exec_properties["split"]
        model = artifact_utils.get_single_instance(input_dict["model"])
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        evaluation = artifact_utils.get_single_instance(output_dict["evaluation"])
        blessing = artifact_utils.get_single_instance(output_dict["blessing"])
        print(f"SegEvaluator: evaluating {model.uri} on split {split!r}", flush=True)

        labeled: Dict[str, Optional[List[int]]] = {}
        references: set = set()
        reference_dir = exec_properties.get("reference_masks_dir")
        if not reference_dir and exec_properties.get("span_references_root"):
            reference_dir = span_reference_dir(exec_properties["span_references_root"], examples)
            if reference_dir:
                print(f"SegEvaluator: scoring against the complete masks kept with the span, {reference_dir}",
                      flush=True)
        items, counts = load_eval_set(iter_split_records(examples, split), reference_dir,
                                      labeled, references, num_classes, ignore_index)
        stats = (input_dict.get("class_stats") or [None])[0]
        if stats is not None:  # the sets validation used (labeled_policy applied); a record's own field otherwise
            from segbalance.trainer.class_stats_io import labeled_by_source_id

            known = labeled_by_source_id(stats.uri)
            labeled = {sid: known.get(sid, lab) for sid, lab in labeled.items()}
        # images scored against their own, possibly partial, annotation
        partial = {sid: lab for sid, lab in labeled.items() if lab is not None and sid not in references}
        if not items:
            raise ValueError(f"SegEvaluator: no usable record in split {split!r} of {examples.uri} "
                             f"({counts['skipped']} skipped): check the eval split")
        model_dir = path_utils.serving_model_path(model.uri)
        per_image = PerImageResults(num_classes, ignore_index, labeled, references=references)
        cm = confusion_over(load_predictor(model_dir), items, num_classes, ignore_index, on_image=per_image,
                            partial=partial, counts=counts)
        result = evaluation_metrics.summarize(cm)
        per_image.write(evaluation.uri)

        class_names = json.loads(exec_properties["class_names"])
        threshold = float(exec_properties["miou_threshold"])
        baseline_miou, baseline_skipped, shared = None, None, None
        baselines = input_dict.get("baseline_model") or []
        if baselines and baselines[0].id != model.id:
            baseline_dir = path_utils.serving_model_path(baselines[0].uri)
            mismatch, loaded_baseline, baseline_names = baseline_class_mismatch(baseline_dir, class_names)
            if mismatch:  # its ids mean other classes (or lie outside [0, C)): no comparison on these images
                baseline_skipped = f"the latest blessed model {baselines[0].uri} was not compared: {mismatch}"
                blessing.set_string_custom_property("baseline_skipped", baseline_skipped)
                shared = shared_classes(cm, baseline_dir, loaded_baseline, baseline_names, class_names, items,
                                        ignore_index, partial)
            else:
                baseline_cm = confusion_over(load_predictor(baseline_dir, loaded_baseline), items, num_classes,
                                             ignore_index, partial=partial)
                baseline_miou = evaluation_metrics.summarize(baseline_cm)["miou"]
                blessing.set_string_custom_property("baseline_model_uri", baselines[0].uri)
                blessing.set_int_custom_property("baseline_model_id", baselines[0].id)
        blessed, reason = evaluation_metrics.decide_blessing(
            result["miou"], threshold, baseline_miou, float(exec_properties["tolerance"]))
        if baseline_skipped:
            if blessed:  # not "no blessed model yet": there is one, of other classes
                reason = f"mIoU {result['miou']:.4f} >= threshold {threshold:.4f}"
            reason = f"{reason}; {baseline_skipped}"
        if shared is not None:  # classes added at the end: compared on the ones both models predict (QA 92 M3)
            blessing.set_string_custom_property("shared_classes", json.dumps(shared))
            on = (f"on the classes both models predict ({', '.join(shared['classes'])}) its "
                  f"mIoU is {shared['miou']:.4f}, the latest blessed model's {shared['baseline_miou']:.4f}")
            tolerance = float(exec_properties["tolerance"])
            if blessed and shared["miou"] < shared["baseline_miou"] - tolerance:
                blessed, reason = False, (f"{on}: worse by more than the tolerance {tolerance:.4f} (full mIoU "
                                          f"{result['miou']:.4f}; {baseline_skipped}); if the new classes are worth "
                                          f"it, raise evaluation.tolerance for one run")
            else:
                reason = f"{reason}; {on}"
        drift = (input_dict.get("drift_report") or [None])[0]
        if blessed and drift is not None and drift.get_int_custom_property("blocked") == 1:
            blessed, reason = False, (f"class-distribution drift blocked the push (see {drift.uri}/drift.json); "
                                      f"the model itself reached {reason}")
        if blessed and baselines and baselines[0].id == model.id:
            # A cached re-run: the trainer's model *is* the latest blessed model. Blessing it again
            # would make Pusher copy it to a second version folder -- unless it never got there.
            destination = exec_properties.get("push_destination")
            if destination is None or pushed_copy(model_dir, destination) is not None:
                blessed, reason = False, (f"model {model.uri} is already the latest blessed model (pushed before); "
                                          f"not blessed again, so it is not pushed twice")
            else:  # its own baseline: not "no blessed model yet"
                reason = (f"mIoU {result['miou']:.4f} >= threshold {threshold:.4f}; blessed before but not in "
                          f"{destination} (the run stopped before Pusher had finished): blessed again so it is pushed")

        result.update({
            "class_names": class_names,
            "num_images": len(items),
            "split": split,
            "truth_sources": counts,
            "blessed": blessed,
            "reason": reason,
            "threshold": threshold,
            "tolerance": float(exec_properties["tolerance"]),
            "baseline_miou": baseline_miou,
            "baseline_skipped": baseline_skipped,
            "shared_classes": shared,
            "model_uri": model.uri,
        })
        io_utils.write_string_file(os.path.join(evaluation.uri, EVALUATION_FILE), json.dumps(result, indent=1))
        evaluation.set_float_custom_property("miou", result["miou"])

        blessing.set_string_custom_property("current_model", model.uri)
        blessing.set_int_custom_property("current_model_id", model.id)
        blessing.set_int_custom_property("blessed", int(blessed))
        blessing.set_float_custom_property("miou", result["miou"])
        blessing.set_string_custom_property("reason", reason)
        # the Pusher copies this evaluation into the version folder it pushes (staged_pusher.push_record)
        blessing.set_string_custom_property("evaluation_uri", evaluation.uri)
        marker = "BLESSED" if blessed else "NOT_BLESSED"
        io_utils.write_string_file(os.path.join(blessing.uri, marker), "")
        logging.info("SegEvaluator: %s", reason)
        print(f"SegEvaluator: mIoU {result['miou']:.4f} on {len(items)} images: "
              f"{'blessed' if blessed else 'not blessed'} ({reason})", flush=True)


class SegEvaluator(base_component.BaseComponent):
    """Evaluate a segmentation model on a split and bless it (see module docstring)."""

    SPEC_CLASS = SegEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(SegEvaluatorExecutor)

    def __init__(self, examples: types.BaseChannel, model: types.BaseChannel, num_classes: int,
                 class_names: List[str], ignore_index: int = codec.DEFAULT_IGNORE_INDEX,
                 miou_threshold: float = EvaluationConfig.miou_threshold,
                 tolerance: float = EvaluationConfig.tolerance, split: str = "eval",
                 reference_masks_dir: Optional[str] = None, baseline_model: Optional[types.BaseChannel] = None,
                 drift_report: Optional[types.BaseChannel] = None, push_destination: Optional[str] = None,
                 class_stats: Optional[types.BaseChannel] = None, span_references_root: Optional[str] = None):
        if len(class_names) != num_classes:
            raise ValueError(f"SegEvaluator: {len(class_names)} class names for num_classes={num_classes}")
        spec = SegEvaluatorSpec(
            examples=examples, model=model, baseline_model=baseline_model, drift_report=drift_report,
            class_stats=class_stats,
            num_classes=num_classes, class_names=json.dumps(list(class_names)), ignore_index=ignore_index,
            miou_threshold=float(miou_threshold), tolerance=float(tolerance), split=split,
            reference_masks_dir=reference_masks_dir, push_destination=push_destination,
            span_references_root=span_references_root,
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
        )
        super().__init__(spec=spec)
