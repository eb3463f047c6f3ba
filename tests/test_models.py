"""Foundation-model APIs: tiny random-weight backends built offline, and the shipped demo model."""

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from privevo import runtime
from privevo.config import Config, parse_config
from privevo.errors import UserError
from privevo.image.models import MODEL_BACKENDS, backend_class, load_model
from privevo.image.models.base import resolve_autocast
from privevo.image.models.ddpm_unet import SCHEDULERS, DDPMUNetModel, variation_steps
from privevo.image.models.stable_diffusion import StableDiffusionModel
from privevo.testing import assert_close_images, build_tiny_stable_diffusion, build_tiny_unet

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = REPO_ROOT / "models" / "fashion-mnist-ddpm"
SHIPPED_CLASSIFIER = REPO_ROOT / "models" / "fashion-mnist-classifier"


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_unet(str(tmp_path_factory.mktemp("unet")))


@pytest.fixture(scope="module")
def cond_unet_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_unet(str(tmp_path_factory.mktemp("cond_unet")), image_size=16, channels=3, num_classes=3)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_stable_diffusion(str(tmp_path_factory.mktemp("sd")), image_size=32)


def experiment(model: dict[str, Any], image_size: int = 28, channels: int = 1) -> Config:
    """A minimal experiment config with this ``model`` section (the private data is never read here)."""
    return parse_config({
        "name": "clothes", "image_size": image_size, "channels": channels,
        "private": {"source": "npz", "path": "private.npz"}, "model": {"device": "cpu", **model},
        "population": {"size": 4, "generations": 1, "degrees": 0.5}, "privacy": {"epsilon": 1.0},
    })


@pytest.fixture(scope="module")
def unet(unet_dir: str) -> DDPMUNetModel:
    return load_model(experiment({"kind": "ddpm_unet", "path": unet_dir, "num_inference_steps": 10, "batch_size": 8}))


@pytest.fixture(scope="module")
def sd(sd_dir: str) -> StableDiffusionModel:
    model = {"kind": "stable_diffusion", "path": sd_dir, "prompts": ["a shirt", "a shoe"], "num_inference_steps": 10,
             "batch_size": 8}
    return load_model(experiment(model, image_size=32, channels=3))


def mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def assert_one_line_user_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


# Tiny UNet, unconditional.


def test_unet_random_shape_dtype_range(unet: DDPMUNetModel) -> None:
    assert (unet.image_size, unet.channels, unet.num_classes) == (28, 1, None)
    images = unet.random(6, seed=0)
    assert images.shape == (6, 28, 28, 1) and images.dtype == np.uint8
    assert images.min() >= 0 and images.max() <= 255 and images.std() > 1.0
    assert unet.random(0).shape == (0, 28, 28, 1)


@pytest.mark.model_outputs
def test_unet_same_seed_same_images_other_seed_differs(unet: DDPMUNetModel) -> None:
    first = unet.random(4, seed=7)
    np.testing.assert_array_equal(first, unet.random(4, seed=7))
    assert mean_distance(first, unet.random(4, seed=8)) > 1.0


@pytest.mark.model_outputs
@pytest.mark.parametrize("autocast", ["off", "bfloat16"])
def test_unet_batching_and_sharding_do_not_change_samples(autocast: str) -> None:
    """Same batch size: identical. Other batch sizes and shards: equal up to CPU rounding (BATCH_TOLERANCE).

    The shipped model, since a trained UNet keeps rounding differences within a grey level (measured:
    none at 3 steps, float32 and bfloat16, AVX-512 and AVX2 kernels), while the random-weight tiny
    UNet amplifies them to tens of levels over a sampling run whatever the batching.
    """
    options = {"num_inference_steps": 3, "device": "cpu", "autocast": autocast}
    small = DDPMUNetModel.from_pretrained(str(SHIPPED_MODEL), batch_size=2, **options)
    large = DDPMUNetModel.from_pretrained(str(SHIPPED_MODEL), batch_size=8, **options)
    whole = large.random(5, seed=3)
    np.testing.assert_array_equal(large.random(5, seed=3), whole)
    assert_close_images(small.random(5, seed=3), whole)
    shards = [large.random(3, seed=3), large.random(2, seed=3, first_index=3)]
    assert_close_images(np.concatenate(shards), whole)
    assert_close_images(small.variation(whole, 0.5, seed=1), large.variation(whole, 0.5, seed=1))


