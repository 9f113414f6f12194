"""The evaluation browser's data: a `segdiff evaluate --out SUMMARY.json` result and the files it scored.

SUMMARY.json names its folders (inputs.pred, inputs.gt, inputs.prob, inputs.uncertainty); its per-image
scores are in the CSV beside it. A K-class summary (it has "class_set") is shown with its per-class scores,
label maps in the classes' colours and an error map of right and wrong pixels. The folders are listed
once, at start-up, into an index stem -> file; a request names a row number and a kind of map, never a
path. Every file is also checked, after resolving links, to lie inside its folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from ..classset import IGNORE_INDEX, ClassSet
from ..data.classes import read_labels
from ..data.folder import list_files, list_prob_files
from ..data.io import IMAGE_EXTS, MASK_EXTS, read_class_prob, read_image, read_mask, read_prob, to_u8
from ..errors import DataError, UserError
from ..metrics.files import output_paths
from ..predict.export import heatmap
from ..predict.figure import error_image

# error map colours: true negative, true positive, false positive, false negative
ERROR_COLOURS = {
    "tn": (0, 0, 0),
    "tp": (160, 160, 160),
    "fp": (255, 140, 0),  # orange: predicted, not in the ground truth
    "fn": (30, 144, 255),  # blue: in the ground truth, missed
}
# K classes: right and wrong pixels, and those the ground truth ignores
CLASS_ERROR_COLOURS = {"right": (160, 160, 160), "wrong": (255, 140, 0), "ignored": (0, 0, 0)}
KINDS = ("image", "gt", "pred", "error", "prob", "uncertainty")
SCORE_COLUMNS = ("iou", "f1", "boundf", "calibration", "wcov")
# the table's columns (key, header): binary; K classes add one IoU column per class (class_columns)
BINARY_COLUMNS = (
    ("stem", "Image"),
    ("iou", "IoU"),
    ("f1", "F1"),
    ("boundf", "BoundF"),
    ("calibration", "Calibration"),
    ("gt_pixels", "GT pixels"),
    ("pred_pixels", "Predicted pixels"),
)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def find_folder(text: str | None, summary: Path, what: str) -> Path | None:
    """A folder named in the summary: absolute, or relative to the working folder, the summary's folder or
    one of its parents (where `segdiff evaluate` may have run)."""
    if not text:
        return None
    p = Path(text)
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, *(d / p for d in summary.resolve().parents)]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    raise UserError(f"{summary}: its {what} folder '{text}' was not found (run segdiff serve where evaluate ran)")


def _number(text: str | None) -> float | None:
    if text in (None, ""):
        return None
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


class EvalIndex:
    def __init__(self, summary_path: str | Path, images: str | Path | None = None):
        summary_path = Path(summary_path)
        if not summary_path.is_file():
            raise UserError(f"--eval {summary_path}: file not found (give the .json that segdiff evaluate --out wrote)")
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"--eval {summary_path}: not a readable JSON file ({exc})") from None
        inputs = summary.get("inputs") if isinstance(summary, dict) else None
        if not isinstance(inputs, dict) or not inputs.get("pred") or not inputs.get("gt"):
            raise UserError(
                f"--eval {summary_path}: no 'inputs' with the prediction and ground-truth folders; "
                "give a summary written by segdiff evaluate --out (re-run evaluate if it is an older one)"
            )
        self.summary_path = summary_path
        self.summary = summary
        self.classes = None  # a K-class summary: its ClassSet
        if summary.get("class_set") is not None:
            try:
                self.classes = ClassSet.from_json(summary["class_set"], f"{summary_path}: class_set")
            except DataError as exc:
                raise UserError(f"--eval {exc}") from None
        folders = {
            "pred": find_folder(inputs.get("pred"), summary_path, "prediction"),
            "gt": find_folder(inputs.get("gt"), summary_path, "ground-truth"),
            "prob": find_folder(inputs.get("prob"), summary_path, "probability"),
            "uncertainty": find_folder(inputs.get("uncertainty"), summary_path, "uncertainty"),
        }
        if images is not None:
            images = Path(images)
            if not images.is_dir():
                raise UserError(f"--images {images}: folder not found")
            folders["image"] = (images / "images" if (images / "images").is_dir() else images).resolve()
        self.folders = {k: v for k, v in folders.items() if v is not None}
        listed = {
            "pred": list_files(self.folders["pred"], MASK_EXTS, "predicted mask"),
            "gt": list_files(self.folders["gt"], MASK_EXTS, "ground-truth mask"),
        }
        if "prob" in self.folders:
            listed["prob"] = list_prob_files(self.folders["prob"])
        if "uncertainty" in self.folders:
            listed["uncertainty"] = list_prob_files(self.folders["uncertainty"])
        if "image" in self.folders:
            listed["image"] = list_files(self.folders["image"], IMAGE_EXTS, "image")
        self.rows = self._read_rows(summary_path)
        self.files = [{k: v[r["stem"]] for k, v in listed.items() if r["stem"] in v} for r in self.rows]
        missing = [r["stem"] for r, f in zip(self.rows, self.files) if "pred" not in f or "gt" not in f]
        if missing:
            raise UserError(f"--eval {summary_path}: no prediction or ground truth for '{missing[0]}' any more")

    def _read_rows(self, summary_path: Path) -> list[dict]:
        csv_path = output_paths(summary_path)["per_image_csv"]
        if not csv_path.is_file():
            raise UserError(f"--eval {summary_path}: its per-image scores {csv_path.name} are not beside it")
        with open(csv_path, newline="") as fh:
            rows = []
            for i, r in enumerate(csv.DictReader(fh)):
                if not r.get("stem"):
                    raise UserError(f"{csv_path}: row {i + 2} has no stem")
                if self.classes is not None:
                    rows.append({"index": i, "stem": r["stem"], **self._class_scores(r)})
                    continue
                rows.append(
                    {"index": i, "stem": r["stem"], **{c: _number(r.get(c)) for c in SCORE_COLUMNS}}
                    | {"gt_pixels": _number(r.get("gt_pixels")), "pred_pixels": _number(r.get("pred_pixels"))}
                )
        if not rows:
            raise UserError(f"{csv_path}: no per-image rows")
        return rows

    def _class_scores(self, r: dict) -> dict:
        """A K-class CSV row's scores: mIoU over the classes present, mIoU without the background (where
        the summary has one), each class's IoU, the calibration."""
        ious = {f"iou[{n}]": _number(r.get(f"iou[{n}]")) for n in self.classes.names}
        present = [v for v in ious.values() if v is not None]
        out = {"miou": sum(present) / len(present) if present else None}
        if "miou_fg" in r:
            out["miou_fg"] = _number(r.get("miou_fg"))
        return out | ious | {"calibration": _number(r.get("calibration"))}

    def columns(self) -> list[tuple[str, str]]:
        if self.classes is None:
            return list(BINARY_COLUMNS)
        cols = [("stem", "Image"), ("miou", "mIoU")]
        if "miou_fg" in self.summary:
            cols.append(("miou_fg", "mIoU without " + str(self.summary.get("background"))))
        cols += [(f"iou[{n}]", f"IoU {n}") for n in self.classes.names]
        return cols + [("calibration", "Calibration")]

    def class_info(self) -> dict:
        """The page's data of a K-class summary: the means, the per-class scores with each class's colour."""
        s = self.summary
        keep = ("n_images", "miou", "mdice", "miou_pooled", "mdice_pooled", "boundf", "pixel_accuracy")
        keep += ("miou_fg", "mdice_fg", "miou_pooled_fg", "boundf_fg", "background", "foreground_means")
        summary = {k: s.get(k) for k in keep} | {"ignored_pixels": s.get("ignored_pixels")}
        cal = s.get("calibration")
        if isinstance(cal, dict):
            summary |= {"calibration": cal.get("mean"), "calibration_stderr": cal.get("stderr"), "ece": cal.get("ece")}
        per_class = s.get("per_class") if isinstance(s.get("per_class"), dict) else {}
        classes = [
            {"name": n, "color": "#{:02x}{:02x}{:02x}".format(*c)} | (per_class.get(n) or {})
            for n, c in zip(self.classes.names, self.classes.colors)
        ]
        return {"summary": summary, "per_class": classes}

    def info(self) -> dict:
        kinds = [k for k in KINDS if k in ("gt", "pred", "error") or k in self.folders]
        base = {
            "kind": "binary" if self.classes is None else "classes",
            "file": self.summary_path.name,
            "rows": self.rows,
            "kinds": kinds,
            "columns": [{"key": k, "label": label} for k, label in self.columns()],
        }
        if self.classes is not None:
            colours = {k: "#{:02x}{:02x}{:02x}".format(*c) for k, c in CLASS_ERROR_COLOURS.items()}
            return base | self.class_info() | {"warnings": [], "policy": None, "colours": colours}
        s = self.summary
        keep = ("n_images", "iou", "f1", "iou_pooled", "f1_pooled", "wcov", "weighted_coverage", "boundf")
        summary = {k: s.get(k) for k in keep}
        cal = s.get("calibration")
        if isinstance(cal, dict):
            summary |= {"calibration": cal.get("mean"), "calibration_stderr": cal.get("stderr"), "ece": cal.get("ece")}
        policy = s.get("policy") if isinstance(s.get("policy"), dict) else {}
        return base | {
            "summary": summary,
            "policy": policy.get("mode"),
            "warnings": s.get("warnings") or [],
            "colours": {k: "#{:02x}{:02x}{:02x}".format(*c) for k, c in ERROR_COLOURS.items()},
        }

    def _file(self, index: int, kind: str) -> Path | None:
        if not 0 <= index < len(self.rows):
            return None
        path = self.files[index].get(kind)
        if path is None:
            return None
        root = self.folders[kind]
        real = path.resolve()
        if not real.is_relative_to(root) or not real.is_file():
            return None  # a link leading out of its folder is never followed
        return real

    def _render_classes(self, index: int, kind: str) -> bytes | None:
        """K classes: gt and pred in the classes' colours (ignored pixels white), the error map (right, wrong,
        ignored: CLASS_ERROR_COLOURS), prob the predicted class's probability (the largest of the K) in grey."""
        cs = self.classes
        if kind == "prob":
            path = self._file(index, "prob")
            if path is None or path.suffix.lower() not in (".tif", ".tiff", ".npy"):
                return None
            return png_bytes(to_u8(read_class_prob(path, cs.K).max(axis=0)))
        if kind in ("gt", "pred"):
            path = self._file(index, kind)
            return None if path is None else png_bytes(cs.color_image(read_labels(path, cs)))
        pred, gt = self._file(index, "pred"), self._file(index, "gt")
        if pred is None or gt is None:
            return None
        p, g = read_labels(pred, cs), read_labels(gt, cs)
        if p.shape != g.shape:
            raise UserError(f"prediction {p.shape} and ground truth {g.shape} differ in size")
        out = np.zeros((*g.shape, 3), np.uint8)
        out[p == g] = CLASS_ERROR_COLOURS["right"]
        out[p != g] = CLASS_ERROR_COLOURS["wrong"]
        out[g == IGNORE_INDEX] = CLASS_ERROR_COLOURS["ignored"]
        return png_bytes(out)

    def render(self, index: int, kind: str) -> bytes | None:
        """PNG bytes of one map of row `index`, or None when there is none."""
        if self.classes is not None and kind in ("gt", "pred", "error", "prob"):
            return self._render_classes(index, kind)
        if kind == "error":
            pred, gt = self._file(index, "pred"), self._file(index, "gt")
            if pred is None or gt is None:
                return None
            return png_bytes(error_map(read_mask(pred), read_mask(gt)))
        path = self._file(index, kind) if kind in KINDS else None
        if path is None:
            return None
        if kind == "image":
            return png_bytes(to_u8(read_image(path)))
        if kind in ("gt", "pred"):
            return png_bytes(np.where(read_mask(path), 255, 0).astype(np.uint8))
        if kind == "prob":
            return png_bytes(to_u8(read_prob(path)))
        # uncertainty: a float map is drawn as `segdiff predict` draws it; a PNG is already drawn
        if path.suffix.lower() == ".png":
            return png_bytes(to_u8(read_image(path)))
        arr = np.load(path, allow_pickle=False) if path.suffix.lower() == ".npy" else tifffile.imread(str(path))
        # binary: a standard deviation (at most 0.5); K classes: an entropy in nats (at most log K)
        vmax = 0.5 if self.classes is None else float(np.log(max(self.classes.K, 2)))
        return png_bytes(heatmap(np.squeeze(np.asarray(arr, dtype=np.float32)), vmax))


def error_map(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3]: false positives and false negatives in two colours, hits grey, the rest black."""
    if pred.shape != gt.shape:
        raise UserError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    return error_image(pred, gt, ERROR_COLOURS, np.uint8)
