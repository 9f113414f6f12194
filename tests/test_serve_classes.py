"""`segdiff serve` with a K = 3 class run and a one-channel run (issue 19): the files a K-class job writes
are those of `segdiff predict`, the page shows the label in the classes' colours with a legend, a class
picker, entropy and disagreement; the evaluation browser shows a K-class summary's per-class scores; an
upload of another channel count than the run's is refused with a clear message. API tests run over HTTP
(TestClient); the page tests drive headless Chromium as tests/test_serve.py does."""

from __future__ import annotations

import io
import json
import urllib.request

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import make_dataset, tiny_config
from segdiff import rng
from segdiff.demo import CLASS_COLORS, CLASS_NAMES, synthetic_classes_pair

pytest.importorskip("starlette", reason="starlette is not installed (pip install -e '.[dev]')")
pytest.importorskip("httpx", reason="httpx is not installed (pip install -e '.[dev]')")

from starlette.testclient import TestClient  # noqa: E402

from segdiff.api import SegDiff  # noqa: E402
from segdiff.serve.app import Limits, create_app  # noqa: E402
from segdiff.serve.browser import wait_for  # noqa: E402
from segdiff.serve.evalbrowser import CLASS_ERROR_COLOURS, EvalIndex  # noqa: E402
from segdiff.serve.server import ServerThread, allowed_hosts  # noqa: E402
from test_serve import HEADERS, _wait  # noqa: E402

K = 3
SIZE = 16


