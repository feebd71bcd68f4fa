"""ChessGame-v0: games against Stockfish on the token interface, engine lifetime, grading."""

from __future__ import annotations

import gc
import warnings

import chess
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode
from test_chess import MATE_IN_ONE, engine_processes, hide_stockfish, needs_stockfish
from test_vector_env import assert_same

from text_env import TextGenerationEnv, TextGenerationVectorEnv
from text_env.chess import (
    CHESS_POLICY,
    EVAL_POSITIONS,
    TRAIN_POSITIONS,
    LearnedCritic,
    StockfishCritic,
    StockfishOpponent,
    grade_games,
    is_legal_move,
    legal_moves,
    load_positions,
    make_chess_game_env,
    play_games,
)

MATED_IN_ONE = "6k1/1p3ppp/8/8/8/8/5PPP/R5K1 b - - 0 1"  # black to move; after b7b6 white mates with Ra8# (Ra1-a8)


def write_move(env, move: str, eos: bool = True):
    """Write ``move`` (then EOS) one character per step; returns the last step's output."""
    tok = env.unwrapped.task.tokenizer
    ids = tok.convert_tokens_to_ids(list(move)) + ([tok.eos_token_id] if eos else [])
    for t in ids:
        out = env.step(t)
    return out


def first_legal(obs, mask) -> int:
    """A scripted policy: the first character allowed by the legal-move mask (so a legal move)."""
    return int(np.flatnonzero(mask)[0])


@needs_stockfish
def test_registered_ids_work_with_no_arguments():
    env = gym.make("ChessGame-v0")
    assert isinstance(env.unwrapped, TextGenerationEnv) and env.action_space.n == 37
    assert isinstance(env.unwrapped.task.reward_model, LearnedCritic)
    assert isinstance(env.unwrapped.task.turn_rule, StockfishOpponent)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and info["prompt"] in load_positions(TRAIN_POSITIONS)
    env.close()
    envs = gym.make_vec("ChessGame-v0", num_envs=2, vectorization_mode="vector_entry_point")
    assert isinstance(envs.unwrapped, TextGenerationVectorEnv)
    envs.reset(seed=0)
    envs.close()


@needs_stockfish
def test_gymnasium_and_sb3_check_env():
    env = gym.make("ChessGame-v0", critic=None, render_mode="ansi", max_turns=3)
    check_env(env.unwrapped, skip_render_check=False)
    sb3_checker = pytest.importorskip("stable_baselines3.common.env_checker")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_checker.check_env(make_chess_game_env(critic=None, max_turns=3), warn=True)
    env.close()


@needs_stockfish
def test_scripted_agent_gets_replies_and_a_new_fen_every_turn():
    env = make_chess_game_env(critic="stockfish", depth=2, max_turns=4, result_weight=0.5)
    obs, info = env.reset(options={"prompt": chess.STARTING_FEN})
    tok, board, rewards = env.task.tokenizer, chess.Board(), []
    for turn in range(1, 5):
        while True:
            obs, reward, terminated, _, info = env.step(first_legal(obs, env.action_masks()))
            if "score" in info:  # the move is complete
                break
            assert reward == 0.0
        rewards.append(reward)
        board.push_uci(info["response"] if turn < 4 else info["agent_moves"][-1])
        if turn < 4:
            assert not terminated and info["turn"] == turn and info["legal"] and info["restart"]
            board.push_uci(info["engine_move"])
            assert info["reply"] == board.fen() and reward == info["score"]
            assert tok.decode(obs["input_ids"][obs["attention_mask"] == 1], skip_special_tokens=True) == board.fen()
            assert list(info["env_tokens"]) == obs["input_ids"][-len(info["env_tokens"]):].tolist()
            assert env.action_masks().any() and env.action_masks().sum() < 37  # masks for the new position
    assert terminated and info["turns"] == 4 and info["result_reason"] == "adjudicated"
    assert info["moves"] == [m.uci() for m in board.move_stack] and len(info["moves"]) == 7  # no answer to move 4
    assert info["final_fen"] == board.fen() and len(info["positions"]) == len(info["agent_moves"]) == 4
    assert info["result"] in (-1.0, 0.0, 1.0) and (abs(info["final_cp"]) >= 200) == (info["result"] != 0.0)
    assert all(0.0 <= s <= 1.0 for s in info["turn_scores"])
    assert rewards[-1] == pytest.approx(info["turn_scores"][-1] + 0.5 * info["result"])
    assert info["return"] == pytest.approx(sum(rewards))
    env.close()


