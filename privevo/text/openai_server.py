"""``pipeline.py serve`` for a local text model: the OpenAI API that the ``openai_compatible`` backend calls.

``POST /v1/chat/completions`` (the tokenizer's chat template on the system and last user message)
and ``POST /v1/completions`` (the prompt as it is), one choice each, with ``max_tokens``,
``temperature``, ``top_p`` and ``seed`` honoured: the completion is sampled with the request's
seed as the in-process backend samples it (:class:`privevo.text.backends.HfCausalLM`), so a client
gets the in-process texts up to the rounding of the server's batches. ``usage`` counts the
prompt's and the completion's tokens. ``GET /v1/models`` lists the one model; ``GET /health``
(vLLM, TGI) and ``/v2/health/ready`` (KServe) answer 503 until it has loaded.

Requests arriving together are batched: a worker takes up to ``model.batch_size`` waiting
requests of the same kind, system message and sampling settings and completes them in one
call (rows sample independently, each from its own seed). Errors follow OpenAI's form,
``{"error": {"message", "type"}}``.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response  # at import: FastAPI reads the routes' annotations

from privevo.errors import UserError
from privevo.remote_calls import ProtocolError
from privevo.text.backends import Request as Completion

if TYPE_CHECKING:
    from privevo.serve import ModelHolder
    from privevo.text.backends import TextModel

#: How long the batcher waits for more requests to join a batch, in seconds.
GATHER_S = 0.005


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ProtocolError(f"{key} must be a number in [{low:g}, {high:g}]")
    return float(value)


def parse_request(body: Any, chat: bool, default_max_tokens: int) -> tuple[Completion, str | None, float, float]:
    """``(completion request, system message, temperature, top_p)`` of a chat or completions body."""
    if not isinstance(body, dict):
        raise ProtocolError("the body must be a JSON object")
    if body.get("n", 1) != 1 or body.get("stream"):
        raise ProtocolError("this server answers one choice per request and does not stream: drop n and stream")
    system = None
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            raise ProtocolError("messages must be a non-empty list of {role, content} with string content")
        users = [m["content"] for m in messages if m.get("role") == "user"]
        systems = [m["content"] for m in messages if m.get("role") == "system"]
        if not users:
            raise ProtocolError("messages need a user message")
        prompt, system = users[-1], (systems[0] if systems else None)
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise ProtocolError("prompt must be one string")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", default_max_tokens))
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ProtocolError("max_tokens must be a positive integer")
    seed = body.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ProtocolError("seed must be a non-negative integer below 2**64")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 1e-9, 1.0)
    return Completion(prompt, max_tokens, seed), system, temperature, top_p


def _as_is(model: TextModel) -> TextModel:
    """A view of ``model`` that sends prompts as they are, without the chat template (``/v1/completions``)."""
    view = copy.copy(model)
    setattr(view, "chat_text", lambda prompt, system: f"{system}\n\n{prompt}" if system else prompt)  # noqa: B010
    return view


@dataclass
class _Job:
    completion: Completion
    group: tuple[bool, str | None, float, float]  # chat?, system, temperature, top_p
    future: Future = field(default_factory=Future)


class Batcher:
    """One worker that completes waiting requests in batches of up to the model's batch size."""

    def __init__(self, holder: ModelHolder) -> None:
        self.holder = holder
        self.jobs: queue.Queue[_Job] = queue.Queue()
        self._waiting: list[_Job] = []
        threading.Thread(target=self._work, name="privevo-text-batcher", daemon=True).start()

    def submit(self, completion: Completion, chat: bool, system: str | None, temperature: float,
               top_p: float) -> Future:
        """Queue one request; its future holds the completion's text."""
        job = _Job(completion, (chat, system, temperature, top_p))
        self.jobs.put(job)
        return job.future

    def _work(self) -> None:
        while True:
            if not self._waiting:
                self._waiting.append(self.jobs.get())
            deadline = time.monotonic() + GATHER_S
            while (left := deadline - time.monotonic()) > 0:
                try:
                    self._waiting.append(self.jobs.get(timeout=left))
                except queue.Empty:
                    break
            size = getattr(self.holder.model, "batch_size", 1)
            group = self._waiting[0].group
            batch = [job for job in self._waiting if job.group == group][:size]
            self._waiting = [job for job in self._waiting if job not in batch]
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        chat, system, temperature, top_p = batch[0].group
        try:
            with self.holder.lock:
                model = self.holder.model
                assert model is not None
                view: Any = model if chat else _as_is(model)
                view.temperature, view.top_p = temperature, top_p  # local backends sample with these
                texts = view.complete([job.completion for job in batch], system if chat else None)
                for job, text in zip(batch, texts, strict=True):
                    job.future.set_result((text, *self._usage(view, job.completion, system if chat else None, text)))
        except Exception as err:  # noqa: BLE001 (every client of the batch hears of it; the worker goes on)
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(err)

    @staticmethod
    def _usage(model: Any, completion: Completion, system: str | None, text: str) -> tuple[int, int]:
        """Prompt and completion tokens, by the model's tokenizer (words where it has none)."""
        tokenizer = getattr(model, "tokenizer", None)
        prompt = model.chat_text(completion.prompt, system)
        if tokenizer is None:
            return len(prompt.split()), len(text.split())
        count = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
        return count(prompt), min(count(text), completion.max_new_tokens)


def add_routes(app: FastAPI, holder: ModelHolder, refuse: Any, default_max_tokens: int) -> None:
    """The OpenAI routes on ``app``; ``refuse(request, name)`` is the server's token/loading check (None: go on)."""
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    batcher = Batcher(holder)

    def error(status: int, message: str) -> JSONResponse:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

    @app.get("/health")
    def health() -> Response:
        if holder.model is None:
            return error(503, "the model is still loading" if holder.error is None else "the model failed to load")
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    def models(request: Request) -> Response:
        refused = refuse(request, holder.name, error)
        return refused or JSONResponse({"object": "list", "data": [
            {"id": holder.name, "object": "model", "created": 0, "owned_by": "privevo"}]})

    async def complete(request: Request, chat: bool) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the body is not valid JSON")
        refused = refuse(request, body.get("model") if isinstance(body, dict) else None, error)
        if refused is not None:
            return refused
        try:
            completion, system, temperature, top_p = parse_request(body, chat, default_max_tokens)
        except ProtocolError as err:
            return error(400, str(err))
        future = batcher.submit(completion, chat, system, temperature, top_p)
        try:
            text, tokens_in, tokens_out = await run_in_threadpool(future.result)
        except UserError as err:
            return error(400, str(err))
        finish = "length" if tokens_out >= completion.max_new_tokens else "stop"
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return JSONResponse({
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "object": "chat.completion" if chat
            else "text_completion", "created": int(time.time()), "model": holder.name, "choices": [choice],
            "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
                      "total_tokens": tokens_in + tokens_out}})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await complete(request, True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await complete(request, False)
