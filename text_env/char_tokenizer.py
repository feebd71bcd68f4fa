"""A character-level Hugging Face tokenizer built in code, for small tasks and tests.

Chess moves, toy languages and unit tests need a tokenizer with a handful of tokens
and no download; this builds a real ``PreTrainedTokenizerFast`` from an alphabet.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"


def char_tokenizer(alphabet: str, add_bos: bool = True) -> PreTrainedTokenizerFast:
    """A tokenizer with one token per character of ``alphabet`` plus pad, bos, eos and unk.

    Ids: pad 0, bos 1, eos 2, unk 3, then the characters in order. With ``add_bos``
    every encoded text starts with BOS, so even an empty prompt has a token to condition on.
    """
    chars = list(dict.fromkeys(alphabet))
    specials = [PAD, BOS, EOS, UNK]
    clash = [c for c in chars if c in specials]
    if clash:
        raise ValueError(f"alphabet characters {clash} clash with special tokens {specials}.")
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    if add_bos:
        core.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
