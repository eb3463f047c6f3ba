"""``pipeline.py serve``: any local backend behind an API: images on the KServe v2 / Open Inference Protocol,
texts on the OpenAI API.

Texts (``modality: text``, e.g. ``hf_causal_lm``): the routes of :mod:`privevo.text.openai_server`
(``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/health``), which the
``openai_compatible`` backend calls; the health, token and shutdown rules below hold for them too.

Images:

FastAPI + uvicorn. ``GET /v2/health/live`` answers as soon as the port is open;
``GET /v2/health/ready`` (and ``/v2/models/{model}/ready``) once the model has loaded.
``POST /v2/models/{model}/infer`` runs the ``random`` or ``variation`` call of
:mod:`privevo.image.protocol` on the loaded :class:`~privevo.image.models.base.FoundationModel`, which
batches the request by its ``batch_size``; one call runs at a time (the model owns the CPU
or GPU), the others wait in line while health checks still answer. SIGTERM/SIGINT stop
accepting connections, finish the calls in flight (up to ``--graceful-timeout``), then exit.

``POST /v2/repository/index`` lists the one model served, so clients may leave its name out.
With ``--token-env VAR`` every ``/v2/models`` request needs ``Authorization: Bearer <$VAR>``.
"""

from __future__ import annotations

import hmac
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request, Response  # at import: FastAPI reads the routes' annotations

from privevo.errors import UserError
from privevo.image import protocol

if TYPE_CHECKING:
    from privevo.config import Config
    from privevo.image.models.base import FoundationModel

logger = logging.getLogger(__name__)

VERSION = "1"


class ModelHolder:
    """The served model (an image :class:`FoundationModel` or a :class:`TextModel`), loaded in the background so
    liveness answers while it loads."""

    def __init__(self, name: str, load: Callable[[], Any]) -> None:
        self.name = name
        self._load = load
        self.model: Any = None
        self.error: str | None = None
        self.loaded = threading.Event()
        self.lock = threading.Lock()  # one call at a time on the model

    def load(self) -> None:
        try:
            self.model = self._load()
            logger.info("model %s is ready (batch size %d)", self.name, self.model.batch_size)
        except UserError as err:
            self.error = str(err)
            logger.error("model %s could not be loaded: %s", self.name, err)
        finally:
            self.loaded.set()

    def metadata(self) -> dict[str, Any]:
        """The v2 model metadata of an image model: its inputs, output shape and parameters."""
        model: FoundationModel = self.model
        assert model is not None
        shape = [-1, model.image_size, model.image_size, model.channels]
        return {
            "name": self.name, "versions": [VERSION], "platform": "privevo",
            "inputs": [
                {"name": "count", "datatype": "INT64", "shape": [1]},
                {"name": "seed", "datatype": "INT64", "shape": [1]},
                {"name": "first_index", "datatype": "INT64", "shape": [1]},
                {"name": "labels", "datatype": "INT64", "shape": [-1], "optional": True},
                {"name": "images", "datatype": "UINT8", "shape": shape, "call": "variation"},
                {"name": "degree", "datatype": "FP64", "shape": [1], "call": "variation"},
            ],
            "outputs": [{"name": "images", "datatype": "UINT8", "shape": shape}],
            "parameters": {"calls": list(protocol.CALLS), "num_classes": model.num_classes,
                           "batch_size": model.batch_size, "image_size": model.image_size, "channels": model.channels},
        }


