"""ChessMoveCritic-v0: legal-move masks, the Stockfish critic, engine lifetime, positions."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import warnings

import chess
import chess.engine
import gymnasium as gym
import numpy as np
import psutil
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

from reward_models import FunctionRewardModel
from reward_models.hf import resolve_device
from rlhf_common.io import PACKAGE_ROOT, DataError, portable_config, read_jsonl
from text_env import TextGenerationEnv, TextGenerationVectorEnv
from text_env import chess as chess_env
from text_env.chess import (
    EVAL_POSITIONS,
    POLICY_META_FILE,
    TRAIN_POSITIONS,
    LearnedCritic,
    LegalMoveMask,
    StockfishCritic,
    chess_tokenizer,
    critic_agreement,
    grade_moves,
    illegal_rate,
    legal_moves,
    load_positions,
    make_chess_env,
    play_moves,
    win_probability,
)
from text_env.chess import engine as chess_engine

try:
    chess_env.find_stockfish()
    HAVE_STOCKFISH = True
except FileNotFoundError:
    HAVE_STOCKFISH = False
needs_stockfish = pytest.mark.skipif(not HAVE_STOCKFISH, reason="Stockfish not installed (apt-get install stockfish)")

DEPTH = 4  # low depth keeps the engine tests fast
ITALIAN = "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3"
QUEEN_ATTACKED = "rnb1kbnr/ppp1pppp/8/3q4/8/2N5/PPPP1PPP/R1BQKBNR b KQkq - 1 3"  # Scandinavian: the queen must move
MATE_IN_ONE = "6k1/5ppp/8/8/8/8/5PPP/R5K1 w - - 0 1"  # Ra8#
PROMOTION = "3r2k1/4P3/8/8/8/8/1p6/4K3 w - - 0 1"  # e7e8, e7xd8 promote; black's b2 pawn too
NO_CRITIC = FunctionRewardModel(lambda fen, move: 0.0, name="no_critic")


def engine_processes() -> list[psutil.Process]:
    """Live Stockfish children of this test process (zombies count as ended)."""
    alive = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "stockfish" in p.name() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def write_move(env, move: str, eos: bool = True):
    tok = env.unwrapped.task.tokenizer
    ids = tok.convert_tokens_to_ids(list(move)) + ([tok.eos_token_id] if eos else [])
    for i, t in enumerate(ids):
        out = env.step(t)
        if out[2]:
            assert i == len(ids) - 1, f"episode ended early at {move[: i + 1]!r}"
            return out
    raise AssertionError(f"episode did not end after {move!r}")


# ---- spaces, registration, check_env -------------------------------------------------
def test_tokenizer_covers_fens_and_moves():
    tok = chess_tokenizer()
    assert len(tok) == 37
    for fen in load_positions()[:200] + [PROMOTION, MATE_IN_ONE]:
        ids = tok(fen)["input_ids"]
        assert tok.unk_token_id not in ids and len(ids) <= chess_env.MAX_FEN_TOKENS
        assert tok.decode(ids, skip_special_tokens=True) == fen


@pytest.mark.parametrize("mask_illegal", [True, False])
def test_gymnasium_and_sb3_check_env(mask_illegal):
    # check_env steps with unmasked random actions: the chess task takes a masked-out
    # character (the move becomes illegal) instead of raising, so masks pass too.
    env = gym.make("ChessMoveCritic-v0", critic=NO_CRITIC, mask_illegal=mask_illegal, render_mode="ansi")
    check_env(env.unwrapped, skip_render_check=False)
    sb3_checker = pytest.importorskip("stable_baselines3.common.env_checker")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_checker.check_env(make_chess_env(critic=NO_CRITIC, mask_illegal=mask_illegal), warn=True)


@needs_stockfish
def test_registered_id_with_stockfish_critic():
    env = gym.make("text_env:ChessMoveCritic-v0", critic="stockfish", depth=DEPTH)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and env.action_space.n == 37
    assert info["prompt"] in load_positions()
    _, reward, terminated, truncated, info = write_move(env, sorted(legal_moves(info["prompt"]))[0])
    assert terminated and not truncated and 0.0 <= reward <= 1.0 and reward == info["score"]
    env.close()


# ---- legal-move masks ----------------------------------------------------------------
def test_masked_random_policy_plays_only_legal_moves():
    env = make_chess_env(critic=NO_CRITIC)
    env.action_space.seed(0)
    _, info = env.reset(seed=0)
    promotions = 0
    for _ in range(1000):
        terminated = False
        while not terminated:
            assert np.array_equal(env.action_masks(), info["action_mask"].astype(bool))
            _, _, terminated, _, info = env.step(env.action_space.sample(mask=info["action_mask"]))
        move = info["response"]
        assert chess.Move.from_uci(move) in chess.Board(info["prompt"]).legal_moves, info
        assert info["legal"] is True
        assert info["end_reason"] == ("max_new_tokens" if len(move) == 5 else "eos")
        promotions += len(move) == 5
        _, info = env.reset()
    assert promotions == 0  # opening positions: no pawn is about to promote


def brute_force_mask(fen: str, prefix: str, tok) -> np.ndarray:
    moves = [m.uci() for m in chess.Board(fen).legal_moves]
    mask = np.zeros(len(tok), dtype=bool)
    for m in moves:
        if m.startswith(prefix) and len(m) > len(prefix):
            mask[tok.convert_tokens_to_ids(m[len(prefix)])] = True
    if prefix in moves or not mask.any():  # a complete move, or a dead end: EOS
        mask[tok.eos_token_id] = True
    return mask


def test_trie_mask_is_exact():
    tok = chess_tokenizer()
    rule = LegalMoveMask(tok)
    fens = load_positions()[:150] + [PROMOTION, PROMOTION.replace(" w ", " b "), MATE_IN_ONE]
    rng = np.random.default_rng(0)
    for fen in fens:
        prefixes = {m.uci()[:k] for m in chess.Board(fen).legal_moves for k in range(6)}
        prefixes |= {"".join(rng.choice(list("abcdefgh12345678qrbn"), size=k)) for k in range(1, 5) for _ in range(5)}
        for prefix in prefixes:
            ids = tok.convert_tokens_to_ids(list(prefix))
            expected = brute_force_mask(fen, prefix, tok)
            np.testing.assert_array_equal(rule(fen, ids), expected, err_msg=f"{fen} after {prefix!r}")


def test_promotion_masks_and_episode():
    tok = chess_tokenizer()
    rule = LegalMoveMask(tok)
    after_e7e8 = rule(PROMOTION, tok.convert_tokens_to_ids(list("e7e8")))
    assert sorted(tok.convert_ids_to_tokens(np.flatnonzero(after_e7e8))) == ["b", "n", "q", "r"]  # no EOS
    after_e7 = rule(PROMOTION, tok.convert_tokens_to_ids(list("e7")))
    assert sorted(tok.convert_ids_to_tokens(np.flatnonzero(after_e7))) == ["d", "e"]  # e8 or xd8
    black = PROMOTION.replace(" w ", " b ")
    after_b2b1 = rule(black, tok.convert_tokens_to_ids(list("b2b1")))
    assert sorted(tok.convert_ids_to_tokens(np.flatnonzero(after_b2b1))) == ["b", "n", "q", "r"]

    env = make_chess_env(critic=FunctionRewardModel(lambda f, m: float(chess_env.is_legal_move(f, m))))
    env.reset(options={"prompt": PROMOTION})
    _, reward, terminated, _, info = write_move(env, "e7d8n", eos=False)  # 5 characters end the episode
    assert terminated and info["end_reason"] == "max_new_tokens" and reward == 1.0
    env.reset(options={"prompt": PROMOTION})
    _, reward, terminated, _, info = write_move(env, "e7e8")  # EOS is masked out: e7e8 without a piece is no move
    assert terminated and info["legal"] is False and reward == 0.0


def test_masked_out_characters_are_taken_and_make_the_move_illegal():
    tok = chess_tokenizer()
    env = make_chess_env(critic=NO_CRITIC)
    _, info = env.reset(options={"prompt": chess.STARTING_FEN})
    _, _, terminated, _, info = env.step(tok.convert_tokens_to_ids("e"))
    assert not terminated and not info["action_mask"][tok.convert_tokens_to_ids("7")]
    _, _, terminated, _, info = env.step(tok.convert_tokens_to_ids("7"))  # masked out: no white move starts e7
    assert not terminated and tok.convert_ids_to_tokens(np.flatnonzero(info["action_mask"]).tolist()) == ["<eos>"]
    _, reward, terminated, _, info = env.step(tok.eos_token_id)
    assert terminated and info["response"] == "e7" and info["legal"] is False
    vec = chess_env.make_chess_vector_env(2, critic=NO_CRITIC, autoreset_mode=AutoresetMode.DISABLED)
    vec.reset(seed=0)
    vec.step(np.full(2, tok.convert_tokens_to_ids("-")))  # in the alphabet, never in a move
    assert vec.action_masks().sum(1).tolist() == [1, 1]  # EOS only


def test_mask_off_allows_everything():
    env = make_chess_env(critic=NO_CRITIC, mask_illegal=False)
    _, info = env.reset(seed=0)
    assert "action_mask" not in info and env.action_masks().all()


# ---- the Stockfish critic ------------------------------------------------------------
def test_win_probability_formula():
    assert win_probability(chess.engine.Cp(0)) == 0.5
    assert win_probability(chess.engine.Cp(100)) == pytest.approx(1 / (1 + np.exp(-0.368208)))
    assert win_probability(chess.engine.Cp(-300)) == pytest.approx(1 - win_probability(chess.engine.Cp(300)))
    assert win_probability(chess.engine.Mate(3)) == 1.0 and win_probability(chess.engine.Mate(-2)) == 0.0
    assert win_probability(chess.engine.MateGiven) == 1.0


def test_move_accuracy_formula():
    assert chess_env.move_accuracy(0.0) == 1.0 and chess_env.move_accuracy(-0.1) == 1.0
    assert chess_env.move_accuracy(0.05) == pytest.approx(1.031668 * np.exp(-0.2177) - 0.031668)
    assert chess_env.move_accuracy(1.0) == 0.0
    losses = np.linspace(0, 1, 50)
    assert np.all(np.diff([chess_env.move_accuracy(x) for x in losses]) <= 0)


def all_move_scores(critic: StockfishCritic, fen: str) -> dict[str, float]:
    moves = sorted(legal_moves(fen))
    return dict(zip(moves, critic.score([fen] * len(moves), moves), strict=True))


@needs_stockfish
def test_stockfish_scores_best_move_top_and_blunder_low():
    critic = StockfishCritic(depth=6)
    try:
        scores = all_move_scores(critic, QUEEN_ATTACKED)
        assert scores[critic.best_move(QUEEN_ATTACKED)] == 1.0 == max(scores.values())
        assert scores["a7a6"] < 0.2  # leaves the queen to Nxd5
        assert scores["d5d8"] > 0.5  # a safe retreat
        assert all(0.0 <= s <= 1.0 for s in scores.values())

        scores = all_move_scores(critic, MATE_IN_ONE)
        assert critic.best_move(MATE_IN_ONE) == "a1a8" and scores["a1a8"] == 1.0
        assert max(s for m, s in scores.items() if m != "a1a8") < 1.0  # only mate keeps W = 1
    finally:
        critic.close()


@needs_stockfish
def test_centipawn_loss_and_grades():
    critic = StockfishCritic(depth=6)
    try:
        best = critic.best_move(QUEEN_ATTACKED)
        losses = {m: critic.centipawn_loss(QUEEN_ATTACKED, m) for m in (best, "d5d8", "a7a6", "e2e5")}
        assert losses[best] == 0.0 and 0.0 <= losses["d5d8"] < 150
        assert 600 < losses["a7a6"] <= losses["e2e5"]  # the hung queen; an illegal move forfeits: no better
        assert critic.centipawn_loss(MATE_IN_ONE, "a1a8") == 0.0
        assert 0 < critic.centipawn_loss(MATE_IN_ONE, "g1f1") < 1000  # still a rook up: the clip caps the missed mate
        assert critic.centipawn_loss(MATE_IN_ONE, "e2e4") == 2000  # from a mate (+1000) to a forfeit (-1000)
        grades = grade_moves(critic, [QUEEN_ATTACKED] * 3 + [MATE_IN_ONE], [best, "a7a6", "e2e5", "a1a8"])
        assert grades.moves == 4 and grades.illegal_rate == 0.25
        assert grades.mean_cp_loss == pytest.approx((losses["a7a6"] + losses["e2e5"]) / 4)
        a7a6 = critic.move_score(QUEEN_ATTACKED, "a7a6")
        assert grades.mean_score == pytest.approx((1.0 + a7a6 + critic.illegal_score + 1.0) / 4)
    finally:
        critic.close()


def test_clipped_cp():
    assert chess_env.clipped_cp(chess.engine.Cp(250)) == 250
    assert chess_env.clipped_cp(chess.engine.Cp(-4000)) == -1000
    assert chess_env.clipped_cp(chess.engine.Mate(3)) == 1000 and chess_env.clipped_cp(chess.engine.Mate(-1)) == -1000
    assert chess_env.clipped_cp(chess.engine.MateGiven) == 1000


@needs_stockfish
def test_stockfish_scores_are_deterministic_and_cached():
    moves = ["f1c4", "f1b5", "d2d4", "h2h4", "f3g5"]
    first, second = StockfishCritic(depth=8), StockfishCritic(depth=8)
    try:
        a = first.score([ITALIAN] * 5, moves)
        pid = first.pid
        np.testing.assert_array_equal(a, second.score([ITALIAN] * 5, moves))
        np.testing.assert_array_equal(a, first.score([ITALIAN] * 5, moves))  # from the cache
        assert first.pid == pid  # one engine process, reused
    finally:
        first.close()
        second.close()


@needs_stockfish
def test_illegal_and_unparseable_moves_get_the_penalty():
    critic = StockfishCritic(depth=DEPTH)
    bad = ["e2e5", "e1g1", "zz", "", "e2e4 ", " e2e4", "E2E4", "0000", "e2e4q", "e7e8k", "e2e4e2e4"]
    try:
        scores = critic.score([chess.STARTING_FEN] * (len(bad) + 1), ["e2e4", *bad])
        assert 0.0 <= scores[0] <= 1.0
        assert scores[1:].tolist() == [-1.0] * len(bad)
        assert StockfishCritic(depth=DEPTH, illegal_score=-3.0).score([chess.STARTING_FEN], ["e2e5"]).tolist() == [-3.0]
    finally:
        critic.close()
    with pytest.raises(ValueError, match="not a valid FEN"):
        critic.score(["not a fen"], ["e2e4"])


@needs_stockfish
def test_unmasked_env_penalises_illegal_moves():
    env = make_chess_env(critic="stockfish", mask_illegal=False, depth=DEPTH)
    env.reset(options={"prompt": chess.STARTING_FEN})
    _, reward, _, _, info = write_move(env, "e2e5")
    assert reward == info["score"] == -1.0 and info["response"] == "e2e5" and info["legal"] is False
    env.reset(options={"prompt": chess.STARTING_FEN})
    _, reward, _, _, info = write_move(env, "e2e4e", eos=False)
    assert reward == -1.0 and info["end_reason"] == "max_new_tokens"
    env.reset(options={"prompt": chess.STARTING_FEN})
    _, reward, _, _, info = write_move(env, "e2e4")
    assert 0.0 <= reward <= 1.0 and info["legal"] is True
    env.close()


# ---- the learned critic -------------------------------------------------------------
def hide_stockfish(monkeypatch, tmp_path):
    monkeypatch.delenv("STOCKFISH_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(chess_engine, "STOCKFISH_FALLBACK", str(tmp_path / "none"))


def test_learned_critic_is_the_default_and_needs_no_engine(monkeypatch, tmp_path):
    hide_stockfish(monkeypatch, tmp_path)
    env = gym.make("ChessMoveCritic-v0")
    assert isinstance(env.unwrapped.task.reward_model, LearnedCritic)
    env.action_space.seed(0)
    _, info = env.reset(seed=0)
    scores = []
    for _ in range(20):
        terminated = False
        while not terminated:
            _, reward, terminated, _, info = env.step(env.action_space.sample(mask=info["action_mask"]))
        scores.append(reward)
        _, info = env.reset()
    assert all(0.0 < s < 1.0 for s in scores) and len(set(scores)) > 1
    assert engine_processes() == []


def test_learned_critic_penalises_illegal_moves_and_is_deterministic():
    critic = LearnedCritic()
    assert next(critic.model.parameters()).device == resolve_device("auto")  # device="auto" by default
    fens = [chess.STARTING_FEN] * 5 + [QUEEN_ATTACKED] * 2
    moves = ["e2e4", "e2e5", "", "e2e4 ", "g1f3", "d5d8", "a7a6"]
    scores = critic.score(fens, moves)
    assert scores[[1, 2, 3]].tolist() == [-1.0] * 3
    assert all(0.0 < s < 1.0 for s in scores[[0, 4, 5, 6]])
    np.testing.assert_array_equal(scores, LearnedCritic().score(fens, moves))
    batched = critic.score(fens, moves)
    one_by_one = [critic.score([f], [m])[0] for f, m in zip(fens, moves, strict=True)]
    np.testing.assert_allclose(batched, one_by_one, atol=1e-6)


def test_learned_critic_records_its_held_out_quality():
    meta = json.loads((chess_env.LEARNED_CRITIC / "critic.json").read_text())
    held_out = meta["held_out"]
    assert held_out["pairwise_accuracy"] > 0.6
    assert held_out["quiet"]["top1_agreement"] > 1.5 * held_out["quiet"]["top1_chance"]
    assert set(meta["calibration"]) == {"slope", "intercept"}
    with pytest.raises(FileNotFoundError, match="rlhf-gym chess-critic"):
        LearnedCritic(path="/nonexistent")


@needs_stockfish
def test_learned_critic_agrees_with_stockfish_on_held_out_positions():
    rng = np.random.default_rng(0)
    fens = [load_positions(EVAL_POSITIONS)[i] for i in rng.choice(500, size=25, replace=False)]
    engine = StockfishCritic(depth=8)
    try:
        agreement = critic_agreement(LearnedCritic(), engine, fens, moves_per_position=4, min_gap=0.05)
        assert agreement.pairs > 50 and agreement.rate > 0.6
        perfect = critic_agreement(engine, engine, fens[:5])  # Stockfish agrees with itself
        assert perfect.rate == 1.0
    finally:
        engine.close()
    with pytest.raises(ValueError, match="moves_per_position=1"):
        critic_agreement(NO_CRITIC, engine, fens, moves_per_position=1)


def test_sft_policy_illegal_move_rate_with_and_without_masks(tmp_path):
    from agents import AgentConfig, ReferenceAgent
    from text_env.chess import CHESS_POLICY

    fens = load_positions(EVAL_POSITIONS)[:6]
    config = AgentConfig(batch_size=2, log_dir=str(tmp_path), save_steps=0)
    sft = ReferenceAgent(chess_env.chess_task(NO_CRITIC), policy=CHESS_POLICY, config=config)
    unmasked = play_moves(sft, fens, mask_illegal=False)
    assert len(unmasked) == 6 and 0.0 <= illegal_rate(fens, unmasked) <= 1.0
    assert illegal_rate(fens, play_moves(sft, fens, mask_illegal=True)) == 0.0
    assert illegal_rate([chess.STARTING_FEN] * 4, ["e2e4", "e2e5", "", "g1f3"]) == 0.5
    with pytest.raises(ValueError, match="one move per position"):
        illegal_rate(fens, unmasked[:2])


# ---- engine lifetime -----------------------------------------------------------------
@needs_stockfish
def test_close_ends_the_engine_and_a_later_score_restarts_it():
    critic = StockfishCritic(depth=DEPTH)
    assert critic.pid is None  # started lazily
    critic.score([chess.STARTING_FEN], ["e2e4"])
    proc = psutil.Process(critic.pid)
    assert "stockfish" in proc.name() and proc in engine_processes()
    critic.close()
    assert critic.pid is None and proc not in engine_processes()
    critic.score([ITALIAN], ["d2d4"])  # a new position: the cache cannot answer
    assert critic.pid is not None and critic.pid != proc.pid
    critic.close()
    critic.close()  # idempotent
    assert engine_processes() == []


@needs_stockfish
def test_env_close_ends_the_engine():
    env = gym.make("ChessMoveCritic-v0", critic="stockfish", depth=DEPTH)
    env.reset(seed=0)
    write_move(env, sorted(legal_moves(env.unwrapped.prompt))[0])
    assert len(engine_processes()) == 1
    env.close()
    assert engine_processes() == []
    envs = gym.make_vec("ChessMoveCritic-v0", num_envs=2, vectorization_mode="vector_entry_point",
                        critic="stockfish", depth=DEPTH)
    envs.reset(seed=0)
    envs.unwrapped.task.reward_model.score([chess.STARTING_FEN], ["e2e4"])
    assert len(engine_processes()) == 1
    envs.close()
    assert engine_processes() == []


@needs_stockfish
def test_garbage_collection_ends_the_engine():
    env = gym.make("ChessMoveCritic-v0", critic="stockfish", depth=DEPTH)
    env.reset(seed=0)
    write_move(env, sorted(legal_moves(env.unwrapped.prompt))[0])
    pid = env.unwrapped.task.reward_model.pid
    assert [p.pid for p in engine_processes()] == [pid]
    del env
    gc.collect()
    assert engine_processes() == []


@needs_stockfish
def test_interpreter_exit_with_an_open_engine_neither_hangs_nor_leaks():
    code = (
        "from text_env.chess import make_chess_env\n"
        "import chess\n"
        "env = make_chess_env(critic='stockfish', depth=2)\n"
        "print(env.task.reward_model.score([chess.STARTING_FEN], ['e2e4'])[0], env.task.reward_model.pid)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    pid = int(out.stdout.split()[-1])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_missing_stockfish_says_how_to_install(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install stockfish") as e:
        make_chess_env(critic="stockfish", stockfish_path=str(tmp_path / "stockfish"))
    assert "stockfish_path=" in str(e.value)
    hide_stockfish(monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install stockfish"):
        gym.make("ChessMoveCritic-v0", critic="stockfish")
    monkeypatch.setenv("STOCKFISH_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"\$STOCKFISH_PATH="):
        StockfishCritic()


def test_a_hanging_engine_times_out_and_is_killed(tmp_path):
    fake = tmp_path / "fake_engine"
    fake.write_text(  # answers the UCI handshake, then never answers "go"
        "#!/bin/sh\n"
        'while read line; do case "$line" in uci) echo "id name fake"; '
        'echo "option name Threads type spin default 1 min 1 max 8"; '
        'echo "option name Hash type spin default 16 min 1 max 1024"; echo uciok;; '
        "isready) echo readyok;; quit) exit 0;; esac; done\n"
    )
    fake.chmod(0o755)
    critic = StockfishCritic(stockfish_path=str(fake), depth=None, time_limit=0.1, timeout=0.5)
    with pytest.raises(RuntimeError, match="timeout=0.5s"):
        critic.score([chess.STARTING_FEN], ["e2e4"])
    assert critic.pid is None
    alive = [p for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    assert not [p for p in alive if str(fake) in " ".join(p.cmdline())]


def test_unknown_critic_and_bad_arguments():
    with pytest.raises(ValueError, match="critic='gnuchess'"):
        make_chess_env(critic="gnuchess")
    with pytest.raises(TypeError, match="configure the built-in critics"):
        make_chess_env(critic=NO_CRITIC, depth=3)
    with pytest.raises(ValueError, match="must be positive"):
        StockfishCritic(depth=0)


# ---- vector env ----------------------------------------------------------------------
@needs_stockfish
def test_vector_env_plays_legal_moves_with_one_engine():
    n = 6
    envs = gym.make_vec("ChessMoveCritic-v0", num_envs=n, vectorization_mode="vector_entry_point",
                        critic="stockfish", depth=DEPTH, autoreset_mode=AutoresetMode.DISABLED)
    assert isinstance(envs.unwrapped, TextGenerationVectorEnv)
    rng = np.random.default_rng(0)
    for round_ in range(3):
        _, infos = envs.reset(seed=round_)
        finished = {}
        while len(finished) < n:
            masks = envs.action_masks()
            np.testing.assert_array_equal(masks[~envs.unwrapped.done], infos["action_mask"][~envs.unwrapped.done] == 1)
            actions = np.array([rng.choice(np.flatnonzero(m)) for m in masks])
            _, rewards, terminated, _, infos = envs.step(actions)
            for i in np.flatnonzero(terminated):
                if i not in finished and "response" in infos and infos["_response"][i]:
                    finished[i] = (infos["prompt"][i], infos["response"][i], rewards[i])
        for fen, move, reward in finished.values():
            assert chess_env.is_legal_move(fen, move) and 0.0 <= reward <= 1.0
    assert len(engine_processes()) == 1
    envs.close()
    assert engine_processes() == []


def test_vector_env_prompts_match_single_envs():
    vec = chess_env.make_chess_vector_env(4, critic=NO_CRITIC)
    _, infos = vec.reset(seed=7)
    singles = [make_chess_env(critic=NO_CRITIC).reset(seed=7 + i)[1]["prompt"] for i in range(4)]
    assert list(infos["prompt"]) == singles


# ---- positions -----------------------------------------------------------------------
def test_shipped_position_sets_are_valid_and_disjoint():
    train, held_out = load_positions(TRAIN_POSITIONS), load_positions(EVAL_POSITIONS)
    assert len(train) >= 2000 and len(held_out) >= 300
    epd = {chess.Board(f).epd() for f in train}
    assert len(epd) == len(train)
    assert not epd & {chess.Board(f).epd() for f in held_out}
    sources = {row["source"] for _, row in read_jsonl(TRAIN_POSITIONS)}
    assert sources == {"book", "eco", "selfplay"}
    meta = json.loads((TRAIN_POSITIONS.parent / "positions_meta.json").read_text())
    assert meta["counts"]["train"] and sum(meta["counts"]["train"].values()) == len(train)
    assert all(os.path.getsize(p) < 400_000 for p in (TRAIN_POSITIONS, EVAL_POSITIONS))


def test_seeded_resets_give_the_same_positions():
    def prompts(seed):
        env = make_chess_env(critic=NO_CRITIC)
        return [env.reset(seed=seed)[1]["prompt"]] + [env.reset()[1]["prompt"] for _ in range(20)]

    assert prompts(3) == prompts(3)
    assert prompts(3) != prompts(4)


@needs_stockfish
def test_position_builder_is_seeded(tmp_path):
    from rlhf_gym.build import chess_positions as cp

    for path in (cp.BOOK_PATH, cp.ECO_PATH):
        if not os.path.exists(path):
            pytest.skip(f"{path} not installed (apt-get install gnuchess-book pgn-extract)")
    cfg = dict(n_train=24, n_eval=6, max_selfplay_plies=3, selfplay_depth=2, progress=False)
    a = cp.build_positions(cp.PositionSetConfig(seed=1, **cfg))
    b = cp.build_positions(cp.PositionSetConfig(seed=1, **cfg))
    c = cp.build_positions(cp.PositionSetConfig(seed=2, **cfg))
    assert a[:2] == b[:2] and a[:2] != c[:2]
    train, held_out, meta = a
    assert len(train) == 24 and len(held_out) == 6
    assert meta["counts"]["train"]["selfplay"] + meta["counts"]["eval"]["selfplay"] == 12
    assert cp.cli(["--out", str(tmp_path), "--n-train", "8", "--n-eval", "2", "--selfplay-depth", "2",
                   "--max-selfplay-plies", "2", "--no-progress"]) == 0
    assert len(load_positions(tmp_path / "positions.jsonl")) == 8
    assert len(load_positions(tmp_path / "eval_positions.jsonl")) == 2


def test_positions_argument_and_bad_input(tmp_path):
    env = make_chess_env(critic=NO_CRITIC, positions=[ITALIAN])
    assert env.reset(seed=0)[1]["prompt"] == ITALIAN
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"fen": MATE_IN_ONE}) + "\n")
    assert isinstance(make_chess_env(critic=NO_CRITIC, positions=str(path)), TextGenerationEnv)
    with pytest.raises(ValueError, match=r"positions\[1\]: .*not a valid FEN"):
        make_chess_env(critic=NO_CRITIC, positions=[ITALIAN, "rnbqkbnr/8 w"])
    with pytest.raises(ValueError, match="no legal move"):
        load_positions(["7k/5QQ1/8/8/8/8/8/K7 b - - 0 1"])  # checkmated
    with pytest.raises(ValueError, match="empty"):
        load_positions([])
    path.write_text(json.dumps({"fen": ITALIAN}) + "\n" + json.dumps({"fen": "8/8/8/8/8/8/8/8 w - - 0 1"}) + "\n")
    with pytest.raises(DataError, match=r"p.jsonl:2: .*not a legal chess position"):
        load_positions(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_positions(tmp_path / "missing.jsonl")
    env = make_chess_env(critic=NO_CRITIC)
    with pytest.raises(ValueError, match="not a valid FEN"):
        env.reset(options={"prompt": "hello"})


# ---- the learned critic's and the default policy's builders ----------------------------
def test_build_records_hold_no_machine_specific_paths(tmp_path):
    from rlhf_gym.build.chess_critic import CriticBuildConfig
    from rlhf_gym.build.chess_policy import PolicyBuildConfig

    record = portable_config(CriticBuildConfig(out=str(tmp_path / "c"), work=str(tmp_path / "w"),
                                                         stockfish_path="/opt/sf/stockfish"))
    assert "out" not in record and "work" not in record
    assert record["train_positions"] == "text_env/assets/chess/positions.jsonl"
    assert record["stockfish_path"] == "/opt/sf/stockfish"  # outside the project: kept as given
    assert portable_config(PolicyBuildConfig(eval_positions="rel/p.jsonl"))["eval_positions"] == "rel/p.jsonl"
    shipped = [chess_env.ASSETS / "positions_meta.json", chess_env.LEARNED_CRITIC / "critic.json",
               chess_env.CHESS_POLICY / "policy.json"]
    for path in shipped:
        text = path.read_text()
        assert "/tmp" not in text and str(PACKAGE_ROOT) not in text, path
        assert not {"out", "work"} & set(json.loads(text)["config"]), path


@needs_stockfish
def test_weak_engine_demonstrations_are_seeded_legal_and_weak(tmp_path):
    from rlhf_gym.build.chess_policy import PolicyBuildConfig, WeakEngine

    fens = load_positions(EVAL_POSITIONS)[:12]

    def moves(seed):
        engine = WeakEngine(PolicyBuildConfig(seed=seed, progress=False))
        try:
            return [engine.move(f) for f in fens for _ in range(3)]
        finally:
            engine.close()

    a = moves(0)
    assert a == moves(0) and a != moves(1)
    assert all(chess_env.is_legal_move(f, m) for f, m in zip([f for f in fens for _ in range(3)], a, strict=True))
    assert len(set(a)) > len(fens)  # it samples, rather than always playing one move per position


def test_shipped_policy_plays_legal_moves_under_masks():
    import torch

    from text_env.chess import CHESS_POLICY

    if not (CHESS_POLICY / POLICY_META_FILE).is_file():
        pytest.skip("no shipped chess policy")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(CHESS_POLICY).eval()
    meta = json.loads((CHESS_POLICY / POLICY_META_FILE).read_text())
    scores = meta["mean_stockfish_score"]
    assert scores["random_legal_move"] < scores["demonstrator"] < 0.95  # weak on purpose: room for RL
    assert scores["random_legal_move"] < scores["policy_samples_masked"] < scores["demonstrator"]
    env = make_chess_env(critic=NO_CRITIC, positions=load_positions(EVAL_POSITIONS)[:20])
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        terminated = False
        while not terminated:
            mask = torch.as_tensor(obs["attention_mask"])[None]  # (1, W) left-padded
            with torch.no_grad():
                logits = model(input_ids=torch.as_tensor(obs["input_ids"])[None], attention_mask=mask,
                               position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[0, -1]  # (V,)
            logits[~torch.as_tensor(env.action_masks())] = -torch.inf
            obs, _, terminated, _, info = env.step(int(logits.argmax()))
        assert chess_env.is_legal_move(info["prompt"], info["response"])


@pytest.mark.slow
@needs_stockfish
def test_critic_builder_end_to_end(tmp_path):
    from rlhf_gym.build.chess_critic import CriticBuildConfig, build_critic

    config = CriticBuildConfig(out=str(tmp_path / "critic"), work=str(tmp_path / "work"), max_positions=20,
                               depth=4, hidden_size=64, layers=2, num_train_epochs=1, progress=False)
    meta = build_critic(config)
    assert meta["rankings"]["train"] > 15 and 0.0 <= meta["held_out"]["pairwise_accuracy"] <= 1.0
    assert 0.0 <= meta["held_out"]["tactical"]["top1"] <= 1.0
    critic = LearnedCritic(tmp_path / "critic")
    scores = critic.score([chess.STARTING_FEN] * 2, ["e2e4", "e2e5"])
    assert 0.0 < scores[0] < 1.0 and scores[1] == -1.0
    rows = [row for _, row in read_jsonl(tmp_path / "work" / "tactical" / "rankings.jsonl")]
    assert all(row["scores"] == sorted(row["scores"], reverse=True) for row in rows)
    assert build_critic(config)["rankings"] == meta["rankings"]  # labels reused, same data


def test_chess_policy_command_help(capsys):
    from rlhf_gym.cli import main

    with pytest.raises(SystemExit) as e:
        main(["chess-policy", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "rlhf-gym chess-policy" in out and "--num-train-epochs" in out and "--demo-depth" in out
    assert main(["chess-policy", "--temperature-cp", "0", "--out", "/nonexistent/x"]) == 2  # a usage error


@needs_stockfish
def test_chess_policy_builder_end_to_end(tmp_path):
    from rlhf_gym.build.chess_policy import cli

    out = tmp_path / "policy"
    flags = ["--out", str(out), "--work", str(tmp_path / "work"), "--max-positions", "8", "--score-positions", "4",
             "--demo-depth", "1", "--multipv", "3", "--critic-depth", "2", "--n-layer", "1", "--n-embd", "16",
             "--n-head", "2", "--num-train-epochs", "1", "--batch-size", "8", "--no-progress"]
    assert cli(flags) == 0
    meta = json.loads((out / POLICY_META_FILE).read_text())
    scores = meta["mean_stockfish_score"]
    assert set(scores) == {"demonstrator", "random_legal_move", "policy_samples_masked", "policy_samples_unmasked"}
    assert 0.0 <= scores["policy_samples_masked"] <= 1.0  # masks: every move legal
    assert meta["sft"]["steps"] == 2 and meta["config"]["num_train_epochs"] == 1.0
    assert not {"out", "work"} & set(meta["config"])
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


@needs_stockfish
def test_a_stockfish_critic_cannot_be_pickled_and_says_what_to_do():
    import pickle

    critic = StockfishCritic(depth=2)
    try:
        with pytest.raises(TypeError, match=r"pass critic='stockfish'"):
            pickle.dumps(critic)
    finally:
        critic.close()