def test_close_images_allow_rounding_flips_but_not_other_samples() -> None:
    images = np.random.default_rng(0).integers(0, 255, (5, 28, 28, 1), dtype=np.uint8)
    flipped = images.copy()
    flipped.reshape(-1)[::100] += 1  # 1% of pixels one grey level up, as another batch size may round
    assert_close_images(flipped, images)
    for other in (np.roll(images, 1, axis=0), np.minimum(images.astype(int) + 2, 255).astype(np.uint8)):
        with pytest.raises(AssertionError, match="grey levels"):
            assert_close_images(other, images)


def test_autocast_setting_resolves_by_hardware_and_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert resolve_autocast("off", cpu, torch.float32) is None
    assert resolve_autocast("bfloat16", cpu, torch.float32) is torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda bandwidth_bound=False: True)
    assert resolve_autocast("auto", cpu, torch.float32) is torch.bfloat16
    assert resolve_autocast("auto", cpu, torch.float16) is None  # weights already reduced: leave them
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda bandwidth_bound=False: False)
    assert resolve_autocast("auto", cpu, torch.float32) is None
    with pytest.raises(UserError) as excinfo:
        resolve_autocast("int8", cpu, torch.float32)
    assert_one_line_user_error(excinfo, "int8", "bfloat16")


def test_native_bfloat16_needs_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    """AVX512-BF16 without AMX ran the demo UNet slower in bfloat16 than in float32: "auto" keeps float32 there."""
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f", "avx512_bf16"}))
    assert not runtime.cpu_has_native_bf16()
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}))
    assert runtime.cpu_has_native_bf16()


def test_language_model_decoding_takes_bfloat16_on_avx512_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding reads every weight at every token: bfloat16 halves that, so a language model takes it where the CPU
    has AVX512-BF16 without AMX; an AVX2 machine keeps float32 for both kinds of work."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f", "avx512_bf16"}))
    assert resolve_autocast("auto", cpu, torch.float32, bandwidth_bound=True) is torch.bfloat16
    assert resolve_autocast("auto", cpu, torch.float32) is None
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert resolve_autocast("auto", cpu, torch.float32, bandwidth_bound=True) is None


@pytest.mark.model_outputs
def test_unet_float32_cpu_layout_keeps_the_samples() -> None:
    """In float32 on the CPU the UNet runs channels_last (faster); its samples match the default layout's.

    Measured with the shipped model: one grey level on 0.02% of values under AVX-512 and AVX2 kernels.
    """
    options = {"num_inference_steps": 3, "batch_size": 8, "device": "cpu", "autocast": "off"}
    fast = DDPMUNetModel.from_pretrained(str(SHIPPED_MODEL), **options)
    plain = DDPMUNetModel.from_pretrained(str(SHIPPED_MODEL), **options)
    plain.memory_format = torch.contiguous_format
    plain.unet.to(memory_format=torch.contiguous_format)
    assert fast.unet.conv_out.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.unet.conv_out.weight.is_contiguous(memory_format=torch.channels_last)
    images = fast.random(6, seed=3)
    assert_close_images(images, plain.random(6, seed=3))
    assert_close_images(fast.variation(images, 0.5, seed=1), plain.variation(images, 0.5, seed=1))
    bfloat16 = DDPMUNetModel.from_pretrained(str(SHIPPED_MODEL), **{**options, "autocast": "bfloat16"})
    assert bfloat16.memory_format == torch.contiguous_format  # measured slower channels_last in bfloat16


