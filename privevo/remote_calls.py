"""What every backend behind an API shares, whatever the data type: the HTTP client, the rate limits, the token,
the call ledger and the stored results.

The image ``remote`` backend (:mod:`privevo.image.models.remote`, KServe v2) and the text
``openai_compatible`` backend (:mod:`privevo.text.openai_compatible`) differ only in what a
request and an answer hold; both use this module for the rest:

- :class:`HttpClient`: one request, retried on 429, 5xx, timeouts, refused connections and
  malformed answers (:class:`ProtocolError`), with exponential backoff and full jitter, waiting at
  least ``Retry-After``; after ``max_retries`` retries a one-line UserError; other 4xx answers
  fail at once. Starts are spaced by :class:`RateLimiter` (requests and tokens per minute).
- :func:`read_token`: the bearer token from ``token_env`` or ``token_file``. It is sent in the
  ``Authorization`` header only; never logged, stored or put in an error.
- :class:`CallLedger`: a call split into chunks sent up to ``max_concurrency`` at once; when a
  step bound it (:meth:`CallLedger.bind`), each chunk's answer is stored under the run layout
  before it is used, and stored answers are used first (a crashed or retried step does not pay
  twice); each call adds a line to the step's ledger, ``gen-NNN/calls/<step>-SSS.json``, with its
  counters and estimated cost (read back by :mod:`privevo.calls`).
- :class:`RecordedModel`: any data type's model as one step uses it; binds the model's ledger
  (a backend behind an API has one; an in-process model's is None and nothing is recorded), so
  that backends never see the run layout.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import hashlib
import io
import json
import logging
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from privevo import storage
from privevo.errors import UserError

if TYPE_CHECKING:
    import requests

    from privevo.config import RemoteConfig
    from privevo.layout import RunLayout

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Answers worth another try: rate limited, or the server (or a proxy before it) failed.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class ProtocolError(Exception):
    """A body that does not follow the protocol (the message names what is wrong, never the data)."""


def public_url(url: str) -> str:
    """The URL without any user:password part (for logs, errors and the ledger)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def read_token(settings: RemoteConfig) -> str | None:
    """The bearer token from ``token_env`` or ``token_file``; errors name the variable or file, never the token."""
    if settings.token_env:
        token = os.environ.get(settings.token_env, "").strip()
        if not token:
            raise UserError(f"model.remote.token_env names {settings.token_env}, which is not set or empty: "
                            "export the token in that variable")
        return token
    if settings.token_file:
        path = Path(settings.token_file)
        try:
            token = path.read_text().strip()
        except OSError as err:
            raise UserError(f"model.remote.token_file {path} cannot be read ({err.strerror}): "
                            "mount the secret there or fix the path") from None
        if not token:
            raise UserError(f"model.remote.token_file {path} is empty: put the token in it")
        return token
    return None


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date) in seconds from now; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class RateLimiter:
    """At most ``per_minute`` request starts a minute, evenly spaced, and at most ``tokens_per_minute`` tokens a
    minute (a bucket of one minute's tokens, refilled evenly), shared by every thread.

    A request reserves the tokens it may use before it starts (:meth:`wait`); once its answer says how many it
    used, :meth:`settle` gives back the difference, so the budget follows what the server counts.
    """

    def __init__(self, per_minute: float | None, tokens_per_minute: float | None = None) -> None:
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.token_seconds = 60.0 / tokens_per_minute if tokens_per_minute else 0.0
        self._next = 0.0
        self._token_clock = -float("inf")  # the bucket is full: tokens of the minute before it are unspent
        self._lock = threading.Lock()

    def wait(self, tokens: int = 0) -> None:
        """Block until a request of ``tokens`` tokens may start."""
        if not self.interval and not (self.token_seconds and tokens):
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
            if self.token_seconds and tokens:
                self._token_clock = max(self._token_clock, now - 60.0) + tokens * self.token_seconds
                start = max(start, self._token_clock)
        if start > now:
            time.sleep(start - now)

    def settle(self, reserved: int, used: int) -> None:
        """A request that reserved ``reserved`` tokens used ``used``: the difference goes back to (or comes out of)
        the bucket."""
        if self.token_seconds and reserved != used:
            with self._lock:
                self._token_clock += (used - reserved) * self.token_seconds


