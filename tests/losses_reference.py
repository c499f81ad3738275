"""Independent NumPy (float64) references for trainer/losses.py, written from the formulas."""
import numpy as np


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def softmax(z):
    return np.exp(log_softmax(z))


def split(y, ignore=255):
    y = np.asarray(y)
    if y.ndim == 4:
        y = y[..., 0]
    valid = (y != ignore)
    return np.where(valid, y, 0).astype(int), valid.astype(float)


def cross_entropy(y, z, cw=None, pw=None, ls=0.0, ignore=255):
    labels, valid = split(y, ignore)
    c = z.shape[-1]
    lp = log_softmax(z.astype(np.float64))
    total = 0.0
    for idx in np.ndindex(labels.shape):
        if not valid[idx]:
            continue
        target = np.full(c, ls / c)
        target[labels[idx]] += 1 - ls
        w = (cw[labels[idx]] if cw is not None else 1.0) * (pw[idx] if pw is not None else 1.0)
        used = target > 0  # 0 log 0 = 0: a class of probability 0 (logit -inf) outside the target costs nothing
        total += w * -(target[used] * lp[idx][used]).sum()
    return total / max(valid.sum(), 1)


def cross_entropy_top_k(y, z, fraction, cw=None, ignore=255):
    """Class-weighted CE over each image's hardest pixels: the ceil(fraction * H * W) labelled pixels with
    the largest weighted losses (ties taken in pixel order; ignored pixels only when fewer than k are
    labelled, and then not counted), averaged over the kept labelled pixels of the batch."""
    labels, valid = split(y, ignore)
    lp = log_softmax(z.astype(np.float64))
    per = -np.take_along_axis(lp, labels[..., None], -1)[..., 0]
    w = valid * (np.asarray(cw, np.float64)[labels] if cw is not None else 1.0)
    with np.errstate(invalid="ignore"):
        weighted = np.where(w != 0, per * w, 0.0)
    total, count = 0.0, 0
    for image, labelled in zip(weighted, valid):
        flat, flat_valid = image.ravel(), labelled.ravel().astype(bool)
        k = max(1, int(np.ceil(fraction * flat.size)))
        order = np.argsort(-np.where(flat_valid, flat, -1.0), kind="stable")  # largest first, ties in pixel order
        keep = np.zeros(flat.size, bool)
        keep[order[:k]] = True
        keep &= flat_valid
        total += flat[keep].sum()
        count += keep.sum()
    return total / max(count, 1)


def _focal_parts(z, label):
    """(p, 1 - p_y, log p_y) of one pixel in float64; 1 - p_y summed over the other classes (no
    cancellation when p_y -> 1), log p_y = log1p(-(1 - p_y)) when p_y > 1/2."""
    p = softmax(np.asarray(z, np.float64))
    q = p.sum() - p[label] if p[label] < 0.5 else np.delete(p, label).sum()
    log_p = np.log1p(-q) if q < 0.5 else log_softmax(np.asarray(z, np.float64))[label]
    return p, q, log_p


def focal(y, z, gamma, alpha=None, ignore=255, cw=None, pw=None):
    """alpha: per class (list) or scalar; cw[y] and pw (pixel weights) multiply each pixel's term."""
    labels, valid = split(y, ignore)
    total = 0.0
    for idx in np.ndindex(labels.shape):
        if valid[idx]:
            _, q, log_p = _focal_parts(z[idx], labels[idx])
            a = 1.0 if alpha is None else (alpha if np.ndim(alpha) == 0 else alpha[labels[idx]])
            w = (cw[labels[idx]] if cw is not None else 1.0) * (pw[idx] if pw is not None else 1.0)
            total += -w * a * q ** gamma * log_p
    return total / max(valid.sum(), 1)


