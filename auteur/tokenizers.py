"""A byte-level tokenizer built locally, for the tiny presets' text encoders (no hub files, no training).

No merges are learned, so every UTF-8 text round-trips and the vocabulary is fixed: the special tokens first
(``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, then ``extra_specials``), then the 256 byte symbols. ``</s>`` is
appended to every sequence (CLIP pools at its eos token, T5 ends with it).
"""

from __future__ import annotations

from collections.abc import Sequence


def byte_level_tokenizer(max_length: int | None = None, extra_specials: Sequence[str] = ()):
    """A ``PreTrainedTokenizerFast`` over bytes (vocabulary 259 + ``len(extra_specials)``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>", *extra_specials]
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    kwargs = {"model_max_length": max_length} if max_length is not None else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", **kwargs
    )
