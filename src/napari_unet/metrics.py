"""Scores: Dice and IoU per class, instance matching (F1, DSB score), ISBI errors."""

from __future__ import annotations

import os

import numpy as np

DSB_THRESHOLDS = np.arange(0.5, 1.0, 0.05)


def class_scores(prediction: np.ndarray, truth: np.ndarray, classes) -> dict[str, dict]:
    """Dice and IoU of each class value in ``classes`` (pixels of ``truth`` < 0 ignored);
    None for a class in neither the truth nor the prediction, which says nothing about
    it (and is left out of the means of :func:`evaluate`)."""
    valid = truth >= 0
    scores = {}
    for value in classes:
        t = (truth == value) & valid
        p = (prediction == value) & valid
        inter, total, union = (t & p).sum(), t.sum() + p.sum(), (t | p).sum()
        scores[str(value)] = {
            "dice": float(2 * inter / total) if total else None,
            "iou": float(inter / union) if union else None,
        }
    return scores


def matching_ious(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """IoU matrix (n_true, n_pred) of the objects of two instance label images."""
    truth = np.asarray(truth).ravel()
    prediction = np.asarray(prediction).ravel()
    _, t = np.unique(truth, return_inverse=True)
    _, p = np.unique(prediction, return_inverse=True)
    t_ids, p_ids = np.unique(truth), np.unique(prediction)
    n_t, n_p = len(t_ids), len(p_ids)
    overlap = np.bincount(t * n_p + p, minlength=n_t * n_p).reshape(n_t, n_p).astype(np.float64)
    # drop background rows/columns (id 0)
    if t_ids[0] == 0:
        overlap_t = overlap[1:]
    else:
        overlap_t = overlap
    area_t = overlap.sum(1)[(1 if t_ids[0] == 0 else 0) :]
    area_p = overlap.sum(0)[(1 if p_ids[0] == 0 else 0) :]
    inter = overlap_t[:, (1 if p_ids[0] == 0 else 0) :]
    union = area_t[:, None] + area_p[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def instance_scores(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """F1 at IoU 0.5 and the DSB 2018 score (mean over IoU 0.5:0.05:0.95 of TP/(TP+FP+FN)).

    For thresholds of 0.5 and above each object matches at most one other, so the
    one-to-one matching is exact without an assignment solver. Stacks (..., Y, X) are
    matched plane by plane (ids may restart in every plane, as predicted stacks do).
    """
    truth, prediction = np.asarray(truth), np.asarray(prediction)
    if truth.ndim > 2:  # a stack: objects match within their own plane, counts add up
        planes = zip(
            truth.reshape(-1, *truth.shape[-2:]),
            prediction.reshape(-1, *prediction.shape[-2:]),
            strict=True,
        )
        matrices = [matching_ious(t, q) for t, q in planes]
    else:
        matrices = [matching_ious(truth, prediction)]
    n_true = sum(m.shape[0] for m in matrices)
    n_pred = sum(m.shape[1] for m in matrices)
    per_threshold = []
    f1 = 0.0
    for threshold in DSB_THRESHOLDS:
        tp = sum(int((m > threshold).sum()) for m in matrices)
        fp, fn = n_pred - tp, n_true - tp
        denominator = tp + fp + fn
        per_threshold.append(tp / denominator if denominator else 1.0)
        if threshold == DSB_THRESHOLDS[0]:
            f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0
    return {
        "f1@0.5": float(f1),
        "dsb_score": float(np.mean(per_threshold)),
        "objects_true": n_true,
        "objects_predicted": n_pred,
    }


def pixel_error(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of misclassified pixels."""
    return float(np.mean(np.asarray(prediction) != np.asarray(truth)))


def rand_error(membrane_prediction: np.ndarray, membrane_truth: np.ndarray) -> float:
    """Foreground-restricted Rand error of the cells (ISBI 2012): cells are the connected
    regions of non-membrane pixels; membrane pixels of the truth are not scored."""
    from scipy import ndimage as ndi
    from skimage.metrics import adapted_rand_error

    cells_true, _ = ndi.label(np.asarray(membrane_truth) == 0)
    cells_pred, _ = ndi.label(np.asarray(membrane_prediction) == 0)
    error, _, _ = adapted_rand_error(cells_true, cells_pred, ignore_labels=(0,))
    return float(error)


def foreground_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of foreground (anything > 0) against foreground."""
    p, t = np.asarray(prediction) > 0, np.asarray(truth) > 0
    total = p.sum() + t.sum()
    return float(2 * (p & t).sum() / total) if total else 1.0


def _score_image(model, i: int, image, label, predict_kwargs: dict) -> tuple[dict, set]:
    """Predict one image and score it against its labels (``i``: its number, for
    messages); returns the scores and how its labels were read ("lossy", "masks")."""
    from .data import InputError, encode_labels, instance_ids, repair_lossy_masks
    from .prediction import predict

    flags = set()
    if isinstance(label, (str, os.PathLike)):  # a label file, as predict reads image files
        from .io import read_image

        label = read_image(label, labels=True)
    label = np.asarray(label)
    truth = None
    if label.ndim >= 2 and label.size:
        planes, found = repair_lossy_masks(list(label.reshape(-1, *label.shape[-2:])))
        if found:
            flags.add("lossy")
            label = np.stack(planes).reshape(label.shape)
    if model.mode == "instances" and label.ndim >= 2 and label.size:
        # as training reads them: a mask (0/255) holds no ids, its regions are the objects
        flat = label.reshape(-1, *label.shape[-2:])
        planes, found = instance_ids(flat, owners=[i] * len(flat))
        if found:
            flags.add("masks")
        label = np.stack(planes).reshape(label.shape)
    elif model.mode != "instances":  # check the labels before spending time on prediction
        (encoded,), _ = encode_labels(
            [label], model.mode, model.encoding, owners=[i], training=False
        )
        values = np.asarray(model.encoding.class_values)
        truth = np.where(encoded >= 0, values[np.maximum(encoded, 0)], -1)
        background = model.encoding.source_values[0]
        if model.mode == "sparse" and set(np.unique(label).tolist()) == {0, background}:
            flags.add("mask for scribbles")  # a 0/1 mask: its objects read as background
    try:
        prediction = np.asarray(predict(model, image, **predict_kwargs))
    except InputError as error:  # say which image
        raise InputError(f"Image #{i}: {error}") from None
    if prediction.shape != label.shape:
        planes = int(np.prod(prediction.shape[:-2])), int(np.prod(label.shape[:-2]))
        if prediction.shape[-2:] == label.shape[-2:] and planes[0] != planes[1]:
            raise InputError(
                f"Image #{i} has {planes[0]} plane(s) {prediction.shape} but its labels "
                f"{label.shape} have {planes[1]}; give labels for every plane of a stack."
            )
        raise InputError(
            f"Image #{i}: prediction {prediction.shape} and labels {label.shape} differ in "
            + (
                "shape; labels must match the image's height and width."
                if prediction.shape[-2:] != label.shape[-2:]
                else "the layout of their planes; give labels with the image's stack axes."
            )
        )
    if truth is None:
        scores = {"foreground_dice": foreground_dice(prediction, label)}
        scores.update(instance_scores(label, prediction))  # plane by plane for stacks
    else:
        scores = class_scores(prediction, truth, model.encoding.class_values[1:])
    return scores, flags


def evaluate(model, images, labels, *, on_image=None, on_error=None, **predict_kwargs) -> dict:
    """Predict each image and score it against its labels.

    ``on_image(done, total)`` is called after each image (for progress bars). With
    ``on_error(i, error)``, an image that cannot be read, predicted or scored (labels of
    another shape, say) is passed to it and left out of the means, its entry holding
    the error, and the others are scored; without it the error is raised.

    Returns per-image and mean scores: Dice/IoU per class (semantic, sparse), and
    for instances foreground Dice, F1@0.5 and the DSB score; and notes (instances: labels
    that are masks, whose connected regions are scored as the objects, as training
    reads them).
    """
    from .data import InputError

    if "out" in predict_kwargs:  # each image's result would replace the last
        raise TypeError("evaluate() takes no out=: it scores results in memory.")
    images, labels = list(images), list(labels)
    if len(images) != len(labels):
        raise InputError(
            f"Got {len(images)} images but {len(labels)} label images; give one labels per "
            "image, in the same order."
        )
    per_image, masks, lossy, unscored = [], [], [], []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        try:
            scores, flags = _score_image(model, i, image, label, predict_kwargs)
        except Exception as error:
            if on_error is None:
                raise
            on_error(i, error)
            per_image.append({"error": str(error)})
        else:
            per_image.append(scores)
            lossy += [i] if "lossy" in flags else []
            masks += [i] if "masks" in flags else []
            unscored += [i] if "mask for scribbles" in flags else []
        if on_image is not None:
            on_image(i + 1, len(images))
    said = {
        "look like a two-valued mask saved with lossy compression (JPEG) or drawn with "
        "smoothed edges: scored as the two values, split at their midpoint.": lossy,
        "hold masks or class maps (one value for several objects), not one id per object: "
        "each connected region is scored as an object (touching objects count as one).": masks,
        f"hold only 0 and {model.encoding.source_values[0]}: for this scribbles model 0 is "
        f"'not annotated' and {model.encoding.source_values[0]} its background, so no object "
        "class is scored there; to score it against a mask, give background "
        f"{model.encoding.source_values[0]} and objects "
        f"{', '.join(map(str, model.encoding.source_values[1:]))}.": unscored,
    }
    notes = []
    for text, found in said.items():
        if found:
            more = f" (and of {len(found) - 1} more image(s))" if len(found) > 1 else ""
            notes.append(f"The labels of Image #{found[0]}{more} {text}")
    scored = [scores for scores in per_image if "error" not in scores]
    mean = _mean_scores(scored) if scored else None
    return {"images": per_image, "mean": mean, "notes": notes}


def _mean_scores(per_image: list[dict]) -> dict:
    """Means over the images; scores that are None (a class absent from an image and its
    prediction) are left out, and a score None in every image stays None."""

    def merge(items):
        first = items[0]
        if isinstance(first, dict):
            return {k: merge([item[k] for item in items]) for k in first}
        known = [item for item in items if item is not None]
        return float(np.mean(known)) if known else None

    return merge(per_image) if per_image else {}
