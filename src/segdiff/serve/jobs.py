"""The prediction queue of `segdiff serve`: one worker thread runs one sampling job at a time.

A job holds uploaded images (already decoded and checked) and sampling options. Its progress counts the
network calls of the sampling loop (the `on_step` hook of `SegDiff.predict`) against the total that
`SegDiff.network_calls` plans, so the bar moves with the sampler, per step and per window.
Results go to the job's own folder, laid out as `segdiff predict` writes them (predict.run.write_output:
binary maps, or a K-class model's label, colours, class probabilities, entropy and disagreement), plus a
PNG of the input, an RGBA overlay of the mask (K classes: the label in the classes' colours) and, for K
classes, one 8-bit PNG per class probability for the page's class picker.
"""

from __future__ import annotations

import shutil
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..config import PredictConfig
from ..data.io import to_u8, write_png
from ..errors import UserError
from ..predict.run import write_output

OVERLAY_RGB = (255, 0, 160)  # mask colour of the overlay, magenta (the page sets its opacity)


@dataclass
class Upload:
    name: str  # the file name the browser sent (shown, never used as a path)
    image: np.ndarray | None  # float32 [H, W, C] in [0, 1], C the model's channels; dropped once the job has run
    height: int = 0
    width: int = 0

    def __post_init__(self):
        if self.image is not None:
            self.height, self.width = self.image.shape[:2]


@dataclass
class Job:
    id: str
    uploads: list[Upload]
    opts: PredictConfig
    folder: Path
    state: str = "queued"  # queued | running | done | error
    done: int = 0  # network calls made
    total: int = 0  # network calls planned
    current: int = 0  # index of the image being sampled
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None

    def stem(self, i: int) -> str:
        return f"{i:03d}"


class JobQueue:
    """Jobs by id; a single worker thread takes them in order. `keep` finished jobs are kept (their files
    too); older ones are deleted."""

    def __init__(self, model, root: Path, keep: int = 20, max_queued: int = 16):
        self.model = model
        self.classes = model.classes  # None for a binary model
        self.files = JOB_FILES if self.classes is None else CLASS_JOB_FILES
        self.root = Path(root)
        self.keep = keep
        self.max_queued = max_queued
        self.jobs: dict[str, Job] = {}
        self.pending: deque[str] = deque()
        self.finished: deque[str] = deque()
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.stopping = False
        self.worker = threading.Thread(target=self._work, name="segdiff-serve-worker", daemon=True)
        self.worker.start()

    # -- the web side ----------------------------------------------------------------------------
    def submit(self, uploads: list[Upload], opts: PredictConfig) -> Job:
        with self.lock:
            if len(self.pending) >= self.max_queued:
                raise UserError(f"the queue is full ({self.max_queued} jobs waiting); try again later")
            job_id = uuid.uuid4().hex
            job = Job(job_id, uploads, opts, self.root / job_id)
            job.total = sum(self.model.network_calls(u.height, u.width, 1, opts) for u in uploads)
            self.jobs[job_id] = job
            self.pending.append(job_id)
            self.wake.notify()
        return job

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def status(self, job: Job) -> dict:
        with self.lock:
            position = list(self.pending).index(job.id) + 1 if job.state == "queued" else 0
            running = any(self.jobs[j].state == "running" for j in self.jobs)
        percent = 100.0 * job.done / job.total if job.total else 0.0
        if job.state == "done":
            percent = 100.0
        return {
            "id": job.id,
            "state": job.state,
            "position": position,  # 1 = next to run (queued jobs only)
            "ahead": position - 1 + (1 if running and job.state == "queued" else 0),
            "done": job.done,
            "total": job.total,
            "percent": percent,
            "image": job.current,
            "images": len(job.uploads),
            "error": job.error,
            "options": {
                "generations": job.opts.generations,
                "steps": job.opts.steps_for(len(self.model.schedule)),
                "sampler": job.opts.sampler,
                "variance": job.opts.variance,
            },
            "seconds": None if job.started is None else (job.finished or time.time()) - job.started,
            "results": self._results(job) if job.state == "done" else None,
        }

    def _results(self, job: Job) -> list[dict]:
        base = f"/api/jobs/{job.id}"
        out = []
        for i, u in enumerate(job.uploads):
            h, w = u.height, u.width
            out.append(
                {
                    "index": i,
                    "name": u.name,
                    "width": w,
                    "height": h,
                    "files": {kind: f"{base}/{i}/{kind}" for kind in self.files},
                    "generations": [f"{base}/{i}/generation/{k}" for k in range(job.opts.generations)],
                    # K classes: the probability of class k as a grey PNG (the page's class picker)
                    "class_prob": [f"{base}/{i}/class/{k}" for k in range(self.classes.K)] if self.classes else None,
                }
            )
        return out

    def file(self, job: Job, index: int, kind: str, k: int | None = None) -> Path | None:
        """The file of image `index` of a finished job, by kind (a key of `self.files`), generation k or
        (K classes) the probability PNG of class k."""
        if job.state != "done" or not 0 <= index < len(job.uploads):
            return None
        stem = job.stem(index)
        if kind == "generation":
            if k is None or not 0 <= k < job.opts.generations:
                return None
            return job.folder / "generations" / stem / f"{k:03d}.png"
        if kind == "class":
            if self.classes is None or k is None or not 0 <= k < self.classes.K:
                return None
            return job.folder / "class_prob" / stem / f"{k:03d}.png"
        if kind not in self.files:
            return None
        return job.folder / self.files[kind][0].format(stem=stem)

    def close(self) -> None:
        with self.lock:
            self.stopping = True
            self.wake.notify()
        self.worker.join(timeout=30)

    # -- the worker ------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self.lock:
                while not self.pending and not self.stopping:
                    self.wake.wait()
                if self.stopping:
                    return
                job = self.jobs[self.pending.popleft()]
                job.state, job.started = "running", time.time()
            try:
                self._run(job)
                state, error = "done", None
            except UserError as exc:
                state, error = "error", str(exc)
            except Exception as exc:  # a bug or an out-of-memory: report it on the page, keep serving
                traceback.print_exc()
                state, error = "error", f"prediction failed ({type(exc).__name__}: {exc})"
            with self.lock:
                job.state, job.error, job.finished = state, error, time.time()
                self.finished.append(job.id)
                while len(self.finished) > self.keep:
                    old = self.jobs.pop(self.finished.popleft(), None)
                    if old is not None:
                        shutil.rmtree(old.folder, ignore_errors=True)

    def _run(self, job: Job) -> None:
        def step() -> None:
            job.done += 1
            if self.stopping:  # the server is shutting down: stop after this network call
                raise UserError("the server stopped before this job finished")

        job.folder.mkdir(parents=True, exist_ok=True)
        for sub in ("input", "overlay"):
            (job.folder / sub).mkdir(exist_ok=True)
        for i, u in enumerate(job.uploads):
            job.current = i
            stem = job.stem(i)
            image = torch.from_numpy(u.image).permute(2, 0, 1)
            pred = self.model.predict(image, keys=[stem], return_samples=True, opts=job.opts, on_step=step)
            write_output(job.folder, stem, pred, 0, self.classes, save_generations=True)  # as segdiff predict
            atomic_write(job.folder / "input" / f"{stem}.png", lambda p, im=u.image: write_png(p, display_image(im)))
            mask = pred.mask[0].numpy()
            rgba = np.zeros((*mask.shape, 4), np.uint8)
            if self.classes is None:
                rgba[mask] = (*OVERLAY_RGB, 255)
            else:
                rgba[..., :3], rgba[..., 3] = self.classes.color_image(mask), 255
                self._write_class_probs(job.folder / "class_prob" / stem, pred.prob[0].numpy())
            atomic_write(job.folder / "overlay" / f"{stem}.png", lambda p, a=rgba: write_png(p, a))
            u.image = None  # the upload is on disk now (input/); free its memory
        job.done = job.total  # exact already (tested); guards the bar against a planning slip

    @staticmethod
    def _write_class_probs(folder: Path, prob: np.ndarray) -> None:
        """prob [K, H, W] -> folder/<k>.png, 8-bit grey (0..1 as 0..255): what the page shows per class."""
        folder.mkdir(parents=True, exist_ok=True)
        for k, p in enumerate(prob):
            atomic_write(folder / f"{k:03d}.png", lambda path, p=p: write_png(path, to_u8(p)))


