"""Hand check of the harness's NumPy metrics (scores, own_boundary) on a tiny case."""
import sys; sys.argv = ["x"]
import numpy as np
sys.path.insert(0, "/tmp/qa_85/scripts")
from harness import scores, own_boundary
truth = np.array([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]]])
pred = np.array([[[0, 1, 1, 1], [0, 0, 1, 0], [2, 0, 0, 0], [2, 2, 0, 0]]])
s = scores(pred, truth, 3)
# class 1: TP 3, FP 1 (0,1), FN 1 (1,3) -> P 0.75 R 0.75 IoU 3/5; class 2: TP 3, FP 0, FN 1 -> P 1, R .75, IoU .75
# class 0: TP 7, FP 2, FN 1 -> P 7/9, R 7/8, IoU 7/10
print(s["precision"], s["recall"], s["iou"])
assert np.allclose(s["precision"], [7/9, 0.75, 1.0], atol=1e-4) and np.allclose(s["recall"], [7/8, 0.75, 0.75], atol=1e-4)
assert np.allclose(s["iou"], [0.7, 0.6, 0.75], atol=1e-4)
b = own_boundary(np.array([[[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]]))
print(b.astype(int)[0]); assert b.sum() == 12  # rows 0-2 all (3x4=12 pixels), row 3 none
print("ok")