@pytest.mark.model_outputs
def test_unet_unconditional_ignores_labels(unet: DDPMUNetModel) -> None:
    np.testing.assert_array_equal(unet.random(3, labels=2, seed=1), unet.random(3, seed=1))


@pytest.mark.model_outputs
def test_unet_variation_degree_zero_keeps_images(unet: DDPMUNetModel) -> None:
    images = unet.random(3, seed=2)
    np.testing.assert_array_equal(unet.variation(images, 0.0), images)


@pytest.mark.model_outputs
def test_unet_larger_degree_moves_further(unet: DDPMUNetModel) -> None:
    images = unet.random(32, seed=4)
    distances = [mean_distance(unet.variation(images, d, seed=5), images) for d in (0.2, 0.5, 0.9)]
    assert distances[0] + 1.0 < distances[1] < distances[2], distances


@pytest.mark.parametrize("degree", [-0.1, 1.5, float("nan"), "0.5", None])
def test_variation_rejects_bad_degree(unet: DDPMUNetModel, degree: object) -> None:
    images = np.zeros((1, 28, 28, 1), dtype=np.uint8)
    with pytest.raises(UserError) as excinfo:
        unet.variation(images, degree)  # type: ignore[arg-type]
    assert_one_line_user_error(excinfo, "degree")


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((2, 28, 28, 1), dtype=np.float32),
        np.zeros((2, 28, 28), dtype=np.uint8),
        np.zeros((2, 32, 32, 1), dtype=np.uint8),
    ],
)
def test_variation_rejects_bad_images(unet: DDPMUNetModel, images: np.ndarray) -> None:
    with pytest.raises(UserError) as excinfo:
        unet.variation(images, 0.5)
    assert_one_line_user_error(excinfo, "uint8 of shape (n, 28, 28, 1)")


@pytest.mark.parametrize(
    "call", [lambda m: m.random(-1), lambda m: m.random(2, seed=-1), lambda m: m.random(2, labels=np.zeros(3, int))]
)
def test_random_rejects_bad_arguments(unet: DDPMUNetModel, call) -> None:
    with pytest.raises(UserError) as excinfo:
        call(unet)
    assert_one_line_user_error(excinfo)


# Tiny UNet, class-conditional.


@pytest.mark.model_outputs
def test_conditional_unet_labels(cond_unet_dir: str) -> None:
    model = DDPMUNetModel.from_pretrained(cond_unet_dir, num_inference_steps=5, batch_size=4, device="cpu")
    assert (model.image_size, model.channels, model.num_classes) == (16, 3, 3)
    labelled = model.random(4, labels=np.array([0, 1, 2, 0]), seed=0)
    assert labelled.shape == (4, 16, 16, 3) and labelled.dtype == np.uint8
    np.testing.assert_array_equal(model.random(4, labels=1, seed=0), model.random(4, labels=np.ones(4, int), seed=0))
    assert mean_distance(model.random(4, labels=0, seed=0), model.random(4, labels=2, seed=0)) > 0.5
    np.testing.assert_array_equal(model.random(5, seed=1), model.random(5, seed=1))  # labels drawn per sample
    varied = model.variation(labelled, 0.5, labels=np.array([0, 1, 2, 0]), seed=0)
    assert varied.shape == labelled.shape and varied.dtype == np.uint8


def test_conditional_unet_rejects_bad_labels(cond_unet_dir: str) -> None:
    model = DDPMUNetModel.from_pretrained(cond_unet_dir, num_inference_steps=2, device="cpu")
    images = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    calls = (
        lambda: model.random(2, labels=3),
        lambda: model.random(2, labels=np.array([0.5, 1.0])),
        lambda: model.variation(images, 0.5),
    )
    for call in calls:
        with pytest.raises(UserError) as excinfo:
            call()
        assert_one_line_user_error(excinfo, "label")


