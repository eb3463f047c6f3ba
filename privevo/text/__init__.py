"""Text: Private Evolution on short texts with a language model behind the two calls (Aug-PE).

Where each part lives: the loaders (a folder of ``.txt`` files per class, CSV, JSON Lines, the
``fortunes`` collection) and the public split rule in :mod:`privevo.text.data`; the language-model
backends (:class:`~privevo.text.backends.TextModel`, ``hf_causal_lm``) in
:mod:`privevo.text.backends`; Aug-PE's random and variation prompts above any backend in
:mod:`privevo.text.augpe`; the vote's sentence embedding in :mod:`privevo.text.embedding`; the
metrics and report views in :mod:`privevo.text.metrics`; the population file and the export's
JSON Lines and CSV in :mod:`privevo.text.text_io`; and what the shared steps call in
:mod:`privevo.text.modality` (:class:`TextModality`). Importing this package imports none of
them (the config reads :data:`TEXT_MODELS` from here).
"""

from __future__ import annotations

from typing import Any

#: model.kind values of modality text -> "module:class" of the backend (a :class:`privevo.text.backends.TextModel`).
TEXT_MODELS: dict[str, str] = {
    "hf_causal_lm": "privevo.text.backends:HfCausalLM",
    "openai_compatible": "privevo.text.openai_compatible:OpenAICompatible",
}

#: embedding.name values of modality text -> "module:class": the sentence encoder at ``text.embedding_path``.
TEXT_EMBEDDINGS: dict[str, str] = {
    "sentence_transformer": "privevo.text.embedding:SentenceEmbedding",
}


def __getattr__(name: str) -> Any:
    """``TextModality``, imported on first use (the registry names it ``privevo.text:TextModality``)."""
    if name == "TextModality":
        from privevo.text.modality import TextModality

        return TextModality
    raise AttributeError(name)
