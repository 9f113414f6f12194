"""The nnU-Net v2 raw data set as a data root (docs/data.md, "Volumes: the nnU-Net v2 layout"):

    DatasetXXX_Name/dataset.json      channel_names, labels, file_ending, numTraining
    DatasetXXX_Name/imagesTr/CASE_0000<ending>, CASE_0001<ending>, ...   one file per channel
    DatasetXXX_Name/labelsTr/CASE<ending>
    DatasetXXX_Name/imagesTs/, labelsTs/                                 optional

Here: reading dataset.json (its labels as a ClassSet), grouping the channel files of each case by their
`_XXXX` suffix, pairing cases with labels, and the seeded validation split by case.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import rng
from ..classset import ClassSet
from ..errors import DataError
from .volume_io import ENDINGS, ending_of, strip_ending

CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One case: its channel files in channel order and its label file (None without one)."""

    stem: str  # the case identifier (named stem like a 2D sample's, for split.json)
    images: tuple[Path, ...]
    label: Path | None = None


@dataclass(frozen=True)
class DatasetJson:
    path: Path
    channel_names: tuple[str, ...]
    classes: ClassSet
    file_ending: str
    num_training: int | None


def is_nnunet(root: Path | str) -> bool:
    """A folder holding dataset.json and imagesTr/ (an nnU-Net v2 raw data set)."""
    root = Path(root)
    return (root / "dataset.json").is_file() and (root / "imagesTr").is_dir()