# Tiny Stable Diffusion.


@pytest.mark.model_outputs
def test_sd_random_shape_determinism_and_batching(sd_dir: str, sd: StableDiffusionModel) -> None:
    assert (sd.image_size, sd.channels, sd.num_classes) == (32, 3, 2)
    labels = np.array([0, 1, 1, 0, 1])
    images = sd.random(5, labels=labels, seed=0)
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(sd.random(5, labels=labels, seed=0), images)
    small = StableDiffusionModel.from_pretrained(
        sd_dir, ["a shirt", "a shoe"], num_inference_steps=10, batch_size=2, device="cpu"
    )
    assert_close_images(small.random(5, labels=labels, seed=0), images)
    assert mean_distance(sd.random(5, labels=labels, seed=1), images) > 1.0
    assert mean_distance(sd.random(2, labels=0, seed=0), sd.random(2, labels=1, seed=0)) > 0.1
    np.testing.assert_array_equal(sd.random(2, seed=0), sd.random(2, labels=0, seed=0))  # no labels: prompts[0]


@pytest.mark.model_outputs
def test_sd_variation_degree(sd: StableDiffusionModel) -> None:
    images = sd.random(16, seed=2)
    np.testing.assert_array_equal(sd.variation(images, 0.0), images)
    # The random-weight VAE's round trip alone moves pixels a lot, so measure from a
    # low-degree variation drawn with the same per-sample generators.
    base = sd.variation(images, 0.1, seed=3)
    distances = [mean_distance(sd.variation(images, d, seed=3), base) for d in (0.2, 0.5, 0.9)]
    assert distances[0] + 1.0 < distances[1] < distances[2], distances


def test_sd_grayscale_and_resize(sd_dir: str) -> None:
    config = experiment({"kind": "stable_diffusion", "path": sd_dir, "num_inference_steps": 4}, image_size=16)
    model = load_model(config)
    assert model.prompts == ["clothes"] and model.num_classes is None  # no prompts: the experiment's name
    images = model.random(3, seed=0)
    assert images.shape == (3, 16, 16, 1) and images.dtype == np.uint8
    assert model.variation(images, 0.5, seed=0).shape == (3, 16, 16, 1)


# The registry, the config and bad paths and options.


def test_registry_names_every_backend_and_configs_need_no_torch() -> None:
    from privevo.image.models.null import NullModel
    from privevo.image.models.remote import RemoteModel

    assert {kind: backend_class(kind) for kind in MODEL_BACKENDS} == {
        "ddpm_unet": DDPMUNetModel, "stable_diffusion": StableDiffusionModel, "remote": RemoteModel, "null": NullModel,
    }
    probe = "import sys, privevo.config, privevo.image.models, privevo.image.embeddings; print('torch' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "False"


def test_unknown_kind_is_a_one_line_error(unet_dir: str) -> None:
    with pytest.raises(UserError) as excinfo:
        experiment({"kind": "gan", "path": unet_dir})
    assert_one_line_user_error(excinfo, "model.kind", "foundation model kind 'gan'",
                               "ddpm_unet, null, remote, stable_diffusion")
    with pytest.raises(UserError) as excinfo:
        backend_class("gan")
    assert_one_line_user_error(excinfo, "'gan'", "ddpm_unet, null, remote, stable_diffusion")


def test_missing_model_path(tmp_path: Path) -> None:
    for kind in set(MODEL_BACKENDS) - {"remote", "null"}:  # remote and null load no weights
        with pytest.raises(UserError) as excinfo:
            load_model(experiment({"kind": kind, "path": str(tmp_path / "nope")}))
        assert_one_line_user_error(excinfo, "does not exist", "nope")


