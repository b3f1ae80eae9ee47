"""The visual rewards of RECIPE.md §6.2: grounding, points, polygons, OCR and counting.

Answers are read from the response's final answer (agents/rewards/base.py): boxes as groups of
four numbers `x1,y1,x2,y2`, points as pairs `x,y`, a polygon as its vertex pairs. A malformed
answer (a number count that is not a multiple of the group size, or more predictions than
MAX_PREDICTIONS) scores 0: spraying guesses must never pay.

- Grounding: F1 with soft matches, a match counting its IoU; predictions and ground truth are
  paired one to one by the assignment that maximises total IoU (Hungarian, scipy).
- Points: the same F1 with a match counting exp(-d^2 / 2 sigma^2); sigma is the reference's
  `sigma` or DEFAULT_POINT_SIGMA pixels [not stated by the paper].
- Polygon: the predicted polygon rasterised to a mask (skimage.draw.polygon), IoU with the
  ground-truth mask.
- OCR: 1 - normalised character edit distance (Levenshtein / max length).
- Counting: 1 for the exact count, else max(0, 1 - |pred - gt| / max(gt, 1)) [mapping not
  stated by the paper]; only the exact count is `correct`.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from skimage.draw import polygon as raster_polygon

from agents.rewards.base import ZERO, Score, final_answer, numbers

MAX_PREDICTIONS = 64
DEFAULT_POINT_SIGMA = 8.0
CORRECT_F1 = 0.5  # a grounding/point answer counts as correct at this soft F1 or more
CORRECT_IOU = 0.5


def _groups(text: str | None, size: int) -> list[list[float]] | None:
    if text is None:
        return None
    vals = numbers(text)
    if not vals or len(vals) % size or len(vals) // size > MAX_PREDICTIONS:
        return None
    return [vals[i: i + size] for i in range(0, len(vals), size)]


def box_iou(a, b) -> float:
    ax1, ay1, ax2, ay2 = min(a[0], a[2]), min(a[1], a[3]), max(a[0], a[2]), max(a[1], a[3])
    bx1, by1, bx2, by2 = min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def soft_f1(similarity: np.ndarray) -> float:
    """F1 of a one-to-one matching that maximises the total similarity ([pred, gt] in [0, 1]);
    a matched pair counts its similarity as a (soft) true positive."""
    n_pred, n_gt = similarity.shape
    if n_pred == 0 or n_gt == 0:
        return 0.0
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    tp = float(similarity[rows, cols].sum())
    if tp <= 0:
        return 0.0
    precision, recall = tp / n_pred, tp / n_gt
    return 2 * precision * recall / (precision + recall)


def grounding_score(response: str, reference) -> Score:
    """`reference`: the ground-truth boxes [[x1, y1, x2, y2], ...]."""
    pred = _groups(final_answer(response), 4)
    if not pred:
        return ZERO
    sim = np.array([[box_iou(p, g) for g in reference] for p in pred])
    f1 = soft_f1(sim)
    return Score(f1, f1 >= CORRECT_F1, pred)


def points_score(response: str, reference) -> Score:
    """`reference`: {"points": [[x, y], ...], "sigma": pixels (optional)} or a list of points."""
    gt = reference["points"] if isinstance(reference, dict) else reference
    sigma = float(reference.get("sigma", DEFAULT_POINT_SIGMA)) if isinstance(reference, dict) else DEFAULT_POINT_SIGMA
    pred = _groups(final_answer(response), 2)
    if not pred:
        return ZERO
    d2 = ((np.array(pred)[:, None, :] - np.array(gt, dtype=float)[None, :, :]) ** 2).sum(-1)
    f1 = soft_f1(np.exp(-d2 / (2 * sigma ** 2)))
    return Score(f1, f1 >= CORRECT_F1, pred)


def polygon_mask(vertices, shape: tuple[int, int]) -> np.ndarray:
    """Binary [H, W] mask of the polygon with (x, y) vertices."""
    pts = np.asarray(vertices, dtype=float)
    mask = np.zeros(shape, dtype=bool)
    rr, cc = raster_polygon(pts[:, 1], pts[:, 0], shape=shape)
    mask[rr, cc] = True
    return mask


def polygon_score(response: str, reference) -> Score:
    """`reference`: {"polygon": [[x, y], ...], "shape": [H, W]}."""
    shape = tuple(reference["shape"])
    pred = _groups(final_answer(response), 2)
    if not pred or len(pred) < 3:
        return ZERO
    a, b = polygon_mask(pred, shape), polygon_mask(reference["polygon"], shape)
    union = int((a | b).sum())
    iou = int((a & b).sum()) / union if union else 0.0
    return Score(iou, iou >= CORRECT_IOU, pred)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (characters), O(len(a) * len(b)) with one row of memory."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


MAX_OCR_CHARS = 2000


def ocr_score(response: str, reference: str) -> Score:
    """1 - NED between the final answer and the reference text (whitespace runs collapsed)."""
    got = final_answer(response)
    if got is None:
        return ZERO
    pred, gt = " ".join(got.split())[:MAX_OCR_CHARS], " ".join(str(reference).split())
    if not pred:
        return ZERO
    value = 1.0 - edit_distance(pred, gt) / max(len(pred), len(gt))
    return Score(value, pred == gt, pred)


def count_score(response: str, reference) -> Score:
    got = final_answer(response)
    vals = numbers(got) if got is not None else []
    if len(vals) != 1:  # nothing, or a hedge between several counts
        return ZERO
    pred, gt = vals[0], float(reference)
    value = 1.0 if pred == gt else max(0.0, 1.0 - abs(pred - gt) / max(gt, 1.0))
    return Score(value, pred == gt, pred)
