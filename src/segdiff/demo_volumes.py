"""`segdiff demo --volumes`: a synthetic 3D data set in the nnU-Net v2 layout, trained on slices with the tiny
preset, predicted as whole volumes and scored in 3D, beside a per-voxel intensity baseline.

The data: two MRI-like modalities (T1, T2) of anisotropic volumes (1 x 1 x 3 mm, a rotated affine with an
offset), each case an ellipsoid ("shell", bright in T1) holding a smaller one ("core", bright in T2 as well),
on a textured background, with a per-case gain and offset of the intensities (so that the per-case z-score
matters) and noise. Labels: background 0, shell 1, core 2 (K = 3).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import preset

SPACING = (1.0, 1.0, 3.0)
N_TRAIN, N_TEST = 12, 4  # cases of the demo's data set (one training case is held out for validation)


def case_affine(spacing=SPACING, angle_deg: float = 30.0, origin=(-20.0, 35.0, 12.5)) -> np.ndarray:
    """Voxel -> world: a rotation about the world's z axis, the spacing, an offset (a non-identity geometry)."""
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


def synthetic_case(g: np.random.Generator, shape=(32, 32, 10), spacing=SPACING, noise: float = 0.35):
    """-> (T1, T2) float32 volumes and the uint8 label volume [i, j, k] of one case."""
    ii, jj, kk = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    mm = [ii * spacing[0], jj * spacing[1], kk * spacing[2]]  # distances in mm: round in the world, not in voxels
    ext = [n * s for n, s in zip(shape, spacing)]
    c = [g.uniform(0.35, 0.65) * e for e in ext]
    r = [g.uniform(0.18, 0.3) * min(ext[:2]), g.uniform(0.18, 0.3) * min(ext[:2]), g.uniform(0.2, 0.3) * ext[2]]
    d = sum(((m - cc) / rr) ** 2 for m, cc, rr in zip(mm, c, r))
    shift = [g.uniform(-0.2, 0.2) * rr for rr in r]
    d_core = sum(((m - cc - s) / (0.5 * rr)) ** 2 for m, cc, s, rr in zip(mm, c, shift, r))
    label = np.zeros(shape, np.uint8)
    label[d <= 1] = 1
    label[(d_core <= 1) & (d <= 1)] = 2
    texture = np.sin(ii * g.uniform(0.4, 0.8) + jj * g.uniform(0.2, 0.5)) * 0.3
    t1 = np.where(label > 0, 1.0, 0.0) + texture + g.normal(0, noise, shape)
    t2 = np.where(label == 2, 1.0, 0.0) - 0.5 * (label == 1) + texture + g.normal(0, noise, shape)
    gain, offset = g.uniform(60, 140), g.uniform(200, 600)  # scanner-like units, different per case
    return (t1 * gain + offset).astype(np.float32), (t2 * gain * 0.8 + offset).astype(np.float32), label


def make_volume_dataset(
    root: Path | str, n_train: int = 12, n_test: int = 4, shape=(32, 32, 10), spacing=SPACING, seed: int = 0
) -> Path:
    """Write DatasetXXX in the nnU-Net v2 layout (imagesTr, labelsTr, imagesTs, labelsTs, dataset.json)."""
    import nibabel as nib

    root = Path(root)
    g = np.random.default_rng(seed)
    aff = case_affine(spacing)
    for split, n in (("Tr", n_train), ("Ts", n_test)):
        (root / f"images{split}").mkdir(parents=True, exist_ok=True)
        (root / f"labels{split}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            case = f"ellipsoid_{split.lower()}{i:03d}"
            t1, t2, label = synthetic_case(g, shape, spacing)
            for ch, vol in enumerate((t1, t2)):
                nib.save(nib.Nifti1Image(vol, aff), root / f"images{split}" / f"{case}_{ch:04d}.nii.gz")
            nib.save(nib.Nifti1Image(label, aff), root / f"labels{split}" / f"{case}.nii.gz")
    meta = {
        "channel_names": {"0": "T1", "1": "T2"},
        "labels": {"background": 0, "shell": 1, "core": 2},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
        "name": "synthetic ellipsoids (segdiff demo --volumes)",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root


def centroid_baseline(data: Path, test_out: Path) -> None:
    """A simple baseline: each voxel's class is the nearest class mean of its per-case z-scored (T1, T2)
    intensities, the means fitted on the training cases; written as label volumes into `test_out`."""
    from .data.nnunet import list_cases
    from .data.volume import load_case, read_labels_volume
    from .data.volume_io import write_like

    ds, train = list_cases(data)
    spec = [{"channel": n, "scheme": "zscore"} for n in ds.channel_names]
    K = ds.classes.K
    sums, counts = np.zeros((K, len(spec))), np.zeros(K)
    for case in train:
        image, _ = load_case(case, spec, 0)
        label = read_labels_volume(case.label, ds.classes)
        x = image.reshape(len(spec), -1).T
        for k in range(K):
            sums[k] += x[label.reshape(-1) == k].sum(0)
            counts[k] += (label == k).sum()
    means = sums / counts[:, None]
    _, test = list_cases(data, "Ts")
    for case in test:
        image, _ = load_case(case, spec, 0)
        x = image.reshape(len(spec), -1).T
        pred = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), 1).reshape(image.shape[1:])
        write_like(test_out / f"{case.stem}{ds.file_ending}", ds.classes.value_image(pred), case.images[0])