def test_wrong_kind_of_model_folder(unet_dir: str, sd_dir: str, tmp_path: Path) -> None:
    with pytest.raises(UserError) as excinfo:
        load_model(experiment({"kind": "ddpm_unet", "path": sd_dir}))
    assert_one_line_user_error(excinfo, "StableDiffusionPipeline", "DDPMPipeline")
    with pytest.raises(UserError) as excinfo:
        load_model(experiment({"kind": "stable_diffusion", "path": unet_dir}))
    assert_one_line_user_error(excinfo, "DDPMPipeline", "StableDiffusionPipeline")
    with pytest.raises(UserError) as excinfo:
        load_model(experiment({"kind": "ddpm_unet", "path": str(tmp_path)}))
    assert_one_line_user_error(excinfo, "model_index.json")


def test_resolution_mismatch(unet_dir: str) -> None:
    with pytest.raises(UserError) as excinfo:
        load_model(experiment({"kind": "ddpm_unet", "path": unet_dir}, image_size=32))
    assert_one_line_user_error(excinfo, "32", "28")


def test_bad_dtype_and_device(unet_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError) as excinfo:
        DDPMUNetModel.from_pretrained(unet_dir, dtype="int8", device="cpu")
    assert_one_line_user_error(excinfo, "int8")
    with pytest.raises(UserError) as excinfo:
        load_model(experiment({"kind": "ddpm_unet", "path": unet_dir, "device": "gpu0"}))
    assert_one_line_user_error(excinfo, "'gpu0'", "'auto', 'cpu' or 'cuda'")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UserError) as excinfo:
        load_model(experiment({"kind": "ddpm_unet", "path": unet_dir, "device": "cuda"}))
    assert_one_line_user_error(excinfo, "CUDA is not available")


# The shipped demo model.


@pytest.fixture(scope="module")
def shipped() -> DDPMUNetModel:
    if not (SHIPPED_MODEL / "model_index.json").is_file():
        pytest.skip(f"{SHIPPED_MODEL} is absent: train it with models/train_public_model.py")
    return DDPMUNetModel.from_pretrained(str(SHIPPED_MODEL), num_inference_steps=10, batch_size=100, device="cpu")


def test_shipped_model_matches_its_card(shipped: DDPMUNetModel) -> None:
    import hashlib

    card = (SHIPPED_MODEL / "README.md").read_text()
    recorded = re.search(r"sha256 `([0-9a-f]{64})`", card)
    assert recorded, "the model card must record the sha256 of the UNet weights"
    weights = SHIPPED_MODEL / "unet" / "diffusion_pytorch_model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == recorded.group(1)
    assert weights.stat().st_size <= 12 * 1024 * 1024
    assert (shipped.image_size, shipped.channels, shipped.num_classes) == (28, 1, None)


@pytest.mark.model_outputs
def test_shipped_model_samples_are_recognisable_clothes(shipped: DDPMUNetModel) -> None:
    if not (SHIPPED_CLASSIFIER / "model.safetensors").is_file():
        pytest.skip(f"{SHIPPED_CLASSIFIER} is absent: train it with models/train_public_classifier.py")
    from privevo.image.classifier import load_classifier, predict_proba

    classifier = load_classifier(SHIPPED_CLASSIFIER)
    samples = shipped.random(200, seed=0)
    confidence = predict_proba(classifier, samples).max(1)
    # The shipped model (4000 steps, see its card): median confidence measured 0.86 with
    # 10 DDIM steps. Noise images of the same size stay far below it (0.41).
    noise = np.random.default_rng(0).integers(0, 256, samples.shape, dtype=np.uint8)
    assert np.median(confidence) > 0.75
    assert np.median(confidence) > np.median(predict_proba(classifier, noise).max(1)) + 0.2
    assert set(predict_proba(classifier, samples).argmax(1).tolist()) == set(range(10))