def focal_pixel_gradient(z, label, gamma):
    """Closed-form d/dz of -(1 - p_y)^gamma log p_y for one pixel (float64), gamma > 0:
    dL/dp_y = gamma q^(gamma - 1) log p_y - q^gamma / p_y with q = 1 - p_y, dp_y/dz_j = p_y (1[j=y] - p_j).
    Written as q^(gamma - 1) (gamma log p_y - q / p_y) so that q -> 0 stays finite in float64."""
    p, q, log_p = _focal_parts(z, label)
    if q == 0.0:
        return np.zeros(len(p))
    d_dp = q ** (gamma - 1) * (gamma * log_p - q / p[label])
    dp_dz = -p[label] * p
    dp_dz[label] = p[label] * q  # p_y (1 - p_y) without the cancellation
    return d_dp * dp_dz


def ratio(num, den, empty):
    """num / den; ``empty`` where den == 0 (smooth = 0 and nothing to compare: 1 for a score, 0 for an overlap)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), empty)


def region_weight(valid, pw):
    """Pixel weights of the region losses: valid * pw scaled to mean 1 over the valid pixels."""
    if pw is None:
        return valid
    weight = valid * np.asarray(pw, np.float64)
    return weight * (valid.sum() / weight.sum() if weight.sum() > 0 else 0.0)


def class_sums(y, z, ignore=255, pw=None):
    """Per class (sum p*g, sum p, sum g) over the valid pixels, each pixel times its weight pw
    (rescaled to mean 1 over the valid pixels)."""
    labels, valid = split(y, ignore)
    c = z.shape[-1]
    weight = region_weight(valid, pw)
    p = softmax(z.astype(np.float64)) * weight[..., None]
    g = np.eye(c)[labels] * weight[..., None]
    # p and g both carry the weight, so the intersection is sum w * p * g (not w^2)
    return (p * np.eye(c)[labels]).sum((0, 1, 2)), p.sum((0, 1, 2)), g.sum((0, 1, 2))


def dice(y, z, cw=None, smooth=1.0, ignore=255, pw=None):
    inter, pred, truth = class_sums(y, z, ignore, pw)
    d = ratio(2 * inter + smooth, pred + truth + smooth, 1.0)
    w = np.ones_like(d) if cw is None else np.asarray(cw, float)
    return 1 - (d * w).sum() / w.sum()


def marginal_dice(y, z, labeled, cw=None, smooth=1.0, ignore=255, pw=None):
    """Dice after merging, image by image, the unlabelled classes' probabilities into background's."""
    labels, valid = split(y, ignore)
    c = z.shape[-1]
    weight = region_weight(valid, pw)
    p = softmax(z.astype(np.float64))
    merged = np.zeros_like(p)
    for i in range(p.shape[0]):
        known = np.asarray(labeled[i], bool).copy()
        known[0] = True  # background is always labelled
        for k in range(c):
            target = k if known[k] else 0
            merged[i, ..., target] += p[i, ..., k]
    merged = merged * weight[..., None]
    g = np.eye(c)[labels] * weight[..., None]
    inter, pred, truth = (merged * np.eye(c)[labels]).sum((0, 1, 2)), merged.sum((0, 1, 2)), g.sum((0, 1, 2))
    d = ratio(2 * inter + smooth, pred + truth + smooth, 1.0)
    w = np.ones_like(d) if cw is None else np.asarray(cw, float)
    return 1 - (d * w).sum() / w.sum()


def generalized_dice(y, z, smooth=1e-6, ignore=255, cw=None, pw=None):
    """Default class weights 1 / G_c^2 (Sudre et al.), absent classes the largest present weight
    (MONAI), divided by that largest weight (a common factor of the ratio); cw replaces them."""
    inter, pred, truth = class_sums(y, z, ignore, pw)
    if cw is None:
        present = truth > 0
        w = np.where(present, 1 / np.where(present, truth, 1) ** 2, 0)
        w = np.where(present, w, w.max())
        w = w / w.max() if w.max() > 0 else np.ones_like(w)
    else:
        w = np.asarray(cw, np.float64)
    return 1 - ratio(2 * (w * inter).sum() + smooth, (w * (pred + truth)).sum() + smooth, 1.0)


def tversky(y, z, alpha, beta, smooth=1.0, cw=None, ignore=255, pw=None):
    tp, pred, truth = class_sums(y, z, ignore, pw)
    t = ratio(tp + smooth, tp + alpha * (pred - tp) + beta * (truth - tp) + smooth, 1.0)
    w = np.ones_like(t) if cw is None else np.asarray(cw, float)
    return 1 - (t * w).sum() / w.sum()


def labeled_sets(labeled):
    return [set(np.flatnonzero(row)) | {0} for row in np.asarray(labeled)]


def ignore_predicted(y, z, labeled, ignore=255):
    labels, valid = split(y, ignore)
    sets = labeled_sets(labeled)
    pred = z.argmax(-1)
    pw = np.ones(labels.shape)
    for idx in np.ndindex(labels.shape):
        if labels[idx] == 0 and pred[idx] not in sets[idx[0]]:
            pw[idx] = 0.0
    return cross_entropy(y, z, pw=pw, ignore=ignore)


def marginal(y, z, labeled, cw=None, ignore=255):
    labels, valid = split(y, ignore)
    sets = labeled_sets(labeled)
    c = z.shape[-1]
    p = softmax(z.astype(np.float64))
    total = 0.0
    for idx in np.ndindex(labels.shape):
        if not valid[idx]:
            continue
        if labels[idx] == 0:
            merged = [0] + [k for k in range(c) if k not in sets[idx[0]]]
            q = p[idx][merged].sum()
        else:
            q = p[idx][labels[idx]]
        total += (cw[labels[idx]] if cw is not None else 1.0) * -np.log(q)
    return total / max(valid.sum(), 1)


def exclusion_ce(y, z, labeled, ignore=255, pw=None):
    labels, valid = split(y, ignore)
    sets = labeled_sets(labeled)
    c = z.shape[-1]
    p = softmax(z.astype(np.float64))
    total = 0.0
    for idx in np.ndindex(labels.shape):
        if valid[idx] and labels[idx] > 0 and labels[idx] in sets[idx[0]]:  # a labelled foreground class
            w = pw[idx] if pw is not None else 1.0
            total += w * sum(-np.log(1 - p[idx][k]) for k in range(c) if k not in sets[idx[0]])
    return total / max(valid.sum(), 1)


def exclusion_dice(y, z, labeled, smooth=1.0, ignore=255, pw=None):
    """Each pixel counts once, times its weight pw (rescaled to mean 1 over the valid pixels of the
    batch), in every sum, as in the region losses."""
    labels, valid = split(y, ignore)
    sets = labeled_sets(labeled)
    c = z.shape[-1]
    p = softmax(z.astype(np.float64))
    weight = region_weight(valid, pw)
    values = []
    for b in range(labels.shape[0]):
        labelled = np.isin(labels[b], sorted(sets[b]))
        w, region = weight[b], (labels[b] > 0) * labelled * valid[b]
        if (w * region).sum() == 0:
            continue
        for k in range(c):
            if k not in sets[b]:
                pk = p[b, ..., k]
                values.append(ratio(2 * (w * pk * region).sum(), (w * pk).sum() + (w * region).sum() + smooth, 0.0))
    return float(np.mean(values)) if values else 0.0


def error_weights(y, z, fn=None, fp=None, low=None, ignore=255):
    """Per-pixel factors of fn_weights / fp_weights / low_confidence, from the definitions."""
    labels, valid = split(y, ignore)
    p = softmax(z.astype(np.float64))
    pred = p.argmax(-1)
    factor = np.ones(labels.shape)
    for idx in np.ndindex(labels.shape):
        if pred[idx] != labels[idx]:
            factor[idx] *= (fn[labels[idx]] if fn is not None else 1.0) * (fp[pred[idx]] if fp is not None else 1.0)
        if low is not None and p[idx].max() < low[0]:
            factor[idx] *= low[1]
    return factor
