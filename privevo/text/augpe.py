"""Aug-PE's two calls on any text backend: RANDOM_API and VARIATION_API as prompts.

RANDOM_API fills ``text.random.template``: each ``{slot}`` takes a value drawn uniformly from
the public list ``text.random.slots[slot]`` (for a class in a conditional run, from
``text.random.per_class[class][slot]`` where given), and ``{label}`` is the class's name. A slot
named ``words`` whose values are numbers also caps the answer's tokens.

VARIATION_API rewrites each parent with one of three kinds, drawn by ``text.variation.kinds``'s
weights, asking for a target length of the parent's word count times U(1 - noise, 1 + noise)
(Aug-PE's target word counts, ``text.variation.length_noise``). The generation's degree d
plays the part of the image SDEdit strength:

- ``paraphrase``: rewrite the parent in a tone drawn from ``text.variation.tones`` (d unused);
- ``continuation`` (mask and continue): keep the parent's first round((1 - d) x words) words and
  let the model write the rest; the child is that prefix followed by the model's words;
- ``fill_blanks``: replace each word by ``_`` with probability d and let the model fill them in.

Length control: small chat models overshoot the length they are asked for, so an answer longer
than ``LENGTH_SLACK`` x its target words (the ``{words}`` slot of a random prompt, the target of
a variation) is cut there, back to its last sentence end where that keeps at least half of it.
A chat preamble ("Sure, here is a joke:") before the answer is dropped. Both act on synthetic
texts only.

A prompt holds only the config's public template values and synthetic samples (the parents are
the previous generation's synthetic texts): nothing private reaches the model. Each sample's
choices and its sampling seed come from its own generator, seeded by (seed, first_index + i,
API), so shards of one call make the same requests as the whole call.
"""

from __future__ import annotations

import math
import re
import string
from typing import TYPE_CHECKING

import numpy as np

from privevo.errors import UserError
from privevo.text.backends import Request, TextModel
from privevo.text.data import clean
from privevo.text.text_io import as_texts

if TYPE_CHECKING:
    from privevo.config import TextConfig
    from privevo.remote_calls import CallLedger

Labels = np.ndarray | int | None

_RANDOM, _VARIATION = 0, 1  # the API's tag in each sample's seed
TOKENS_PER_WORD = 1.6
VARIATION_FIELDS = {"text", "words", "tone", "label"}
LENGTH_SLACK = 1.3
_PREAMBLE = re.compile(r"^(sure|here|certainly|okay|ok|of course)\b[^:\n]{0,80}:\s*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?][\"')]*$")


def tidy(answer: str, target_words: int | None) -> str:
    """A model's answer without a chat preamble, whitespace cleaned, and cut to ``LENGTH_SLACK`` x
    ``target_words`` words (back to a sentence end where one lies in the second half of the cut)."""
    words = _PREAMBLE.sub("", clean(answer)).split()
    if target_words is None or len(words) <= (limit := max(1, math.ceil(LENGTH_SLACK * target_words))):
        return " ".join(words)
    words = words[:limit]
    ends = [i for i in range(limit) if 2 * (i + 1) >= limit and _SENTENCE_END.search(words[i])]
    return " ".join(words[:ends[-1] + 1] if ends else words)


def fields(template: str) -> set[str]:
    """The ``{field}`` names a format template uses."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as error:
        raise UserError(f"prompt template {template!r} is not a valid format string ({error})") from None


def sample_rng(seed: int, index: int, api: int) -> np.random.Generator:
    """The generator of sample ``index`` of an API call seeded with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), api]))


