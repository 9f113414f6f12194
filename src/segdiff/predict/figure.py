"""Result figures (as the paper's Fig. 2): one row per image, one column per panel.

`result_figure`: a binary model's input, generations, their mean (the probability), uncertainty, mask,
errors against the truth and the truth; `segdiff demo` and the MoNuSeg benchmark draw theirs with it.
`classes_figure`: a multi-class model's input, predicted label, per-class probabilities, entropy and truth.
Both draw with `panel_figure` on a matplotlib Figure of its own (no pyplot state, no backend switch), write
it as a PNG and return it (its axes hold the panels, row by row: tests read the titles, arrays and ranges).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GREY = {"cmap": "gray", "vmin": 0, "vmax": 1}
PROBABILITY = {"cmap": "jet", "vmin": 0, "vmax": 1}
UNCERTAINTY = {"cmap": "inferno", "vmin": 0, "vmax": 0.5}  # the std of values in [0, 1] is at most 0.5
# errors panel: true positive white, false positive red, false negative blue, true negative black
ERROR_COLOURS = {"tp": (1, 1, 1), "fp": (1, 0.2, 0.2), "fn": (0.2, 0.5, 1)}
ERRORS_LEGEND = "errors: white = true positive, red = false positive, blue = false negative"


def panel_figure(
    path: Path | str,
    rows: list[list[tuple[np.ndarray, dict]]],
    titles: list[str],
    row_labels: list[str] | None = None,
    title: str | None = None,
    panel_size: tuple[float, float] = (1.6, 1.6),
    extra_height: float = 0.0,
    fontsize: float = 8,
    dpi: int = 110,
):
    """A grid of images without axes: rows[r][c] = (array, imshow keywords); titles over the first row,
    row_labels (small) left of each row, title over the figure. Writes a PNG to `path`; returns the Figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows, n_cols = len(rows), len(titles)
    fig = Figure(figsize=(panel_size[0] * n_cols, panel_size[1] * n_rows + extra_height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, panels in enumerate(rows):
        for c, (p, kw) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(p, **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=fontsize)
        if row_labels is not None:
            axes[r][0].set_ylabel(row_labels[r], fontsize=fontsize - 1)
    if title:
        fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return fig


def error_image(mask: np.ndarray, truth: np.ndarray, colours: dict = ERROR_COLOURS, dtype=np.float64) -> np.ndarray:
    """[H, W, 3] of `dtype`: the pixels of a predicted mask against the truth, coloured by kind ("tp", "fp",
    "fn", and "tn" when `colours` has it; a kind without a colour stays 0). Default: ERROR_COLOURS in [0, 1];
    the web page's evaluation browser passes its own uint8 colours."""
    mask, truth = np.asarray(mask, bool), np.asarray(truth, bool)
    err = np.zeros((*truth.shape, 3), dtype)
    kinds = {"tn": ~mask & ~truth, "tp": mask & truth, "fp": mask & ~truth, "fn": ~mask & truth}
    for kind, where in kinds.items():
        if kind in colours:
            err[where] = colours[kind]
    return err


def _input_panel(image: np.ndarray) -> tuple[np.ndarray, dict]:
    image = image[..., 0] if image.ndim == 3 and image.shape[-1] != 3 else image
    return image, ({} if image.ndim == 3 else GREY)


def result_figure(
    path: Path | str,
    images: list[np.ndarray],
    prob: list[np.ndarray],
    uncertainty: list[np.ndarray],
    truth: list[np.ndarray],
    samples: list[np.ndarray] | None = None,
    n_show: int = 4,
    mask: list[np.ndarray] | None = None,
    row_labels: list[str] | None = None,
    **layout,
):
    """One row per image: input, its first `n_show` generations (with `samples`, [G, H, W] per image), the
    probability (their mean), the uncertainty, with `mask` the predicted mask and its errors against the
    truth, and the truth. `layout`: panel_figure's panel_size, fontsize, dpi, title. Returns the Figure."""
    titles = ["input"]
    if samples is not None:
        titles += [f"gen {k + 1}" for k in range(n_show)]
    titles += ["mean" if samples is not None else "probability", "uncertainty"]
    if mask is not None:
        titles += ["mask (p >= 0.5)", "errors"]
        layout.setdefault("title", ERRORS_LEGEND)
    titles.append("truth")
    rows = []
    for r in range(len(images)):
        panels = [_input_panel(images[r])]
        if samples is not None:
            panels += [(s, PROBABILITY) for s in samples[r][:n_show]]
        panels += [(prob[r], PROBABILITY), (uncertainty[r], UNCERTAINTY)]
        if mask is not None:
            panels += [(mask[r], GREY), (error_image(mask[r], truth[r]), {})]
        panels.append((truth[r], GREY))
        rows.append(panels)
    return panel_figure(path, rows, titles, row_labels=row_labels, **layout)


def classes_figure(path: Path | str, images, label, prob, entropy, truth, classes, n_rows: int = 4):
    """Rows of: input, predicted label (in the classes' colours), the probability of each class but the
    background (every class where the classes name no background), entropy, truth. `classes`: the run's
    ClassSet (K, names, background, color_image). Returns the Figure."""
    K = classes.K
    shown = [k for k in range(K) if k != classes.background]
    titles = ["input", "label"] + [f"p({classes.names[k]})" for k in shown] + ["entropy", "truth"]
    rows = []
    for r in range(min(n_rows, len(images))):
        panels = [_input_panel(images[r]), (classes.color_image(label[r]), {})]
        panels += [(prob[r][k], {"cmap": "viridis", "vmin": 0, "vmax": 1}) for k in shown]
        panels.append((entropy[r], {"cmap": "inferno", "vmin": 0, "vmax": float(np.log(K))}))
        panels.append((classes.color_image(truth[r]), {}))
        rows.append(panels)
    return panel_figure(path, rows, titles, extra_height=0.4)
