"""Experiment configuration: one schema, as data, validated with one-line errors.

A config is a YAML file; any key can be overridden with ``--set dotted.key=value``
(the value is parsed as YAML, so ``--set privacy.k=2`` is an int and
``--set population.degrees=[0.5,0.4]`` a list). Unknown keys are errors.

The ``model`` section is one class per backend kind (:data:`ModelConfig`, chosen by ``model.kind``):
an option of another kind is refused, and an override that changes ``model.kind`` drops the
file's options of the old kind (:func:`with_overrides`).
"""

from __future__ import annotations

import copy
import logging
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from privevo.errors import UserError
from privevo.image.embeddings import EMBEDDINGS
from privevo.image.models import MODEL_BACKENDS
from privevo.modalities import MODALITIES
from privevo.model_store import check_digest, is_remote
from privevo.registry import check_registered
from privevo.tabular import TABULAR_EMBEDDINGS, TABULAR_MODELS
from privevo.tabular.schema import ColumnSpec, CsvOptions
from privevo.text import TEXT_EMBEDDINGS, TEXT_MODELS

logger = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Where an image set comes from (``folder``, ``npz`` or ``fashion_mnist``)."""

    source: Literal["folder", "npz", "fashion_mnist", "csv", "parquet", "jsonl", "fortunes"]
    path: str
    csv: CsvOptions | None = Field(default=None, description="source csv: how the file is read")
    split: Literal["train", "test"] | None = None
    classes: list[str] | None = Field(default=None, description="keep only these classes")
    limit: int | None = Field(default=None, ge=1, description="seeded random subset of this size")
    rows: tuple[int, int] | None = Field(default=None, description="keep rows [start, stop) after the class filter")


class RemoteConfig(_Strict):
    """A foundation model behind an API: a KServe v2 / Open Inference Protocol server (``model.kind: remote``,
    images) or an OpenAI-compatible server (``model.kind: openai_compatible``, texts).

    The token is never part of a config: it is read from the environment variable ``token_env``
    or the file ``token_file`` (a mounted secret), and never logged or written.
    """

    url: str = Field(description="base URL of the server, e.g. http://127.0.0.1:8080")
    model_name: str | None = Field(default=None, description="optional when the server serves one model")
    timeout_s: float = Field(default=120.0, gt=0, description="per request")
    max_concurrency: int = Field(default=2, ge=1, description="requests in flight at once")
    requests_per_minute: float | None = Field(default=None, gt=0, description="client-side rate limit")
    max_retries: int = Field(default=5, ge=0, description="retries of one request on 429/5xx/timeouts/bad bodies")
    backoff_s: float = Field(default=0.5, ge=0, description="first retry's backoff; doubles per retry, with jitter")
    max_backoff_s: float = Field(default=30.0, ge=0)
    token_env: str | None = Field(default=None, description="environment variable holding a bearer token")
    token_file: str | None = Field(default=None, description="file (a mounted secret) holding a bearer token")
    price_per_image: float = Field(default=0.0, ge=0, description="for the call ledger's estimated cost")
    binary: bool = Field(default=True, description="binary tensor extension (False: JSON data lists)")
    api: Literal["chat", "completions"] = Field(
        default="chat", description="openai_compatible: /v1/chat/completions or /v1/completions (no chat template)")
    tokens_per_minute: float | None = Field(default=None, gt=0, description="openai_compatible: client-side limit "
                                                                            "on prompt plus completion tokens")
    price_per_input_token: float = Field(default=0.0, ge=0, description="openai_compatible: per prompt token")
    price_per_output_token: float = Field(default=0.0, ge=0, description="openai_compatible: per completion token")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        parts = urllib.parse.urlsplit(url)
        if parts.username or parts.password or parts.query:  # run.json and the compiled pipeline are released
            raise ValueError("must not hold credentials or a query: put the token in token_env or token_file")
        return url.rstrip("/")


#: model.kind values of a model behind an API (model.remote): KServe v2 images, OpenAI-compatible texts.
REMOTE_KINDS = ("remote", "openai_compatible")
#: Per modality: its model.kind values and its embedding.name values (name -> "module:class"), plain strings, so
#: checking a config imports no data-type code; the first of each is a non-image modality's default.
MODEL_KINDS: dict[str, dict[str, str]] = {"image": MODEL_BACKENDS, "tabular": TABULAR_MODELS, "text": TEXT_MODELS}
EMBEDDING_NAMES: dict[str, dict[str, str]] = {"image": EMBEDDINGS, "tabular": TABULAR_EMBEDDINGS,
                                              "text": TEXT_EMBEDDINGS}


def _validated_modality(info: ValidationInfo) -> str:
    """The modality of the config a section belongs to: parse_config passes it as the validation context (image
    when a section is validated alone)."""
    return str((info.context or {}).get("modality", "image"))


def _check_modality_name(registries: dict[str, dict[str, str]], name: str, what: str, modality: str) -> str:
    """``name`` if ``modality`` registers it under ``what`` (an unknown modality is the modality's error)."""
    if modality not in registries:
        return name
    return check_registered(registries[modality], name, what if modality == "image" else f"{modality} {what}")
#: model.kind and embedding.name of the benchmarks' stand-ins (privevo.image.models.null, privevo.image.embeddings.null).
NULL_MODEL = "null"


class ModelSection(_Strict):
    """What every backend kind's ``model`` section holds; each kind's own options are on its subclass."""

    kind: str = Field(description="a key of the modality's MODEL_KINDS (image: privevo.image.models.MODEL_BACKENDS)")
    batch_size: int = Field(default=64, ge=1, description="samples per model call (and per lookahead batch)")
    allow_null: bool = Field(default=False, description="allow the null stand-ins (model kind null, embedding null: "
                                                        "random samples, for benchmarks and tests)")

    @field_validator("kind")
    @classmethod
    def _registered_kind(cls, kind: str, info: ValidationInfo) -> str:
        return _check_modality_name(MODEL_KINDS, kind, "foundation model kind", _validated_modality(info))

    @property
    def weights_path(self) -> str | None:
        """``model.path`` of a kind that loads a model folder, None for the others."""
        return None

    @property
    def api_server(self) -> RemoteConfig | None:
        """``model.remote`` of a kind behind an API, None for the others."""
        return None


class LocalModelSection(ModelSection):
    """A model loaded in process from a folder: its path, digest, device and precision."""

    path: str | None = Field(default=None, description="weights folder, gs:// prefix (copied once per machine) or hub "
                                                       "name")
    sha256: str | None = Field(
        default=None, description="the folder's digest (python -m privevo.model_store hash PATH), checked before loading; "
                                  "required for a gs:// path",
    )
    device: str = "auto"
    autocast: Literal["auto", "off", "bfloat16", "float16"] = Field(
        default="auto",
        description="mixed-precision forward pass; auto = bfloat16 where the hardware has it natively (CUDA, AMX; "
                    "for a language model AVX512-BF16 too), else off",
    )

    @field_validator("autocast", mode="before")
    @classmethod
    def _yaml_off(cls, autocast: Any) -> Any:
        return "off" if autocast is False else autocast  # YAML reads an unquoted `off` as false

    @field_validator("sha256")
    @classmethod
    def _digest(cls, sha256: str | None) -> str | None:
        return None if sha256 is None else check_digest(sha256)

    @model_validator(mode="after")
    def _has_path(self) -> LocalModelSection:
        if self.path is None:
            raise ValueError(f"kind {self.kind} needs model.path (the model's folder or hub name)")
        if is_remote(self.path) and self.sha256 is None:
            raise ValueError(f"model.path {self.path} is on Cloud Storage, so it needs model.sha256 "
                             f"(python -m privevo.model_store hash {self.path} prints it)")
        return self

    @property
    def weights_path(self) -> str | None:
        """``model.path``."""
        return self.path


class DiffusionSection(LocalModelSection):
    """A diffusion model: how many sampler steps a full denoise takes."""

    num_inference_steps: int = Field(
        default=25, ge=1, description="sampler steps of a full denoise (the random API); a variation at degree d runs "
                                      "int(d * num_inference_steps) of them (SDEdit)",
    )


class DDPMUNetSection(DiffusionSection):
    """``model.kind: ddpm_unet`` (privevo.image.models.ddpm_unet)."""

    kind: Literal["ddpm_unet"] = "ddpm_unet"
    scheduler: Literal["ddim", "dpm_solver", "unipc"] = Field(
        default="ddim", description="the sampler: ddim (eta 0), dpm_solver (DPM-Solver++ 2M) or unipc; all "
                                    "deterministic given each sample's initial noise",
    )


class StableDiffusionSection(DiffusionSection):
    """``model.kind: stable_diffusion`` (privevo.image.models.stable_diffusion)."""

    kind: Literal["stable_diffusion"] = "stable_diffusion"
    prompts: list[str] | None = Field(default=None, description="one per class; none: the experiment's name")
    guidance_scale: float = 7.5
    disable_safety_checker: bool = True


class HfCausalLMSection(LocalModelSection):
    """``model.kind: hf_causal_lm`` (privevo.text.backends); its sampling settings are the ``text`` section's."""

    kind: Literal["hf_causal_lm"] = "hf_causal_lm"


class ApiModelSection(ModelSection):
    """A model behind an API: the server."""

    remote: RemoteConfig | None = Field(default=None, description="the server")

    @model_validator(mode="after")
    def _has_remote(self) -> ApiModelSection:
        if self.remote is None:
            raise ValueError(f"kind {self.kind} needs model.remote with at least url (the server's base URL)")
        return self

    @property
    def api_server(self) -> RemoteConfig | None:
        """``model.remote``."""
        return self.remote


class RemoteSection(ApiModelSection):
    """``model.kind: remote``: images from a KServe v2 / Open Inference Protocol server (privevo.image.models.remote)."""

    kind: Literal["remote"] = "remote"


class OpenAICompatibleSection(ApiModelSection):
    """``model.kind: openai_compatible``: texts from an OpenAI-compatible server (privevo.text.openai_compatible)."""

    kind: Literal["openai_compatible"] = "openai_compatible"


class NullSection(ModelSection):
    """``model.kind: null``: random images, for benchmarks and tests (privevo.image.models.null)."""

    kind: Literal["null"] = "null"

    @model_validator(mode="after")
    def _allowed(self) -> NullSection:
        if not self.allow_null:
            raise ValueError("kind null returns random images, for benchmarks and tests: set model.allow_null: true "
                             "to run it")
        return self


class TabularModelSection(ModelSection):
    """``model.kind: tabular``: Tab-PE's APIs on the public schema (privevo.tabular.model); its settings are the
    ``tabular`` section's."""

    kind: Literal["tabular"] = "tabular"


#: The ``model`` section: one class per backend kind, chosen by ``kind``.
ModelConfig = Annotated[
    DDPMUNetSection | StableDiffusionSection | HfCausalLMSection | RemoteSection | OpenAICompatibleSection
    | NullSection | TabularModelSection,
    Field(discriminator="kind"),
]
#: model.kind -> its section's class.
MODEL_SECTIONS: dict[str, type[ModelSection]] = {
    section.model_fields["kind"].default: section for section in get_args(get_args(ModelConfig)[0])
}
#: Every key some kind's model section takes.
MODEL_OPTIONS: frozenset[str] = frozenset(key for section in MODEL_SECTIONS.values() for key in section.model_fields)

_Section = TypeVar("_Section", bound=ModelSection)


def model_section(config: Config, section: type[_Section]) -> _Section:
    """``config.model`` as ``section``, the class of the kind a backend was chosen by (a backend reads only its own
    options)."""
    if not isinstance(config.model, section):
        raise TypeError(f"model.kind {config.model.kind} has no {section.__name__}")
    return config.model


def model_options(kind: str) -> frozenset[str]:
    """The keys kind ``kind``'s model section takes (empty for an unknown kind)."""
    section = MODEL_SECTIONS.get(kind)
    return frozenset(section.model_fields) if section is not None else frozenset()


class EmbeddingConfig(_Strict):
    """The feature space of the vote."""

    name: str = Field(default="effnet_lite0", description="a key of the modality's EMBEDDING_NAMES (image: "
                                                        "privevo.image.embeddings.EMBEDDINGS)")
    input_size: int = Field(default=32, ge=32, description="EfficientNet-Lite0 needs at least 32 px")
    batch_size: int = Field(default=256, ge=1)
    device: str = "auto"
    dim: int = Field(default=2048, ge=1, description="name null: the dimension of its seeded vectors")

    @field_validator("name", mode="before")
    @classmethod
    def _yaml_null_name(cls, name: Any) -> Any:
        return NULL_MODEL if name is None else name  # YAML reads an unquoted `null` as None

    @field_validator("name")
    @classmethod
    def _registered_name(cls, name: str, info: ValidationInfo) -> str:
        return _check_modality_name(EMBEDDING_NAMES, name, "embedding", _validated_modality(info))


@dataclass(frozen=True)
class Phase:
    """One generation's population rule: how its vote selects ``size`` parents, and what population they make."""

    selection: Literal["sample", "rank", "top", "family"]
    threshold: float
    variations_per_parent: int
    keep_selected: bool


class PopulationPhase(_Strict):
    """Consecutive generations that share how the vote selects parents and how many candidates each parent makes.

    A key left out takes the flat key's value: ``privacy.selection``, ``privacy.threshold``,
    ``population.variations_per_parent``, ``population.keep_selected``."""

    generations: int = Field(ge=1, description="how many generations (votes) this phase lasts")
    selection: Literal["sample", "rank", "top", "family"] | None = Field(
        default=None, description="sample: in proportion to the counts; rank: proportional shares, deterministic; "
                                  "top: the `size` largest counts, each once; family: each slot's largest count "
                                  "(its kept parent or one of its children; at the first vote, one of its random "
                                  "candidates)")
    threshold: float | None = Field(default=None, ge=0)
    variations_per_parent: int | None = Field(default=None, ge=1)
    keep_selected: bool | None = None


class PopulationConfig(_Strict):
    """Population size, generations, the variation degree schedule and the population schedule."""

    size: int = Field(ge=1)
    generations: int = Field(ge=1, description="T: number of vote steps")
    degrees: float | list[float] = Field(description="variation degree per generation (constant or list of T)")
    lookahead: int = Field(default=0, ge=0)
    num_shards: int = Field(default=1, ge=1)
    conditional: bool = Field(default=False, description="per-class PE: needs labelled private data")
    reuse_lookahead: bool = Field(
        default=True,
        description="a selected parent's first `lookahead` children are the vote's lookahead variations of it "
                    "(fewer model calls; post-processing, no privacy cost)",
    )
    initial_candidates_per_slot: int = Field(
        default=1, ge=1,
        description="samples the random API draws per slot of generation 0: the first vote picks `size` parents "
                    "among size x this many candidates",
    )
    variations_per_parent: int = Field(default=1, ge=1, description="children the variation API makes of each parent")
    keep_selected: bool = Field(
        default=False,
        description="each selected parent stays in the next population beside its children (voted on again); "
                    "such a generation's output is its selected set",
    )
    schedule: list[PopulationPhase] | None = Field(
        default=None,
        description="phases whose generations add up to T, in order; None: one phase of the flat keys",
    )

    @model_validator(mode="after")
    def _degrees_match(self) -> PopulationConfig:
        degrees = self.degree_schedule()
        if len(degrees) != self.generations:
            raise ValueError(f"population.degrees has {len(degrees)} entries but generations is {self.generations}")
        if any(not 0 <= d <= 1 for d in degrees):
            raise ValueError("population.degrees must lie in [0, 1]")
        if self.schedule is not None and sum(p.generations for p in self.schedule) != self.generations:
            raise ValueError(f"population.schedule's phases last {sum(p.generations for p in self.schedule)} "
                             f"generations but generations is {self.generations}")
        return self

    def phase(self, generation: int, privacy: PrivacyConfig) -> Phase:
        """The rule of vote ``generation`` (1..T) and of the population it makes, every key filled in."""
        phase = self._population_phase(generation)
        assert phase.variations_per_parent is not None and phase.keep_selected is not None
        return Phase(selection=phase.selection or privacy.selection,
                     threshold=privacy.threshold if phase.threshold is None else phase.threshold,
                     variations_per_parent=phase.variations_per_parent, keep_selected=phase.keep_selected)

    def _population_phase(self, generation: int) -> PopulationPhase:
        """The phase holding ``generation``, with the population's flat keys filled in."""
        if not 1 <= generation <= self.generations:
            raise ValueError(f"generation must be in 1..{self.generations}, got {generation}")
        flat = {"variations_per_parent": self.variations_per_parent, "keep_selected": self.keep_selected}
        end = 0
        for phase in self.schedule or [PopulationPhase(generations=self.generations)]:
            end += phase.generations
            if generation <= end:
                return phase.model_copy(update={key: value for key, value in flat.items()
                                                if getattr(phase, key) is None})
        raise AssertionError("the phases add up to generations (checked when the config is read)")

    def slot_size(self, generation: int) -> int:
        """Candidates per parent slot in population ``generation``: its children, plus the parent when kept (the random
        API's draws for generation 0). Population ``generation`` holds ``size`` slots, each its candidates in a row."""
        if generation == 0:
            return self.initial_candidates_per_slot
        phase = self._population_phase(generation)
        assert phase.variations_per_parent is not None
        return phase.variations_per_parent + int(bool(phase.keep_selected))

    def candidates(self, generation: int) -> int:
        """How many samples population ``generation`` holds (the next vote's histogram bins): fixed by the config."""
        return self.size * self.slot_size(generation)

    def degree_schedule(self) -> list[float]:
        """One degree per generation (1..T)."""
        if isinstance(self.degrees, list):
            return list(self.degrees)
        return [float(self.degrees)] * self.generations


class PrivacyConfig(_Strict):
    """Target (epsilon, delta) or an explicit noise multiplier, and the vote's knobs."""

    epsilon: float | None = Field(default=None, gt=0, description="target; calibrates the noise multiplier")
    delta: float = Field(default=1e-5, gt=0, lt=1)
    noise_multiplier: float | None = Field(default=None, ge=0, description="explicit sigma; 0 = non-private")
    epsilon_budget: float | None = Field(default=None, gt=0, description="refuse votes that would exceed it")
    dataset_budget: float | None = Field(
        default=None, gt=0,
        description="epsilon the private data set may spend over its whole life, across all runs and schedules "
                    "(its data-set ledger in the private tier); compiled in, not a run parameter; None needs "
                    "allow_non_private",
    )
    dataset_delta: float | None = Field(default=None, gt=0, lt=1,
                                        description="delta of dataset_budget; None: the run's privacy.delta")
    threshold: float = Field(default=0.0, ge=0)
    k: int = Field(default=1, ge=1)
    selection: Literal["sample", "rank"] = "sample"
    sampling_rate: float = Field(default=1.0, gt=0, le=1, description="Poisson subsampling of the private set per vote")
    mechanism: Literal["discrete_gaussian", "gaussian"] = Field(
        default="discrete_gaussian",
        description="vote noise: exact discrete Gaussian on integer counts (secure, default) or continuous Gaussian",
    )
    warm_start_share: float = Field(
        default=0.0, ge=0, lt=1,
        description="the DP warm start: this share of the run's privacy loss (in rho-zCDP, where Gaussian "
                    "mechanisms add up) buys noisy 1-way marginals of the private set, one ledger event before "
                    "generation 0, that the model uses as its prior (modalities with a warm start: tabular); "
                    "the votes' noise is calibrated for the rest; 0: none",
    )
    max_private_rows: int | None = Field(
        default=None, ge=1,
        description="public bound on the selected private set's rows: embed_private and every vote do the work of "
                    "exactly this many rows (blank padding rows that vote nothing), so their time, and every released "
                    "timestamp after them, does not depend on the private set's size while it is at most this; "
                    "None: no padding (the private steps' time grows with the private set)",
    )
    private_root_prefixes: list[str] = Field(
        default=[], description="when set, private_root must lie inside one of these folders or gs:// prefixes",
    )
    allow_non_private: bool = Field(
        default=False,
        description="allow a run without a DP guarantee (noise multiplier 0, unbounded epsilon); the operator's choice "
                    "in the compiled config, never a run parameter; every output of such a run says NOT PRIVATE",
    )
    max_delta: float = Field(
        default=1e-5, gt=0, lt=1,
        description="the largest delta a run may use (the run parameter included): a fixed public cap, not 1/N, "
                    "because the private set's size N is itself private",
    )

    @model_validator(mode="after")
    def _one_of(self) -> PrivacyConfig:
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("set exactly one of privacy.epsilon and privacy.noise_multiplier")
        if self.noise_multiplier == 0 and not self.allow_non_private:
            raise ValueError("noise_multiplier 0 adds no noise, so the run would not be private: only the operator "
                             "can allow that, with privacy.allow_non_private: true in the compiled config")
        if self.delta > self.max_delta:
            raise ValueError(f"delta {self.delta:g} is above privacy.max_delta {self.max_delta:g}, the largest the "
                             "operator allows")
        if self.mechanism == "discrete_gaussian" and self.k > 1 and self.sampling_rate < 1:
            raise ValueError("the discrete Gaussian with k > 1 cannot be subsampled: set sampling_rate to 1 "
                             "or mechanism to gaussian")
        return self


class EvaluationConfig(_Strict):
    """Held-out real data and public models for the evaluate step (no private data by default)."""

    reference: DataConfig | None = None
    classifier_path: str | None = None
    against_private: bool = Field(default=False, description="non-DP metrics against the private set")
    samples_per_grid: int = Field(default=64, ge=1)


class ResourcesConfig(_Strict):
    """Per-task resources on a cluster: limits, and the requests the scheduler places the pod by (the limits unless
    set lower; a pod whose request fits no node stays Pending)."""

    cpu: str = Field(default="2", description="CPU limit")
    memory: str = Field(default="8Gi", description="memory limit")
    cpu_request: str | None = Field(default=None, description="CPU the node must have free; None: the limit")
    memory_request: str | None = Field(default=None, description="memory the node must have free; None: the limit")
    gpu_type: str | None = Field(default=None, description="the GPU's resource name, e.g. nvidia.com/gpu (the GPU "
                                                           "model is chosen by node_selector)")
    gpu_limit: int = Field(default=0, ge=0)
    timeout_s: int | None = Field(default=2 * 3600, ge=1, description="the step's deadline on a cluster, counted from "
                                                                     "its pod's start; None: none")


class ModelStepResources(ResourcesConfig):
    """Resources of the steps that run a network: more memory and time by default, kept when one key is overridden."""

    memory: str = "16Gi"
    timeout_s: int | None = Field(default=24 * 3600, ge=1, description="the step's deadline on a cluster; None: none")


class PvcMount(_Strict):
    """An existing PersistentVolumeClaim mounted into the steps that load the model, for weights too large to copy per pod."""

    claim_name: str = Field(min_length=1)
    mount_path: str = Field(description="absolute folder in the pod; model.path lies under it")

    @field_validator("mount_path")
    @classmethod
    def _absolute(cls, mount_path: str) -> str:
        if not mount_path.startswith("/") or mount_path.rstrip("/") == "":
            raise ValueError("must be an absolute folder other than /, e.g. /models")
        return mount_path.rstrip("/")


class KubernetesConfig(_Strict):
    """Cluster wiring: images, resources, retries, deadlines, scheduling, credentials.

    The default images are the tags ``make images`` builds on this machine: a cluster cannot pull them until they
    are pushed to a registry it can reach (``REGISTRY=... make images``) and ``image_registry`` names it."""

    image: str = Field(default="privevo-cpu:0.1.0", description="the CPU steps' image (under image_registry if set)")
    gpu_image: str = Field(default="privevo-cuda:0.1.0",
                           description="the image of the steps that run a network on GPUs (under image_registry if set)")
    image_registry: str | None = Field(
        default=None, description="where the cluster pulls the images from, e.g. us-docker.pkg.dev/PROJECT/privevo: "
                                  "prefixed to image and gpu_image, which are pinned by the digest images/digests.json "
                                  "records when `make images` pushed them")
    image_pull_secret: str | None = Field(default=None,
                                          description="a docker-registry Secret every step pulls its image with")
    pipeline_root: str | None = None
    caching: bool = False
    retries: int = Field(default=1, ge=0, description="retries of a step that failed for a reason other than a user "
                                                      "error (a user error ends the step: its retries exit at once)")
    retry_backoff_s: int = Field(default=60, ge=0, description="wait before a step's first retry; doubles per retry")
    pipeline_timeout_s: int | None = Field(
        default=3 * 24 * 3600, ge=1,
        description="the whole run's deadline on a cluster, counted from its start (a Pending pod's wait included); "
                    "None: none")
    image_paths: list[str] = Field(
        default=[], description="files or folders baked into the images (e.g. a public data set or classifier): "
                                "data and model paths under them are read from the image, not refused as local")
    cpu_step: ResourcesConfig = ResourcesConfig()
    model_step: ModelStepResources = ModelStepResources()
    node_selector: dict[str, str] = Field(default={}, description="applied to the model steps")
    tolerations: list[dict[str, str]] = Field(default=[], description="applied to the model steps")
    private_secret: str | None = Field(
        default=None, description="opt-in for clusters without Workload Identity: a Secret holding key.json, a key of "
                                  "the private bucket's Google account, mounted on the private steps only (anyone who "
                                  "can start a run in the namespace can mount it; docs/cluster.md)")
    model_token_secret: str | None = Field(
        default=None,
        description="secret holding a remote model's token, mounted at model.remote.token_file's folder in the steps "
                    "that call the model, and only there",
    )
    private_service_account: str | None = Field(
        default=None,
        description="the account the private steps run as on a cluster: KFP v2 sets one account per run, so the "
                    "compiled pipeline labels their pods privevo.io/tier=private and the cluster's admission policy "
                    "(manifests/components/private-step-account) moves them to this account, which Workload Identity "
                    "binds to the private bucket; also the account for a step rerun in the cluster",
    )
    public_service_account: str | None = Field(default=None, description="the account every pipeline step runs as")
    model_pvc: PvcMount | None = Field(
        default=None,
        description="a PVC holding the model's weights, mounted at mount_path in the steps that load the model: "
                    "filled once, then every node reads the weights from the volume, where a gs:// model.path is "
                    "copied by KFP's launcher into every model pod; a claim many pods read at once "
                    "(ReadOnlyMany or ReadWriteMany)",
    )
    max_parallel_shards: int | None = Field(
        default=None, ge=1,
        description="at most this many shards of a generation run at once (ParallelFor parallelism): the GPUs a run "
                    "may hold, so an autoscaling GPU pool grows no further; none: all population.num_shards at once",
    )


class TabularConfig(_Strict):
    """A table's public schema and Tab-PE's settings (``modality: tabular``); see privevo.tabular."""

    columns: list[ColumnSpec] | None = Field(default=None, description="the public schema, in file order")
    schema_file: str | None = Field(default=None, description="or a YAML file with columns (and label)")
    label: str | None = Field(default=None, description="the categorical column holding each row's class")
    categorical_weight: float = Field(default=1 / 3, gt=0, description="the vote's weight of a one-hot category")
    atom_rate: float = Field(
        default=0.0, ge=0, le=1,
        description="variation moves a numeric value to a declared atom with probability atom_rate x degree",
    )
    prior: DataConfig | None = Field(default=None, description="a public table of the same schema: the random API's "
                                                               "per-column distribution (default: uniform)")
    warm_start_bins: int = Field(
        default=20, ge=1, description="the DP warm start's bins of a numeric column's marginal besides its atoms "
                                      "(equal-width over the bounds, or log-scale for scale: log; an integer column "
                                      "with at most this many values gets one bin per value)")
    warm_start_given_label: bool = Field(
        default=False, description="the DP warm start releases each other column's marginal per class of the label "
                                   "column (its 2-way table with the label, at the same sensitivity), so that the "
                                   "model draws each column given the row's label")


class TextRandomPrompts(_Strict):
    """Aug-PE's RANDOM_API prompts: a template whose ``{slot}`` fields take values drawn from public lists."""

    template: str = Field(default="Write a short text about {topic} in about {words} words.",
                          description="the prompt; {label} is the class name in conditional runs")
    slots: dict[str, list[str]] = Field(default={}, description="public values of each slot, drawn uniformly")
    per_class: dict[str, dict[str, list[str]]] = Field(
        default={}, description="class name -> slot values that replace slots' for that class (conditional runs)")
    system: str | None = Field(default=None, description="system message of chat models (none: the model's default)")


class TextVariationPrompts(_Strict):
    """Aug-PE's VARIATION_API prompts; each child picks a kind by the weights, and a target length near its parent's."""

    kinds: dict[Literal["paraphrase", "continuation", "fill_blanks"], float] = Field(
        default={"paraphrase": 1.0}, description="kind -> weight: paraphrase (with a tone), continuation (mask and "
                                                 "continue: keep a prefix of 1 - degree of the words), fill_blanks "
                                                 "(mask a fraction degree of the words)")
    tones: list[str] = Field(default=["plain", "casual", "formal", "witty"], min_length=1)
    paraphrase: str = "Rewrite the following text in a {tone} tone, in about {words} words:\n{text}"
    continuation: str = "Continue this text to about {words} words in total:\n{text}"
    fill_blanks: str = "Fill in each _ of this text with words, in about {words} words in total:\n{text}"
    length_noise: float = Field(default=0.2, ge=0, lt=1,
                                description="the target word count is the parent's times U(1 - noise, 1 + noise)")


class TextConfig(_Strict):
    """How texts are read, the language model's generation settings, Aug-PE's prompts and the vote's sentence
    embedding (``modality: text``); see privevo.text."""

    text_column: str = Field(default="text", description="sources csv and jsonl: the column or key holding the text")
    label_column: str | None = Field(default="label", description="sources csv and jsonl: the class name's column")
    split_modulus: int = Field(default=5, ge=2, description="split test keeps texts whose SHA-256 is 0 modulo this")
    min_words: int | None = Field(default=None, ge=1, description="records with fewer words are skipped")
    max_words: int | None = Field(default=None, ge=1, description="records with more words are skipped")
    embedding_path: str = Field(default="models/all-minilm-l6-v2", description="a sentence-transformer model folder")
    embedding_name: str = Field(default="minilm", pattern=r"^[a-z0-9_]+$",
                                description="names the embedding space in the metrics (fd_<name>)")
    embedding_max_length: int = Field(default=128, ge=8, description="tokens per text the embedding reads")
    threads: int | None = Field(default=None, ge=1, description="torch threads of the language model (none: the "
                                                                "step's CPU budget)")
    max_new_tokens: int = Field(default=64, ge=1, description="the most tokens one call writes")
    temperature: float = Field(default=1.0, ge=0, description="0: greedy")
    top_p: float = Field(default=1.0, gt=0, le=1)
    random: TextRandomPrompts = TextRandomPrompts()
    variation: TextVariationPrompts = TextVariationPrompts()


class Config(_Strict):
    """One experiment."""

    name: str
    seed: int = 0
    modality: Literal["image", "tabular", "text"] = Field(
        default="image", description="the data type: a key of privevo.modalities.MODALITIES")
    image_size: int | None = Field(default=None, ge=8, description="pixels per side (modality image: required)")
    channels: Literal[1, 3] | None = Field(default=None, description="1 or 3 (modality image: required)")
    class_names: list[str] | None = None
    run_root: str = "runs"
    private_root: str = "runs-private"
    private: DataConfig
    model: ModelConfig
    embedding: EmbeddingConfig = EmbeddingConfig()
    population: PopulationConfig
    privacy: PrivacyConfig
    evaluation: EvaluationConfig = EvaluationConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()
    tabular: TabularConfig | None = None
    text: TextConfig | None = None

    @field_validator("modality")
    @classmethod
    def _registered_modality(cls, modality: str) -> str:
        return check_registered(MODALITIES, modality, "modality")

    @model_validator(mode="before")
    @classmethod
    def _modality_defaults(cls, data: Any) -> Any:
        """A config without model.kind gets its modality's first registered kind (image: ddpm_unet), a non-image one
        without embedding.name its modality's first embedding; YAML's unquoted ``kind: null`` is kind null."""
        modality = data.get("modality", "image") if isinstance(data, dict) else "image"
        if modality not in MODEL_KINDS:
            return data
        data = dict(data)
        defaults = (("model", "kind", MODEL_KINDS), *([] if modality == "image" else
                                                       [("embedding", "name", EMBEDDING_NAMES)]))
        for section, key, registry in defaults:
            values = data.get(section)
            if values is None or (isinstance(values, dict) and key not in values):
                data[section] = {**(values or {}), key: next(iter(registry[modality]))}
        model = data["model"]
        if isinstance(model, dict) and model.get("kind", "") is None:
            data["model"] = {**model, "kind": NULL_MODEL}  # YAML reads an unquoted `null` as None
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.modality == "image":
            missing = next((key for key in ("image_size", "channels") if getattr(self, key) is None), None)
            if missing:
                raise ValueError(f"{missing} is required for modality image")
        if self.embedding.name == NULL_MODEL and not self.model.allow_null:
            raise ValueError("embedding null returns random vectors, for benchmarks and tests: set model.allow_null: "
                             "true to run it")
        if self.population.conditional and not self.class_names:
            raise ValueError("population.conditional needs class_names")
        token_file = self.model.api_server.token_file if self.model.api_server is not None else None
        if self.kubernetes.model_token_secret and not (self.model.kind in REMOTE_KINDS and token_file
                                                       and token_file.startswith("/")):
            raise ValueError(f"kubernetes.model_token_secret needs a model behind an API (model.kind "
                             f"{' or '.join(REMOTE_KINDS)}) and an absolute model.remote.token_file (where the "
                             "secret's file is mounted)")
        pvc = self.kubernetes.model_pvc
        if pvc and not (self.model.weights_path or "").startswith(pvc.mount_path + "/"):
            raise ValueError(f"kubernetes.model_pvc is mounted at {pvc.mount_path}: set model.path to the model's "
                             f"folder under it, e.g. {pvc.mount_path}/MODEL")
        return self


def parse_assignment(assignment: str) -> tuple[str, Any]:
    """One ``dotted.key=value`` override as (key, value), the value parsed as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise UserError(f"--set expects dotted.key=value, got {assignment!r}")
    try:
        return key, yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as error:
        raise UserError(f"--set {key}: {raw!r} is not valid YAML ({str(error).splitlines()[0]}): "
                        "quote it or close its brackets") from None


def with_overrides(data: dict[str, Any], overrides: Iterable[str | tuple[str, Any]], source: str) -> dict[str, Any]:
    """A copy of the config dict ``data`` (read from ``source``) with ``overrides`` set: the one way a ``--set``, a
    Python API override and a run parameter reach the config. Each is a ``dotted.key=value`` string (the value parsed
    as YAML) or a (dotted key, value) pair; missing sections are made.

    An override that changes ``model.kind`` drops the model keys of ``data`` that are options of another kind but not
    of the new one (said in one log line): ``--set model.kind=null`` on a config of a ddpm_unet. A model key an
    override sets stays, so a key of another kind is refused by the validation, unless its value is null (unset)."""
    data = copy.deepcopy(data)
    model = data.get("model")
    before = _kind_of(data)
    from_data = list(model) if isinstance(model, dict) else []  # the model keys ``data`` holds, in order
    overridden: dict[str, Any] = {}  # model key -> the value an override gave it last
    for override in overrides:
        key, value = parse_assignment(override) if isinstance(override, str) else override
        _set_key(data, key, value)
        parts = key.split(".")
        if parts == ["model"]:  # the whole section
            from_data, overridden = [], {}
        elif parts[0] == "model":
            from_data = [k for k in from_data if k != parts[1]]
            overridden[parts[1]] = value if len(parts) == 2 else {}
    model = data.get("model")
    kind = _kind_of(data)
    if not isinstance(model, dict) or kind not in MODEL_SECTIONS:
        return data  # the validation names what is wrong
    options = model_options(kind)
    for key, value in overridden.items():
        if value is None and key in MODEL_OPTIONS and key not in options:
            del model[key]
    ignored = [key for key in from_data if key in MODEL_OPTIONS and key not in options] if kind != before else []
    for key in ignored:
        del model[key]
    if ignored:
        logger.warning("model.kind=%s: ignoring %s from %s (not options of kind %s)", kind,
                       ", ".join(f"model.{key}" for key in ignored), source, kind)
    return data


def _kind_of(data: dict[str, Any]) -> Any:
    """The model kind a config dict names: its modality's first where it names none, None without a model section."""
    model = data.get("model")
    if not isinstance(model, dict):
        return None
    if "kind" not in model:
        return next(iter(MODEL_KINDS.get(str(data.get("modality", "image")), {})), None)
    return NULL_MODEL if model["kind"] is None else model["kind"]  # YAML reads an unquoted `null` as None


def _set_key(data: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` of a config dict to ``value`` in place, making missing sections."""
    *sections, last = key.split(".")
    node = data
    for part in sections:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"--set {key}: {part} is not a section")
        node = child
    node[last] = value


def get_key(data: dict[str, Any], key: str) -> Any:
    """The value of the dotted ``key`` in a config dict (None where a section is absent)."""
    node: Any = data
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _fields_at(location: tuple[Any, ...], kind: str | None = None) -> list[str]:
    """The keys the schema allows in the section at ``location`` (a dotted key's parts; under ``model``, kind ``kind``'s
    section), [] when it is not a section."""
    model: Any = Config
    for part in location:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        if model is Config and part == "model":
            model = MODEL_SECTIONS.get(kind or "")
            continue
        candidates = [field.annotation, *getattr(field.annotation, "__args__", ())]  # X | None: look inside
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return list(model.model_fields) if model is not None else []


def _unknown_key(location: tuple[Any, ...], kind: str | None) -> str:
    """The message for a key the schema does not have (or that is an option of another model kind than ``kind``),
    with the closest allowed key of its section if one is near."""
    import difflib

    key = ".".join(str(p) for p in location)
    if kind is not None and len(location) == 2 and location[1] in MODEL_OPTIONS:
        return f"{key} is not an option of kind {kind}"
    close = difflib.get_close_matches(str(location[-1]), _fields_at(location[:-1], kind), n=1)
    hint = f" (did you mean '{'.'.join([*map(str, location[:-1]), close[0]])}'?)" if close else ""
    return f"unknown key '{key}'{hint}"


def _config_location(location: tuple[Any, ...]) -> tuple[tuple[Any, ...], str | None]:
    """A problem's location as config keys, without the kind pydantic puts after ``model``, and that kind."""
    if len(location) > 1 and location[0] == "model" and location[1] in MODEL_SECTIONS:
        return (location[0], *location[2:]), str(location[1])
    return tuple(location), None


def _own_model_keys(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without the model keys that are options of other kinds only (earlier versions wrote one flat model
    section holding every kind's options into run.json and compiled pipelines)."""
    model, kind = data.get("model"), _kind_of(data)
    if not isinstance(model, dict) or kind not in MODEL_SECTIONS:
        return data
    options = model_options(kind)
    return {**data, "model": {key: value for key, value in model.items()
                              if key in options or key not in MODEL_OPTIONS}}


def parse_config(data: dict[str, Any], source: str = "config", stored: bool = False) -> Config:
    """Validate a config dict; the first problem becomes a one-line UserError (an unknown key first: a misspelt
    section would otherwise be reported as the missing section it was meant to be). ``stored``: a config this program
    wrote (run.json, a compiled pipeline), whose model keys of other kinds are dropped."""
    modality = str(data.get("modality", "image")) if isinstance(data, dict) else "image"
    try:
        return Config.model_validate(_own_model_keys(data) if stored else data, context={"modality": modality})
    except ValidationError as error:
        problems = error.errors()
        first = next((p for p in problems if p["type"] == "extra_forbidden"), problems[0])
        location, kind = _config_location(first["loc"])
        if first["type"] == "extra_forbidden":
            raise UserError(f"{source}: {_unknown_key(location, kind)}") from None
        message = first["msg"]
        if first["type"] == "union_tag_invalid" and location == ("model",):  # a kind no modality registers
            try:
                _check_modality_name(MODEL_KINDS, str(first["ctx"]["tag"]), "foundation model kind", modality)
            except ValueError as unknown:
                location, message = ("model", "kind"), str(unknown)
        where = ".".join(str(p) for p in location) or "(top level)"
        raise UserError(f"{source}: {where}: {message}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``--set`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of config keys")
    return parse_config(with_overrides(data, overrides or [], str(path)), source=str(path))


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain data (for run.json and for passing a config to a step)."""
    return config.model_dump(mode="json")
