"""Language-model backends for text: what Aug-PE's prompts (privevo.text.augpe) are sent to.

A backend is a :class:`TextModel`: ``complete(requests)`` returns one completion per request,
each request a user prompt, the most tokens its answer may have and its own seed. The prompt
logic is the same for every backend; only how a completion is made differs.

``hf_causal_lm`` (:class:`HfCausalLM`) runs a local Hugging Face causal LM in process:
``AutoModelForCausalLM.from_pretrained(path)`` offline (a local folder, or a gs:// prefix copied
once per machine), the tokenizer's chat template when it has one, batches of ``model.batch_size``
prompts left-padded, an explicit torch thread count (``text.threads``), and bfloat16 weights
where the hardware runs bfloat16 natively (``model.autocast``: AMX, or AVX512-BF16, since decoding
reads every weight at every token; else float32).

Sampling is per request: each row of a batch draws its tokens by inverse-CDF sampling from its
own generator, seeded by the request's seed, and stops at its own token limit. A request's
draws therefore do not depend on the other requests of its batch. Its logits do, in their last
bits: padding and batch shape change the order of float sums, so the same request sent in
batches of another size or with another thread count gives the same text except where such a
rounding difference moves a draw across a token's boundary (rare, but not never). Within one
process, the same requests give the same texts (the batches are a function of the requests).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

from privevo.errors import UserError
from privevo.pretrained import Pretrained

if TYPE_CHECKING:
    import torch

    from privevo.config import Config
    from privevo.remote_calls import CallLedger


@dataclass(frozen=True)
class Request:
    """One prompt to complete: the user message, the most new tokens of its answer, and its sampling seed."""

    prompt: str
    max_new_tokens: int
    seed: int


class TextModel(abc.ABC):
    """A language model that completes prompts (one chat turn each, where the model has a chat template)."""

    #: The backend's ``model.kind``.
    name: str
    #: The experiment config's fields (dotted keys) that ``from_config`` reads: a process keeps its loaded model
    #: while their values stay the same.
    config_fields: ClassVar[tuple[str, ...]]
    #: The calls' ledger and stored answers of a backend behind an API (None in process): a step records into it
    #: through :class:`privevo.remote_calls.RecordedModel`.
    ledger: CallLedger | None = None

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Config) -> TextModel:
        """The backend ``config.model`` describes, with the generation settings of ``config.text``."""

    @abc.abstractmethod
    def complete(self, requests: Sequence[Request], system: str | None = None) -> list[str]:
        """One completion per request, in order (the answer only, without the prompt), each sampled with the
        request's seed; ``system`` is the system message (None: the model's default)."""



def sampling_seed(seed: int, index: int) -> np.random.Generator:
    """The generator of request ``index`` of a call seeded with ``seed`` (independent of batching)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


class HfCausalLM(Pretrained, TextModel):
    """A local Hugging Face causal LM, in process (``model.kind: hf_causal_lm``)."""

    name = "hf_causal_lm"
    config_fields = ("model", "text")  # text: the sampling settings and the thread count

    def __init__(self, model: Any, tokenizer: Any, source: str, batch_size: int = 16, temperature: float = 1.0,
                 top_p: float = 1.0, threads: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.batch_size = batch_size
        self.temperature = temperature
        self.top_p = top_p
        self.threads = threads
        ends = model.generation_config.eos_token_id
        ends = ends if isinstance(ends, list) else [ends]
        self.eos_ids = sorted({int(e) for e in [*ends, tokenizer.eos_token_id] if e is not None})
        if not self.eos_ids:
            raise UserError(f"the language model at {source} has no end-of-sequence token")

    @classmethod
    def pretrained_options(cls, config: Config) -> dict[str, Any]:
        """``model.sha256``, ``batch_size``, ``device``, ``autocast`` and ``text``'s sampling and threads."""
        from privevo.config import HfCausalLMSection, model_section
        from privevo.text.modality import text_section

        m, section = model_section(config, HfCausalLMSection), text_section(config)
        return {"sha256": m.sha256, "batch_size": m.batch_size, "device": m.device, "autocast": m.autocast,
                "temperature": section.temperature, "top_p": section.top_p, "threads": section.threads}

    @classmethod
    def from_pretrained(cls, path: str, sha256: str | None = None, batch_size: int = 16, device: str = "auto",
                        autocast: str = "auto", temperature: float = 1.0, top_p: float = 1.0,
                        threads: int | None = None) -> Self:
        """Load a ``save_pretrained`` folder (or a gs:// copy of one) offline; bfloat16 weights where ``autocast``
        asks for them (auto: where the hardware runs bfloat16 natively; decoding is bound by reading the weights, so
        CPUs with AVX512-BF16 count), else float32."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from privevo import runtime
        from privevo.image.models.base import first_line, resolve_autocast, resolve_model_dir

        model_dir = resolve_model_dir(path, sha256)
        target = runtime.resolve_device(device)
        dtype = resolve_autocast(autocast, target, torch.float32, bandwidth_bound=True) or torch.float32
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"could not load a causal language model from {path} ({first_line(err)}): expected a "
                            "save_pretrained folder (config.json, weights, tokenizer)") from err
        model = model.to(target).eval()  # type: ignore[arg-type]  # transformers types .to oddly
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(model, tokenizer, path, batch_size, temperature, top_p, threads)

    def chat_text(self, prompt: str, system: str | None) -> str:
        """The model's input for one prompt: the chat template's turn when the tokenizer has one, else the prompt."""
        if not getattr(self.tokenizer, "chat_template", None):
            return prompt
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def complete(self, requests: Sequence[Request], system: str | None = None) -> list[str]:
        """Batches of ``batch_size`` requests, left-padded, each row sampled from its own generator. The batches take
        the requests in order of their token limits (a batch runs until its longest limit, so requests of like limits
        together waste fewer steps); the answers come back in the requests' order."""
        import torch

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        order = sorted(range(len(requests)), key=lambda i: requests[i].max_new_tokens)
        out = [""] * len(requests)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            for row, answer in zip(rows, self._batch([requests[i] for i in rows], system), strict=True):
                out[row] = answer
        return out

    def _batch(self, requests: Sequence[Request], system: str | None) -> list[str]:
        import torch
        from transformers import LogitsProcessorList

        texts = [self.chat_text(r.prompt, system) for r in requests]
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        encoded = {k: v.to(self.model.device) for k, v in encoded.items()}
        sampler = _RowSampler([sampling_seed(r.seed, 0) for r in requests], [r.max_new_tokens for r in requests],
                              self.eos_ids, self.temperature, self.top_p)
        with torch.inference_mode():
            generated = self.model.generate(
                **encoded, do_sample=False, max_new_tokens=max(r.max_new_tokens for r in requests),
                logits_processor=LogitsProcessorList([sampler]), pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.eos_ids, num_beams=1, temperature=None, top_p=None, top_k=None)
        new = generated[:, encoded["input_ids"].shape[1]:]
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]