@needs_stockfish
def test_mate_in_one_wins_and_being_mated_loses():
    env = make_chess_game_env(critic=None, result_weight=2.5, max_turns=5)
    env.reset(options={"prompt": MATE_IN_ONE})
    _, reward, terminated, _, info = write_move(env, "a1a8")
    assert terminated and reward == 2.5 and info["result"] == 1.0 and info["result_reason"] == "checkmate"
    assert info["turns"] == 1 and info["final_cp"] == 1000 and "engine_move" not in info
    env.reset(options={"prompt": MATED_IN_ONE})
    _, reward, terminated, _, info = write_move(env, "b7b6")
    assert terminated and reward == -2.5 and info["result"] == -1.0 and info["result_reason"] == "checkmate"
    assert info["engine_move"] == "a1a8" and info["moves"] == ["b7b6", "a1a8"]
    env.close()


@needs_stockfish
def test_an_illegal_move_forfeits_the_game():
    env = make_chess_game_env(critic="stockfish", depth=2)
    env.reset(options={"prompt": chess.STARTING_FEN})
    _, reward, terminated, _, info = write_move(env, "e2e5")  # '5' is masked out: advice, taken
    assert terminated and info["legal"] is False and info["score"] == -1.0
    assert info["result"] == -1.0 and info["result_reason"] == "illegal_move" and reward == -2.0
    assert info["agent_moves"] == ["e2e5"] and info["moves"] == []
    env.close()


@needs_stockfish
@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED])
def test_native_vector_env_equals_sync_vector_env(mode):
    n, options = 3, dict(critic=None, max_turns=2, adjudicate_depth=2, positions=load_positions(EVAL_POSITIONS)[:8])
    native = gym.make_vec("ChessGame-v0", num_envs=n, vectorization_mode="vector_entry_point", autoreset_mode=mode,
                          **options)
    sync = gym.make_vec("ChessGame-v0", num_envs=n, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode},
                        **options)
    assert_same(native.reset(seed=3), sync.reset(seed=3))
    rng = np.random.default_rng(0)
    done, ended = np.zeros(n, dtype=bool), 0
    for step in range(45):
        if mode == AutoresetMode.DISABLED and done.any():
            assert_same(native.reset(options={"reset_mask": done.copy()}),
                        sync.reset(options={"reset_mask": done.copy()}), f"reset@{step}")
        masks = native.unwrapped.action_masks()
        np.testing.assert_array_equal(masks, np.stack([e.unwrapped.action_masks() for e in sync.envs]))
        actions = np.array([rng.choice(np.flatnonzero(m)) for m in masks])
        actions[rng.random(n) < 0.03] = 5  # now and then an off-mask character: an illegal move ends the game
        out_native, out_sync = native.step(actions), sync.step(actions)
        assert_same(out_native, out_sync, f"step {step}")
        done = out_native[2] | out_native[3]
        ended += int(done.sum())
    assert ended >= n  # games ended, so every autoreset path ran
    assert len(engine_processes()) == 1 + n  # one opponent engine for the native batch, one per sync env
    native.close()
    sync.close()
    assert engine_processes() == []


@needs_stockfish
def test_close_ends_both_engines_and_garbage_collection_too():
    env = make_chess_game_env(critic="stockfish", depth=2, max_turns=2)
    env.reset(options={"prompt": chess.STARTING_FEN})
    write_move(env, "e2e4")
    assert len(engine_processes()) == 2  # the critic's and the opponent's
    env.close()
    assert engine_processes() == [] and env.task.turn_rule.pid is None
    env.reset(options={"prompt": MATE_IN_ONE})  # a new position: the critic's cache cannot answer
    write_move(env, "h2h3")  # a closed env's engines start again when needed
    assert len(engine_processes()) == 2
    del env
    gc.collect()
    assert engine_processes() == []