@pytest.mark.model_outputs
def test_shipped_model_variation_degree_and_batching(shipped: DDPMUNetModel) -> None:
    images = shipped.random(24, seed=1)
    distances = [mean_distance(shipped.variation(images, d, seed=2), images) for d in (0.2, 0.5, 0.9)]
    assert distances[0] < distances[1] < distances[2], distances
    small = DDPMUNetModel.from_pretrained(str(SHIPPED_MODEL), num_inference_steps=10, batch_size=2, device="cpu")
    assert_close_images(small.random(5, seed=1), images[:5])


@pytest.mark.model_outputs
def test_shipped_model_bfloat16_autocast_stays_close_to_float32() -> None:
    if not (SHIPPED_MODEL / "model_index.json").is_file():
        pytest.skip(f"{SHIPPED_MODEL} is absent: train it with models/train_public_model.py")
    options = {"num_inference_steps": 5, "batch_size": 16, "device": "cpu"}
    exact = DDPMUNetModel.from_pretrained(str(SHIPPED_MODEL), autocast="off", **options)
    mixed = DDPMUNetModel.from_pretrained(str(SHIPPED_MODEL), autocast="bfloat16", **options)
    images = exact.random(6, seed=4)
    # Measured: mean absolute differences of 0.66 (samples) and 0.19 (variations) grey levels with AVX-512
    # kernels, 0.80 and 0.19 with AVX2 ones (which emulate bfloat16, about 15x slower: hence 5 steps);
    # about 0.5 over a 25-step run.
    assert mean_distance(mixed.random(6, seed=4), images) < 2.0
    assert mean_distance(mixed.variation(images, 0.5, seed=5), exact.variation(images, 0.5, seed=5)) < 2.0


# Multistep solvers (model.scheduler) and steps per degree.


def test_scheduler_setting_picks_the_solver_and_rejects_others(unet_dir: str) -> None:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    expected = {"ddim": DDIMScheduler, "dpm_solver": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler}
    assert set(expected) == set(SCHEDULERS)
    for name, cls in expected.items():
        model = load_model(experiment({"kind": "ddpm_unet", "path": unet_dir, "scheduler": name}))
        assert type(model.scheduler) is cls
    assert experiment({"kind": "ddpm_unet", "path": unet_dir}).model.scheduler == "ddim"
    with pytest.raises(UserError) as excinfo:
        experiment({"kind": "ddpm_unet", "path": unet_dir, "scheduler": "euler"})
    assert_one_line_user_error(excinfo, "scheduler")


@pytest.mark.parametrize("scheduler", ["ddim", "dpm_solver", "unipc"])
def test_steps_per_degree(unet_dir: str, scheduler: str) -> None:
    """A full denoise runs num_inference_steps UNet passes; a variation at degree d the last int(d * steps)."""
    model = load_model(experiment({"kind": "ddpm_unet", "path": unet_dir, "scheduler": scheduler,
                                   "num_inference_steps": 10, "batch_size": 4}))
    timesteps: list[int] = []
    hook = model.unet.register_forward_pre_hook(lambda _m, args: timesteps.append(int(args[1])))
    try:
        images = model.random(3, seed=0)
        assert len(timesteps) == 10
        full = list(timesteps)
        for degree, steps in ((0.55, 5), (0.35, 3), (1.0, 10), (0.05, 0)):
            timesteps.clear()
            model.variation(images, degree, seed=1)
            assert timesteps == full[10 - steps:], (degree, timesteps)
    finally:
        hook.remove()
    assert [variation_steps(25, d) for d in (0.6, 0.55, 0.5, 0.4, 0.35)] == [15, 13, 12, 10, 8]


