"""UCI moves as text: the chess tokenizer, legal moves, legal-move masks."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerFast

from text_env.char_tokenizer import char_tokenizer
from text_env.chess.positions import parse_position

MOVE_CHARS = "abcdefgh12345678qrbn"
"""Every character a UCI move can hold: files, ranks and promotion pieces."""
CHESS_ALPHABET = MOVE_CHARS + "KQRBNPkpw09/ -"
"""Characters of FENs and UCI moves (FEN adds pieces, side to move, counters, '/', ' ' and '-')."""
MAX_MOVE_CHARS = 5
"""The longest UCI move, a promotion such as ``e7e8q``."""
MAX_FEN_TOKENS = 96
"""Prompt window: BOS plus the longest FEN (71 board characters and ~20 for the other fields)."""


def chess_tokenizer() -> PreTrainedTokenizerFast:
    """The character-level tokenizer of the chess task: one token per FEN/UCI character plus specials."""
    return char_tokenizer(CHESS_ALPHABET)


@lru_cache(maxsize=8192)
def legal_moves(fen: str) -> frozenset[str]:
    """The UCI strings of every legal move in ``fen`` (cached: episodes revisit positions)."""
    return frozenset(m.uci() for m in parse_position(fen).generate_legal_moves())


def is_legal_move(fen: str, move: str) -> bool:
    """Whether ``move`` is exactly the UCI text of a legal move in ``fen`` (no spaces, lowercase)."""
    return move in legal_moves(fen)


def move_info(fen: str, move: str) -> dict[str, bool]:
    """What the final ``info`` adds: ``{"legal": bool}``, whether the response is a legal move."""
    return {"legal": is_legal_move(fen, move)}


class LegalMoveMask:
    """Action-mask rule: only tokens that keep the response on the way to a legal UCI move.

    For each position it builds a trie over the legal moves' UCI strings: after a prefix,
    the allowed tokens are the next characters of the moves that start with it, and EOS
    is allowed only when the prefix is itself a legal move. A prefix that no legal move
    starts with (possible only when the env did not enforce the mask) allows EOS alone.

    Example:
        >>> import chess
        >>> rule = LegalMoveMask(chess_tokenizer())
        >>> tok = rule.tokenizer
        >>> start = chess.STARTING_FEN
        >>> sorted(tok.convert_ids_to_tokens(np.flatnonzero(rule(start, tok.encode("g1", add_special_tokens=False)))))
        ['f', 'h']
    """

    def __init__(self, tokenizer: Any, cache_size: int = 4096) -> None:
        ids = {c: tokenizer.convert_tokens_to_ids(c) for c in MOVE_CHARS}
        missing = [c for c, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing or tokenizer.eos_token_id is None:
            raise ValueError(
                f"tokenizer lacks single-character tokens for {missing} or an EOS token; "
                "use text_env.chess.chess_tokenizer()."
            )
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.eos_token_id = int(tokenizer.eos_token_id)
        self._char_of = {int(i): c for c, i in ids.items()}
        self._eos_only = self._frozen_mask([self.eos_token_id])
        self.cache_size = cache_size
        self._tables: dict[str, dict[str, np.ndarray]] = {}  # FEN -> prefix -> mask

    def __call__(self, prompt: str, response_ids: Sequence[int]) -> np.ndarray:
        """Allowed next tokens, bool ``(vocab_size,)``, read-only."""
        table = self._tables.get(prompt)
        if table is None:
            if len(self._tables) >= self.cache_size:
                del self._tables[next(iter(self._tables))]  # drop the oldest position
            table = self._tables[prompt] = self._table(prompt)
        prefix = "".join(self._char_of.get(int(t), "\0") for t in response_ids)
        return table.get(prefix, self._eos_only)

    def _table(self, fen: str) -> dict[str, np.ndarray]:
        allowed: dict[str, set[int]] = {}
        for move in legal_moves(fen):
            for k in range(len(move)):
                allowed.setdefault(move[:k], set()).add(self.tokenizer.convert_tokens_to_ids(move[k]))
            allowed.setdefault(move, set()).add(self.eos_token_id)
        return {prefix: self._frozen_mask(sorted(ids)) for prefix, ids in allowed.items()}

    def _frozen_mask(self, ids: list[int]) -> np.ndarray:
        mask = np.zeros(self.vocab_size, dtype=bool)
        mask[ids] = True
        mask.flags.writeable = False  # shared between episodes
        return mask
