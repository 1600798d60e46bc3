"""The HTTP service: ``create_app(refiner=..., settings=...)`` builds the FastAPI application.

Endpoints: ``GET /health``, ``POST /v1/refine`` (photo + mask files -> refined mask PNG or COCO RLE),
``POST /v1/refine-instances`` (photo + COCO annotations -> refined annotations), the web page at ``/`` and
the OpenAPI docs at ``/docs``. Every error is a JSON object ``{"detail": "<one line>"}`` with a 4xx/5xx status.

How a request is handled: the body limit (:mod:`.limits`) applies while it arrives; the uploads are checked
from their headers (format, size, pixel count, image/mask sizes) before any pixel is decoded; only then does
the request take a place in the bounded queue (:mod:`.work`, 503 when full), where one model call runs at a
time in a dedicated thread. Whatever a request does, its failure is its own answer: the process carries on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..inference.refiner import check_L
from ..instances.coco import decode_segmentation, encode_segmentation, mask_api, refine_coco_annotations
from ..instances.refine import check_context
from ..io.images import (
    ImageReadError,
    align_to_image,
    encode_png,
    read_image,
    read_image_header,
    read_mask,
    read_mask_size,
    unorient,
)
from ..io.inputs import check_same_size
from .limits import BodyLimitMiddleware
from .settings import ServeSettings
from .work import QueueFull, WorkQueue

log = logging.getLogger("cascadepsp.serve")

INSTANCE_CHUNK = 8  # annotations decoded and refined together: bounds the N x H x W masks held at once
STATIC_FILES = {"page.js": "text/javascript; charset=utf-8", "page.css": "text/css; charset=utf-8"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"description": "body over --max-upload-mb, photo over --max-pixels, or too many annotations"},
    422: {"description": "a field, an image or a mask that cannot be used; the detail names it"},
    503: {"description": "queue full (Retry-After), shutting down, or out of memory"},
}


def load_refiner(settings: ServeSettings) -> Any:
    """Build the worker's one :class:`~cascadepsp.Refiner` from ``settings`` (torch threads set first)."""
    import torch

    from ..inference.refiner import Refiner

    torch.set_num_threads(settings.torch_threads())
    refiner = Refiner(device=settings.device, weights=settings.weights, engine=settings.engine,
                      backend=settings.backend, precision=settings.precision,
                      second_pass_iou=settings.second_pass_iou, local_step=settings.local_step)
    if settings.warmup:
        image = np.zeros((96, 96, 3), np.uint8)
        mask = np.zeros((96, 96), np.uint8)
        mask[24:72, 24:72] = 255
        image[mask > 0] = 200
        refiner.refine(image, mask, L=96)
    return refiner


@dataclass
class Service:
    """What one worker process holds: its settings, its one Refiner and its queue."""

    settings: ServeSettings
    refiner: Any
    queue: WorkQueue
    loader: Callable[[ServeSettings], Any]
    started: float = field(default_factory=time.time)
    loads: int = 0


# ------------------------------------------------------------------------------------------------ errors

def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail=detail, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    """The first validation error as one line: ``<field>: <message>``."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
    name = ".".join(loc) or "request"
    msg = str(err.get("msg", "invalid value"))
    if err.get("type") == "missing":
        msg = "field required" + (" (a file upload)" if name in ("image", "mask") else "")
    extra = f" ({len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{name}: {msg}{extra}".replace("\n", " ")


def _clean(message: str, path: Path, filename: str | None) -> str:
    """A library message about a temporary upload file, naming the client's file instead, on one line."""
    shown = (filename or path.name)[:120]
    return message.replace(str(path), shown).replace("\n", " ").strip()


def _named(field_name: str, message: str) -> str:
    """``message`` prefixed with the upload's field name (``image: ...``) unless it starts with it already."""
    return message if message.startswith(f"{field_name}:") else f"{field_name}: {message}"