def run_volume_demo(
    out: str | Path = "segdiff-demo-volumes",
    max_steps: int | None = None,
    progress: bool = True,
    device: str | None = None,
    max_minutes: float = 8.0,
) -> dict:
    """Data set -> train (tiny, slices) -> predict imagesTs (whole volumes) -> evaluate in 3D -> report.json."""
    from .api import SegDiff
    from .atomic import atomic_write_text
    from .metrics.volume import evaluate_volumes
    from .predict.volume import predict_volumes
    from .train.loop import train

    out = Path(out)
    t0 = time.time()
    data = out / "Dataset001_Ellipsoids"
    shutil.rmtree(data, ignore_errors=True)
    make_volume_dataset(data, N_TRAIN, N_TEST)
    cfg = preset("tiny")
    cfg = replace(
        cfg,
        # every training case stays in memory (they are small): no case is read twice
        data=replace(cfg.data, volume=replace(cfg.data.volume, cache_cases=N_TRAIN)),
        train=replace(
            cfg.train,
            max_steps=400 if max_steps is None else max_steps,
            max_minutes=max_minutes,
            val_every=200,
            save_every=200,
        ),
    ).validate()
    run = out / "run"
    shutil.rmtree(run, ignore_errors=True)
    train_summary = train(data, run, cfg, device=device, progress=progress)
    t_train = time.time() - t0
    model = SegDiff.load(run, device=device)
    pred_dir = out / "pred"
    shutil.rmtree(pred_dir, ignore_errors=True)
    pred = predict_volumes(model, data / "imagesTs", pred_dir, batch_slices=10, progress=progress)
    scores = evaluate_volumes(pred_dir, data / "labelsTs")
    base_dir = out / "baseline"
    shutil.rmtree(base_dir, ignore_errors=True)
    centroid_baseline(data, base_dir)
    base = evaluate_volumes(base_dir, data / "labelsTs", dataset_json=data / "dataset.json")
    names = scores["labels"]
    report = {
        "data": str(data),
        "cases": {"train": N_TRAIN, "test": N_TEST},
        "train": {
            "steps": train_summary["step"],
            "seconds": round(t_train, 1),
            "stopped_by": train_summary["stopped_by"],
        },
        "predict": {"slices": pred["slices"], "seconds": round(pred["seconds"], 1), "protocol": pred["protocol"]},
        "dice_3d": {
            names[k]: {"segdiff": scores["mean"][k]["Dice"], "baseline": base["mean"][k]["Dice"]}
            for k in scores["mean"]
        },
        "hd95_mm": {
            names[k]: {"segdiff": scores["mean"][k]["HD95"], "baseline": base["mean"][k]["HD95"]}
            for k in scores["mean"]
        },
        "baseline": "nearest class mean of the per-case z-scored (T1, T2) intensities, per voxel",
        "seconds_total": round(time.time() - t0, 1),
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report
