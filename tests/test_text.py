"""Text (Aug-PE): the loaders and the public split, the population file, Aug-PE's prompts, the backend, the sentence
embedding, and the tiny text config end to end with a check that no private text reaches a prompt."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privevo.config import DataConfig, TextConfig, load_config
from privevo.data_quality import DataQuality
from privevo.errors import UserError
from privevo.population import Population
from privevo.text import text_io
from privevo.text.augpe import AugPE, tidy
from privevo.text.backends import HfCausalLM, Request, TextModel
from privevo.text.data import load_texts, split_bucket

TINY = "configs/tiny-text.yaml"
MINILM = Path("models/all-minilm-l6-v2")


def _data(source: str, path: Path | str, **extra: Any) -> DataConfig:
    return DataConfig.model_validate({"source": source, "path": str(path), **extra})


def test_folder_csv_and_jsonl_loaders(tmp_path: Path) -> None:
    for name, text in (("cats/a.txt", "A cat  sleeps\n on the mat."), ("cats/b.txt", "  "), ("dogs/c.txt", "A dog barks."),
                       ("birds/d.txt", "A bird sings."), ("loose.txt", "no class")):
        (tmp_path / "f" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "f" / name).write_text(text)
    quality = DataQuality()
    texts, labels = load_texts(_data("folder", tmp_path / "f"), TextConfig(), ["cats", "dogs"], 0, quality)
    assert texts.dtype == object and list(texts) == ["A cat sleeps on the mat.", "A dog barks."]
    assert labels is not None and list(labels) == [0, 1]
    assert quality.records_read == 5 and sorted(s["reason"] for s in quality.skipped) == [
        "its label is not in class_names", "its label is not in class_names", "no text"]

    (tmp_path / "t.csv").write_text('body,kind\n"Hello, world",dogs\nA cat,cats\n')
    texts, labels = load_texts(_data("csv", tmp_path / "t.csv"), TextConfig(text_column="body", label_column="kind"),
                               ["cats", "dogs"], 0)
    assert list(texts) == ["Hello, world", "A cat"] and labels is not None and list(labels) == [1, 0]
    with pytest.raises(UserError, match="has no column 'text'"):
        load_texts(_data("csv", tmp_path / "t.csv"), TextConfig(), None, 0)

    (tmp_path / "t.jsonl").write_text('{"text": "one two three", "label": "cats"}\nnot json\n{"text": 5}\n'
                                      '{"text": "four five", "label": "dogs"}\n')
    quality = DataQuality()
    texts, labels = load_texts(_data("jsonl", tmp_path / "t.jsonl", classes=["dogs"]), TextConfig(), ["cats", "dogs"],
                               0, quality)
    assert list(texts) == ["four five"] and labels is not None and list(labels) == [1]
    assert [s["reason"] for s in quality.skipped] == ["not readable as a text"] * 2
    texts, labels = load_texts(_data("jsonl", tmp_path / "t.jsonl"), TextConfig(min_words=3), None, 0)
    assert list(texts) == ["one two three"] and labels is None  # no class_names: unlabelled


def test_fortunes_source_and_the_public_split_share_no_record(tmp_path: Path) -> None:
    entries = [f"Entry number {i} of the collection." for i in range(60)]
    (tmp_path / "work").write_text("\n%\n".join(entries[:30]) + "\n%\n")
    (tmp_path / "science").write_text("%\n".join(f"{e}\n\t\t-- Someone\n" for e in entries[30:]))
    section = TextConfig(split_modulus=3)
    names = ["science", "work"]
    train, train_labels = load_texts(_data("fortunes", tmp_path, split="train"), section, names, 0)
    test, _ = load_texts(_data("fortunes", tmp_path, split="test"), section, names, 0)
    every, _ = load_texts(_data("fortunes", tmp_path), section, names, 0)
    assert len(every) == 60 and "Entry number 31 of the collection. -- Someone" in set(every)
    assert not set(train) & set(test) and sorted([*train, *test]) == sorted(every)
    assert all(split_bucket(t, 3) == 0 for t in test) and all(split_bucket(t, 3) != 0 for t in train)
    assert 0 < len(test) < len(train)
    assert train_labels is not None and set(train_labels) == {0, 1}
    with pytest.raises(UserError, match="no fortunes category 'law'"):
        load_texts(_data("fortunes", tmp_path, classes=["law"]), section, ["law"], 0)


def test_population_file_round_trip() -> None:
    texts = text_io.as_texts(["plain", "ünïcödé \"quoted\"\nnew line", "x" * 5000, ""])
    population = Population(texts, np.array([0, 1, -1, 2]), np.array([3, -1, 0, 1]), generation=2)
    data = text_io.encode_population(population)
    assert data == text_io.encode_population(population)  # deterministic bytes
    decoded = text_io.decode_population(data, "p.jsonl")
    assert decoded.samples.dtype == object and list(decoded.samples) == list(texts)
    assert list(decoded.labels) == [0, 1, -1, 2] and list(decoded.parent_ids) == [3, -1, 0, 1]
    assert decoded.generation == 2
    for bad in (b"", b"\xff\xfe", b'{"format": "other"}\n', b'{"format": "privevo-text", "version": 1}\n{"text": 1}\n'):
        with pytest.raises(UserError, match=r"p\.jsonl is not a readable text population"):
            text_io.decode_population(bad, "p.jsonl")


def test_export_formats_hold_texts_and_class_names() -> None:
    texts = text_io.as_texts(['a "b", c', "d"])
    rows = [json.loads(line) for line in text_io.jsonl_bytes(texts, np.array([1, 0]), ["x", "y"]).splitlines()]
    assert rows == [{"text": 'a "b", c', "label": "y"}, {"text": "d", "label": "x"}]
    assert text_io.csv_bytes(texts, np.array([-1, -1]), None) == b'text,label\n"a ""b"", c",\nd,\n'


class _Echo(TextModel):
    """A backend that answers each prompt with a fixed text and keeps every request it was sent."""

    name = "echo"

    def __init__(self) -> None:
        self.requests: list[Request] = []

    @classmethod
    def from_config(cls, config: Any) -> _Echo:
        return cls()

    def complete(self, requests: Any, system: str | None = None) -> list[str]:
        self.requests += list(requests)
        return ["one two three"] * len(requests)


def _augpe(**variation: Any) -> tuple[AugPE, _Echo]:
    section = TextConfig.model_validate({
        "random": {"template": "A {style} on {topic}, {words} words.", "slots": {"style": ["joke"], "words": ["10"]},
                   "per_class": {"a": {"topic": ["cats"]}, "b": {"topic": ["code", "bugs"]}}},
        "variation": variation or {"kinds": {"continuation": 1.0}}})
    echo = _Echo()
    return AugPE(echo, section, ["a", "b"]), echo


def test_augpe_requests_are_per_sample_and_continuation_keeps_a_prefix() -> None:
    model, echo = _augpe()
    whole = [model.random_request(label, 5, i)[0] for i, label in enumerate([0, 1, 1, 0])]
    assert [model.random_request(label, 5, 2 + i)[0] for i, label in enumerate([1, 0])] == whole[2:]  # a shard's share
    assert whole[0].prompt == "A joke on cats, 10 words." and whole[1].prompt in {"A joke on code, 10 words.",
                                                                                   "A joke on bugs, 10 words."}
    assert all(r.max_new_tokens == 24 for r in whole)  # the {words} slot caps the tokens: 1.6 x 10 + 8
    parent = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10"
    children = model.variation(text_io.as_texts([parent]), 0.3, labels=np.array([0]), seed=1)
    assert echo.requests[-1].prompt.endswith("\nw1 w2 w3 w4 w5 w6 w7")  # 1 - 0.3 of the words kept
    assert children[0] == "w1 w2 w3 w4 w5 w6 w7 one two three"
    model, echo = _augpe(kinds={"fill_blanks": 1.0})
    model.variation(text_io.as_texts([parent]), 1.0, seed=1)
    assert echo.requests[-1].prompt.endswith("\n" + " ".join(["_"] * 10))


def test_tidy_drops_a_preamble_and_cuts_long_answers_at_a_sentence_end() -> None:
    assert tidy('Sure, here is a joke:\n "Bugs  bite."', 10) == '"Bugs bite."'
    assert tidy("Here is my answer to that", 10) == "Here is my answer to that"  # no colon: no preamble
    long = "One two three four five six. Seven eight nine ten eleven twelve thirteen fourteen"
    assert tidy(long, 8) == "One two three four five six."  # 11 words at most, back to the sentence end
    assert tidy(long, 3) == "One two three four"  # no sentence end in the second half of the cut
    assert tidy(long, None) == long


def test_hf_batches_group_requests_of_like_token_limits_and_answer_in_order() -> None:
    model = object.__new__(HfCausalLM)  # only the batching, no weights
    model.threads, model.batch_size = None, 2
    batches: list[list[int]] = []

    def batch(requests: Sequence[Request], system: str | None) -> list[str]:
        batches.append([r.max_new_tokens for r in requests])
        return [r.prompt for r in requests]

    model._batch = batch  # type: ignore[method-assign]
    requests = [Request(f"p{i}", limit, i) for i, limit in enumerate([40, 8, 40, 8, 20])]
    assert model.complete(requests) == ["p0", "p1", "p2", "p3", "p4"]
    assert batches == [[8, 8], [20, 40], [40]]


def test_augpe_refuses_templates_without_public_values() -> None:
    with pytest.raises(UserError, match=r"slot \{topic\} has no values"):
        AugPE(_Echo(), TextConfig.model_validate({"random": {"template": "About {topic}."}}), None)
    with pytest.raises(UserError, match=r"uses \{label\} but the run is not conditional"):
        AugPE(_Echo(), TextConfig.model_validate({"random": {"template": "About {label}."}}), None)
    with pytest.raises(UserError, match=r"text\.variation\.paraphrase must use \{text\}"):
        AugPE(_Echo(), TextConfig.model_validate({"random": {"template": "Hi."},
                                                  "variation": {"paraphrase": "Rewrite {private}"}}), None)


def test_hf_backend_repeats_itself_with_a_chat_template() -> None:
    from privevo.text.backends import HfCausalLM

    model = HfCausalLM.from_pretrained("models/tiny-llama", batch_size=2, threads=1)
    requests = [Request(f"Write about {i}.", limit, seed) for i, (limit, seed) in enumerate([(3, 1), (9, 2), (5, 3)])]
    first = model.complete(requests)
    assert len(first) == 3 and first == model.complete(requests)  # same requests, same batches, same process
    assert model.chat_text("hi", None) == "<|user|>hi<|end|><|assistant|>"


def test_hf_backend_decodes_in_bfloat16_where_the_cpu_has_avx512_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """autocast auto: bfloat16 weights on a CPU with AVX512-BF16 (decoding reads every weight at every token),
    float32 on one with AVX2 only; off is float32 everywhere."""
    import torch

    from privevo import runtime
    from privevo.text.backends import HfCausalLM

    def weights(flags: set[str], autocast: str) -> torch.dtype:
        monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(flags))
        model = HfCausalLM.from_pretrained("models/tiny-llama", autocast=autocast, device="cpu", threads=1)
        assert len(model.complete([Request("Write about cats.", 4, 1)])) == 1
        return next(model.model.parameters()).dtype

    assert weights({"avx2", "avx512f", "avx512_bf16"}, "auto") == torch.bfloat16
    assert weights({"avx2", "fma"}, "auto") == torch.float32
    assert weights({"avx2", "avx512f", "avx512_bf16"}, "off") == torch.float32


def test_each_row_samples_from_its_own_generator_and_stops_at_its_limit() -> None:
    """A row's tokens depend on its seed and its logits only, not on the rows beside it; at its limit it ends."""
    import torch

    from privevo.text.backends import _RowSampler, sampling_seed

    scores = torch.from_numpy(np.random.default_rng(0).normal(size=(6, 3, 50)).astype(np.float32))

    def picks(rows: list[int], seeds: list[int], limits: list[int]) -> list[list[int]]:
        sampler = _RowSampler([sampling_seed(s, 0) for s in seeds], limits, [7], temperature=0.8, top_p=0.9)
        steps = [sampler(torch.zeros(len(rows), 1, dtype=torch.long), scores[step, rows]) for step in range(6)]
        return [[int(step[r].argmax()) for step in steps] for r in range(len(rows))]

    together = picks([0, 1, 2], [11, 12, 13], [6, 2, 6])
    assert picks([1], [12], [6])[0][:2] == together[1][:2] and together[1][2:] == [7] * 4
    assert picks([2, 0], [13, 11], [6, 6]) == [together[2], together[0]]
    assert len(set(map(tuple, together))) == 3