def _describe_failure(e: BaseException) -> tuple[int, str]:
    """Status and one-line detail of an exception raised while refining."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return 503, f"out of memory while refining{': ' + text if text else ''}; retry later or send a smaller photo"
    if isinstance(e, ValueError):
        return 422, text or type(e).__name__
    return 500, f"internal error: {type(e).__name__}{': ' + text if text else ''}"


# ------------------------------------------------------------------------------------------------ uploads

@contextmanager
def _upload_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cascadepsp-serve-") as tmp:
        yield Path(tmp)


def _save(upload: UploadFile, path: Path) -> int:
    upload.file.seek(0)
    with open(path, "wb") as f:
        shutil.copyfileobj(upload.file, f, 1 << 20)
        return f.tell()


async def _save_uploads(tmp: Path, uploads: dict[str, UploadFile]) -> dict[str, Path]:
    """Copy each upload to a file of its field's name in ``tmp`` (the library reads photos from paths)."""
    paths = {}
    for name, upload in uploads.items():
        path = tmp / name
        size = await run_in_threadpool(_save, upload, path)
        if size == 0:
            raise _error(422, f"{name}: empty file")
        paths[name] = path
    return paths


def _header(path: Path, filename: str | None, settings: ServeSettings) -> Any:
    """The photo's header (upright and stored size, EXIF orientation), after the pixel limit is checked."""
    try:
        header = read_image_header(path)
    except ImageReadError as e:
        if isinstance(e.__cause__, Image.DecompressionBombError):
            raise _error(413, f"image: {_clean(str(e.__cause__), path, filename)} (this server takes at most "
                              f"{settings.max_pixels:,} pixels, --max-pixels)") from None
        raise _error(422, _named("image", _clean(str(e), path, filename))) from None
    w, h = header.size
    if w * h > settings.max_pixels:
        raise _error(413, f"image: {w}x{h} is {w * h:,} pixels, more than this server's limit of "
                          f"{settings.max_pixels:,} (--max-pixels)")
    return header


def _check_mask_header(path: Path, filename: str | None, header: Any) -> None:
    """Refuse a mask whose header cannot be read or whose size is neither the photo's nor its stored size."""
    try:
        size = read_mask_size(path)
    except ImageReadError as e:
        cause = e.__cause__
        status = 413 if isinstance(cause, Image.DecompressionBombError) else 422
        raise _error(status, _named("mask", _clean(str(e), path, filename))) from None
    if tuple(size) in (tuple(header.size), tuple(header.stored_size)):
        return
    try:  # the library's own message for a size mismatch (zero-copy stand-ins: only the shapes are read)
        check_same_size(np.broadcast_to(np.uint8(0), (header.size[1], header.size[0], 3)),
                             np.broadcast_to(np.False_, (size[1], size[0])))
    except ValueError as e:
        raise _error(422, str(e)) from None


def _check_L(L: int, settings: ServeSettings) -> int:
    try:
        L = check_L(L)
    except ValueError as e:
        raise _error(422, str(e)) from None
    if L > settings.max_L:
        raise _error(422, f"L: at most {settings.max_L} on this server (--max-L), got {L}")
    return L


def _check_threshold(threshold: float | None, required: bool = False) -> float | None:
    if threshold is None and not required:
        return None
    if threshold is None or not 0.0 <= threshold <= 1.0:
        raise _error(422, f"threshold: expected a value in [0, 1]{'' if required else ' or nothing'}, got "
                          f"{threshold!r}")
    return float(threshold)


# ------------------------------------------------------------------------------------------------ jobs

@dataclass
class RefineResult:
    """A refined mask in the mask file's frame, and a note for the client (or "")."""

    mask: np.ndarray
    note: str