@pytest.mark.model_outputs
@pytest.mark.parametrize("scheduler", ["dpm_solver", "unipc"])
def test_solver_samples_are_per_sample_and_batch_independent(scheduler: str) -> None:
    """Each sample's noise comes from its own generator and the solver's history restarts per batch: other batch
    sizes and shards give the same samples up to CPU rounding (BATCH_TOLERANCE), on AVX-512 and AVX2 kernels."""
    if not (SHIPPED_MODEL / "model_index.json").is_file():
        pytest.skip(f"{SHIPPED_MODEL} is absent: train it with models/train_public_model.py")
    options = {"num_inference_steps": 4, "device": "cpu", "autocast": "off", "scheduler": scheduler}
    small = DDPMUNetModel.from_pretrained(str(SHIPPED_MODEL), batch_size=2, **options)
    large = DDPMUNetModel.from_pretrained(str(SHIPPED_MODEL), batch_size=8, **options)
    whole = large.random(5, seed=3)
    np.testing.assert_array_equal(large.random(5, seed=3), whole)
    assert_close_images(small.random(5, seed=3), whole)
    assert_close_images(np.concatenate([large.random(3, seed=3), large.random(2, seed=3, first_index=3)]), whole)
    assert_close_images(small.variation(whole, 0.5, seed=1), large.variation(whole, 0.5, seed=1))
    assert mean_distance(large.random(5, seed=4), whole) > 1.0


@pytest.mark.model_outputs
def test_shipped_model_dpm_solver_samples_are_recognisable_clothes() -> None:
    """DPM-Solver++ at 10 steps makes recognisable clothes (median confidence measured 0.90; DDIM at 10: 0.86)."""
    if not (SHIPPED_CLASSIFIER / "model.safetensors").is_file() or not (SHIPPED_MODEL / "model_index.json").is_file():
        pytest.skip("the shipped model or classifier is absent: train them with models/train_public_*.py")
    from privevo.image.classifier import load_classifier, predict_proba

    model = DDPMUNetModel.from_pretrained(str(SHIPPED_MODEL), num_inference_steps=10, batch_size=100, device="cpu",
                                          scheduler="dpm_solver")
    probabilities = predict_proba(load_classifier(SHIPPED_CLASSIFIER), model.random(200, seed=0))
    assert np.median(probabilities.max(1)) > 0.75
    assert set(probabilities.argmax(1).tolist()) == set(range(10))


def test_from_config_is_from_pretrained_with_the_configs_options(unet_dir: str) -> None:
    config = experiment({"kind": "ddpm_unet", "path": unet_dir, "num_inference_steps": 2, "batch_size": 3,
                         "autocast": "off"})
    options = DDPMUNetModel.pretrained_options(config)
    assert (options["num_inference_steps"], options["batch_size"], options["image_size"]) == (2, 3, 28)
    from_config = load_model(config).random(4, seed=5)
    pretrained = DDPMUNetModel.from_pretrained(unet_dir, **options).random(4, seed=5)
    assert np.array_equal(from_config, pretrained)  # same process, batches and threads: the same computation


def test_serve_loads_a_folder_with_the_options_its_backend_takes(unet_dir: str) -> None:
    from privevo import serve

    served = serve.pretrained_model("ddpm_unet", unet_dir, {"num_inference_steps": 2, "device": "cpu"})
    model = served.load()
    assert (served.modality, model.num_inference_steps, model.image_size) == ("image", 2, 28)
    with pytest.raises(UserError) as excinfo:
        serve.pretrained_model("ddpm_unet", unet_dir, {"threads": 2, "prompts": ["a"]}).load()
    assert_one_line_user_error(excinfo, "model kind ddpm_unet takes no --threads, --prompts")
    with pytest.raises(UserError) as excinfo:
        serve.pretrained_model("ddpm_unet", unet_dir, {"channels": 3}).load()
    assert_one_line_user_error(excinfo, "channels 3 does not match the model's 1")
    for kind in ("remote", "openai_compatible", "gan"):
        with pytest.raises(UserError) as excinfo:
            serve.pretrained_model(kind, unet_dir, {})
        assert_one_line_user_error(excinfo, f"serve needs a local model kind (ddpm_unet, stable_diffusion, "
                                            f"hf_causal_lm), not {kind}")
