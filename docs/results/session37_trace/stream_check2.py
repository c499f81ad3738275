"""Per-epoch order / batch composition / augmentation of the training stream, as task.py builds it, at SEG_ROOT's code."""
import glob, hashlib, inspect, json, sys
import numpy as np, tensorflow as tf, tensorflow_transform as tft, keras
from segbalance.trainer import data
from segbalance.trainer.class_stats_io import labeled_by_source_id
from segbalance.trainer.training_config import Augmentation
P = "/tmp/qa93/runs/head_a/work/run_nuclei_drop0.6/pipeline_root"
tfo = tft.TFTransformOutput(glob.glob(P + "/Transform/transform_graph/*")[0])
files = [P + "/ClassStatsGen/clean_examples/4/Split-train/*"]
labeled = labeled_by_source_id(glob.glob(P + "/ClassStatsGen/class_stats/*")[0])
new = "start_batch" in inspect.signature(data.make_dataset).parameters
mode = sys.argv[1]  # "plain" (no augmentation) or "aug"
aug = Augmentation(scale=(1.0, 1.0), flip_horizontal=False, flip_vertical=False) if mode == "plain" else Augmentation(scale=(0.5, 0.9))
keras.utils.set_random_seed(0)
n = data.count_records(files); steps = -(-n // 16)
kw = dict(training=True, seed=0, ignore_index=255, shuffle_buffer=512, augmentation=aug)
if new:
    ds = data.make_dataset(files, tfo, 16, 3, labeled, repeat=True, num_records=n, **kw)
    it = iter(ds); epochs = [[next(it) for _ in range(steps)] for _ in range(3)]
else:
    ds = data.make_dataset(files, tfo, 16, 3, labeled, repeat=False, **kw)
    _ = next(iter(ds))  # task.py's _first_batch_targets iterates once before fit
    epochs = [list(iter(ds)) for _ in range(3)]  # Keras: a new iterator per epoch without steps_per_epoch
def fp(img, mask):  # fingerprint of one example
    return hashlib.md5(np.round(img.numpy(), 3).tobytes() + mask.numpy().tobytes()).hexdigest()[:8]
print("code", data.__file__, "new stream" if new else "old stream", "records", n, "steps", steps, "mode", mode)
orders = []
for e, batches in enumerate(epochs):
    order = [fp(im, m) for x, y in batches for im, m in zip(x, y["mask"])]
    orders.append(order)
    print(f"epoch {e}: {len(order)} examples, {len(set(order))} distinct, first 6 {order[:6]}")
for a, b in [(0, 1), (1, 2)]:
    same_pos = sum(p == q for p, q in zip(orders[a], orders[b]))
    print(f"epochs {a},{b}: same example at the same position {same_pos}/{len(orders[a])}; same multiset {sorted(orders[a]) == sorted(orders[b])}")
# zoom < 1 pads with the ignore index: the padded pixel count of slot (batch i, place j) reads that slot's zoom
pads = [[int(np.sum(m.numpy() == 255)) for x, y in batches for m in y["mask"]] for batches in epochs]
for a, b in [(0, 1), (1, 2)]:
    print(f"epochs {a},{b}: slots with the same padded-pixel count (same zoom) {sum(p == q for p, q in zip(pads[a], pads[b]))}/{len(pads[a])}")
print("first 8 slots' padded pixels per epoch:", [p[:8] for p in pads])
