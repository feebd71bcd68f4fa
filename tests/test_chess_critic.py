"""Issue 20, a chess critic that sees tactics: the tactical position sets, the move features, the shipped critic."""

from __future__ import annotations

import json
import os

import chess
import numpy as np
import pytest

from rlhf_common.io import read_jsonl
from text_env.chess import (
    ASSETS,
    EVAL_POSITIONS,
    EVAL_TACTICAL_POSITIONS,
    LEARNED_CRITIC,
    TACTICAL_POSITIONS,
    TRAIN_POSITIONS,
    LearnedCritic,
    find_stockfish,
    legal_moves,
    load_positions,
)
from text_env.chess.features import FEATURE_SIZE, SCALARS, exchange_gain, features_of, move_features

try:
    find_stockfish()
    HAVE_STOCKFISH = True
except FileNotFoundError:
    HAVE_STOCKFISH = False
needs_stockfish = pytest.mark.skipif(not HAVE_STOCKFISH, reason="Stockfish not installed (apt-get install stockfish)")

MATE_IN_ONE = "6k1/5ppp/8/8/8/8/5PPP/R5K1 w - - 0 1"  # Ra8#
FREE_QUEEN = "r3k2r/ppp2ppp/2n5/3q4/8/2N5/PPPP1PPP/R1BQKB1R w KQkq - 0 1"  # Nxd5 wins the queen for nothing
BACK_RANK = "6k1/5ppp/8/8/8/8/r4PPP/6K1 w - - 0 1"  # Kh1?? allows Ra1#; h3 makes luft
QUEEN_ATTACKED = "rnb1kbnr/ppp1pppp/8/3q4/8/2N5/PPPP1PPP/R1BQKBNR b KQkq - 1 3"  # Scandinavian: the queen must move


def scalars(fen: str, move: str) -> dict[str, float]:
    return dict(zip(SCALARS, move_features(fen, move)[-len(SCALARS):].tolist(), strict=True))


# ---- features -----------------------------------------------------------------------
def test_static_exchange_evaluation():
    board = chess.Board("4k3/8/3p4/4n3/3P4/8/8/4K3 w - - 0 1")
    assert exchange_gain(board, chess.E5, chess.WHITE, chess.D4) == 2  # PxN, PxP: a knight for a pawn
    board = chess.Board("4k3/8/3p4/4p3/8/8/4Q3/4R1K1 w - - 0 1")
    assert exchange_gain(board, chess.E5, chess.WHITE, chess.E2) == -7  # QxP, PxQ, RxP: the rook x-ray counts
    board = chess.Board("4k3/8/8/4p3/8/8/4Q3/4R1K1 w - - 0 1")
    assert exchange_gain(board, chess.E5, chess.WHITE, chess.E2) == 1  # an undefended pawn


def test_move_features_are_from_the_movers_side():
    fen, move = "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3", "f1b5"
    mirrored = chess.Board(fen).mirror()
    flipped = chess.Move.from_uci(move)
    flipped = chess.Move(chess.square_mirror(flipped.from_square), chess.square_mirror(flipped.to_square))
    np.testing.assert_array_equal(move_features(fen, move), move_features(mirrored.fen(), flipped.uci()))
    assert move_features(fen, move).shape == (FEATURE_SIZE,) and features_of([], []).shape == (0, FEATURE_SIZE)


def test_tactical_features_see_mate_captures_and_hanging_pieces():
    assert scalars(MATE_IN_ONE, "a1a8")["checkmate"] == 1.0 and scalars(MATE_IN_ONE, "a1a7")["checkmate"] == 0.0
    free_queen = scalars(FREE_QUEEN, "c3d5")
    assert free_queen["captured_value"] == 1.0 and free_queen["see"] == 1.0  # 9 / 9: nothing recaptures
    assert scalars(QUEEN_ATTACKED, "a7a6")["their_best_capture"] == 1.0  # the queen stays en prise
    assert scalars(QUEEN_ATTACKED, "d5d8")["their_best_capture"] == 0.0 and scalars(QUEEN_ATTACKED, "d5d8")[
        "escaped_value"] == 1.0
    assert scalars(BACK_RANK, "g1h1")["their_mate_in_one"] == 1.0  # Ra1#
    assert scalars(BACK_RANK, "h2h3")["their_mate_in_one"] == 0.0 == scalars(BACK_RANK, "g1f1")["their_mate_in_one"]