class AugPE:
    """RANDOM_API and VARIATION_API for texts, as prompts to a :class:`TextModel` (the shared model interface)."""

    def __init__(self, backend: TextModel, section: TextConfig, class_names: list[str] | None) -> None:
        self.backend = backend
        self.section = section
        self.class_names = class_names
        self.num_classes: int | None = None if class_names is None else len(class_names)
        self.name = backend.name
        self._check_templates()

    def _check_templates(self) -> None:
        """Every field of every template has public values (a one-line UserError names the first that has none)."""
        random = self.section.random
        unknown_classes = [c for c in random.per_class if c not in (self.class_names or [])]
        if unknown_classes:
            raise UserError(f"text.random.per_class names {unknown_classes[0]!r}, which is not in class_names")
        for name in sorted(fields(random.template)):
            if name == "label":
                if self.class_names is None:
                    raise UserError("text.random.template uses {label} but the run is not conditional")
                continue
            missing = [c for c in (self.class_names or [""]) if name not in random.per_class.get(c, {})]
            if name not in random.slots and missing:
                raise UserError(f"text.random.template's slot {{{name}}} has no values: add text.random.slots.{name}")
        for name, values in [*random.slots.items(), *((k, v) for c in random.per_class.values() for k, v in c.items())]:
            if not values:
                raise UserError(f"text.random slot {name!r} has an empty list of values")
        variation = self.section.variation
        if not variation.kinds or sum(variation.kinds.values()) <= 0 or min(variation.kinds.values()) < 0:
            raise UserError("text.variation.kinds needs non-negative weights with a positive sum")
        for kind in variation.kinds:
            used = fields(getattr(variation, kind))
            if "text" not in used or used - VARIATION_FIELDS:
                raise UserError(f"text.variation.{kind} must use {{text}} and only fields of "
                                f"{sorted(VARIATION_FIELDS)}")

    # ------------------------------------------------------------------ the shared model interface

    @property
    def ledger(self) -> CallLedger | None:
        """The backend's call ledger (None in process), which a step records into."""
        return self.backend.ledger

    def _class_name(self, label: int) -> str | None:
        if label < 0 or self.class_names is None:
            return None
        if label >= len(self.class_names):
            raise UserError(f"labels must lie in [0, {len(self.class_names)}) for class_names")
        return self.class_names[label]

    def _tokens(self, target_words: int) -> int:
        """The token cap of an answer of about ``target_words`` words."""
        return max(1, min(self.section.max_new_tokens, math.ceil(TOKENS_PER_WORD * target_words) + 8))

    def random_request(self, label: int, seed: int, index: int) -> tuple[Request, int | None]:
        """The RANDOM_API request of sample ``index`` (the template with public slot values) and its target words
        (the ``{words}`` slot's number; None without one)."""
        rng = sample_rng(seed, index, _RANDOM)
        name = self._class_name(label)
        random = self.section.random
        values: dict[str, str] = {"label": name or ""}
        for slot in sorted(fields(random.template) - {"label"}):
            options = random.per_class.get(name or "", {}).get(slot) or random.slots[slot]
            values[slot] = options[int(rng.integers(len(options)))]
        target = int(values["words"]) if values.get("words", "").isdigit() else None
        cap = self.section.max_new_tokens if target is None else self._tokens(target)
        return Request(random.template.format(**values), cap, int(rng.integers(2**63))), target

    def variation_request(self, parent: str, degree: float, label: int, seed: int,
                          index: int) -> tuple[Request, str, int]:
        """The VARIATION_API request of sample ``index``, the prefix its answer follows ("" but for continuation) and
        the child's target words."""
        rng = sample_rng(seed, index, _VARIATION)
        variation = self.section.variation
        kinds = sorted(variation.kinds)
        weights = np.array([variation.kinds[k] for k in kinds], dtype=np.float64)
        kind = kinds[int(np.searchsorted(np.cumsum(weights / weights.sum()), rng.random(), side="right").clip(
            0, len(kinds) - 1))]
        parts = parent.split()
        noise = variation.length_noise
        target = max(1, round(len(parts) * rng.uniform(1 - noise, 1 + noise)))
        tone = variation.tones[int(rng.integers(len(variation.tones)))]
        prefix, text, new_words = "", parent, target
        if kind == "continuation":
            kept = round((1 - degree) * len(parts))
            prefix = text = " ".join(parts[:kept])
            new_words = max(1, target - kept)
        elif kind == "fill_blanks":
            masked = rng.random(len(parts)) < degree
            text = " ".join("_" if m else w for w, m in zip(parts, masked, strict=True))
        prompt = getattr(variation, kind).format(text=text, words=target, tone=tone, label=self._class_name(label) or "")
        return Request(prompt, self._tokens(new_words), int(rng.integers(2**63))), prefix, target

    def random(self, n: int, labels: Labels = None, seed: int = 0, first_index: int = 0) -> np.ndarray:
        """``n`` new texts (RANDOM_API); ``labels`` >= 0 pick each sample's class prompts."""
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise UserError(f"number of samples must be a non-negative integer, got {n!r}")
        wanted = np.broadcast_to(np.asarray(-1 if labels is None else labels, dtype=np.int64), (int(n),))
        made = [self.random_request(int(wanted[i]), seed, first_index + i) for i in range(int(n))]
        answers = self.backend.complete([request for request, _ in made], self.section.random.system)
        return as_texts([tidy(answer, target) for (_, target), answer in zip(made, answers, strict=True)])

    def variation(self, samples: np.ndarray, degree: float, labels: Labels = None, seed: int = 0,
                  first_index: int = 0) -> np.ndarray:
        """One variation of each text (VARIATION_API) at ``degree`` in [0, 1]."""
        if not 0 <= degree <= 1:
            raise UserError(f"the variation degree must lie in [0, 1], got {degree}")
        wanted = np.broadcast_to(np.asarray(-1 if labels is None else labels, dtype=np.int64), (len(samples),))
        made = [self.variation_request(str(samples[i]), degree, int(wanted[i]), seed, first_index + i)
                for i in range(len(samples))]
        answers = self.backend.complete([request for request, _, _ in made], self.section.random.system)
        return as_texts([tidy(f"{prefix} {tidy(answer, None)}", target)
                         for (_, prefix, target), answer in zip(made, answers, strict=True)])
