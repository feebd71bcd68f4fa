"""How the learned critic sees a move: the board after it, attack maps, the move itself, exchange and threat features.

Everything is from the mover's side: when Black moves, board and move are mirrored (ranks
flipped, colours swapped), so "us" is always White. :func:`move_features` returns one
``float32`` vector of :data:`FEATURE_SIZE` values:

* the board after the move: 12 piece planes of 64 squares (our six piece types, then theirs);
* attack maps after the move: for each square, how many of our and of their pieces attack it (capped at 2);
* the move: its from and to squares (one-hot), the moving piece type, the captured piece type, the promotion;
* :data:`SCALARS`, tactical facts a one-move look-ahead shows: check, mate, the static exchange
  evaluation (SEE) of the move, the best capture each side has afterwards (by SEE), whether
  the opponent then mates in one or we threaten to, material, king safety.

SEE is the classical swap algorithm (e.g. the Chess Programming Wiki's "Static Exchange
Evaluation"): both sides capture on one square with their least valuable attacker, x-rays
included, pins ignored, and either may stop. Piece values: pawn 1, knight 3, bishop 3, rook 5, queen 9.
"""

from __future__ import annotations

from collections.abc import Sequence

import chess
import numpy as np

VALUES = {chess.PAWN: 1, chess.KNIGHT: 3, chess.BISHOP: 3, chess.ROOK: 5, chess.QUEEN: 9, chess.KING: 100}
"""Piece values of the exchange features (the king's only stops it from capturing into an attack)."""
SCALARS = (
    "gives_check", "checkmate", "draw", "castling", "captured_value", "see", "escaped_value",
    "their_best_capture", "their_second_capture", "our_best_capture", "our_second_capture",
    "material", "their_mate_in_one", "our_mate_threat", "their_replies", "their_king_zone", "our_king_zone",
)
"""Names of the scalar features, in order (values in about [-1, 1]: exchange values are divided by 9)."""
PLANES = 12 * 64
ATTACKS = 2 * 64
MOVE_SIZE = 64 + 64 + 6 + 6 + 4
FEATURE_SIZE = PLANES + ATTACKS + MOVE_SIZE + len(SCALARS)
"""Length of a feature vector."""
PROMOTIONS = (chess.QUEEN, chess.ROOK, chess.BISHOP, chess.KNIGHT)


def exchange_gain(board: chess.Board, target: chess.Square, side: chess.Color, first: chess.Square,
                  occupied: int | None = None) -> int:
    """SEE: what ``side`` wins by capturing on ``target`` with the piece on ``first``.

    Both sides then recapture with their least valuable attacker while it pays (values: :data:`VALUES`);
    ``occupied`` overrides the board's occupancy.
    """
    occupied = board.occupied if occupied is None else occupied
    victim = board.piece_type_at(target)
    gains = [VALUES[victim] if victim else 0]
    on_square = VALUES[board.piece_type_at(first)]  # type: ignore[index]
    occupied &= ~chess.BB_SQUARES[first]
    side = not side
    while True:
        attacker = _least_valuable_attacker(board, target, side, occupied)
        if attacker is None:
            break
        square, piece_type = attacker
        if piece_type == chess.KING and board.attackers_mask(not side, target, occupied) & occupied:
            break  # the king may not capture into an attack
        gains.append(on_square - gains[-1])
        on_square = VALUES[piece_type]
        occupied &= ~chess.BB_SQUARES[square]
        side = not side
    for i in range(len(gains) - 1, 0, -1):
        gains[i - 1] = -max(-gains[i - 1], gains[i])
    return gains[0]


def _least_valuable_attacker(
    board: chess.Board, target: chess.Square, side: chess.Color, occupied: int
) -> tuple[chess.Square, chess.PieceType] | None:
    attackers = board.attackers_mask(side, target, occupied) & occupied
    if not attackers:
        return None
    for piece_type in VALUES:
        mask = attackers & board.pieces_mask(piece_type, side)
        if mask:
            return chess.lsb(mask), piece_type
    return None


def best_captures(board: chess.Board, side: chess.Color) -> tuple[int, int]:
    """The two largest SEE gains ``side`` could make by capturing a piece of the other side (0 if none)."""
    gains = [0, 0]
    for square in chess.scan_forward(board.occupied_co[not side] & ~board.kings):
        attacker = _least_valuable_attacker(board, square, side, board.occupied)
        if attacker is not None:
            gains.append(exchange_gain(board, square, side, attacker[0]))
    gains.sort(reverse=True)
    return max(gains[0], 0), max(gains[1], 0)


