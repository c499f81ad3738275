"""Train a small U-Net (the product's build_unet) with the product's SegmentationLoss on real crops,
to a plateau of validation loss; score on held-out crops with COMPLETE masks by own NumPy code.
Usage: python harness.py SPECFILE.json [names...]  (runs specs in order, appends to results.jsonl)"""
import os, sys, json, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf
import keras
from segbalance.trainer.model import build_unet
from segbalance.trainer.segmentation_loss import SegmentationLoss
from segbalance.trainer.weight_maps import edge_weights, unet_border_weights

tf.config.threading.set_inter_op_parallelism_threads(2)
tf.config.threading.set_intra_op_parallelism_threads(2)
ROOT = "/tmp/qa_85"
N_VAL = 40

def load(kind, drop):
    d = np.load(f"{ROOT}/data/{kind}.npz")
    names = list(d["names"]); C = len(names)
    x = d["xtr"].astype(np.float32) / 255.0
    full = d["ytr"].astype(np.int32)
    if drop:
        y = d["ytr_drop06"].astype(np.int32); lab = d["lab_drop06"]
    else:
        y = full; lab = np.ones((len(y), C), np.float32)
    xte = d["xte"].astype(np.float32) / 255.0; yte = d["yte"].astype(np.int32)
    return names, C, x, y, lab, full, xte, yte

def own_boundary(mask):
    """NumPy: 1 where the 3x3 neighbourhood (edge-padded) holds more than one class."""
    p = np.pad(mask, ((0, 0), (1, 1), (1, 1)), mode="edge")
    H, W = mask.shape[1:]
    out = np.zeros(mask.shape, bool)
    for dy in range(3):
        for dx in range(3):
            out |= p[:, dy:dy + H, dx:dx + W] != mask
    return out

def scores(pred, truth, C, prob_max=None):
    cm = np.bincount(truth.ravel() * C + pred.ravel(), minlength=C * C).reshape(C, C)
    tp = np.diag(cm).astype(float)
    prec = tp / np.maximum(cm.sum(0), 1); rec = tp / np.maximum(cm.sum(1), 1)
    iou = tp / np.maximum(cm.sum(0) + cm.sum(1) - tp, 1)
    b = own_boundary(truth)
    out = {"precision": prec.round(4).tolist(), "recall": rec.round(4).tolist(), "iou": iou.round(4).tolist(),
           "miou": float(iou.mean().round(4)), "pred_frac": (cm.sum(0) / cm.sum()).round(4).tolist(),
           "boundary_acc": float((pred[b] == truth[b]).mean().round(4)),
           "interior_acc": float((pred[~b] == truth[~b]).mean().round(4)),
           "confusion": cm.tolist()}
    if prob_max is not None:
        out["mean_top_prob"] = float(prob_max.mean().round(4))
        out["mean_top_prob_correct"] = float(prob_max[pred == truth].mean().round(4))
    return out

class Curve(keras.callbacks.Callback):
    def __init__(self, xv, yv, C):
        super().__init__(); self.xv, self.yv, self.C, self.rows = xv, yv, C, []
    def on_epoch_end(self, epoch, logs=None):
        pred = np.argmax(self.model.predict(self.xv, verbose=0, batch_size=40), -1)
        s = scores(pred, self.yv, self.C)
        self.rows.append({"epoch": epoch + 1, "loss": round(float(logs["loss"]), 5),
                          "val_loss": round(float(logs["val_loss"]), 5), "val_miou_full": s["miou"]})

def run(spec):
    seed = spec.get("seed", 0)
    keras.utils.set_random_seed(seed)
    names, C, x, y, lab, full, xte, yte = load(spec["data"], spec.get("drop", 0))
    pw = np.ones(y.shape, np.float32)
    wm = spec.get("weights")
    if wm == "edge":
        pw = edge_weights(None, y, num_classes=C, boundary_weight=spec.get("boundary_weight", 4.0)).numpy()
    elif wm == "unet":
        pw = unet_border_weights(y, w0=spec.get("w0", 10.0), sigma=spec.get("sigma", 5.0))
    ydict = lambda sl: {"mask": y[sl], "labeled": lab[sl], "pixel_weights": pw[sl]}
    tr, va = slice(0, len(y) - N_VAL), slice(len(y) - N_VAL, len(y))
    bs = spec.get("bs", 16)
    dtr = tf.data.Dataset.from_tensor_slices((x[tr], ydict(tr))).shuffle(400, seed=seed).batch(bs)
    dva = tf.data.Dataset.from_tensor_slices((x[va], ydict(va))).batch(bs)
    model = build_unet((64, 64), C, depth=3, base_filters=spec.get("filters", 8))
    loss = SegmentationLoss(spec["loss"], num_classes=C)
    model.compile(optimizer=keras.optimizers.Adam(spec.get("lr", 3e-3)), loss=loss, jit_compile=spec.get("jit", False))
    curve = Curve(x[va], full[va], C)
    stop = keras.callbacks.EarlyStopping("val_loss", patience=spec.get("patience", 6), restore_best_weights=True,
                                         start_from_epoch=spec.get("min_epochs", 10))
    t0 = time.time()
    hist = model.fit(dtr, validation_data=dva, epochs=spec.get("max_epochs", 50), verbose=0, callbacks=[curve, stop])
    took = time.time() - t0
    vl = hist.history["val_loss"]
    first = min(spec.get("min_epochs", 10), len(vl) - 1)
    best = int(np.argmin(vl[first:])) + first + 1  # EarlyStopping tracks the best from start_from_epoch on
    logits = model.predict(xte, verbose=0, batch_size=50)
    z = logits - logits.max(-1, keepdims=True); p = np.exp(z); p /= p.sum(-1, keepdims=True)
    pred = np.argmax(logits, -1)
    res = {"name": spec["name"], "spec": spec, "classes": names, "epochs_run": len(vl), "best_epoch": best,
           "plateau": len(vl) < spec.get("max_epochs", 50), "seconds": round(took, 1),
           "test": scores(pred, yte, C, p.max(-1)), "curve": curve.rows}
    return res

if __name__ == "__main__":
    specs = json.load(open(sys.argv[1]))
    only = set(sys.argv[2:])
    out = f"{ROOT}/results.jsonl"
    done = set()
    if os.path.exists(out):
        done = {json.loads(l)["name"] for l in open(out) if l.strip()}
    for spec in specs:
        if spec["name"] in done or (only and spec["name"] not in only):
            continue
        r = run(spec)
        with open(out, "a") as f:
            f.write(json.dumps(r) + "\n")
        t = r["test"]
        print(f"{r['name']}: epochs {r['epochs_run']} best {r['best_epoch']} {r['seconds']}s miou {t['miou']} "
              f"P {t['precision']} R {t['recall']} IoU {t['iou']} bacc {t['boundary_acc']}", flush=True)