def _refine_job(refiner: Any, paths: dict[str, Path], names: dict[str, str | None], fast: bool, L: int,
                threshold: float | None) -> RefineResult:
    """Decode the uploads as ``cascadepsp refine`` reads files, then ``Refiner.refine`` (the model thread)."""
    try:
        rgb, header = read_image(paths["image"])
    except ImageReadError as e:
        raise ValueError(_named("image", _clean(str(e), paths["image"], names["image"]))) from None
    try:
        mask_file = read_mask(paths["mask"])
    except ImageReadError as e:
        raise ValueError(_named("mask", _clean(str(e), paths["mask"], names["mask"]))) from None
    coarse, rotated = align_to_image(mask_file.binary(), header, "mask")
    notes = []
    if not coarse.any() and mask_file.values.any():
        notes.append(f"mask has values up to {int(mask_file.values.max())} but none counts as foreground "
                     "(>= 128, or 1 in a 0/1 mask), so the result is empty; a label map?")
    refined = refiner.refine(rgb, coarse, fast=fast, L=L, threshold=threshold)
    if rotated:
        refined = unorient(refined, header.orientation)
        notes.append(f"the mask matched the un-rotated photo (EXIF orientation {header.orientation}); the result "
                     "is in the mask's frame")
    return RefineResult(refined, "; ".join(notes))


def _check_annotations(annotations: list[Any], height: int, width: int) -> None:
    """Decode every annotation's segmentation once (one at a time) so a malformed one is refused before the
    queue, with its index."""
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise ValueError(f"annotations[{i}]: expected a dict, got {type(ann).__name__}")
        if ann.get("iscrowd"):
            continue
        if "segmentation" not in ann:
            raise ValueError(f"annotations[{i}]: segmentation: missing")
        try:
            decode_segmentation(ann["segmentation"], height, width)
        except ValueError as e:
            raise ValueError(f"annotations[{i}]: {e}") from None


def _instances_job(refiner: Any, path: Path, filename: str | None, annotations: list[dict], polygons: bool,
                   context: float, threshold: float, fast: bool, L: int) -> list[dict]:
    """Refine the annotations of one photo, :data:`INSTANCE_CHUNK` at a time (each in its own crop)."""
    try:
        rgb, _ = read_image(path)
    except ImageReadError as e:
        raise ValueError(_named("image", _clean(str(e), path, filename))) from None
    out: list[dict] = []
    for start in range(0, len(annotations), INSTANCE_CHUNK):
        out += refine_coco_annotations(rgb, annotations[start:start + INSTANCE_CHUNK], refiner,
                                            polygons=polygons, context=context, threshold=threshold, fast=fast,
                                            L=L)
    return out


# ------------------------------------------------------------------------------------------------ app

