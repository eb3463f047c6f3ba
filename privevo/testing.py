"""Helpers for tests and benchmarks: tiny offline test models, and comparing images across batch sizes.

Not used by the pipeline. The tiny models have random weights and build in about a second,
without downloads; their samples are noise-like but exercise every code path of a backend.
"""

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privevo import runtime

runtime.prefer_passive_waiting()  # before torch loads OpenMP: see privevo.runtime
import torch  # noqa: E402

from privevo.errors import UserError  # noqa: E402


@dataclass(frozen=True)
class ImageTolerance:
    """How far two uint8 image sets may differ: ``max_levels`` grey levels on at most ``max_fraction`` of values."""

    max_levels: int
    max_fraction: float


BATCH_TOLERANCE = ImageTolerance(max_levels=1, max_fraction=0.02)
"""How far the same samples computed at other batch sizes or shardings may differ.

Each sample has its own generator, so its noise never depends on batching, but CPU kernels
block (and split work between threads) by batch size, which changes the order of float
additions. Near a rounding boundary that flips a pixel by one grey level: measured, 3 of
3,920 pixels (0.08%) in float32 on an AVX2-only AMD EPYC, and up to 88 of 15,360 (0.57%)
for the tiny Stable Diffusion with bfloat16 autocast on 2 threads of an AVX512-BF16 Xeon,
never more than one level. 1 level on at most 2% of values leaves room for other CPUs,
while a real batching bug (a sample drawn with another's generator or label) changes
nearly every pixel of that sample by many levels.
"""


def assert_close_images(actual: np.ndarray, expected: np.ndarray) -> None:
    """Assert two uint8 image sets are equal up to :data:`BATCH_TOLERANCE` (e.g. across batch sizes)."""
    assert actual.dtype == expected.dtype == np.uint8, f"expected uint8 images, got {actual.dtype} and {expected.dtype}"
    assert actual.shape == expected.shape, f"shapes differ: {actual.shape} != {expected.shape}"
    difference = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    largest = int(difference.max(initial=0))
    fraction = float((difference > 0).mean()) if difference.size else 0.0
    tolerance = BATCH_TOLERANCE
    assert largest <= tolerance.max_levels and fraction <= tolerance.max_fraction, (
        f"images differ by up to {largest} grey levels on {fraction:.2%} of values; "
        f"allowed: {tolerance.max_levels} level(s) on {tolerance.max_fraction:.0%}"
    )


def build_tiny_unet(
    out_dir: str, image_size: int = 28, channels: int = 1, num_classes: int | None = None, seed: int = 0
) -> str:
    """Save a tiny random-weight DDPM UNet (a test model that builds offline in a second)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        add_attention=False,
        norm_num_groups=4,
        num_class_embeds=num_classes,
    )
    pipeline: Any = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipeline.save_pretrained(out_dir, safe_serialization=True)
    return str(out_dir)


def build_tiny_stable_diffusion(out_dir: str, image_size: int = 32, seed: int = 0) -> str:
    """Save a tiny random-weight Stable Diffusion with a character-level CLIP tokenizer (offline, seconds)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if image_size % 2:
        raise UserError(f"image_size for the tiny Stable Diffusion must be even, got {image_size}")
    torch.manual_seed(seed)
    chars = sorted(ByteLevel.alphabet())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        (Path(tokenizer_dir) / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}))
        (Path(tokenizer_dir) / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=77)

    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokens),
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=image_size,
    )
    unet = UNet2DConditionModel(
        sample_size=image_size // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    pipe: Any = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return str(out_dir)
