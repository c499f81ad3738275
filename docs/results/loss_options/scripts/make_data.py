"""Build 64x64 crops of real data (nuclei from stardist, buildings from solaris, lesions from
pyradiomics) with the product's own loaders, as experiment.py does; saves NPZ files.
train part -> train/val crops; test part -> held-out test crops with COMPLETE masks.
Partial annotation: drop_annotations(fraction) on the train/val crops (labeled vector + full masks kept)."""
import sys, json, numpy as np
from pathlib import Path
from segbalance.pipeline import sample_data as sd

OUT = Path("/tmp/qa_85/data"); OUT.mkdir(exist_ok=True)
CACHE = "/tmp/qa_85/cache"
SIZE = 64
N_TRAIN, N_TEST = 240, 200

def crops(kind, part, n, seed):
    if kind == "nuclei":
        image, mask, names = sd.load_real_sample("nuclei")
        image, mask = sd._column_part(image, mask, part)
        pairs = list(sd._random_crops(image, mask, n, SIZE, seed))
    else:
        groups, names = sd.load_package_sample(kind, part, CACHE)
        pairs = list(sd.focused_crops(groups, n, SIZE, seed, len(names)))
    x = np.stack([p[0] for p in pairs]).astype(np.uint8)
    y = np.stack([p[1] for p in pairs]).astype(np.uint8)
    return x, y, names

for kind in sys.argv[1:]:
    xtr, ytr, names = crops(kind, "train", N_TRAIN, 0)
    xte, yte, _ = crops(kind, "test", N_TEST, 1)
    C = len(names)
    part06, lab06 = sd.drop_annotations(list(ytr), 0.6, C, 0)
    lab06 = np.array([[1.0 if c in lab06[i] else 0.0 for c in range(C)] for i in range(len(ytr))], np.float32)
    np.savez_compressed(OUT / f"{kind}.npz", xtr=xtr, ytr=ytr, xte=xte, yte=yte,
                        ytr_drop06=np.stack(part06), lab_drop06=lab06, names=np.array(names))
    def freq(y):
        v = y[y != 255]; return (np.bincount(v, minlength=C) / v.size).round(4).tolist()
    print(kind, names, "train", xtr.shape, "freq", freq(ytr), "test freq", freq(yte),
          "drop06 freq", freq(np.stack(part06)), "images missing a present class:",
          int(sum(any((ytr[i] == c).any() and lab06[i, c] == 0 for c in range(1, C)) for i in range(len(ytr)))))
