"""The ``openai_compatible`` text backend: a language model behind the OpenAI API.

``/v1/chat/completions`` (``model.remote.api: chat``, the default) or ``/v1/completions``
(``api: completions``: the prompt as it is, no chat template; a system message goes before it),
as OpenAI, vLLM, TGI, KServe's Hugging Face runtime and ``pipeline.py serve`` serve them. Only
Aug-PE's prompts cross the wire: public template values and synthetic texts (:mod:`privevo.text.augpe`).

Each prompt is one request (``max_tokens`` the request's token limit, ``seed`` its sampling
seed, ``temperature`` and ``top_p`` from ``text``), up to ``model.remote.max_concurrency`` in
flight, at most ``requests_per_minute`` and ``tokens_per_minute`` (a request reserves its
estimated prompt tokens plus ``max_tokens``; the answer's ``usage`` settles the difference).
The HTTP client, retries, token, call ledger and stored answers are :mod:`privevo.remote_calls`,
shared with the image ``remote`` backend: a retried step pays only for the answers it has not
stored. The ledger counts tokens in and out (the answers' ``usage``) and estimates the cost at
``price_per_input_token`` and ``price_per_output_token``.

A server honouring seeds (vLLM, ``pipeline.py serve``) answers what the in-process backend
would, up to the rounding of its batches; OpenAI's seeds are best effort.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from privevo.errors import UserError
from privevo.remote_calls import CallLedger, CallStats, HttpClient, ProtocolError, public_url, request_key
from privevo.text.backends import Request, TextModel

if TYPE_CHECKING:
    import requests

    from privevo.config import Config, RemoteConfig

#: The call ledger's counters of a text backend.
COUNTERS = ("requests", "texts", "reused_texts", "tokens_in", "tokens_out", "retries", "failures", "seconds")
#: The paths of the two APIs.
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
#: Characters per token when a request's prompt tokens are estimated for the token rate limit (before the answer).
CHARS_PER_TOKEN = 4


def request_body(model_name: str, api: str, request: Request, system: str | None, temperature: float,
                 top_p: float) -> dict[str, Any]:
    """The JSON body of one request: a chat turn (system message, user prompt) or a plain prompt."""
    body: dict[str, Any] = {"model": model_name, "max_tokens": request.max_new_tokens, "temperature": temperature,
                            "top_p": top_p, "seed": request.seed, "n": 1}
    if api == "chat":
        body["messages"] = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": request.prompt}]
    else:
        body["prompt"] = f"{system}\n\n{request.prompt}" if system else request.prompt
    return body


def answer_text(answer: Any, api: str) -> tuple[str, int, int]:
    """The completion's text and its usage (prompt tokens, completion tokens) from an answer's JSON."""
    try:
        choice = answer["choices"][0]
        text = choice["message"]["content"] if api == "chat" else choice["text"]
    except (TypeError, KeyError, IndexError):
        raise ProtocolError("the answer has no choices[0]." + ("message.content" if api == "chat" else "text")) from None
    if not isinstance(text, str):
        raise ProtocolError("the answer's completion is not a string")
    usage = answer.get("usage") if isinstance(answer, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    tokens_in, tokens_out = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    if not all(isinstance(n, int) and n >= 0 for n in (tokens_in, tokens_out)):
        raise ProtocolError("the answer's usage does not count tokens in non-negative integers")
    return text, tokens_in, tokens_out


class OpenAICompatible(TextModel):
    """A language model behind an OpenAI-compatible server (``model.kind: openai_compatible``)."""

    name = "openai_compatible"
    config_fields = ("model", "text")  # text: the sampling settings

    def __init__(self, settings: RemoteConfig, temperature: float = 1.0, top_p: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.api = settings.api
        self.temperature = temperature
        self.top_p = top_p
        self.client = HttpClient(settings, _hint, sleep, settings.tokens_per_minute)
        self.url = self.client.url
        self.model_name = settings.model_name or self._only_model()
        self.ledger: CallLedger = CallLedger("texts", COUNTERS, self._ledger_header, self._cost)

    @classmethod
    def from_config(cls, config: Config) -> OpenAICompatible:
        """The server ``config.model.remote`` names, with ``text``'s temperature and top-p."""
        from privevo.config import OpenAICompatibleSection, model_section
        from privevo.text.modality import text_section

        settings = model_section(config, OpenAICompatibleSection).remote
        assert settings is not None  # the config requires it
        section = text_section(config)
        return cls(settings, section.temperature, section.top_p)

    # ------------------------------------------------------------------ call ledger

    def _ledger_header(self) -> dict[str, Any]:
        return {"url": public_url(self.url), "model_name": self.model_name, "api": self.api,
                "price_per_input_token": self.settings.price_per_input_token,
                "price_per_output_token": self.settings.price_per_output_token}

    def _cost(self, counters: Mapping[str, float]) -> float:
        """Tokens paid for (stored answers reused are free) at the config's prices."""
        return (counters["tokens_in"] * self.settings.price_per_input_token
                + counters["tokens_out"] * self.settings.price_per_output_token)

    # ------------------------------------------------------------------ completions

    def complete(self, requests: Sequence[Request], system: str | None = None) -> list[str]:
        """One request per prompt, up to ``max_concurrency`` at once; stored answers first."""
        out = [""] * len(requests)

        def work(start: int, stop: int, stats: CallStats) -> str:
            return self._one(requests[start], start, system, stats)

        chunks = [(i, i + 1) for i in range(len(requests))]
        for index, text in self.ledger.run("complete", chunks, work, self.settings.max_concurrency,
                                           {"count": len(requests)}).items():
            out[index] = text
        return out

    def _one(self, request: Request, index: int, system: str | None, stats: CallStats) -> str:
        """One prompt's completion: the stored answer of the same request, or the server's (then stored)."""
        body = request_body(self.model_name, self.api, request, system, self.temperature, self.top_p)
        key = request_key("complete", index, {"body": body, "url_path": PATHS[self.api]}, {})

        def valid(stored: dict[str, np.ndarray]) -> bool:
            return stored.get("text") is not None and stored["text"].shape == (1,) and stored["text"].dtype.kind == "U"

        def fetch() -> dict[str, np.ndarray]:
            text, tokens_in, tokens_out = self._post(body, request, system, stats)
            stats.add(tokens_in=tokens_in, tokens_out=tokens_out)
            return {"text": np.array([text], dtype=str), "usage": np.array([tokens_in, tokens_out], np.int64)}

        return str(self.ledger.fetch_or_reuse(key, 1, fetch, valid, stats)["text"][0])

    def _post(self, body: dict[str, Any], request: Request, system: str | None,
              stats: CallStats) -> tuple[str, int, int]:
        import json

        reserved = math.ceil((len(request.prompt) + len(system or "")) / CHARS_PER_TOKEN) + request.max_new_tokens

        def decode(response: requests.Response) -> tuple[str, int, int]:
            try:
                answer = response.json()
            except ValueError:
                raise ProtocolError("the body is not valid JSON") from None
            return answer_text(answer, self.api)

        answer = self.client.request("POST", PATHS[self.api], decode, stats, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"}, tokens=reserved)
        self.client.limiter.settle(reserved, answer[1] + answer[2])
        return answer

    def _only_model(self) -> str:
        """The id of the one model the server lists (``model_name`` left out of the config)."""
        def decode(response: requests.Response) -> list[str]:
            try:
                return [str(entry["id"]) for entry in response.json()["data"]]
            except (ValueError, TypeError, KeyError):
                raise ProtocolError("the model list is not {\"data\": [{\"id\": ...}]}") from None

        names = self.client.request("GET", "/v1/models", decode, CallStats(COUNTERS))
        if len(names) != 1:
            raise UserError(f"the server at {public_url(self.url)} lists {len(names)} models ({', '.join(names[:5])}): "
                            "set model.remote.model_name")
        return names[0]


def _hint(status: int) -> str:
    """What to check when the server refuses a request with ``status`` (401 and 403: the shared client names the
    token's settings)."""
    if status == 404:
        return "check model.remote.model_name, model.remote.url and model.remote.api"
    return "check that the server speaks the OpenAI API (/v1/chat/completions or /v1/completions)"