def test_the_draw_over_the_most_probable_tokens_picks_what_the_full_sort_picks() -> None:
    """The sampler sorts each row's most probable tokens only, and the whole vocabulary where the top-p cut falls
    past them or on a tie with the tokens left out: its picks are the full sort's, bit for bit, on peaked, flat,
    tied and mixed rows."""
    import torch

    from privevo.text.backends import TOP_CANDIDATES, _RowSampler

    rng = np.random.default_rng(0)
    vocab = 4 * TOP_CANDIDATES
    peaked = rng.normal(size=(8, vocab)) * 4
    flat = rng.normal(size=(4, vocab)) * 0.01  # the cut falls past the top candidates
    tied = np.round(rng.normal(size=(4, vocab)) * 2) / 2  # many equal values, at the boundary too
    uniform = np.zeros((2, vocab))
    # ten tokens with 94% of the mass beside a block of equal tokens larger than the candidates: at top-p 0.95 the
    # cut falls on the block inside the candidates, whose tied tokens topk chose in no particular order
    boundary = np.full((2, vocab), -50.0)
    boundary[:, :10], boundary[:, 10:4000] = np.log(0.94 * 3990 / 0.6), 0.0
    logits = torch.from_numpy(np.concatenate([peaked, flat, tied, uniform, boundary]))
    for temperature, top_p in [(1.0, 0.95), (0.7, 0.9), (1.3, 0.5), (1.0, 1.0)]:
        sampler = _RowSampler([], [], [0], temperature, top_p)
        probabilities = torch.softmax(logits / temperature, dim=-1)
        for draw in range(40):
            u = torch.from_numpy(rng.random(len(logits)) if draw % 2 else 1 - 0.02 * rng.random(len(logits)))
            assert torch.equal(sampler._draw(logits, u), sampler._draw_sorted(probabilities, u))