def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def create_app(refiner: Any = None, settings: ServeSettings | None = None, *,
               loader: Callable[[ServeSettings], Any] | None = None) -> FastAPI:
    """The service as a FastAPI app. ``refiner``: a ready :class:`~cascadepsp.Refiner` (else one is built by
    ``loader``, default :func:`load_refiner`, once when the app starts)."""
    settings = settings or ServeSettings()
    service = Service(settings, refiner, WorkQueue(settings.queue_size), loader or load_refiner)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if service.refiner is None:
            t0 = time.perf_counter()
            service.refiner = await run_in_threadpool(service.loader, settings)
            service.loads += 1
            log.info("cascadepsp serve: pid %d loaded weights %r (%s backend) in %.1f s", os.getpid(),
                     settings.weights, settings.backend, time.perf_counter() - t0)
        yield
        await run_in_threadpool(service.queue.shutdown)

    app = FastAPI(title="cascadepsp", version=__version__, lifespan=lifespan,
                  description="CascadePSP mask refinement: send a photo and a coarse mask, get the refined mask. "
                              "Errors are `{\"detail\": \"<one line>\"}`.")
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes,
                       label=f"{settings.max_upload_mb:g} MB")

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_detail(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 400 and detail.startswith("Part exceeded maximum size"):
            detail += " (a form field is at most 1 MB: send large annotations as a file part)"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _on_crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return JSONResponse({"detail": _describe_failure(exc)[1]}, status_code=500)

    def ready_refiner() -> Any:
        if service.refiner is None:
            raise _error(503, "model not loaded yet; retry shortly", {"Retry-After": "5"})
        return service.refiner

    async def queued(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
        try:
            return await service.queue.run(fn, *args)
        except QueueFull as e:
            raise _error(503, str(e), {"Retry-After": "2"}) from None
        except Exception as e:  # the request's own failure; the worker carries on
            status, detail = _describe_failure(e)
            if status == 500:
                log.error("refinement failed: %s", detail, exc_info=e)
            raise _error(status, detail) from None

    @app.get("/health", summary="Liveness, the loaded weights and the queue")
    async def health() -> dict[str, Any]:
        """Status, weights, backend, version, and the queue's counters."""
        import torch

        r = service.refiner
        return {
            "status": "ok" if r is not None else "loading", "version": __version__, "weights": settings.weights,
            "backend": settings.backend, "precision": settings.precision, "engine": getattr(r, "engine", None),
            "device": str(getattr(r, "device", None)), "threads": torch.get_num_threads(), "pid": os.getpid(),
            "uptime_s": round(time.time() - service.started, 1), "queue": service.queue.stats(),
            "limits": {"max_pixels": settings.max_pixels, "max_upload_mb": settings.max_upload_mb,
                       "max_L": settings.max_L, "max_instances": settings.max_instances,
                       "queue_size": settings.queue_size},
        }

    @app.post("/v1/refine", summary="Refine one coarse mask", responses={
        200: {"content": {"image/png": {}, "application/json": {}},
              "description": "the refined HxW mask as a PNG (soft 0-255, or 0/255 with threshold), or with "
                             "output=rle a COCO RLE {size, counts, area, bbox, threshold}"},
        **ERROR_RESPONSES})
    async def refine(
        image: Annotated[UploadFile, File(description="the photo (JPEG, PNG, WebP, BMP, TIFF)")],
        mask: Annotated[UploadFile, File(description="the coarse mask, the photo's size (0/255, 0/1, palette, "
                                                     "alpha, ... as `cascadepsp refine` reads mask files)")],
        fast: Annotated[bool, Form(description="global step only (faster, less detail)")] = False,
        L: Annotated[int, Form(description="global-step long side and local window size")] = 900,
        threshold: Annotated[float | None, Form(description="0/255 output at this probability (0-1); "
                                                            "empty: soft 0-255")] = None,
        output: Annotated[Literal["png", "rle"], Form(description="png, or rle: COCO RLE JSON of the mask at "
                                                                  "threshold (default 0.5)")] = "png",
    ) -> Response:
        """Refine ``mask`` for ``image``: the same pixels as ``Refiner.refine(image, mask, fast, L, threshold)``."""
        refiner_ = ready_refiner()
        L = _check_L(L, settings)
        threshold = _check_threshold(threshold)
        if output == "rle":
            threshold = 0.5 if threshold is None else threshold
            try:
                mask_api()
            except ImportError as e:
                raise _error(501, str(e)) from None
        names = {"image": image.filename, "mask": mask.filename}
        with _upload_dir() as tmp:
            paths = await _save_uploads(tmp, {"image": image, "mask": mask})
            header = await run_in_threadpool(_header, paths["image"], names["image"], settings)
            await run_in_threadpool(_check_mask_header, paths["mask"], names["mask"], header)
            result, waited, ran = await queued(_refine_job, refiner_, paths, names, fast, L, threshold)
        headers = {"Server-Timing": f"queue;dur={waited * 1000:.1f}, refine;dur={ran * 1000:.1f}"}
        if result.note:
            headers["X-Cascadepsp-Note"] = result.note.encode("ascii", "replace").decode()
        if output == "rle":
            seg, area, bbox = await run_in_threadpool(encode_segmentation, result.mask != 0)
            return JSONResponse({**seg, "area": area, "bbox": bbox, "threshold": threshold}, headers=headers)
        png = await run_in_threadpool(encode_png, result.mask)
        stem = Path(names["image"] or "image").stem[:80] or "image"
        headers["Content-Disposition"] = f'inline; filename="{_ascii(stem)}_mask.png"'
        return Response(png, media_type="image/png", headers=headers)

    @app.post("/v1/refine-instances", summary="Refine the COCO instances of one photo", responses={
        200: {"description": "{width, height, annotations}: each annotation as sent, with its segmentation "
                             "(RLE or polygons), area and bbox refined; iscrowd ones untouched"},
        **ERROR_RESPONSES, 501: {"description": "pycocotools missing (pip install 'cascadepsp[serve]')"}})
    async def refine_instances(
        image: Annotated[UploadFile, File(description="the photo")],
        annotations: Annotated[UploadFile | str, Form(description="JSON list of COCO annotations of this photo, "
                                                                  "each with a segmentation (polygons, RLE or "
                                                                  "compressed RLE; other keys are returned as "
                                                                  "sent), as a field (up to 1 MB) or a file")],
        context: Annotated[float, Form(description="share of each instance's box added on every side")] = 0.25,
        threshold: Annotated[float, Form(description="foreground where the refined probability >= this")] = 0.5,
        fast: Annotated[bool, Form(description="global step only")] = False,
        L: Annotated[int, Form(description="global-step long side and local window size")] = 900,
        output: Annotated[Literal["rle", "polygons"], Form(description="segmentations out as compressed RLE or "
                                                                       "polygons")] = "rle",
    ) -> JSONResponse:
        """Refine each instance inside its box enlarged by ``context``, as ``cascadepsp refine-coco`` does."""
        refiner_ = ready_refiner()
        L = _check_L(L, settings)
        threshold = _check_threshold(threshold, required=True)
        try:
            context = check_context(context)
            mask_api()
        except ValueError as e:
            raise _error(422, str(e)) from None
        except ImportError as e:
            raise _error(501, str(e)) from None
        if not isinstance(annotations, str):  # sent as a file part: no 1 MB field limit
            raw = await annotations.read()
            try:
                annotations = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _error(422, "annotations: expected UTF-8 JSON text") from None
        try:
            anns = json.loads(annotations)
        except json.JSONDecodeError as e:
            raise _error(422, f"annotations: invalid JSON: {e}") from None
        if isinstance(anns, dict) and isinstance(anns.get("annotations"), list):
            anns = anns["annotations"]
        if not isinstance(anns, list):
            raise _error(422, f"annotations: expected a JSON list of annotations, got {type(anns).__name__}")
        if len(anns) > settings.max_instances:
            raise _error(413, f"annotations: {len(anns)} instances, more than this server's limit of "
                              f"{settings.max_instances} (--max-instances)")
        with _upload_dir() as tmp:
            paths = await _save_uploads(tmp, {"image": image})
            header = await run_in_threadpool(_header, paths["image"], image.filename, settings)
            width, height = header.size
            try:
                await run_in_threadpool(_check_annotations, anns, height, width)
            except ValueError as e:
                raise _error(422, str(e)) from None
            refined, waited, ran = await queued(_instances_job, refiner_, paths["image"], image.filename, anns,
                                                output == "polygons", context, threshold, fast, L)
        return JSONResponse({"width": width, "height": height, "annotations": refined},
                            headers={"Server-Timing": f"queue;dur={waited * 1000:.1f}, refine;dur={ran * 1000:.1f}"})

    page = _static("page.html")
    static = {name: _static(name) for name in STATIC_FILES}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in static:
            raise _error(404, f"no static file {name!r}")
        return Response(static[name], media_type=STATIC_FILES[name], headers=PAGE_HEADERS)

    return app


def _ascii(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text.encode("ascii", "replace").decode())


def app_from_env() -> FastAPI:
    """The app of one ``--workers N`` worker process, with the settings its parent put in the environment."""
    return create_app(settings=ServeSettings.from_env())