#: Tokens each row sorts at a sampling step before it falls back to its whole vocabulary (:meth:`_RowSampler._draw`).
TOP_CANDIDATES = 1024


class _RowSampler:
    """A logits processor that picks each row's next token itself (inverse-CDF draw from the row's generator, after
    temperature and top-p; argmax at temperature 0; an end token at the row's limit) and hands generate a one-hot
    score, so that generate's greedy step keeps exactly that token."""

    def __init__(self, generators: list[np.random.Generator], limits: list[int], eos_ids: list[int],
                 temperature: float, top_p: float) -> None:
        self.generators = generators
        self.limits = limits
        self.eos = eos_ids[0]
        self.temperature = temperature
        self.top_p = top_p
        self.step = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        # drawn at every step, so that a row's draws do not depend on when the other rows stop
        u = torch.tensor([generator.random() for generator in self.generators], dtype=torch.float64)
        picks = torch.argmax(scores, dim=-1) if self.temperature == 0 else self._draw(scores.double(), u)
        ended = torch.tensor([self.step >= limit for limit in self.limits])
        picks = torch.where(ended, torch.full_like(picks, self.eos), picks)
        self.step += 1
        chosen = torch.full_like(scores, float("-inf"))
        chosen[torch.arange(len(picks)), picks] = 0.0
        return chosen

    def _draw(self, logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Each row's token at its ``u`` of the tempered top-p distribution's CDF (tokens in descending probability, ties
        by token id): every operation works along a row, so a row's pick does not depend on the other rows' values.

        Sorting the whole vocabulary of every row at every step cost more than the model's step (49,152 tokens); the
        draw reads only the tokens before the top-p cut, so each row sorts its :data:`TOP_CANDIDATES` most probable
        tokens, and only a row whose cut falls past them (a flat distribution) sorts them all. The picks are the full
        sort's (:meth:`_draw_sorted`), bit for bit."""
        import torch

        probabilities = torch.softmax(logits / self.temperature, dim=-1)
        if probabilities.shape[1] <= TOP_CANDIDATES:
            return self._draw_sorted(probabilities, u)
        values, tokens = torch.topk(probabilities, TOP_CANDIDATES, dim=-1)
        by_token = torch.argsort(tokens, dim=-1)  # ties by token id, as the full stable sort orders them
        values, tokens = torch.gather(values, 1, by_token), torch.gather(tokens, 1, by_token)
        ordered, order = torch.sort(values, dim=-1, descending=True, stable=True)
        picks, keep = self._pick(ordered, torch.gather(tokens, 1, order), u)
        # the cut must lie before the smallest value kept, which may tie with tokens topk left out
        inside = torch.gather(ordered, 1, keep)[:, 0] > ordered[:, -1]
        if not bool(inside.all()):
            outside = torch.nonzero(~inside)[:, 0]
            picks[outside] = self._draw_sorted(probabilities[outside], u[outside])
        return picks

    def _draw_sorted(self, probabilities: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The draw over each row's whole vocabulary, sorted (descending probability, ties by token id)."""
        import torch

        ordered, tokens = torch.sort(probabilities, dim=-1, descending=True, stable=True)
        return self._pick(ordered, tokens, u)[0]

    def _pick(self, ordered: torch.Tensor, tokens: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The token at each row's ``u`` of the CDF of its top-p prefix of ``ordered``, and the prefix's last index."""
        import torch

        cumulative = torch.cumsum(ordered, dim=-1)
        top = torch.full((len(ordered), 1), self.top_p, dtype=cumulative.dtype)
        keep = torch.searchsorted(cumulative, top).clamp(max=cumulative.shape[1] - 1)  # the last token kept
        total = torch.gather(cumulative, 1, keep)
        index = torch.searchsorted(cumulative, u[:, None].to(cumulative.dtype) * total, right=True)
        index = torch.minimum(index, keep)
        return torch.gather(tokens, 1, index)[:, 0], keep
