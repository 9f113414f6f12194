"""`segdiff serve`: the JSON API over HTTP (starlette's TestClient) and the page in headless Chromium.

The browser tests need chromium and chromedriver (Debian: apt-get install chromium chromium-driver; .ci/run
installs them). Without them they skip with the reason, except under CI=true, where they fail.
"""

from __future__ import annotations

import io
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import _need, make_dataset, tiny_config
from segdiff.data.io import read_mask
from segdiff.errors import UserError

_need("starlette")
_need("httpx")

from starlette.testclient import TestClient  # noqa: E402

from segdiff.api import SegDiff  # noqa: E402
from segdiff.serve.app import Limits, create_app  # noqa: E402
from segdiff.serve.browser import wait_for  # noqa: E402
from segdiff.serve.evalbrowser import ERROR_COLOURS, EvalIndex  # noqa: E402
from segdiff.serve.server import ServerThread, allowed_hosts  # noqa: E402

HEADERS = {"x-segdiff-client": "1"}
T = 100  # so that the browser test's job (100 steps) runs long enough for the bar to show values in between


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny run trained for 2 steps, its predictions on a test split, and their evaluation."""
    from segdiff.metrics.evaluate import evaluate_dirs
    from segdiff.predict.run import predict_folder
    from segdiff.train.loop import train

    root = tmp_path_factory.mktemp("serve")
    data = make_dataset(root / "data", splits=(("train", 4), ("test", 4)))
    train(data, root / "run", tiny_config(T=T, max_steps=2, val_every=0, save_every=2), device="cpu", progress=False)
    model = SegDiff.load(root / "run", device="cpu")
    predict_folder(model, data / "test" / "images", root / "pred", progress=False)
    evaluate_dirs(root / "pred", data / "test", out=root / "eval" / "summary.json")
    return {"root": root, "data": data, "run": root / "run", "model": model, "summary": root / "eval" / "summary.json"}


def _png(h: int = 16, w: int = 16, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def client(served, tmp_path):
    evaluation = EvalIndex(served["summary"], served["data"] / "test")
    limits = Limits(max_upload_mb=0.05, max_pixels=48 * 48, max_images=3)
    app = create_app(
        served["model"], evaluation, limits, workdir=tmp_path / "jobs", allowed_hosts=allowed_hosts("127.0.0.1", 0)
    )
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


def _wait(client, job_id: str, timeout: float = 60.0) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        s = client.get(f"/api/jobs/{job_id}").json()
        if s["state"] in ("done", "error"):
            return s
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


# ---------------------------------------------------------------- the API


def test_info_names_the_run_defaults_and_the_paper_protocol(client, served):
    m = client.get("/api/info").json()["model"]
    opts = served["model"].sampling_options()
    assert m["defaults"] == {
        "generations": opts.generations,
        "steps": opts.steps_for(T),
        "sampler": opts.sampler,
        "variance": opts.variance,
    }
    assert m["paper"] == {"generations": 30, "steps": 100, "sampler": "ddpm", "variance": "large"}
    assert m["T"] == T and m["predict_mode"] == opts.mode


def test_predict_job_runs_and_serves_valid_files(client, served):
    files = [("images", ("a.png", _png(16, 16), "image/png")), ("images", ("b.png", _png(20, 12, 1), "image/png"))]
    r = client.post("/api/jobs", files=files, data={"generations": "3", "steps": "5"}, headers=HEADERS)
    assert r.status_code == 202, r.text
    s = _wait(client, r.json()["id"])
    assert s["state"] == "done", s
    assert (
        s["done"]
        == s["total"]
        == 2 * served["model"].network_calls(16, 16, 1, served["model"].sampling_options(generations=3, steps=5))
    )
    assert s["percent"] == 100
    assert [x["name"] for x in s["results"]] == ["a.png", "b.png"]
    b = s["results"][1]
    assert (b["width"], b["height"]) == (12, 20)
    mask = Image.open(io.BytesIO(client.get(b["files"]["mask"]).content))
    assert mask.size == (12, 20) and set(np.unique(np.asarray(mask))) <= {0, 255}
    r = client.get(b["files"]["prob_tif"])
    assert r.headers["content-type"] == "image/tiff" and 'filename="b_prob.tif"' in r.headers["content-disposition"]
    prob = tifffile.imread(io.BytesIO(r.content))
    assert prob.shape == (20, 12) and prob.dtype == np.float32 and 0 <= prob.min() <= prob.max() <= 1
    unc = tifffile.imread(io.BytesIO(client.get(b["files"]["uncertainty_tif"]).content))
    assert unc.shape == (20, 12) and 0 <= unc.min() <= unc.max() <= 0.5
    for kind in ("input", "overlay", "prob", "uncertainty"):
        assert Image.open(io.BytesIO(client.get(b["files"][kind]).content)).size == (12, 20)
    # the probability map is the mean of the generations served
    gens = [np.asarray(Image.open(io.BytesIO(client.get(u).content)), np.float32) / 255 for u in b["generations"]]
    assert len(gens) == 3
    assert np.abs(np.mean(gens, axis=0) - prob).max() < 1.5 / 255
    assert client.get(b["generations"][0].replace("/generation/0", "/generation/3")).status_code == 404


def test_jpeg_16bit_tiff_and_tiny_images_are_accepted(client):
    jpg, tif = io.BytesIO(), io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (18, 14, 3), dtype=np.uint8)).save(jpg, format="JPEG")
    tifffile.imwrite(tif, np.random.default_rng(1).integers(0, 65536, (10, 9), dtype=np.uint16))
    files = [
        ("images", ("photo.jpeg", jpg.getvalue(), "image/jpeg")),
        ("images", ("scan.tif", tif.getvalue(), "image/tiff")),
        ("images", ("dot.png", _png(1, 3), "image/png")),
    ]
    # dpm++ has no variance: the page disables the field; sent anyway, it is ignored, not refused
    data = {"generations": "2", "steps": "2", "sampler": "dpm++", "variance": "small"}
    r = client.post("/api/jobs", files=files, data=data, headers=HEADERS)
    assert r.status_code == 202, r.text
    s = _wait(client, r.json()["id"])
    assert s["state"] == "done", s
    assert s["options"]["sampler"] == "dpm++"
    sizes = [(x["height"], x["width"]) for x in s["results"]]
    assert sizes == [(18, 14), (10, 9), (1, 3)]
    for x, size in zip(s["results"], sizes):
        assert tifffile.imread(io.BytesIO(client.get(x["files"]["prob_tif"]).content)).shape == size


def test_malformed_requests_get_a_4xx(client):
    h = HEADERS | {"content-type": "multipart/form-data; boundary=xyz"}
    r = client.post("/api/jobs", content=b"--xyz\r\ngarbage without headers", headers=h)
    assert 400 <= r.status_code < 500, r.text
    assert "error" in r.json()
    r = client.post("/api/jobs", json={"images": "a.png"}, headers=HEADERS)
    assert r.status_code == 400 and "no image in the request" in r.json()["error"]


def test_queue_runs_one_job_at_a_time_and_reports_position(client):
    ids = []
    for i in range(3):
        r = client.post(
            "/api/jobs",
            files=[("images", (f"{i}.png", _png(16, 16, i), "image/png"))],
            data={"generations": "4", "steps": "40"},
            headers=HEADERS,
        )
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    # submitted back to back: the last waits behind at least one other job
    last = client.get(f"/api/jobs/{ids[-1]}").json()
    assert last["state"] == "queued" and last["position"] >= 1 and last["ahead"] >= 1
    for i in ids:
        assert _wait(client, i)["state"] == "done"
    q = client.app.state.queue
    jobs = [q.get(i) for i in ids]
    for a, b in zip(jobs, jobs[1:]):
        assert b.started >= a.finished  # never two sampling jobs at once


@pytest.mark.parametrize(
    "files, data, status, message",
    [
        (
            [("images", ("notes.png", b"this is not an image", "image/png"))],
            {},
            415,
            "notes.png: not a PNG, JPEG or TIFF",
        ),
        ([("images", ("empty.png", b"", "image/png"))], {}, 400, "empty.png: the file is empty"),
        (
            [("images", ("big.png", _png(64, 64), "image/png"))],
            {},
            413,
            "big.png: 64 x 64 = 4,096 pixels is over the limit of 2,304",
        ),
        ([("images", ("cut.png", _png(16, 16)[:60], "image/png"))], {}, 400, "cut.png: "),
        ([("images", ("bad.tif", b"II*\x00garbage", "image/tiff"))], {}, 400, "bad.tif: cannot read the image header"),
        ([], {"generations": "2"}, 400, "no image in the request"),
        ([("images", ("a.png", _png(), "image/png"))], {"generations": "0"}, 400, "generations: 0 is out of range"),
        ([("images", ("a.png", _png(), "image/png"))], {"steps": "many"}, 400, "steps: 'many' is not a whole number"),
        ([("images", ("a.png", _png(), "image/png"))], {"steps": str(T + 1)}, 400, f"steps: {T + 1} is out of range"),
        ([("images", ("a.png", _png(), "image/png"))], {"sampler": "euler"}, 400, "sampler: 'euler' is not one of"),
        ([("images", (f"{i}.png", _png(), "image/png")) for i in range(4)], {}, 413, "4 images in one request"),
    ],
)
def test_bad_uploads_get_a_clear_4xx(client, files, data, status, message):
    r = client.post("/api/jobs", files=files or None, data=data, headers=HEADERS)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_upload_size_limit_and_client_header(client):
    big = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    r = client.post("/api/jobs", files=[("images", ("big.png", buf.getvalue(), "image/png"))], headers=HEADERS)
    assert r.status_code == 413 and "over the limit of 0.05 MB" in r.json()["error"]
    r = client.post("/api/jobs", files=[("images", ("a.png", _png(), "image/png"))])
    assert r.status_code == 403 and "x-segdiff-client" in r.json()["error"]


def test_requests_cannot_reach_other_files(client, served, tmp_path):
    for url in [
        "/static/..%2F..%2F..%2Fapi.py",
        "/static/../../api.py",
        "/static/index.html/../../../cli.py",
        "/api/eval/0/..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/eval/0/%2Fetc%2Fpasswd",
        "/api/eval/99/image",
        "/api/eval/-1/image",
        "/api/jobs/..%2F..%2Fetc/0/mask",
        "/api/jobs/" + "0" * 32 + "/0/mask",
        "/api/jobs/x/0/..%2F..%2Fetc%2Fhostname",
    ]:
        r = client.get(url)
        assert r.status_code in (404, 400), (url, r.status_code)
        assert b"import" not in r.content and b"root:" not in r.content, url
    # a job's files: only its fixed kinds
    r = client.post(
        "/api/jobs", files=[("images", ("a.png", _png(), "image/png"))], data={"steps": "2"}, headers=HEADERS
    )
    job = _wait(client, r.json()["id"])
    base = f"/api/jobs/{job['id']}/0"
    assert client.get(f"{base}/mask").status_code == 200
    for kind in ["..%2Fprob", "masks", "%2E%2E", "mask.png", "1/mask", "generation/..%2F..%2Fmasks"]:
        assert client.get(f"{base}/{kind}").status_code == 404, kind
    assert client.get(f"/api/jobs/{job['id']}/1/mask").status_code == 404
    # the page may load nothing from elsewhere, and nothing is sniffed into another type
    r = client.get("/")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    # another Host (DNS rebinding) is refused
    assert client.get("/api/info", headers={"host": "attacker.example"}).status_code == 400


def test_eval_files_are_served_from_the_index_and_links_out_are_refused(served, tmp_path):
    # a copy of the evaluation in which one ground-truth file is a link to a file outside its folder
    root = tmp_path / "copy"
    shutil.copytree(served["root"] / "pred", root / "pred")
    shutil.copytree(served["data"] / "test", root / "test")
    outside = tmp_path / "outside.png"
    shutil.copy(root / "test" / "masks" / "img00.png", outside)
    (root / "test" / "masks" / "img00.png").unlink()
    (root / "test" / "masks" / "img00.png").symlink_to(outside)
    from segdiff.metrics.evaluate import evaluate_dirs

    evaluate_dirs(root / "pred", root / "test", out=root / "summary.json")
    ev = EvalIndex(root / "summary.json", root / "test")
    assert ev.render(0, "gt") is None and ev.render(0, "error") is None  # img00: the link is not followed
    assert ev.render(1, "gt") is not None
    assert ev.render(1, "../../outside") is None and ev.render(1, "summary") is None


def test_eval_api_rows_maps_and_error_colours(client, served):
    info = client.get("/api/eval").json()
    stems = [r["stem"] for r in info["rows"]]
    assert stems == ["img00", "img01", "img02", "img03"]
    assert set(info["kinds"]) == {"image", "gt", "pred", "error", "prob", "uncertainty"}
    assert info["summary"]["n_images"] == 4 and info["summary"]["calibration"] is not None
    for r in info["rows"]:
        assert all(0 <= r[k] <= 1 for k in ("iou", "f1", "boundf")) and r["calibration"] >= 0
    for kind in info["kinds"]:
        im = Image.open(io.BytesIO(client.get(f"/api/eval/2/{kind}").content))
        assert im.size == (16, 16), kind
    err = np.asarray(Image.open(io.BytesIO(client.get("/api/eval/2/error").content)).convert("RGB"))
    pred = read_mask(served["root"] / "pred" / "masks" / "img02.png")
    gt = read_mask(served["data"] / "test" / "masks" / "img02.png")
    for name, where in {"fp": pred & ~gt, "fn": ~pred & gt, "tp": pred & gt, "tn": ~pred & ~gt}.items():
        assert (err[where] == ERROR_COLOURS[name]).all(), name


def test_eval_summary_names_its_folders_and_bad_summaries_are_user_errors(served, tmp_path):
    import json

    s = json.loads(served["summary"].read_text())
    assert Path(s["inputs"]["pred"]) == (served["root"] / "pred" / "masks").resolve()
    assert Path(s["inputs"]["prob"]) == (served["root"] / "pred" / "prob").resolve()
    assert Path(s["inputs"]["uncertainty"]) == (served["root"] / "pred" / "uncertainty").resolve()
    assert Path(s["inputs"]["gt"]) == (served["data"] / "test" / "masks").resolve()
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not a readable JSON"):
        EvalIndex(bad)
    bad.write_text("{}")
    with pytest.raises(UserError, match="no 'inputs'"):
        EvalIndex(bad)
    with pytest.raises(UserError, match="file not found"):
        EvalIndex(tmp_path / "missing.json")


def test_serve_cli_errors(capsys, tmp_path):
    from segdiff.cli import main

    assert main(["serve"]) == 2
    assert "give --checkpoint RUN" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(tmp_path), "--images", str(tmp_path)]) == 2
    assert "--images goes with --eval" in capsys.readouterr().err
    assert main(["serve", "--eval", str(tmp_path / "none.json")]) == 2
    assert "file not found" in capsys.readouterr().err


# ---------------------------------------------------------------- the page in a real browser


@pytest.fixture(scope="module")
def server(served, tmp_path_factory):
    evaluation = EvalIndex(served["summary"], served["data"] / "test")
    limits = Limits(max_upload_mb=0.05, max_pixels=48 * 48)
    workdir = tmp_path_factory.mktemp("jobs")
    app = create_app(
        served["model"],
        evaluation,
        limits,
        workdir=workdir,
        allowed_hosts=allowed_hosts("127.0.0.1", 0),
        run_name="run",
    )
    s = ServerThread(app).start()
    yield s
    s.stop()


def _post_blocker(url: str, generations: int, steps: int) -> None:
    import httpx

    r = httpx.post(
        f"{url}/api/jobs",
        files=[("images", ("blocker.png", _png(16, 16, 7), "image/png"))],
        data={"generations": str(generations), "steps": str(steps)},
        headers=HEADERS,
    )
    assert r.status_code == 202, r.text


@pytest.mark.slow
def test_predict_page_in_chromium(browser, server, served, tmp_path):
    from selenium.webdriver.common.by import By

    m = served["model"]
    d = browser
    d.get(server.url + "/#predict")
    wait_for(d, "return document.body.dataset.ready === '1'")
    # the run's defaults are preselected; the paper protocol is one click away
    defaults = m.sampling_options()
    assert d.find_element(By.ID, "generations").get_attribute("value") == str(defaults.generations)
    assert d.find_element(By.ID, "steps").get_attribute("value") == str(defaults.steps_for(T))
    d.find_element(By.ID, "paper").click()
    values = [d.find_element(By.ID, k).get_attribute("value") for k in ("generations", "steps", "sampler", "variance")]
    assert values == ["30", "100", "ddpm", "large"]
    d.find_element(By.ID, "defaults").click()
    assert d.find_element(By.ID, "generations").get_attribute("value") == str(defaults.generations)

    # two images; a job already running on the server, so ours waits in the queue first
    paths = []
    for i, (h, w) in enumerate([(16, 16), (24, 20)]):
        p = tmp_path / f"upload{i}.png"
        p.write_bytes(_png(h, w, 10 + i))
        paths.append(p)
    d.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))
    for k, v in (("generations", "4"), ("steps", "100")):
        e = d.find_element(By.ID, k)
        e.clear()
        e.send_keys(v)
    _post_blocker(server.url, 4, 100)
    d.find_element(By.ID, "submit").click()
    status = wait_for(d, "const s = document.querySelector('.job .status'); return s && s.textContent", 10)
    assert status.startswith("Queued: position 1"), status
    wait_for(d, "return document.querySelector('.job').dataset.state === 'done'", 120)
    job_id = d.execute_script("return document.querySelector('.job').dataset.job")
    seen = d.execute_script(f"return window.segdiffProgress['{job_id}']")
    assert any(0 < p < 100 for p in seen), seen  # the bar moved with the sampler, not only 0 and 100
    assert seen == sorted(seen) and seen[-1] == 100

    # the maps are shown: every image of the results loaded
    results = d.find_elements(By.CSS_SELECTOR, ".job .result")
    assert len(results) == 2
    wait_for(d, "return [...document.querySelectorAll('.job .result img')].every(i => i.complete)", 20)
    broken = d.execute_script(
        "return [...document.querySelectorAll('.job .result img')].filter(i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => i.src)"
    )
    assert not broken, broken
    for cls in ("mask", "prob", "uncertainty", "over"):
        assert len(d.find_elements(By.CSS_SELECTOR, f".job .result img.{cls}")) == 2, cls
    assert len(d.find_elements(By.CSS_SELECTOR, ".job .result img.generation")) == 2 * 4
    # the opacity slider sets the overlay's opacity
    d.execute_script("const o = document.getElementById('opacity'); o.value = 20; o.dispatchEvent(new Event('input'))")
    assert d.execute_script("return document.querySelector('img.over').style.opacity") == "0.2"

    # the downloads are valid images of the upload's size
    links = results[1].find_elements(By.CSS_SELECTOR, "a.download")
    got = {a.get_attribute("download"): a.get_attribute("href") for a in links}
    assert set(got) == {
        f"upload1_{k}" for k in ("mask.png", "prob.tif", "prob.png", "uncertainty.tif", "uncertainty.png")
    }
    for name, href in got.items():
        data = urllib.request.urlopen(href).read()
        arr = tifffile.imread(io.BytesIO(data)) if name.endswith(".tif") else np.asarray(Image.open(io.BytesIO(data)))
        assert arr.shape[:2] == (24, 20), name


@pytest.mark.slow
def test_bad_inputs_in_chromium(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    d = browser
    d.get(server.url + "/#predict")
    wait_for(d, "return document.body.dataset.ready === '1'")
    big = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    cases = {
        "notes.png": (b"plain text, not an image", "notes.png: not a PNG, JPEG or TIFF image"),
        "wide.png": (_png(64, 64), "wide.png: 64 x 64 = 4,096 pixels is over the limit of 2,304 pixels"),
        "huge.png": (None, "over the limit of 0.05 MB"),
    }
    for name, (data, message) in cases.items():
        p = tmp_path / name
        if data is None:
            Image.fromarray(big).save(p)
        else:
            p.write_bytes(data)
        d.execute_script("document.getElementById('message').textContent = ''")
        d.find_element(By.ID, "files").clear()
        d.find_element(By.ID, "files").send_keys(str(p))
        d.find_element(By.ID, "submit").click()
        shown = wait_for(d, "return document.getElementById('message').textContent", 20)
        assert message in shown, shown


@pytest.mark.slow
def test_eval_browser_in_chromium(browser, server):
    from selenium.webdriver.common.by import By

    d = browser
    d.get(server.url + "/#eval")
    wait_for(d, "return document.querySelectorAll('#eval-table tbody tr').length > 0", 20)
    summary = d.find_element(By.ID, "eval-summary").text
    assert "IoU, per-image mean" in summary and "Calibration" in summary

    def column(i: int) -> list[str]:
        return [
            tr.find_elements(By.TAG_NAME, "td")[i].text
            for tr in d.find_elements(By.CSS_SELECTOR, "#eval-table tbody tr")
        ]

    assert column(0) == ["img00", "img01", "img02", "img03"]
    d.find_element(By.CSS_SELECTOR, "th[data-key=calibration]").click()
    cal = [float(v) for v in column(4)]
    assert cal == sorted(cal)
    assert d.find_element(By.CSS_SELECTOR, "th[data-key=calibration]").get_attribute("aria-sort") == "ascending"
    d.find_element(By.CSS_SELECTOR, "th[data-key=calibration]").click()
    assert [float(v) for v in column(4)] == sorted(cal, reverse=True)
    d.find_element(By.CSS_SELECTOR, "th[data-key=stem]").click()
    assert column(0) == ["img00", "img01", "img02", "img03"]

    d.find_elements(By.CSS_SELECTOR, "#eval-table tbody tr")[2].click()
    wait_for(d, "return !document.getElementById('eval-detail').hidden")
    assert "img02" in d.find_element(By.ID, "eval-detail-title").text
    wait_for(
        d, "return [...document.querySelectorAll('#eval-panels img')].every(i => i.complete && i.naturalWidth > 0)", 20
    )
    kinds = d.execute_script("return [...document.querySelectorAll('#eval-panels figcaption')].map(f => f.textContent)")
    assert kinds == ["image", "ground truth", "prediction", "error map", "probability", "uncertainty"]
    assert "false positive" in d.find_element(By.ID, "error-legend").text
    swatch = d.execute_script("return getComputedStyle(document.querySelector('.swatch')).backgroundColor")
    assert swatch == "rgb(255, 140, 0)"  # set through the CSSOM, which the page's CSP allows


@pytest.mark.slow
def test_page_breaks_no_content_security_policy_rule(browser, server):
    """Runs after the page tests (file order): nothing the page did was blocked by its own policy."""
    browser.get(server.url + "/#eval")
    wait_for(browser, "return document.body.dataset.ready === '1'")
    logs = browser.get_log("browser")
    assert not [e for e in logs if "Content Security Policy" in e["message"]], logs
