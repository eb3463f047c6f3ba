"""The vote's feature space for texts: a sentence-transformer model (all-MiniLM-L6-v2 by default), L2-normalised.

The model is a sentence-transformers folder (``text.embedding_path``: a local folder or a gs://
copy of one, loaded offline): its transformer's last hidden state is averaged over the text's
tokens (the attention mask's mean pooling, as the model's ``1_Pooling`` config says for MiniLM)
and scaled to unit length, which is what ``SentenceTransformer.encode(normalize_embeddings=True)``
computes, with plain ``transformers``. The vote then runs the shared exact L2 nearest-neighbour
search on these rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from privevo.errors import UserError


class SentenceEmbedding:
    """Texts (an object or str array) to float32 unit vectors (N, dim)."""

    def __init__(self, model: Any, tokenizer: Any, source: str, max_length: int = 128) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.max_length = max_length
        self.dim = int(model.config.hidden_size)
        self.name = source.rstrip("/").rsplit("/", 1)[-1]

    @classmethod
    def from_pretrained(cls, path: str, max_length: int = 128, device: str = "auto") -> SentenceEmbedding:
        """Load the transformer and tokenizer of a sentence-transformers folder, offline, in float32."""
        from transformers import AutoModel, AutoTokenizer

        from privevo import runtime
        from privevo.image.models.base import first_line, resolve_model_dir

        model_dir = resolve_model_dir(path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            model = AutoModel.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"could not load a sentence embedding from {path} ({first_line(err)}): expected a "
                            "sentence-transformers folder (make install puts all-MiniLM-L6-v2 in "
                            "models/all-minilm-l6-v2)") from err
        model.to(runtime.resolve_device(device)).eval()
        return cls(model, tokenizer, path, max_length)

    def embed(self, samples: np.ndarray, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """Unit-length mean-pooled embeddings of ``samples`` as float32 (N, dim), in their order; an empty text embeds
        like any other (the vote's padding rows are empty texts). The batches take the texts in order of length, so
        a batch pads to a length near its own texts' (about 2.5 times faster on the fortunes than batches in file
        order). ``progress`` is accepted for the shared interface (no bar: it would tell the private set's size)."""
        import torch

        if samples.ndim != 1:
            raise UserError(f"texts are a 1-D array of strings, got shape {samples.shape}")
        out = np.empty((len(samples), self.dim), dtype=np.float32)
        texts = [str(t) for t in samples]
        by_length = np.argsort([len(t) for t in texts], kind="stable")
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                rows = by_length[start:start + batch_size]
                batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.model.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[rows] = pooled.float().cpu().numpy()
        return out