def labels_to_classes(labels, source: str) -> ClassSet:
    """dataset.json's "labels" (name -> value, background 0) -> a ClassSet in value order. Region-based
    definitions (a label given as a list of values) are refused naming the label."""
    if not isinstance(labels, dict) or not labels:
        raise DataError(f'{source}: \'labels\' must be an object name -> value, e.g. {{"background": 0, "liver": 1}}')
    pairs, ignore = [], None
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise DataError(
                f"{source}: label '{name}' is region-based ({list(value)}); segdiff trains one class per label "
                "value: give each label a single integer"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DataError(f"{source}: label '{name}' must be a non-negative integer, got {value!r}")
        if name == "ignore":  # nnU-Net v2's ignore label: its voxels count in no loss and no metric
            ignore = value
            continue
        pairs.append((value, str(name)))
    pairs.sort()
    values = [v for v, _ in pairs]
    if len(set(values)) != len(values):
        raise DataError(f"{source}: two labels share the value {next(v for v in values if values.count(v) > 1)}")
    if values[0] != 0:
        raise DataError(f"{source}: no background label 0 (nnU-Net's labels start with 'background': 0)")
    if len(values) < 2:
        raise DataError(f"{source}: needs a label besides the background")
    from ..classset import default_color

    return ClassSet(
        names=tuple(n for _, n in pairs),
        values=tuple(values),
        colors=tuple(default_color(i) for i in range(len(values))),
        ignore_value=ignore,
    )


def read_dataset_json(root: Path | str) -> DatasetJson:
    path = Path(root) / "dataset.json"
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found; an nnU-Net data set needs a dataset.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a JSON object")
    if "regions_class_order" in d:
        raise DataError(f"{path}: region-based labels (regions_class_order) are not supported; one value per label")
    names = d.get("channel_names", d.get("modality"))
    if not isinstance(names, dict) or not names:
        raise DataError(f'{path}: \'channel_names\' must be an object {{"0": "T1", "1": "T2"}}')
    try:
        order = sorted(names, key=int)
    except ValueError:
        raise DataError(f'{path}: \'channel_names\' keys must be channel numbers "0", "1", ...') from None
    if [int(k) for k in order] != list(range(len(order))):
        raise DataError(f"{path}: 'channel_names' must number the channels 0..{len(order) - 1}")
    ending = d.get("file_ending")
    if not isinstance(ending, str) or ending.lower() not in ENDINGS:
        raise DataError(f"{path}: 'file_ending' {ending!r} is not one of {', '.join(ENDINGS)}")
    n = d.get("numTraining")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise DataError(f"{path}: 'numTraining' must be a non-negative integer, got {n!r}")
    classes = labels_to_classes(d.get("labels"), str(path))
    return DatasetJson(path, tuple(str(names[k]) for k in order), classes, ending.lower(), n)


def group_cases(folder: Path | str, channels: int | None, ending: str | None = None) -> dict[str, tuple[Path, ...]]:
    """Map case -> its channel files (CASE_0000, CASE_0001, ...) of `folder` (or of the folder of one file,
    taking that file's case). `channels` None: as many as the first case has. A missing channel is a
    DataError naming the case and the channel; unsupported files and names without `_XXXX` are errors."""
    folder = Path(folder)
    only = None
    if folder.is_file():
        m = CHANNEL_RE.match(strip_ending(folder))
        if not m:
            raise DataError(f"{folder}: an image file of a case is named CASE_0000{ending_of(folder) or ''}")
        folder, only = folder.parent, m["case"]
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    found: dict[str, dict[int, Path]] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.name.lower() in ("thumbs.db", "desktop.ini"):
            continue
        e = ending_of(p)
        if e is None or (ending is not None and e != ending):
            want = ending or ", ".join(ENDINGS)
            raise DataError(f"{p}: not a {want} image file; move it out of {folder}")
        m = CHANNEL_RE.match(strip_ending(p))
        if not m:
            raise DataError(f"{p}: image files are named CASE_XXXX{e} (XXXX the channel, 0000 for the first)")
        if only is not None and m["case"] != only:
            continue
        ch = found.setdefault(m["case"], {})
        if int(m["ch"]) in ch:
            raise DataError(f"{p}: two files for channel {m['ch']} of case {m['case']} ({ch[int(m['ch'])].name})")
        ch[int(m["ch"])] = p
    if not found:
        raise DataError(f"{folder}: no image files (CASE_0000{ending or '.nii.gz'}) in this folder")
    n = channels if channels is not None else max(len(c) for c in found.values())
    out = {}
    for case, chans in sorted(found.items()):
        for c in range(n):
            if c not in chans:
                raise DataError(f"{folder}: case {case} has no channel {c:04d} (file {case}_{c:04d}{ending or ''})")
        extra = sorted(set(chans) - set(range(n)))
        if extra:
            raise DataError(
                f"{chans[extra[0]]}: channel {extra[0]:04d} beyond the {n} channel(s) of the model/data set"
            )
        out[case] = tuple(chans[c] for c in range(n))
    return out


def list_cases(root: Path | str, split: str = "Tr", require_labels: bool = True) -> tuple[DatasetJson, list[Case]]:
    """dataset.json and the cases of imagesTr (split "Tr") or imagesTs ("Ts"), each with its label file."""
    root = Path(root)
    ds = read_dataset_json(root)
    images = group_cases(root / f"images{split}", len(ds.channel_names), ds.file_ending)
    labels_dir = root / f"labels{split}"
    if not labels_dir.is_dir():
        if require_labels:
            raise DataError(f"{labels_dir}: folder not found; training cases need their labels")
        return ds, [Case(c, files) for c, files in images.items()]
    labels = {}
    for p in sorted(labels_dir.iterdir()):
        if p.is_file() and not p.name.startswith(".") and ending_of(p) == ds.file_ending:
            labels[strip_ending(p)] = p
    cases = []
    for case, files in images.items():
        if case not in labels and require_labels:
            raise DataError(f"{files[0]}: case {case} has no label file {labels_dir / (case + ds.file_ending)}")
        cases.append(Case(case, files, labels.get(case)))
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise DataError(f"{labels[orphans[0]]}: a label without images (no {orphans[0]}_0000{ds.file_ending})")
    if split == "Tr" and ds.num_training is not None and ds.num_training != len(cases):
        raise DataError(f"{ds.path}: numTraining is {ds.num_training} but imagesTr holds {len(cases)} case(s)")
    return ds, cases


def split_cases(cases: list[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """A seeded hold-out by case: every slice of a case is on one side (never one case in train and val)."""
    if len(cases) < 2 or val_fraction <= 0:
        return list(cases), []
    n_val = min(len(cases) - 1, max(1, round(val_fraction * len(cases))))
    perm = torch.randperm(len(cases), generator=rng.generator(seed, "val-split")).tolist()
    val = set(perm[:n_val])
    return [c for i, c in enumerate(cases) if i not in val], [c for i, c in enumerate(cases) if i in val]