@pytest.mark.model_outputs
def test_sentence_embedding_is_unit_length_and_close_for_close_texts() -> None:
    from privevo.text.embedding import SentenceEmbedding

    embedding = SentenceEmbedding.from_pretrained(str(MINILM))
    vectors = embedding.embed(text_io.as_texts(["A cat sat on the mat.", "A kitten sits on a rug.",
                                                "Tax rates rose again.", ""]), batch_size=3)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.5 > similarity[0, 2] + 0.3
    # the batches take the texts by length; each row still belongs to its own text (alone: no padding, so only close)
    for row, text in enumerate(["A cat sat on the mat.", "Tax rates rose again."]):
        alone = embedding.embed(text_io.as_texts([text]), batch_size=1)[0]
        assert np.allclose(alone, vectors[2 * row], atol=1e-4)


def _template_regex(template: str) -> re.Pattern[str]:
    """A template as a regular expression: each {field} a named group."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name:
            parts.append(f"(?P<{name}>.*?)" if f"(?P<{name}>" not in "".join(parts) else f"(?P={name})")
    return re.compile("".join(parts), re.DOTALL)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[Request]]:
    """The tiny text config run in process, with every request the language model was sent."""
    import privevo
    from privevo.text.backends import HfCausalLM

    sent: list[Request] = []
    original = HfCausalLM.complete

    def recording(self: HfCausalLM, requests: Any, system: str | None = None) -> list[str]:
        sent.extend(requests)
        return original(self, requests, system)

    root = tmp_path_factory.mktemp("tiny-text")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HfCausalLM, "complete", recording)
        run = privevo.run(TINY, run_root=str(root / "runs"), private_root=str(root / "private"))
    return run, sent


@pytest.mark.slow
def test_tiny_text_config_runs_end_to_end(tiny_run: tuple[Any, list[Request]], tmp_path: Path) -> None:
    run, _ = tiny_run
    config = load_config(TINY)
    metrics = json.loads((Path(run.path) / "metrics.json").read_text())
    assert metrics["modality"] == "text" and metrics["fd_extractor"] == "minilm"
    assert len(metrics["generations"]) == config.population.generations + 1
    for row in metrics["generations"]:
        assert row["fd_minilm"] > 0 and 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
        assert row["words_mean"] is not None and row["reference_words_mean"] > 5
    downstream = metrics["final"]["downstream"]
    assert 0 <= downstream["synthetic"] <= 1 and downstream["train_texts"] == config.population.size
    for generation in range(config.population.generations + 1):
        population = run.population(generation=generation)
        assert population.samples.dtype == object and len(population) == config.population.size
        assert sorted(set(population.labels.tolist())) == [0, 1]
    assert (Path(run.path) / "report" / "index.html").is_file()
    for export_format, name in (("jsonl", "synthetic.jsonl"), ("csv", "synthetic.csv")):
        folder = run.export(str(tmp_path / export_format), format=export_format)
        assert (Path(folder) / name).stat().st_size > 0
        assert json.loads((Path(folder) / "privacy.json").read_text())["released"].startswith("8 synthetic texts")


@pytest.mark.slow
def test_prompts_hold_only_public_template_values_and_synthetic_texts(tiny_run: tuple[Any, list[Request]]) -> None:
    """Every prompt the model was sent is the random template with public slot values, or a variation template
    around (a prefix or a masked copy of) a synthetic text of the run; no private text is in any prompt."""
    run, sent = tiny_run
    config = load_config(TINY)
    assert config.text is not None
    random, variation = config.text.random, config.text.variation
    public = {slot: set(values) for slot, values in random.slots.items()}
    for values in random.per_class.values():
        for slot, options in values.items():
            public.setdefault(slot, set()).update(options)
    synthetic = [str(t) for g in range(config.population.generations) for t in run.population(generation=g).samples]
    private, _ = load_texts(config.private, config.text, config.class_names, 0)
    assert len(sent) == config.population.size * (config.population.generations + 1)

    def from_synthetic(text: str) -> bool:
        words = text.split()
        return any(len(words) <= len(s.split()) and all(w in ("_", v) for w, v in zip(words, s.split(), strict=False))
                   and (len(words) == len(s.split()) or "_" not in words) for s in synthetic)

    kinds = {kind: _template_regex(getattr(variation, kind)) for kind in variation.kinds}
    for request in sent:
        assert not any(p in request.prompt for p in private)
        match = _template_regex(random.template).fullmatch(request.prompt)
        if match:
            assert all(value in public[slot] for slot, value in match.groupdict().items())
            continue
        found = [m for m in (pattern.fullmatch(request.prompt) for pattern in kinds.values()) if m]
        assert found, request.prompt
        fields = found[0].groupdict()
        assert fields.get("tone", variation.tones[0]) in variation.tones and fields["words"].isdigit()
        assert from_synthetic(fields["text"]), request.prompt