class CallStats:
    """Counters of one call, or of a whole step (thread-safe)."""

    def __init__(self, counters: Sequence[str]) -> None:
        self.values: dict[str, float] = dict.fromkeys(counters, 0)
        self._lock = threading.Lock()

    def add(self, **deltas: float) -> None:
        """Add to counters (a counter this object was not made with is an error)."""
        with self._lock:
            for key, value in deltas.items():
                if key not in self.values:
                    raise KeyError(f"no counter {key!r}")
                self.values[key] += value

    def as_dict(self) -> dict[str, Any]:
        """The counters, seconds rounded to milliseconds."""
        with self._lock:
            return {key: round(value, 3) if key == "seconds" else value for key, value in self.values.items()}


def _error_text(response: requests.Response) -> str:
    """The first line of an error answer (``{"error": "..."}`` or OpenAI's ``{"error": {"message": ...}}``), short."""
    try:
        error = response.json().get("error", "")
        text = str(error.get("message", "")) if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        text = response.text
    text = (text.strip().splitlines() or [""])[0]
    return f"({text[:200]})" if text else ""


class HttpClient:
    """Requests to one server: a session per thread with the bearer token, the rate limits, retries with backoff.

    ``hint(status)`` says what to check when the server refuses a request with a status other than 401 or 403 (those
    are always the token's settings, which every backend behind an API shares)."""

    def __init__(self, settings: RemoteConfig, hint: Callable[[int], str], sleep: Callable[[float], None] = time.sleep,
                 tokens_per_minute: float | None = None) -> None:
        import requests  # noqa: F401 (fail early if missing)

        self.settings = settings
        self.url = settings.url.rstrip("/")
        self.hint = hint
        self.limiter = RateLimiter(settings.requests_per_minute, tokens_per_minute)
        self._token = read_token(settings)
        self._local = threading.local()
        self._sleep = sleep

    def _refusal_hint(self, status: int) -> str:
        """What to check after a refusal: the token's settings for 401 and 403, else what the backend says."""
        if status in (401, 403):
            return "check the token in model.remote.token_env or model.remote.token_file"
        return self.hint(status)

    def where(self, path: str = "") -> str:
        """The public URL of ``path`` on the server (no credentials)."""
        return f"{public_url(self.url)}{path}"

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = self._local.session = requests.Session()
            if self._token:
                session.headers["Authorization"] = f"Bearer {self._token}"
        return session

    def request(self, method: str, path: str, decode: Callable[[requests.Response], T], stats: CallStats,
                body: bytes | None = None, headers: dict[str, str] | None = None, tokens: int = 0) -> T:
        """One request, retried on 429/5xx/timeouts/refused connections/bad bodies; a one-line UserError at the end.

        ``tokens`` is what the request may use at most (reserved from ``tokens_per_minute`` before each attempt);
        ``stats`` counts ``requests``, ``retries`` and ``failures``.
        """
        import requests

        settings = self.settings
        where = self.where(path)
        problem = "no attempt"
        for attempt in range(settings.max_retries + 1):
            if attempt:
                stats.add(retries=1)
            self.limiter.wait(tokens)
            stats.add(requests=1)
            retry_after = None
            try:
                response = self._session().request(method, self.url + path, data=body, headers=headers,
                                                   timeout=(min(10.0, settings.timeout_s), settings.timeout_s))
            except requests.Timeout:
                problem = f"no answer within model.remote.timeout_s={settings.timeout_s:g}"
            except requests.ConnectionError:
                problem = "the server is unreachable (connection refused or dropped)"
            else:
                if response.status_code == 200:
                    try:
                        return decode(response)
                    except ProtocolError as err:
                        problem = f"a malformed answer: {err}"
                elif response.status_code in RETRYABLE_STATUS:
                    problem = f"HTTP {response.status_code}"
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                else:
                    stats.add(failures=1)
                    raise UserError(f"{where} refused the request: HTTP {response.status_code} "
                                    f"{_error_text(response)}: {self._refusal_hint(response.status_code)}")
            if attempt == settings.max_retries:
                break
            delay = random.uniform(0, min(settings.max_backoff_s, settings.backoff_s * 2**attempt))
            if retry_after is not None:
                delay = max(delay, retry_after)
            logger.warning("%s %s: %s; retry %d of %d in %.1f s", method, where, problem, attempt + 1,
                           settings.max_retries, delay)
            self._sleep(delay)
        stats.add(failures=1)
        raise UserError(f"{where} failed after {settings.max_retries + 1} attempts, the last with {problem}: check "
                        "that the model server is running and healthy, or raise model.remote.max_retries/timeout_s")