def display_image(image: np.ndarray) -> np.ndarray:
    """float [H, W, C] -> uint8 for the page: RGB as it is, grey (one channel) as grey, more channels (RGBA
    or multi-channel TIFF) by their first three as RGB, two channels by the first as grey."""
    c = image.shape[-1]
    return to_u8(image[..., :3] if c >= 3 else image[..., 0])


# kind -> (path in the job folder, download name suffix, media type); binary models
JOB_FILES = {
    "input": ("input/{stem}.png", "input.png", "image/png"),
    "overlay": ("overlay/{stem}.png", "overlay.png", "image/png"),
    "mask": ("masks/{stem}.png", "mask.png", "image/png"),
    "prob": ("prob/{stem}.png", "prob.png", "image/png"),
    "prob_tif": ("prob/{stem}.tif", "prob.tif", "image/tiff"),
    "uncertainty": ("uncertainty/{stem}.png", "uncertainty.png", "image/png"),
    "uncertainty_tif": ("uncertainty/{stem}.tif", "uncertainty.tif", "image/tiff"),
}

# K-class models: the files `segdiff predict` writes for K classes (predict/export.py), and the page's own
CLASS_JOB_FILES = {
    "input": JOB_FILES["input"],
    "overlay": JOB_FILES["overlay"],
    "mask": ("masks/{stem}.png", "mask.png", "image/png"),  # the label as the data's masks hold it
    "color": ("color/{stem}.png", "color.png", "image/png"),
    "prob_tif": ("prob/{stem}.tif", "prob.tif", "image/tiff"),  # float32 [K, H, W]
    "uncertainty": ("uncertainty/{stem}.png", "uncertainty.png", "image/png"),  # entropy heat map, 0..log K
    "uncertainty_tif": ("uncertainty/{stem}.tif", "uncertainty.tif", "image/tiff"),
    "disagreement": ("disagreement/{stem}.png", "disagreement.png", "image/png"),
    "disagreement_tif": ("disagreement/{stem}.tif", "disagreement.tif", "image/tiff"),
}
