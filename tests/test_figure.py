"""Result figures (segdiff.predict.figure): what a reader of figure.png relies on, read from the Figure the
functions return: the panels, their order and titles, the data each shows and its colour range, the size
of the PNG. Nothing here depends on how matplotlib encodes the pixels."""

import numpy as np
from PIL import Image

from segdiff.classset import ClassSet
from segdiff.predict.figure import ERROR_COLOURS, ERRORS_LEGEND, classes_figure, error_image, result_figure


def _grid(fig, n_cols: int) -> list[list]:
    axes = fig.axes
    assert len(axes) % n_cols == 0
    return [axes[i : i + n_cols] for i in range(0, len(axes), n_cols)]


def _panel(ax) -> tuple[np.ndarray, tuple[float, float], str]:
    """The array an axes shows, its colour limits and colour map name."""
    (im,) = ax.get_images()
    return np.asarray(im.get_array()), tuple(float(v) for v in im.get_clim()), im.get_cmap().name


def test_demo_figure_rows_show_input_generations_mean_uncertainty_truth(tmp_path):
    g = np.random.default_rng(0)
    images = [g.random((32, 32, 3)).astype(np.float32) for _ in range(3)]
    samples = g.random((3, 6, 32, 32)).astype(np.float32)
    prob, unc = samples.mean(1), samples.std(1)
    truth = [g.random((32, 32)) > 0.5 for _ in range(3)]
    fig = result_figure(tmp_path / "f.png", images, prob, unc, truth, samples=samples)
    titles = ["input", "gen 1", "gen 2", "gen 3", "gen 4", "mean", "uncertainty", "truth"]
    rows = _grid(fig, len(titles))
    assert len(rows) == 3  # one row per image
    assert [ax.get_title() for ax in rows[0]] == titles and all(ax.get_title() == "" for ax in rows[1])
    for r, row in enumerate(rows):
        np.testing.assert_array_equal(_panel(row[0])[0], images[r])  # the colour input as it is
        for k in range(4):  # the first four generations, on the probability scale
            arr, clim, cmap = _panel(row[1 + k])
            np.testing.assert_array_equal(arr, samples[r, k])
            assert (clim, cmap) == ((0.0, 1.0), "jet")
        assert _panel(row[5])[1:] == ((0.0, 1.0), "jet")
        np.testing.assert_array_equal(_panel(row[5])[0], prob[r])
        arr, clim, cmap = _panel(row[6])
        np.testing.assert_array_equal(arr, unc[r])
        assert clim == (0.0, 0.5) and cmap == "inferno"  # a std of values in [0, 1] is at most 0.5
        arr, clim, cmap = _panel(row[7])
        np.testing.assert_array_equal(arr, truth[r])
        assert (clim, cmap) == ((0.0, 1.0), "gray")
        assert all(not ax.get_xticks().size and not ax.get_yticks().size for ax in row)
    assert Image.open(tmp_path / "f.png").size == (round(8 * 1.6 * 110), round(3 * 1.6 * 110))


def test_benchmark_layout_adds_mask_and_errors_with_legend_and_row_labels(tmp_path):
    truth = np.zeros((8, 8), bool)
    truth[:4] = True
    mask = np.zeros((8, 8), bool)
    mask[2:6] = True
    err = error_image(mask, truth)
    assert tuple(err[0, 0]) == ERROR_COLOURS["fn"] and tuple(err[3, 0]) == ERROR_COLOURS["tp"]
    assert tuple(err[5, 0]) == ERROR_COLOURS["fp"] and tuple(err[7, 0]) == (0, 0, 0)
    grey = np.full((8, 8, 1), 0.25, np.float32)  # a one-channel image is shown in grey
    path = tmp_path / "figure.png"
    args = ([grey, grey], [mask * 0.7] * 2, [mask * 0.1] * 2, [truth, truth])
    fig = result_figure(path, *args, mask=[mask, mask], row_labels=["a\nDice 1", "b"], panel_size=(2.4, 2.5), dpi=90)
    titles = ["input", "probability", "uncertainty", "mask (p >= 0.5)", "errors", "truth"]
    rows = _grid(fig, len(titles))
    assert [ax.get_title() for ax in rows[0]] == titles
    assert [row[0].get_ylabel() for row in rows] == ["a\nDice 1", "b"]
    assert fig._suptitle.get_text() == ERRORS_LEGEND
    arr, clim, cmap = _panel(rows[1][0])
    assert arr.shape == (8, 8) and (clim, cmap) == ((0.0, 1.0), "gray")
    np.testing.assert_array_equal(_panel(rows[0][3])[0], mask)
    np.testing.assert_array_equal(_panel(rows[0][4])[0], err)
    # six panels of 2.4 x 2.5 inches, two rows, at 90 dpi
    assert Image.open(path).size == (round(6 * 2.4 * 90), round(2 * 2.5 * 90))


def _class_arrays(K: int, n: int = 3):
    g = np.random.default_rng(1)
    images = [g.random((24, 24, 1)).astype(np.float32) for _ in range(n)]
    label = g.integers(0, K, (n, 24, 24))
    prob = g.dirichlet(np.ones(K), (n, 24, 24)).transpose(0, 3, 1, 2)
    entropy = g.random((n, 24, 24)) * np.log(K)
    gt = g.integers(0, K, (n, 24, 24))
    return images, label, prob, entropy, gt


def test_classes_figure_shows_label_colours_probabilities_but_the_background_entropy_truth(tmp_path):
    colours = ((0, 0, 0), (230, 25, 75), (60, 180, 75))
    cs = ClassSet(("sky", "road", "car"), (0, 1, 2), colours, background=1)  # the background is not class 0
    images, label, prob, entropy, gt = _class_arrays(3)
    fig = classes_figure(tmp_path / "c.png", images, label, prob, entropy, gt, cs, n_rows=2)
    titles = ["input", "label", "p(sky)", "p(car)", "entropy", "truth"]
    rows = _grid(fig, len(titles))
    assert len(rows) == 2 and [ax.get_title() for ax in rows[0]] == titles
    for r, row in enumerate(rows):
        arr, clim, cmap = _panel(row[0])
        np.testing.assert_array_equal(arr, images[r][..., 0])
        assert (clim, cmap) == ((0.0, 1.0), "gray")
        np.testing.assert_array_equal(_panel(row[1])[0], cs.color_image(label[r]))
        for c, k in ((2, 0), (3, 2)):
            arr, clim, cmap = _panel(row[c])
            np.testing.assert_array_equal(arr, prob[r][k])
            assert (clim, cmap) == ((0.0, 1.0), "viridis")
        arr, clim, cmap = _panel(row[4])
        np.testing.assert_array_equal(arr, entropy[r])
        assert cmap == "inferno" and clim == (0.0, float(np.log(3)))  # the entropy of K classes is at most log K
        np.testing.assert_array_equal(_panel(row[5])[0], cs.color_image(gt[r]))
    # no background named: every class's probability is shown
    cs = ClassSet(("sky", "road", "car"), (0, 1, 2), colours)
    fig = classes_figure(tmp_path / "d.png", images, label, prob, entropy, gt, cs, n_rows=1)
    assert [ax.get_title() for ax in fig.axes][2:5] == ["p(sky)", "p(road)", "p(car)"]