@needs_stockfish
def test_skill_level_opponent_plays_legal_replies():
    env = make_chess_game_env(critic=None, skill_level=0, temperature_cp=None, max_turns=2)
    env.reset(options={"prompt": chess.STARTING_FEN})
    _, _, _, _, info = write_move(env, "e2e4")
    assert info["engine_move"] in legal_moves("rnbqkbnr/pppppppp/8/8/4P3/8/PPPP1PPP/RNBQKBNR b KQkq - 0 1")
    assert env.task.turn_rule.options == {"Skill Level": 0}
    env.close()


def test_missing_engine_says_how_to_install(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install stockfish"):
        make_chess_game_env(critic=None, stockfish_path=str(tmp_path / "stockfish"))
    hide_stockfish(monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError, match="ChessGame-v0's opponent needs the Stockfish engine") as e:
        gym.make("ChessGame-v0")
    assert "apt-get install stockfish" in str(e.value) and "critic='learned'" not in str(e.value)


@needs_stockfish
def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="max_turns=0"):
        make_chess_game_env(critic=None, max_turns=0)
    with pytest.raises(ValueError, match="skill_level=21"):
        make_chess_game_env(critic=None, skill_level=21, temperature_cp=None)
    with pytest.raises(ValueError, match="pass temperature_cp=None"):
        make_chess_game_env(critic=None, skill_level=3)
    with pytest.raises(ValueError, match="critic='gnuchess'"):
        make_chess_game_env(critic="gnuchess")


@needs_stockfish
def test_default_policy_plays_legal_moves_and_games_are_graded(tmp_path):
    from agents import AgentConfig, ReferenceAgent
    from text_env.chess import chess_game_task

    fens = load_positions(EVAL_POSITIONS)[:3]
    config = AgentConfig(batch_size=1, seed=0, log_dir=str(tmp_path / "play"), save_steps=0)
    task = chess_game_task(critic=None, positions=fens)
    assert task.default_policy == str(CHESS_POLICY)  # ChessMoveCritic-v0's policy: it writes a move for a FEN
    agent = ReferenceAgent(task, config=config)  # no policy given: the task's default
    games = play_games(agent, fens, max_turns=3, adjudicate_depth=4)
    for game in games:
        assert all(is_legal_move(f, m) for f, m in zip(game["positions"], game["agent_moves"], strict=True))
        assert game["turns"] == len(game["agent_moves"]) <= 3
    grader = StockfishCritic(depth=4)
    grades = grade_games(grader, games)
    grader.close()
    assert grades.games == 3 and grades.wins + grades.draws + grades.losses == 3
    assert grades.moves.moves == sum(g["turns"] for g in games) and grades.moves.illegal_rate == 0.0
    assert grades.moves.mean_cp_loss >= 0.0 and -1.0 <= grades.mean_result <= 1.0
    scripted = play_games(first_legal, fens[:1], max_turns=2)  # a plain function(obs, mask) plays too
    assert play_games(first_legal, fens[:1], max_turns=2)[0]["moves"] == scripted[0]["moves"]  # seeded
    assert scripted[0]["turns"] <= 2 and all(is_legal_move(f, m) for f, m in zip(
        scripted[0]["positions"], scripted[0]["agent_moves"], strict=True))
    assert engine_processes() == []


@needs_stockfish
def test_the_sampling_opponent_is_seeded_by_the_env():
    def game(seed: int) -> list[str]:
        env = make_chess_game_env(critic=None, max_turns=3)
        obs, _ = env.reset(seed=seed, options={"prompt": chess.STARTING_FEN})
        terminated = False
        while not terminated:
            obs, _, terminated, _, info = env.step(first_legal(obs, env.action_masks()))
        env.close()
        return info["moves"]

    games = [game(seed) for seed in range(4)]
    assert games[0] == game(0) and len(set(map(tuple, games))) > 1  # one seed, one game; seeds differ