# ---- the tactical position sets ----------------------------------------------------
def test_shipped_tactical_sets_are_valid_disjoint_and_have_the_gap():
    rows = {path: [row for _, row in read_jsonl(path)] for path in (TACTICAL_POSITIONS, EVAL_TACTICAL_POSITIONS)}
    assert len(rows[TACTICAL_POSITIONS]) >= 2000 and len(rows[EVAL_TACTICAL_POSITIONS]) >= 400
    epds = {path: {chess.Board(r["fen"]).epd() for r in part} for path, part in rows.items()}
    quiet = {chess.Board(f).epd() for path in (TRAIN_POSITIONS, EVAL_POSITIONS) for f in load_positions(path)}
    assert all(len(epds[p]) == len(rows[p]) for p in rows)  # no duplicates within a set
    assert not epds[TACTICAL_POSITIONS] & epds[EVAL_TACTICAL_POSITIONS] and not quiet & epds[EVAL_TACTICAL_POSITIONS]
    assert not quiet & epds[TACTICAL_POSITIONS]
    meta = json.loads((ASSETS / "tactical_meta.json").read_text())
    for path, name in ((TACTICAL_POSITIONS, "train"), (EVAL_TACTICAL_POSITIONS, "eval")):
        part = rows[path]
        assert all(r["best"] in legal_moves(r["fen"]) and r["gap_cp"] >= 200 for r in part)
        assert {k: sum(r["kind"] == k for r in part) for k in meta["counts"][name]} == meta["counts"][name]
        assert all(meta["counts"][name][k] > 0 for k in ("mate", "blunder", "capture_check"))
        assert os.path.getsize(path) < 1_000_000
    mates = [r for r in rows[EVAL_TACTICAL_POSITIONS] if r["kind"] == "mate"]
    board = chess.Board(mates[0]["fen"])
    assert board.is_valid() and mates[0]["gap_cp"] > 10_000  # a mate beats any other move by far


@pytest.mark.slow
@needs_stockfish
def test_tactical_builder_keeps_only_positions_with_the_gap(tmp_path):
    from rlhf_gym.build import chess_tactics as ct
    from text_env.chess import close_engine, open_engine, top_moves

    for path in (ct.BOOK_PATH, ct.ECO_PATH):
        if not os.path.exists(path):
            pytest.skip(f"{path} not installed (apt-get install gnuchess-book pgn-extract)")
    config = ct.TacticalSetConfig(out=str(tmp_path), n_train=6, n_eval=3, depth=4, progress=False)
    train, held_out, meta = ct.build_tactical_sets(config)
    assert len(train) == 6 and len(held_out) == 3 and meta["games"]["eval"] >= 1
    assert not {r["fen"] for r in train} & {r["fen"] for r in held_out}
    engine = open_engine(find_stockfish())
    try:
        for row in train + held_out:  # the same shallow search (cleared hash) finds the same gap again
            (best_cp, best), (second_cp, _) = top_moves(engine, chess.Board(row["fen"]), 4, 2, ct.MATE_SCORE)
            assert best.uci() == row["best"] and best_cp - second_cp == row["gap_cp"] >= 200
            assert (row["kind"] == "mate") == (best_cp >= ct.MATE_SCORE - 5)
    finally:
        close_engine(engine)


# ---- the shipped critic ------------------------------------------------------------
@pytest.fixture(scope="module")
def critic() -> LearnedCritic:
    return LearnedCritic()


def all_scores(critic: LearnedCritic, fen: str) -> dict[str, float]:
    moves = sorted(legal_moves(fen))
    return dict(zip(moves, critic.score([fen] * len(moves), moves).tolist(), strict=True))


def test_learned_critic_scores_every_legal_move(critic):
    for fen in load_positions(EVAL_TACTICAL_POSITIONS)[:5] + load_positions(EVAL_POSITIONS)[:5]:
        scores = all_scores(critic, fen)
        assert len(scores) == len(legal_moves(fen)) and all(0.0 < s < 1.0 for s in scores.values())
    assert critic.score([MATE_IN_ONE, MATE_IN_ONE], ["a1a9", "g1g3"]).tolist() == [-1.0, -1.0]


def test_learned_critic_ranks_mate_and_winning_captures_first(critic):
    scores = all_scores(critic, MATE_IN_ONE)
    assert max(scores, key=scores.get) == "a1a8"  # mate in one over every other legal move
    scores = all_scores(critic, FREE_QUEEN)
    assert max(scores, key=scores.get) == "c3d5"  # the free queen
    assert scores["c3d5"] > scores["a2a3"]
    scores = all_scores(critic, QUEEN_ATTACKED)
    assert scores["d5a5"] > scores["a7a6"] and scores["d5d8"] > scores["d5e4"]  # save the queen, not into Nc3's reach


def test_critic_records_quiet_and_tactical_quality():
    meta = json.loads((LEARNED_CRITIC / "critic.json").read_text())
    held_out = meta["held_out"]
    assert set(held_out) >= {"quiet", "tactical", "pairwise_accuracy", "pairs"}
    for name in ("quiet", "tactical"):
        assert held_out[name]["top1"] > 5 * held_out[name]["top1_random"]
        assert held_out[name]["pairwise_accuracy"] > 0.7
    assert meta["network"]["features"] == FEATURE_SIZE and set(meta["calibration"]) == {"slope", "intercept"}


def test_chess_assets_fit_the_budget():
    def size(folder) -> int:
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())

    assert size(ASSETS.parent) < 40_000_000  # every asset of text_env together
    assert size(LEARNED_CRITIC) < 8_000_000