def _class_data(root):
    """K = 3 classes (background, stripes, checks) on RGB PNG images, a one-pixel ignored border."""
    for split, n in (("train", 4), ("test", 3)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            image, label = synthetic_classes_pair(rng.generator(5, split, i), SIZE, channels=3, n_classes=K - 1)
            label[0, :] = label[:, 0] = 255
            Image.fromarray(image).save(root / split / "images" / f"img{i:02d}.png")
            Image.fromarray(label).save(root / split / "masks" / f"img{i:02d}.png")
    classes = [{"name": n, "value": k, "color": list(c)} for k, (n, c) in enumerate(zip(CLASS_NAMES, CLASS_COLORS))]
    (root / "classes.json").write_text(json.dumps({"classes": classes[:K], "ignore": 255}))
    return root


def _train(data, run):
    from segdiff.train.loop import train

    train(data, run, tiny_config(T=10, max_steps=1, val_every=0), device="cpu", progress=False)
    return SegDiff.load(run, device="cpu")


@pytest.fixture(scope="module")
def k3(tmp_path_factory):
    """A K = 3 run trained for one step, its predictions of the test split and their evaluation."""
    from segdiff.metrics.evaluate import evaluate_dirs
    from segdiff.predict.run import predict_folder

    root = tmp_path_factory.mktemp("serve_k3")
    data = _class_data(root / "data")
    model = _train(data, root / "run")
    predict_folder(model, data / "test" / "images", root / "pred", progress=False)
    evaluate_dirs(root / "pred", data / "test", out=root / "eval" / "summary.json")
    return {"root": root, "data": data, "model": model, "summary": root / "eval" / "summary.json"}


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    """A binary run on one-channel (grey) images, trained for one step."""
    root = tmp_path_factory.mktemp("serve_grey")
    data = make_dataset(root / "data", splits=(("train", 4),))
    for p in (data / "train" / "images").iterdir():
        Image.open(p).convert("L").save(p)
    model = _train(data, root / "run")
    assert model.config.model.image_channels == 1
    return {"root": root, "model": model}


def _client(model, tmp_path, evaluation=None):
    app = create_app(model, evaluation, Limits(max_pixels=64 * 64), workdir=tmp_path / "jobs")
    return TestClient(app, base_url="http://127.0.0.1")


def _image_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    if fmt == "TIFF":
        tifffile.imwrite(buf, arr, photometric="minisblack")
    else:
        Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _rgb(h: int = SIZE, w: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- the API


def test_class_job_writes_the_files_of_segdiff_predict(k3, tmp_path):
    """The job's label, colours, class probabilities, entropy, disagreement and generations are byte for byte
    those `segdiff predict` writes for the same image (same stem, same protocol); the page's extras agree."""
    from segdiff.predict.run import predict_folder

    model, cs = k3["model"], k3["model"].classes
    (tmp_path / "in").mkdir()
    image = _rgb(20, 12)
    Image.fromarray(image).save(tmp_path / "in" / "000.png")  # the job's first image is written as stem 000
    with _client(model, tmp_path) as c:
        info = c.get("/api/info").json()["model"]
        assert info["image_channels"] == 3
        assert info["classes"] == [
            {"name": "background", "color": "#000000", "background": True},
            {"name": "stripes", "color": "#e6194b", "background": False},
            {"name": "checks", "color": "#3cb44b", "background": False},
        ]
        r = c.post(
            "/api/jobs",
            files=[("images", ("a.png", _image_bytes(image), "image/png"))],
            data={"generations": "2", "steps": "3"},
            headers=HEADERS,
        )
        assert r.status_code == 202, r.text
        s = _wait(c, r.json()["id"])
        assert s["state"] == "done", s
        res = s["results"][0]
        got = {kind: c.get(url) for kind, url in res["files"].items()}
        gens = [c.get(u).content for u in res["generations"]]
        class_prob = [c.get(u).content for u in res["class_prob"]]
        assert c.get(res["class_prob"][0].replace("/class/0", f"/class/{K}")).status_code == 404
    assert set(got) == {
        "input",
        "overlay",
        "mask",
        "color",
        "prob_tif",
        "uncertainty",
        "uncertainty_tif",
        "disagreement",
        "disagreement_tif",
    }
    assert 'filename="a_disagreement.tif"' in got["disagreement_tif"].headers["content-disposition"]
    out = tmp_path / "pred"
    predict_folder(model, tmp_path / "in", out, generations=2, steps=3, save_generations=True, progress=False)
    same = {
        "mask": "masks/000.png",
        "color": "color/000.png",
        "prob_tif": "prob/000.tif",
        "uncertainty": "uncertainty/000.png",
        "uncertainty_tif": "uncertainty/000.tif",
        "disagreement": "disagreement/000.png",
        "disagreement_tif": "disagreement/000.tif",
    }
    for kind, path in same.items():
        assert got[kind].content == (out / path).read_bytes(), kind
    assert gens == [(out / "generations" / "000" / f"{k:03d}.png").read_bytes() for k in range(2)]
    # the extras: the overlay is the label in the classes' colours, class k's PNG its probability
    label = np.asarray(Image.open(out / "masks" / "000.png"))
    overlay = np.asarray(Image.open(io.BytesIO(got["overlay"].content)))
    assert overlay.shape == (20, 12, 4) and (overlay[..., 3] == 255).all()
    np.testing.assert_array_equal(overlay[..., :3], cs.color_image(label))
    prob = tifffile.imread(out / "prob" / "000.tif")
    assert prob.shape == (K, 20, 12)
    for k in range(K):
        np.testing.assert_array_equal(
            np.asarray(Image.open(io.BytesIO(class_prob[k]))), (prob[k] * 255 + 0.5).astype(np.uint8)
        )


def test_uploads_must_have_the_runs_channel_count(grey, k3, tmp_path):
    grey_image = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    with _client(grey["model"], tmp_path / "g") as c:
        assert c.get("/api/info").json()["model"]["image_channels"] == 1
        r = c.post(
            "/api/jobs",
            files=[("images", ("scan.png", _image_bytes(grey_image), "image/png"))],
            data={"generations": "1", "steps": "3"},
            headers=HEADERS,
        )
        assert r.status_code == 202, r.text
        s = _wait(c, r.json()["id"])
        assert s["state"] == "done", s
        mask = np.asarray(Image.open(io.BytesIO(c.get(s["results"][0]["files"]["mask"]).content)))
        assert mask.shape == (SIZE, SIZE)
        for name, data in (
            ("photo.png", _image_bytes(_rgb())),
            ("four.tif", _image_bytes(np.zeros((4, 8, 8), np.uint8), "TIFF")),
        ):
            r = c.post("/api/jobs", files=[("images", (name, data, "image/png"))], headers=HEADERS)
            assert r.status_code == 400, r.text
            n = 3 if name == "photo.png" else 4
            assert r.json()["error"].startswith(
                f"{name}: image has {n} channel(s) but the model was trained on 1-channel"
            )
    with _client(k3["model"], tmp_path / "k") as c:  # an RGB run takes a grey upload (replicated, as predict does)
        r = c.post(
            "/api/jobs",
            files=[("images", ("g.png", _image_bytes(grey_image), "image/png"))],
            data={"generations": "1", "steps": "3"},
            headers=HEADERS,
        )
        assert r.status_code == 202 and _wait(c, r.json()["id"])["state"] == "done"


def test_multichannel_and_rgba_uploads_are_read_as_predict_reads_them():
    from segdiff.serve.jobs import display_image
    from segdiff.serve.uploads import UploadError, decode_upload

    tiff = _image_bytes(np.random.default_rng(2).integers(0, 256, (4, 8, 6), dtype=np.uint8), "TIFF")
    image = decode_upload("bands.tif", tiff, 64 * 64, channels=4)  # a run on 4-channel TIFFs
    assert image.shape == (8, 6, 4) and image.dtype == np.float32
    assert display_image(image).shape == (8, 6, 3)  # shown by its first three channels
    rgba = np.dstack([_rgb(8, 6), np.full((8, 6), 128, np.uint8)])
    assert decode_upload("a.png", _image_bytes(rgba), 64 * 64, channels=3).shape == (8, 6, 3)  # alpha dropped
    with pytest.raises(UploadError, match=r"^a\.png: image has 3 channel\(s\) but the model was trained on 4"):
        decode_upload("a.png", _image_bytes(rgba), 64 * 64, channels=4)
    assert display_image(decode_upload("g.png", _image_bytes(_rgb()[..., 0]), 64 * 64, channels=1)).ndim == 2


def test_eval_api_of_a_class_summary(k3):
    ev = EvalIndex(k3["summary"], k3["data"] / "test")
    info = ev.info()
    assert info["kind"] == "classes" and info["summary"]["background"] == "background"
    assert [c["name"] for c in info["per_class"]] == ["background", "stripes", "checks"]
    summary = json.loads(k3["summary"].read_text())
    for c in info["per_class"]:
        assert c["iou"] == summary["per_class"][c["name"]]["iou"] and c["color"].startswith("#")
    keys = [c["key"] for c in info["columns"]]
    assert keys == ["stem", "miou", "miou_fg", "iou[background]", "iou[stripes]", "iou[checks]", "calibration"]
    assert [r["stem"] for r in info["rows"]] == ["img00", "img01", "img02"]
    assert set(info["kinds"]) == {"image", "gt", "pred", "error", "prob", "uncertainty"}
    # the entropy map, drawn as predict draws it (inferno on 0..log K)
    entropy = np.asarray(Image.open(io.BytesIO(ev.render(1, "uncertainty"))))
    np.testing.assert_array_equal(entropy, np.asarray(Image.open(k3["root"] / "pred" / "uncertainty" / "img01.png")))
    cs = k3["model"].classes
    gt = np.asarray(Image.open(io.BytesIO(ev.render(1, "gt"))))
    raw = np.asarray(Image.open(k3["data"] / "test" / "masks" / "img01.png"))
    np.testing.assert_array_equal(gt, cs.color_image(raw))  # classes in colour, the ignored border white
    err = np.asarray(Image.open(io.BytesIO(ev.render(1, "error"))))
    pred = np.asarray(Image.open(k3["root"] / "pred" / "masks" / "img01.png"))
    for name, where in {"ignored": raw == 255, "right": (pred == raw), "wrong": (pred != raw) & (raw != 255)}.items():
        assert (err[where] == CLASS_ERROR_COLOURS[name]).all(), name
    prob = np.asarray(Image.open(io.BytesIO(ev.render(1, "prob"))))
    assert prob.shape == (SIZE, SIZE) and prob.min() >= 255 // K  # the predicted class's probability >= 1/K


# ---------------------------------------------------------------- the pages in a real browser


def _serve(model, workdir, evaluation=None):
    app = create_app(
        model,
        evaluation,
        Limits(max_pixels=64 * 64),
        workdir=workdir,
        allowed_hosts=allowed_hosts("127.0.0.1", 0),
        run_name="run",
    )
    return ServerThread(app).start()


def _submit(d, path, timeout: float = 60):
    from selenium.webdriver.common.by import By

    wait_for(d, "return document.body.dataset.ready === '1'")
    d.execute_script("document.getElementById('message').textContent = ''")
    d.find_element(By.ID, "files").clear()
    d.find_element(By.ID, "files").send_keys(str(path))
    d.find_element(By.ID, "submit").click()


@pytest.mark.slow
def test_class_run_pages_in_chromium(browser, k3, tmp_path):
    from selenium.webdriver.common.by import By

    d = browser
    server = _serve(k3["model"], tmp_path / "jobs", EvalIndex(k3["summary"], k3["data"] / "test"))
    try:
        d.get(server.url + "/#predict")
        Image.fromarray(_rgb(24, 20, 3)).save(tmp_path / "street.png")
        _submit(d, tmp_path / "street.png")
        wait_for(d, "const j = document.querySelector('.job'); return j && j.dataset.state === 'done'", 60)
        job_id = d.execute_script("return document.querySelector('.job').dataset.job")
        seen = d.execute_script(f"return window.segdiffProgress['{job_id}']")
        assert seen[-1] == 100
        wait_for(
            d,
            "return [...document.querySelectorAll('.job .result img')].every(i => i.complete && i.naturalWidth > 0)",
            20,
        )
        for cls in ("over", "label", "class-prob", "uncertainty", "disagreement"):
            assert len(d.find_elements(By.CSS_SELECTOR, f".job .result img.{cls}")) == 1, cls
        G = k3["model"].sampling_options().generations  # the run's defaults
        assert len(d.find_elements(By.CSS_SELECTOR, ".job .result img.generation")) == G
        # the legend: each class's name beside a swatch of its colour
        names = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".class-legend .class-name")]
        assert names == ["background (background)", "stripes", "checks"]
        colours = d.execute_script(
            "return [...document.querySelectorAll('.class-legend .swatch')]"
            ".map(s => getComputedStyle(s).backgroundColor)"
        )
        assert colours == [f"rgb({r}, {g}, {b})" for r, g, b in CLASS_COLORS[:K]]
        # the class picker shows each class's probability map (the first foreground class first)
        picker = d.find_element(By.CSS_SELECTOR, ".job .class-picker")
        src = lambda: d.find_element(By.CSS_SELECTOR, ".job img.class-prob").get_attribute("src")  # noqa: E731
        assert picker.get_attribute("value") == "1" and src().endswith("/0/class/1")
        d.execute_script("const p = arguments[0]; p.value = '2'; p.dispatchEvent(new Event('change'))", picker)
        assert src().endswith("/0/class/2")
        wait_for(
            d, "const i = document.querySelector('.job img.class-prob'); return i.complete && i.naturalWidth === 20"
        )
        # the downloads are the files segdiff predict writes, each of the upload's size
        links = d.find_elements(By.CSS_SELECTOR, ".job a.download")
        got = {a.get_attribute("download"): a.get_attribute("href") for a in links}
        assert set(got) == {
            f"street_{k}"
            for k in (
                "mask.png",
                "color.png",
                "prob.tif",
                "uncertainty.tif",
                "uncertainty.png",
                "disagreement.tif",
                "disagreement.png",
            )
        }
        for name, href in got.items():
            data = urllib.request.urlopen(href).read()
            arr = (
                tifffile.imread(io.BytesIO(data)) if name.endswith(".tif") else np.asarray(Image.open(io.BytesIO(data)))
            )
            # prob.tif holds K pages [K, H, W]; every other file is [H, W] or [H, W, 3]
            assert arr.shape == (K, 24, 20) if name.endswith("prob.tif") else arr.shape[:2] == (24, 20), name

        # the evaluation browser: the per-class scores, one IoU column per class, label maps in colour
        d.get(server.url + "/#eval")
        wait_for(d, "return document.querySelectorAll('#eval-table tbody tr').length === 3", 20)
        rows = d.find_elements(By.CSS_SELECTOR, "#eval-classes tbody tr")
        assert [r.get_attribute("data-class") for r in rows] == ["background", "stripes", "checks"]
        summary = json.loads(k3["summary"].read_text())
        iou = summary["per_class"]["stripes"]["iou"]
        assert rows[1].find_elements(By.TAG_NAME, "td")[1].text == ("–" if iou is None else f"{100 * iou:.2f} %")
        assert "Without the background (background)" in d.find_element(By.ID, "eval-summary").text
        headers = [th.text for th in d.find_elements(By.CSS_SELECTOR, "#eval-table th")]
        assert headers[:3] == ["Image", "mIoU", "mIoU without background"] and "IoU stripes" in headers
        d.find_element(By.CSS_SELECTOR, "th[data-key=miou]").click()
        d.find_elements(By.CSS_SELECTOR, "#eval-table tbody tr")[0].click()
        wait_for(
            d,
            "return [...document.querySelectorAll('#eval-panels img')].every(i => i.complete && i.naturalWidth > 0)",
            20,
        )
        kinds = d.execute_script(
            "return [...document.querySelectorAll('#eval-panels figcaption')].map(f => f.textContent)"
        )
        assert kinds == [
            "image",
            "ground truth",
            "prediction",
            "error map",
            "probability of the predicted class",
            "entropy",
        ]
        assert "wrong class" in d.find_element(By.ID, "error-legend").text
        assert not [e for e in d.get_log("browser") if "Content Security Policy" in e["message"]]
    finally:
        server.stop()