def run_call(model: FoundationModel, call: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Run one decoded request on the model; bad inputs raise ProtocolError (HTTP 400)."""
    seed = protocol.scalar(inputs, "seed", int)
    first_index = protocol.scalar(inputs, "first_index", int)
    labels = inputs.get("labels")
    if labels is not None:
        labels = labels.reshape(-1).astype(np.int64)
    try:
        if call == "random":
            count = protocol.scalar(inputs, "count", int)
            return model.random(count, labels=labels, seed=seed, first_index=first_index)
        if "images" not in inputs:
            raise protocol.ProtocolError("input 'images' is missing")
        degree = protocol.scalar(inputs, "degree", float)
        return model.variation(np.ascontiguousarray(inputs["images"]), degree, labels=labels, seed=seed,
                               first_index=first_index)
    except UserError as err:  # the backend's one-line input checks
        raise protocol.ProtocolError(str(err)) from None


def create_app(holder: ModelHolder, token: str | None = None, load_in_background: bool = True,
               modality: str = "image", max_new_tokens: int = 64) -> FastAPI:
    """The FastAPI application serving ``holder``'s model: images on the v2 protocol, texts on the OpenAI API
    (``max_new_tokens``: a request's token limit when it names none)."""
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if load_in_background:
            threading.Thread(target=holder.load, name="privevo-load-model", daemon=True).start()
        yield

    app = FastAPI(title="privevo model server", version=VERSION, lifespan=lifespan, docs_url=None, redoc_url=None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def check(request: Request, name: str | None, answer: Callable[[int, str], JSONResponse] = error) -> JSONResponse | None:
        """An error answer (in ``answer``'s form) for a bad token, an unknown model or one not loaded yet; None when
        the call may go on."""
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return answer(401, "missing or wrong bearer token")
        if name != holder.name:
            return answer(404, f"model {name!r} is not served here (this server serves {holder.name!r})")
        if holder.model is None:
            return answer(503, "the model is still loading" if holder.error is None else "the model failed to load")
        return None

    @app.get("/v2/health/live")
    def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> Response:
        if holder.model is None:
            return error(503, "the model is still loading" if holder.error is None else "the model failed to load")
        return JSONResponse({"ready": True})

    if modality == "text":
        from privevo.text.openai_server import add_routes

        add_routes(app, holder, check, max_new_tokens)
        return app

    @app.get("/v2")
    def server_metadata() -> dict[str, Any]:
        return {"name": "privevo", "version": VERSION, "extensions": ["binary_tensor_data", "model_repository"]}

    @app.post("/v2/repository/index")
    def repository_index() -> list[dict[str, str]]:
        state = "READY" if holder.model is not None else ("UNAVAILABLE" if holder.error else "LOADING")
        return [{"name": holder.name, "version": VERSION, "state": state}]

    @app.get("/v2/models/{name}")
    def model_metadata(name: str, request: Request) -> Response:
        return check(request, name) or JSONResponse(holder.metadata())

    @app.get("/v2/models/{name}/ready")
    def model_ready(name: str, request: Request) -> Response:
        return check(request, name) or JSONResponse({"name": name, "ready": True})

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Response:
        refused = check(request, name)
        if refused is not None:
            return refused
        body = await request.body()
        try:
            call, inputs, binary, request_id = protocol.decode_request(body, request.headers.get(protocol.HEADER_LENGTH))
        except protocol.ProtocolError as err:
            return error(400, str(err))

        def work() -> np.ndarray:
            model = holder.model
            assert model is not None
            with holder.lock:
                return run_call(model, call, inputs)

        try:
            images = await run_in_threadpool(work)
        except protocol.ProtocolError as err:
            return error(400, str(err))
        content, headers = protocol.encode_response(holder.name, images, binary, request_id)
        return Response(content=content, headers=headers)

    return app


# ------------------------------------------------------------------ command line


#: What serve says when asked for a model kind that is itself behind an API.
LOCAL_KINDS = "a local model kind (ddpm_unet, stable_diffusion, hf_causal_lm)"


@dataclass(frozen=True)
class ServedModel:
    """A local backend to serve: its kind, its data type (``image`` or ``text``), how to load it (in the background,
    once the server answers liveness) and, for text, a request's token limit when it names none."""

    kind: str
    modality: str
    load: Callable[[], Any]
    max_new_tokens: int = 64


def _local_modality(kind: str) -> str:
    """``text`` or ``image`` for a registered kind served in process; kinds behind an API are UserErrors."""
    from privevo.config import REMOTE_KINDS
    from privevo.image.models import MODEL_BACKENDS
    from privevo.text import TEXT_MODELS

    if kind in REMOTE_KINDS or kind not in (*MODEL_BACKENDS, *TEXT_MODELS):
        raise UserError(f"serve needs {LOCAL_KINDS}, not {kind}")
    return "text" if kind in TEXT_MODELS else "image"


def _backend(kind: str, modality: str) -> Any:
    """The backend class of ``kind`` (image backends with torch set up as a run's steps set it up)."""
    if modality == "text":
        from privevo import registry
        from privevo.text import TEXT_MODELS

        return registry.registered_class(TEXT_MODELS, kind, "text model kind")
    from privevo.image.models import prepared_backend

    return prepared_backend(kind)


def pretrained_model(kind: str, path: str, options: dict[str, Any], max_new_tokens: int = 64) -> ServedModel:
    """The model folder ``path`` as backend ``kind``, loaded by ``from_pretrained(path, **options)`` (the command
    line's options, named as its keyword arguments); an option the backend does not take is a one-line UserError."""
    import inspect

    from privevo import model_store
    from privevo.pretrained import Pretrained

    modality = _local_modality(kind)
    if model_store.is_remote(path) and not options.get("sha256"):
        raise UserError(f"--model-path {path} is on Cloud Storage, so it needs --sha256: the folder's digest "
                        f"(python -m privevo.model_store hash {path} prints it)")

    def load() -> Any:
        backend = _backend(kind, modality)
        if not issubclass(backend, Pretrained):
            raise UserError(f"serve needs {LOCAL_KINDS}, not {kind}")
        taken = inspect.signature(backend.from_pretrained).parameters
        unknown = [f"--{key.replace('_', '-')}" for key in options if key not in taken]
        if unknown:
            raise UserError(f"model kind {kind} takes no {', '.join(unknown)}")
        return backend.from_pretrained(path, **options)

    return ServedModel(kind, modality, load, max_new_tokens)


def configured_model(config: Config) -> ServedModel:
    """The model an experiment config names (``serve --config``), loaded as a run's steps load it: a text backend
    without Aug-PE's prompts (the server completes the prompts clients send)."""
    kind = config.model.kind
    modality = _local_modality(kind)
    max_new_tokens = config.text.max_new_tokens if config.text is not None else 64
    return ServedModel(kind, modality, lambda: _backend(kind, modality).from_config(config), max_new_tokens)


def serve(served: ServedModel, host: str = "127.0.0.1", port: int = 8080, model_name: str | None = None,
          token_env: str | None = None, graceful_timeout: float = 30.0) -> int:
    """Serve ``served`` until SIGTERM/SIGINT; 0 on a clean stop, 2 when the model cannot load."""
    import uvicorn

    token = None
    if token_env:
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise UserError(f"--token-env names {token_env}, which is not set or empty: export the token in it")
    name = model_name or served.kind
    holder = ModelHolder(name, served.load)
    text = served.modality == "text"
    app = create_app(holder, token, modality=served.modality, max_new_tokens=served.max_new_tokens)
    server = _server_class()(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                            timeout_graceful_shutdown=int(graceful_timeout)))

    def stop_if_load_fails() -> None:
        holder.loaded.wait()
        if holder.error is not None:
            server.should_exit = True

    threading.Thread(target=stop_if_load_fails, daemon=True).start()
    api = "OpenAI API, /v1/chat/completions" if text else "KServe v2 protocol"
    print(f"serving {served.kind} model {name!r} on http://{host}:{port} ({api})", flush=True)
    server.run()  # a Ctrl-C that reaches Python here raises KeyboardInterrupt to the caller
    if server.interrupted:
        raise KeyboardInterrupt  # one uvicorn saw and asyncio swallowed: the caller says "stopped serving (interrupted)"
    if holder.error is not None:
        raise UserError(holder.error)
    return 0


def _server_class() -> type:
    """uvicorn.Server that remembers a Ctrl-C: uvicorn shuts down on it, then replays it to the handler it replaced,
    where asyncio may swallow it (a done task to cancel), so the run's end alone cannot tell an interrupted stop."""
    import uvicorn

    class InterruptAwareServer(uvicorn.Server):
        interrupted = False

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if sig == signal.SIGINT:
                self.interrupted = True
            super().handle_exit(sig, frame)

    return InterruptAwareServer