def request_key(call: str, first_index: int, fields: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str:
    """A name for one request: its call, first index and every input (hashed), so a changed input is a new request."""
    digest = hashlib.sha256(json.dumps({"call": call, **fields}, sort_keys=True).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return f"{call}-{first_index:07d}-{digest.hexdigest()[:20]}"


class CallLedger:
    """A step's call ledger and stored answers; ``unit`` names what a request returns (``images``, ``texts``).

    ``counters`` are the ledger's columns (``requests``, ``retries``, ``failures``, ``seconds``, ``<unit>`` and
    ``reused_<unit>`` among them); ``header`` gives the fields a ledger file starts with (URL, model, prices);
    ``cost`` the estimated cost of a set of counters.
    """

    def __init__(self, unit: str, counters: Sequence[str], header: Callable[[], dict[str, Any]],
                 cost: Callable[[Mapping[str, float]], float]) -> None:
        self.unit = unit
        self.counters = tuple(counters)
        self.header = header
        self.cost = cost
        self._bound: tuple[RunLayout, int, str, int | None] | None = None
        self.step = CallStats(self.counters)

    def stats(self) -> CallStats:
        """Fresh counters for one call."""
        return CallStats(self.counters)

    def bind(self, layout: RunLayout, generation: int, step: str, shard: int | None = None) -> None:
        """Store answers and keep the call ledger of this step under the run layout (counters start again)."""
        self._bound = (layout, generation, step, shard)
        self.step = CallStats(self.counters)

    def summary(self) -> dict[str, Any]:
        """This step's calls so far, for its step record (the audit lists them)."""
        stats = self.step.as_dict()
        return {**{f"api_{key}": value for key, value in stats.items()}, "api_estimated_cost": round(self.cost(stats), 6)}

    def _write(self, entry: dict[str, Any]) -> None:
        """Add one call's counts to the step's ledger (cumulative over reruns of the step)."""
        if self._bound is None:
            return
        from privevo.layout import step_name

        layout, generation, step, shard = self._bound

        def add(current: dict[str, Any] | None) -> dict[str, Any]:
            ledger = current or {"step": step_name(step, shard), "generation": generation, **self.header(),
                                 "calls": [], **dict.fromkeys(self.counters, 0)}
            for key in self.counters:
                ledger[key] = round(ledger.get(key, 0) + entry[key], 3)
            ledger["estimated_cost"] = round(self.cost(ledger), 6)
            ledger["calls"].append(entry)
            return ledger

        storage.update_json(layout.calls(generation, step, shard), add)

    def fetch_or_reuse(self, key: str, count: int, fetch: Callable[[], dict[str, np.ndarray]],
                       valid: Callable[[dict[str, np.ndarray]], bool], stats: CallStats) -> dict[str, np.ndarray]:
        """One request's answer (named arrays of ``count`` results): the stored answer of the same request when it is
        whole and ``valid``, else ``fetch()``'s, stored before it is returned."""
        uri = None
        if self._bound is not None:
            layout, generation, step, shard = self._bound
            uri = layout.call_result(generation, step, shard, key)
        if uri is not None and storage.exists(uri):
            try:
                with np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False) as npz:
                    stored = {name: npz[name] for name in npz.files}
            except (OSError, ValueError, KeyError):
                stored = None
            if stored is not None and valid(stored):
                stats.add(**{f"reused_{self.unit}": count})
                return stored
        answer = fetch()
        if uri is not None:
            buffer = io.BytesIO()
            np.savez(buffer, **answer)  # type: ignore[arg-type]  # numpy's stubs want positional arrays
            storage.write_bytes(uri, buffer.getvalue())
        stats.add(**{self.unit: count})
        return answer

    def run(self, call: str, chunks: Sequence[tuple[int, int]], work: Callable[[int, int, CallStats], T],
            max_concurrency: int, entry: dict[str, Any]) -> dict[int, T]:
        """``work(start, stop, stats)`` for every chunk, up to ``max_concurrency`` at once; each chunk's result by its
        start. After a chunk fails for good, queued chunks are not sent; those in flight finish (and are stored)
        before the first failure is raised. The call's line (``entry`` and its counters) goes to the ledger."""
        started = time.monotonic()
        stats = self.stats()
        results: dict[int, T] = {}
        error: BaseException | None = None
        failed = threading.Event()

        def chunk(start: int, stop: int) -> tuple[bool, T | None]:
            if failed.is_set():
                return False, None
            try:
                return True, work(start, stop, stats)
            except BaseException:
                failed.set()
                raise

        with concurrent.futures.ThreadPoolExecutor(max_concurrency, "privevo-remote") as pool:
            futures = {pool.submit(chunk, start, stop): start for start, stop in chunks}
            for future in concurrent.futures.as_completed(futures):
                if future.exception() is not None:
                    error = error or future.exception()
                else:
                    done, result = future.result()
                    if done:
                        results[futures[future]] = result  # type: ignore[assignment]  # done: work's result
        stats.add(seconds=time.monotonic() - started)
        line = {"call": call, **entry, **stats.as_dict(), "ok": error is None}
        self.step.add(**{key: line[key] for key in self.counters})
        self._write(line)
        if error is not None:
            raise error
        return results


class RecordedModel:
    """A model (of any data type) whose calls during one step are recorded: a backend behind an API stores each answer
    under the run layout (reused first when the step is retried) and adds each call to the step's ledger; an
    in-process model (``ledger`` None) records nothing. The model's two calls and ``num_classes`` pass through."""

    def __init__(self, model: Any, layout: RunLayout, generation: int, step: str, shard: int | None = None) -> None:
        self.model = model
        self.ledger: CallLedger | None = model.ledger
        if self.ledger is not None:
            self.ledger.bind(layout, generation, step, shard)

    @property
    def num_classes(self) -> int | None:
        """The model's classes (None: unconditional)."""
        return self.model.num_classes

    def random(self, n: int, labels: Any = None, seed: int = 0, first_index: int = 0) -> np.ndarray:
        """RANDOM_API: ``n`` new samples."""
        return self.model.random(n, labels=labels, seed=seed, first_index=first_index)

    def variation(self, samples: np.ndarray, degree: float, labels: Any = None, seed: int = 0,
                  first_index: int = 0) -> np.ndarray:
        """VARIATION_API: one variation of each sample."""
        return self.model.variation(samples, degree, labels=labels, seed=seed, first_index=first_index)

    def call_summary(self) -> dict[str, Any]:
        """The step's API calls so far (requests, results, retries, cost) for its step record; empty in process."""
        return {} if self.ledger is None else self.ledger.summary()