@pytest.mark.slow
def test_one_channel_run_page_in_chromium(browser, grey, tmp_path):
    from selenium.webdriver.common.by import By

    d = browser
    server = _serve(grey["model"], tmp_path / "jobs")
    try:
        d.get(server.url + "/#predict")
        wait_for(d, "return document.body.dataset.ready === '1'")
        assert "one channel (grey)" in d.find_element(By.ID, "limits").text
        Image.fromarray(_rgb()).save(tmp_path / "colour.png")
        _submit(d, tmp_path / "colour.png")
        shown = wait_for(d, "return document.getElementById('message').textContent", 20)
        assert "colour.png: image has 3 channel(s) but the model was trained on 1-channel images" in shown
        Image.fromarray(_rgb()[..., 0]).save(tmp_path / "grey.png")
        _submit(d, tmp_path / "grey.png")
        state = "const j = document.querySelector('.job'); return j && !['queued', 'running'].includes(j.dataset.state)"
        state += " && j.dataset.state"
        assert wait_for(d, state, 60) == "done", d.find_element(By.CSS_SELECTOR, ".job .status").text
        wait_for(
            d,
            "return [...document.querySelectorAll('.job .result img')].every(i => i.complete && i.naturalWidth > 0)",
            20,
        )
        for cls in ("over", "mask", "prob", "uncertainty"):
            assert len(d.find_elements(By.CSS_SELECTOR, f".job .result img.{cls}")) == 1, cls
    finally:
        server.stop()
