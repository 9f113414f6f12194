"""The Starlette application of `segdiff serve`: one page (static/), a JSON API and the files it made.

Routes (every file is looked up by job id / row number and a fixed kind, never by a path from the request):
  GET  /                                     the page (static/index.html, app.js, style.css; nothing external)
  GET  /api/info                             model, sampling defaults, limits, whether an evaluation is loaded
  POST /api/jobs                             multipart: images (1..max_images files) + generations, steps,
                                             sampler, variance -> {id, position}; 4xx + {"error"} when refused
  GET  /api/jobs/{id}                        state, queue position, progress (network calls), result URLs
  GET  /api/jobs/{id}/{i}/{kind}             input, overlay, mask, prob, prob_tif, uncertainty, uncertainty_tif;
                                             K classes: input, overlay, mask, color, prob_tif, uncertainty(_tif),
                                             disagreement(_tif)
  GET  /api/jobs/{id}/{i}/generation/{k}     generation k of image i
  GET  /api/jobs/{id}/{i}/class/{k}          K classes: the probability of class k (8-bit grey PNG)
  GET  /api/eval                             summary and per-image scores of --eval SUMMARY.json
  GET  /api/eval/{row}/{kind}                image, gt, pred, error, prob, uncertainty as PNG (K classes: gt and
                                             pred in the classes' colours)
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..config import SAMPLERS, VARIANCES
from ..errors import UserError
from .jobs import JobQueue, Upload
from .uploads import UploadError, decode_upload

ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
# the paper's protocol (section 4.1): 30 generations, T = 100 steps, DDPM with sigma_t^2 = beta_t
PAPER_PROTOCOL = {"generations": 30, "steps": 100, "sampler": "ddpm", "variance": "large"}
# a page served by this process is the only one allowed to post jobs: it sends this header, which a
# cross-site form cannot, and a cross-site script cannot without a CORS preflight that is never granted
CLIENT_HEADER = "x-segdiff-client"


@dataclass
class Limits:
    max_upload_mb: float = 50.0  # one request, all files together
    max_pixels: int = 4096 * 4096  # one image
    max_images: int = 16  # files per request
    max_generations: int = 100
    max_queued: int = 16

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def _asset(name: str) -> bytes:
    return resources.files("segdiff.serve").joinpath("static", name).read_bytes()


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(
    model=None,
    evaluation=None,
    limits: Limits | None = None,
    workdir: str | Path | None = None,
    allowed_hosts: list[str] | None = None,
    run_name: str = "",
) -> Starlette:
    """The app; `model` a loaded SegDiff (or None: no predict page), `evaluation` an EvalIndex (or None).

    workdir holds the jobs' files (a new temporary folder by default, removed at shutdown).
    allowed_hosts: Host headers accepted (against DNS rebinding); None accepts any.
    """
    limits = limits or Limits()
    own_tmp = None
    if model is not None and workdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="segdiff-serve-")
        workdir = own_tmp.name
    queue = JobQueue(model, Path(workdir), max_queued=limits.max_queued) if model is not None else None
    job_root = Path(workdir).resolve() if workdir is not None else None
    page = _asset("index.html")

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=_no_store())

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return _error("not found", 404)
        return Response(_asset(name), media_type=ASSETS[name] + "; charset=utf-8", headers=_no_store())

    async def info(request: Request) -> JSONResponse:
        out: dict = {
            "predict": model is not None,
            "eval": evaluation is not None,
            "limits": vars(limits) | {"max_upload_bytes": limits.max_upload_bytes},
        }
        if model is not None:
            opts, T, classes = model.sampling_options(), len(model.schedule), model.classes
            out["model"] = {
                "run": run_name,
                "weights": Path(str(model.weights_file or "")).name,
                "device": str(model.device),
                "T": T,
                "size": model.config.data.size,
                "predict_mode": opts.mode,
                "defaults": {
                    "generations": opts.generations,
                    "steps": opts.steps_for(T),
                    "sampler": opts.sampler,
                    "variance": opts.variance,
                },
                "paper": PAPER_PROTOCOL | {"steps": min(PAPER_PROTOCOL["steps"], T)},
                "samplers": list(SAMPLERS),
                "variances": list(VARIANCES),
                "image_channels": model.config.model.image_channels,
                # None for a binary model; else the legend: name, colour and whether it is the background
                "classes": None if classes is None else class_legend(classes),
            }
        return JSONResponse(out)

    def _options(form) -> object:
        T = len(model.schedule)

        def integer(name: str, lo: int, hi: int) -> int | None:
            text = form.get(name)
            if text in (None, ""):
                return None
            try:
                value = int(str(text))
            except ValueError:
                raise UploadError(f"{name}: '{text}' is not a whole number") from None
            if not lo <= value <= hi:
                raise UploadError(f"{name}: {value} is out of range ({lo} to {hi})")
            return value

        def choice(name: str, allowed) -> str | None:
            text = form.get(name)
            if text in (None, ""):
                return None
            if text not in allowed:
                raise UploadError(f"{name}: '{text}' is not one of {', '.join(allowed)}")
            return str(text)

        overrides = {
            "generations": integer("generations", 1, limits.max_generations),
            "steps": integer("steps", 1, T),
            "sampler": choice("sampler", SAMPLERS),
            "variance": choice("variance", VARIANCES),
        }
        if (overrides["sampler"] or model.config.predict.sampler) != "ddpm":
            overrides["variance"] = None  # only DDPM has a variance to choose (the page disables the field)
        try:
            return model.sampling_options(None, **overrides)
        except UserError as exc:
            raise UploadError(str(exc)) from None

    async def submit(request: Request) -> JSONResponse:
        if queue is None:
            return _error("this server has no model loaded (start it with --checkpoint RUN)", 404)
        if request.headers.get(CLIENT_HEADER) != "1":
            return _error(f"requests must come from the segdiff page (header {CLIENT_HEADER} missing)", 403)
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return _error("the upload must state its size (Content-Length)", 411)
        if int(length) > limits.max_upload_bytes:
            return _error(
                f"the upload is {int(length) / 2**20:.1f} MB, over the limit of {limits.max_upload_mb:g} MB "
                "(segdiff serve --max-upload-mb)",
                413,
            )
        try:
            async with request.form(
                max_files=limits.max_images + 1, max_fields=32, max_part_size=limits.max_upload_bytes
            ) as form:
                files = [f for f in form.getlist("images") if hasattr(f, "read")]
                if not files:
                    raise UploadError("no image in the request: choose one or more PNG, JPEG or TIFF files")
                if len(files) > limits.max_images:
                    raise UploadError(
                        f"{len(files)} images in one request, over the limit of {limits.max_images} "
                        "(segdiff serve --max-images)",
                        413,
                    )
                opts = _options(form)
                raw = [(f.filename or f"image {i + 1}", await f.read()) for i, f in enumerate(files)]
        except UploadError as exc:
            return _error(str(exc), exc.status)
        except HTTPException as exc:  # the multipart parser refusing a malformed or oversized body
            return _error(f"the upload could not be read: {exc.detail}", 400)
        try:
            channels = model.config.model.image_channels
            uploads = await run_in_threadpool(
                lambda: [Upload(name, decode_upload(name, data, limits.max_pixels, channels)) for name, data in raw]
            )
            job = queue.submit(uploads, opts)
        except UploadError as exc:
            return _error(str(exc), exc.status)
        except UserError as exc:
            return _error(str(exc), 503)
        return JSONResponse(queue.status(job), status_code=202)

    def _job(request: Request):
        job = queue.get(request.path_params["job"]) if queue is not None else None
        if job is None:
            raise HTTPException(404, "no such job (jobs are kept while the server runs, the last 20 finished)")
        return job

    async def job_status(request: Request) -> JSONResponse:
        return JSONResponse(queue.status(_job(request)), headers=_no_store())

    async def job_file(request: Request) -> Response:
        return _job_file(request, request.path_params["kind"])

    async def generation_file(request: Request) -> Response:
        return _job_file(request, "generation")

    async def class_file(request: Request) -> Response:
        return _job_file(request, "class")

    def _job_file(request: Request, kind: str) -> Response:
        job = _job(request)
        index = request.path_params["index"]
        path = queue.file(job, index, kind, request.path_params.get("k"))
        if path is None or not _inside(path, job_root):
            return _error("no such file", 404)
        if kind in ("generation", "class"):
            name, media = f"{_stem(job, index)}_{kind}{request.path_params['k']:03d}.png", "image/png"
        else:
            name, media = f"{_stem(job, index)}_{queue.files[kind][1]}", queue.files[kind][2]
        return FileResponse(path, media_type=media, filename=name, content_disposition_type="inline")

    async def eval_info(request: Request) -> JSONResponse:
        if evaluation is None:
            return _error("no evaluation loaded (start with --eval SUMMARY.json --images DIR)", 404)
        return JSONResponse(evaluation.info())

    async def eval_file(request: Request) -> Response:
        if evaluation is None:
            return _error("no evaluation loaded", 404)
        index, kind = request.path_params["index"], request.path_params["kind"]
        try:
            data = await run_in_threadpool(evaluation.render, index, kind)
        except UserError as exc:
            return _error(str(exc), 422)
        if data is None:
            return _error("no such file", 404)
        return Response(data, media_type="image/png")

    async def not_found(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(str(exc.detail), exc.status_code)

    def shutdown() -> None:
        if queue is not None:
            queue.close()
        if own_tmp is not None:
            own_tmp.cleanup()

    routes = [
        Route("/", index),
        Route("/static/{name}", asset),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/api/info", info),
        Route("/api/jobs", submit, methods=["POST"]),
        Route("/api/jobs/{job}", job_status),
        Route("/api/jobs/{job}/{index:int}/generation/{k:int}", generation_file),
        Route("/api/jobs/{job}/{index:int}/class/{k:int}", class_file),
        Route("/api/jobs/{job}/{index:int}/{kind}", job_file),
        Route("/api/eval", eval_info),
        Route("/api/eval/{index:int}/{kind}", eval_file),
    ]
    middleware = [Middleware(SecurityHeaders)]
    if allowed_hosts:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        shutdown()

    app = Starlette(
        routes=routes, middleware=middleware, exception_handlers={HTTPException: not_found}, lifespan=lifespan
    )
    app.state.queue = queue
    app.state.shutdown = shutdown
    return app


# the page loads only its own script, style sheet and images: the browser itself refuses anything else
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """Adds Content-Security-Policy, X-Content-Type-Options and Referrer-Policy to every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def class_legend(classes) -> list[dict]:
    """A ClassSet as the page's legend: name, "#rrggbb" colour, background or not, in label order."""
    return [
        {"name": n, "color": "#{:02x}{:02x}{:02x}".format(*c), "background": k == classes.background}
        for k, (n, c) in enumerate(zip(classes.names, classes.colors))
    ]


def _stem(job, index: int) -> str:
    name = job.uploads[index].name
    stem = Path(name).stem if name else f"image{index}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or f"image{index}"


def _inside(path: Path, root: Path | None) -> bool:
    if root is None:
        return False
    real = path.resolve()
    return real.is_relative_to(root) and real.is_file()


def _no_store() -> dict:
    return {"Cache-Control": "no-store"}
