"""Result figures (segdiff.predict.figure): the demo's figure.png comes out byte for byte as the demo drew it
before the figure code was shared (the former functions are copied below as the reference), and the
MoNuSeg benchmark's layout (mask, errors, row labels) draws."""

import numpy as np
from PIL import Image

from segdiff.classset import ClassSet
from segdiff.predict.figure import ERROR_COLOURS, classes_figure, error_image, result_figure


def former_demo_figure(path, image, samples, prob, unc, gt, n_show=4):  # segdiff.demo.figure before issue 11
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(image)
    cols = 3 + n_show + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
    titles = ["input"] + [f"gen {k + 1}" for k in range(n_show)] + ["mean", "uncertainty", "truth"]
    for r in range(rows):
        panels = [image[r]] + list(samples[r][:n_show]) + [prob[r], unc[r], gt[r]]
        for c, p in enumerate(panels):
            ax = axes[r][c]
            kw = {} if p.ndim == 3 else {"cmap": "jet", "vmin": 0, "vmax": 1}
            if c == cols - 2:
                kw = {"cmap": "inferno", "vmin": 0, "vmax": 0.5}
            if c == cols - 1:
                kw = {"cmap": "gray", "vmin": 0, "vmax": 1}
            ax.imshow(p, **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def former_classes_figure(path, images, label, prob, entropy, gt, classes, n_rows=4):  # segdiff.demo's
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    K = classes.K
    titles = ["input", "label"] + [f"p({n})" for n in classes.names[1:]] + ["entropy", "truth"]
    cols = len(titles)
    rows = min(n_rows, len(images))
    fig = Figure(figsize=(1.6 * cols, 1.6 * rows + 0.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        im = images[r]
        im = im[..., 0] if im.shape[-1] != 3 else im
        panels = [(im, {"cmap": "gray", "vmin": 0, "vmax": 1} if im.ndim == 2 else {})]
        panels.append((classes.color_image(label[r]), {}))
        panels += [(prob[r][k], {"cmap": "viridis", "vmin": 0, "vmax": 1}) for k in range(1, K)]
        panels.append((entropy[r], {"cmap": "inferno", "vmin": 0, "vmax": float(np.log(K))}))
        panels.append((classes.color_image(gt[r]), {}))
        for c, (p, kw) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(p, **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def test_demo_figure_is_byte_identical_to_the_former_one(tmp_path):
    g = np.random.default_rng(0)
    images = [g.random((32, 32, 3)).astype(np.float32) for _ in range(4)]
    samples = g.random((4, 6, 32, 32)).astype(np.float32)
    prob, unc = samples.mean(1), samples.std(1)
    truth = [g.random((32, 32)) > 0.5 for _ in range(4)]
    former_demo_figure(tmp_path / "former.png", images, samples, prob, unc, truth)
    result_figure(tmp_path / "shared.png", images, prob, unc, truth, samples=samples)
    assert (tmp_path / "shared.png").read_bytes() == (tmp_path / "former.png").read_bytes()


def test_classes_figure_is_byte_identical_to_the_former_one(tmp_path):
    g = np.random.default_rng(1)
    cs = ClassSet(("background", "stripes", "checks"), (0, 1, 2), ((0, 0, 0), (230, 25, 75), (60, 180, 75)))
    images = [g.random((24, 24, 1)).astype(np.float32) for _ in range(3)]
    label = g.integers(0, 3, (3, 24, 24))
    prob = g.dirichlet(np.ones(3), (3, 24, 24)).transpose(0, 3, 1, 2)
    entropy = g.random((3, 24, 24))
    gt = g.integers(0, 3, (3, 24, 24))
    former_classes_figure(tmp_path / "former.png", images, label, prob, entropy, gt, cs)
    classes_figure(tmp_path / "shared.png", images, label, prob, entropy, gt, cs)
    assert (tmp_path / "shared.png").read_bytes() == (tmp_path / "former.png").read_bytes()


def test_benchmark_layout_draws_mask_errors_and_labels(tmp_path):
    truth = np.zeros((8, 8), bool)
    truth[:4] = True
    mask = np.zeros((8, 8), bool)
    mask[2:6] = True
    err = error_image(mask, truth)
    assert tuple(err[0, 0]) == ERROR_COLOURS["fn"] and tuple(err[3, 0]) == ERROR_COLOURS["tp"]
    assert tuple(err[5, 0]) == ERROR_COLOURS["fp"] and tuple(err[7, 0]) == (0, 0, 0)
    image = np.zeros((8, 8, 3), np.float32)
    path = tmp_path / "figure.png"
    args = ([image, image], [mask * 0.7] * 2, [mask * 0.1] * 2, [truth, truth])
    result_figure(path, *args, mask=[mask, mask], row_labels=["a\nDice 1", "b"], panel_size=(2.4, 2.5), dpi=90)
    # six panels (input, probability, uncertainty, mask, errors, truth) of 2.4 x 2.5 inches, two rows, at 90 dpi
    assert Image.open(path).size == (round(6 * 2.4 * 90), round(2 * 2.5 * 90))