def _mates_in_one(board: chess.Board) -> bool:
    """Whether the side to move has a mating move."""
    for move in board.legal_moves:
        if board.gives_check(move):
            board.push(move)
            mate = board.is_checkmate()
            board.pop()
            if mate:
                return True
    return False


def _king_zone_attacks(board: chess.Board, king_color: chess.Color) -> int:
    """Attacks of the other side on the king of ``king_color`` and the squares around it."""
    king = board.king(king_color)
    if king is None:
        return 0
    zone = chess.BB_KING_ATTACKS[king] | chess.BB_SQUARES[king]
    return sum(len(board.attackers(not king_color, sq)) for sq in chess.scan_forward(zone))


def _material(board: chess.Board) -> int:
    return sum(VALUES[pt] * (len(board.pieces(pt, chess.WHITE)) - len(board.pieces(pt, chess.BLACK)))
               for pt in PROMOTIONS + (chess.PAWN,))


def _scalars(before: chess.Board, move: chess.Move, after: chess.Board) -> list[float]:
    """The :data:`SCALARS` of White's ``move`` from ``before`` to ``after`` (Black to move there)."""
    captured = chess.PAWN if before.is_en_passant(move) else before.piece_type_at(move.to_square)
    escaped = 0
    if before.attackers_mask(chess.BLACK, move.from_square):
        attacker = _least_valuable_attacker(before, move.from_square, chess.BLACK, before.occupied)
        escaped = max(exchange_gain(before, move.from_square, chess.BLACK, attacker[0]), 0) if attacker else 0
    their = best_captures(after, chess.BLACK)
    ours = best_captures(after, chess.WHITE)
    checkmate = after.is_checkmate()
    our_threat = False
    if not after.is_check() and not after.is_game_over():
        after.push(chess.Move.null())
        our_threat = _mates_in_one(after)
        after.pop()
    return [
        float(after.is_check()), float(checkmate),
        float(after.is_stalemate() or after.is_insufficient_material()), float(before.is_castling(move)),
        (VALUES[captured] if captured else 0) / 9, exchange_gain(before, move.to_square, chess.WHITE,
                                                                  move.from_square) / 9 if captured else 0.0,
        escaped / 9, their[0] / 9, their[1] / 9, ours[0] / 9, ours[1] / 9,
        max(min(_material(after) / 39, 1.0), -1.0),
        float(not checkmate and _mates_in_one(after)), float(our_threat),
        after.legal_moves.count() / 40, _king_zone_attacks(after, chess.BLACK) / 8,
        _king_zone_attacks(after, chess.WHITE) / 8,
    ]


def move_features(fen: str, move: str) -> np.ndarray:
    """The feature vector (``float32``, :data:`FEATURE_SIZE`) of a legal UCI ``move`` in ``fen``."""
    before = chess.Board(fen)
    mv = chess.Move.from_uci(move)
    if before.turn == chess.BLACK:
        before = before.mirror()
        mv = chess.Move(chess.square_mirror(mv.from_square), chess.square_mirror(mv.to_square), mv.promotion)
    after = before.copy(stack=False)
    after.push(mv)
    out = np.zeros(FEATURE_SIZE, dtype=np.float32)
    for square, piece in after.piece_map().items():
        out[(piece.piece_type - 1 + (0 if piece.color else 6)) * 64 + square] = 1.0
    for square in chess.SQUARES:
        out[PLANES + square] = min(len(after.attackers(chess.WHITE, square)), 2) / 2
        out[PLANES + 64 + square] = min(len(after.attackers(chess.BLACK, square)), 2) / 2
    at = PLANES + ATTACKS
    out[at + mv.from_square] = out[at + 64 + mv.to_square] = 1.0
    out[at + 128 + before.piece_type_at(mv.from_square) - 1] = 1.0  # type: ignore[operator]
    captured = chess.PAWN if before.is_en_passant(mv) else before.piece_type_at(mv.to_square)
    if captured:
        out[at + 134 + captured - 1] = 1.0
    if mv.promotion:
        out[at + 140 + PROMOTIONS.index(mv.promotion)] = 1.0
    out[at + MOVE_SIZE:] = _scalars(before, mv, after)
    return out


def features_of(fens: Sequence[str], moves: Sequence[str]) -> np.ndarray:
    """``(len(moves), FEATURE_SIZE)`` features of legal (FEN, move) pairs."""
    if not moves:
        return np.zeros((0, FEATURE_SIZE), dtype=np.float32)
    return np.stack([move_features(fen, move) for fen, move in zip(fens, moves, strict=True)])
