"""GuessNumber-v0: the Gymnasium contract, the game's replies and rewards, SFT contexts, the default policy."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode
from test_vector_env import assert_same

from agents.demonstrations import encode_demonstration
from agents.models import load_model
from rlhf_gym.build.guess_number_policy import (
    EVAL_SEED,
    bisection_pick,
    demonstrations,
    game_summary,
    new_envs,
    play_policy,
    play_scripted,
    sloppy_pick,
)
from text_env import TextGenerationEnv, TextGenerationVectorEnv
from text_env.guess_number import (
    GUESS_NUMBER_POLICY,
    INVALID,
    OUT_OF_RANGE,
    POLICY_META_FILE,
    GuessNumberGame,
    GuessNumberRule,
    guess_number_task,
    guess_number_tokenizer,
    make_guess_number_env,
)

OPTIONS = {"low": 1, "high": 100, "max_turns": 10}


@dataclasses.dataclass
class FixedSecret(GuessNumberRule):
    secret: int = 0

    def __call__(self, prompt, rng):
        return GuessNumberGame(self.secret, self.low, self.high, self.max_turns, self.turn_cost, self.solve_reward)


def fixed_secret_env(secret: int, **options) -> TextGenerationEnv:
    """A GuessNumber env whose every game hides ``secret``."""
    task = guess_number_task(**options)
    rule = FixedSecret(**dataclasses.asdict(task.turn_rule), secret=secret)
    return TextGenerationEnv(dataclasses.replace(task, turn_rule=rule), render_mode="ansi")


def write(env: TextGenerationEnv, text: str, eos: bool = False):
    """Write ``text`` one character per step (then EOS); the last step's output."""
    tok = env.task.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])
    for token in ids:
        out = env.step(token)
    return out


# ---- registration, spaces, check_env ----------------------------------------------------------
def test_make_and_make_vec_with_no_arguments():
    env = gym.make("GuessNumber-v0")
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and env.action_space.n == 36
    assert info["prompt"] == "Guess 1-100.\n"
    envs = gym.make_vec("GuessNumber-v0", vectorization_mode="vector_entry_point")
    assert isinstance(envs.unwrapped, TextGenerationVectorEnv)
    obs, _ = envs.reset(seed=0)
    assert obs["input_ids"].shape == (1, 171)
    envs.step(np.array([5]))
    env.close()
    envs.close()


def test_gymnasium_and_sb3_check_env():
    check_env(gym.make("GuessNumber-v0", render_mode="ansi").unwrapped, skip_render_check=False)
    sb3_checker = pytest.importorskip("stable_baselines3.common.env_checker")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_checker.check_env(make_guess_number_env(), warn=True)


def test_tokenizer_round_trips_the_game():
    tok = guess_number_tokenizer()
    text = "Guess 0-9876.\n5\nhigher\ndog\ninvalid\n123\nout of range\n7\nlower\n"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text


# ---- the game ----------------------------------------------------------------------------------
def test_replies_on_constructed_guesses():
    game = GuessNumberGame(secret=37, low=1, high=100, max_turns=10, turn_cost=0.05, solve_reward=1.0)
    expected = [("50", "lower\n", 50), ("20", "higher\n", 20), ("036", "higher\n", 36),  # leading zeros count
                ("abc", "invalid\n", None), ("", "invalid\n", None), (" 5", "invalid\n", None),
                ("0", "out of range\n", 0), ("101", "out of range\n", 101)]
    for response, text, guess in expected:
        reply = game.reply(response)
        assert reply.text == text and reply.reward == pytest.approx(-0.05), response
        assert reply.info.get("guess") == guess and not reply.info["solved"] and "secret" not in reply.info
    reply = game.reply("37")
    assert reply.text is None and reply.reward == pytest.approx(0.95)
    assert reply.info == {"feedback": "correct", "solved": True, "guess": 37, "secret": 37}


def test_episode_through_the_env_rewards_infos_and_window():
    env = fixed_secret_env(37)
    obs, _ = env.reset(seed=0)
    _, reward, terminated, _, info = write(env, "50\n")
    assert (reward, terminated, info["feedback"], info["turn"]) == (pytest.approx(-0.05), False, "lower", 1)
    assert env.task.tokenizer.decode(info["env_tokens"]) == "lower\n" and not info["restart"]
    _, reward, terminated, _, info = write(env, "a", eos=True)  # EOS ends a guess too
    assert info["feedback"] == INVALID and info["end_reason"] == "eos"
    _, _, _, _, info = write(env, "1234")  # the length cap (4 characters) ends it
    assert info["feedback"] == OUT_OF_RANGE and info["end_reason"] == "max_new_tokens"
    obs, reward, terminated, _, info = write(env, "37\n")
    assert terminated and reward == pytest.approx(0.95)
    assert info["solved"] and info["secret"] == 37 and info["turns"] == 4
    assert info["return"] == pytest.approx(1.0 - 4 * 0.05) and info["score"] == 0.0
    window = env.task.tokenizer.decode(obs["input_ids"][obs["attention_mask"] == 1])
    assert window == "<bos>Guess 1-100.\n50\nlower\na<eos>invalid\n1234out of range\n37\n"
    assert env.render().startswith("Guess 1-100.\n50") and env.render().endswith("range\n37")


def test_turn_limit_ends_an_unsolved_game_and_reveals_the_secret():
    env = fixed_secret_env(5, max_turns=3)
    env.reset(seed=0)
    for turn in range(3):
        _, reward, terminated, _, info = write(env, "9\n")
        assert terminated == (turn == 2) and reward == pytest.approx(-0.05)
    assert not info["solved"] and info["secret"] == 5 and info["turns"] == 3
    assert info["return"] == pytest.approx(-0.15) and info["feedback"] == "lower"


def test_seeds_fix_the_secret():
    def secrets(seed):
        finals, _ = play_scripted(bisection_pick, new_envs(20, OPTIONS), range(seed, seed + 20), 0)
        return [f["secret"] for f in finals]

    assert secrets(0) == secrets(0) and secrets(0) != secrets(100)
    assert all(1 <= s <= 100 for s in secrets(0))


def test_game_seed_gives_envs_the_same_game_whatever_their_rng():
    def secret(env_seed, options):
        env = make_guess_number_env(**OPTIONS)
        env.reset(seed=env_seed, options=options)
        for _ in range(OPTIONS["max_turns"]):  # a guess outside the range never solves
            _, _, terminated, _, info = write(env, "0\n")
        assert terminated
        return info["secret"]

    shared = [secret(s, {"game_seed": 7}) for s in range(5)]
    assert len(set(shared)) == 1 and shared[0] == secret(99, {"game_seed": 7, "prompt": "guess"})
    assert len({secret(s, {}) for s in range(5)}) > 1  # without it, the env's own RNG draws each game
    with pytest.raises(ValueError, match="game_seed must be a non-negative int"):
        make_guess_number_env(**OPTIONS).reset(options={"game_seed": -1})


def test_rollout_groups_share_their_game():
    from agents.rollout import make_rollout_env, rollout

    task = guess_number_task(**OPTIONS)

    def secrets(seed, group_size, num_envs=8):
        batch = rollout(None, make_rollout_env(task, num_envs), seed=seed, group_size=group_size)
        return [info["secret"] for info in batch.infos]

    groups = np.array(secrets(0, 4)).reshape(2, 4)
    assert (groups == groups[:, :1]).all() and groups[0, 0] != groups[1, 0]
    assert len(set(secrets(0, 1))) > 1  # one sample per prompt: each sub-env draws its own game
    # A batch split over two processes (seeds offset by the sub-envs before them) draws the same games.
    assert secrets(0, 4, 4) + secrets(4, 4, 4) == groups.ravel().tolist()


@pytest.mark.parametrize("low,high", [(1, 100), (0, 1), (10, 1000)])
def test_bisection_solves_every_secret_within_log2_range_plus_one_turns(low, high):
    secrets = range(low, high + 1) if high - low < 200 else np.random.default_rng(0).integers(low, high + 1, 200)
    bound = math.ceil(math.log2(high - low + 1)) + 1
    options = {"low": low, "high": high, "max_turns": bound}
    envs = [fixed_secret_env(int(s), **options) for s in secrets]
    finals, _ = play_scripted(bisection_pick, envs, [0] * len(envs), 0)
    for secret, info in zip(secrets, finals, strict=True):
        assert info["solved"] and info["secret"] == secret
        assert info["turns"] <= math.ceil(math.log2(high - low + 2))  # the tight bound: n numbers, log2(n + 1)
        assert info["return"] == pytest.approx(1.0 - 0.05 * info["turns"])
        assert info["turn_scores"] == [0.0] * info["turns"]


def test_sloppy_demonstrator_stays_consistent_and_is_slower_than_bisection():
    rng = np.random.default_rng(0)
    for spread in (0.0, 0.5, 1.0):
        picks = [sloppy_pick(spread)(20, 60, rng) for _ in range(300)]
        assert all(20 <= p <= 60 for p in picks)
        assert (min(picks), max(picks)) == {0.0: (40, 40), 0.5: (30, 50), 1.0: (20, 60)}[spread]
    seeds = range(EVAL_SEED, EVAL_SEED + 100)
    sloppy = game_summary(play_scripted(sloppy_pick(0.5), new_envs(100, OPTIONS), seeds, 0)[0])
    perfect = game_summary(play_scripted(bisection_pick, new_envs(100, OPTIONS), seeds, 0)[0])
    assert perfect["solve_rate"] == 1.0 and sloppy["solve_rate"] >= 0.95  # it rarely runs out of turns
    assert perfect["mean_turns"] < sloppy["mean_turns"] < perfect["mean_turns"] + 1


# ---- SFT demonstrations are the env's windows --------------------------------------------------
def test_sft_contexts_are_the_env_windows():
    """Every turn's context in a demonstration tokenizes to exactly the window the env showed at that turn."""
    tok = guess_number_tokenizer()
    seeds = range(7, 12)
    windows = [[] for _ in seeds]
    newline = tok.convert_tokens_to_ids("\n")

    def recording(act):
        def wrapped(obs, running):
            tokens = act(obs, running)
            for i in np.flatnonzero(running):
                if obs["input_ids"][i, -1] == newline:  # the prompt or a reply just ended: a guess starts
                    windows[i].append((obs["input_ids"][i][obs["attention_mask"][i] == 1].tolist(), tokens[i]))
            return tokens
        return wrapped

    finals, _ = play_scripted(sloppy_pick(0.5), new_envs(len(seeds), OPTIONS), seeds, 3, act=recording)
    rows = demonstrations(seeds, OPTIONS, 3, sloppy_pick(0.5))  # the same games: same seeds, same demonstrator seed
    for row, turns, info in zip(rows, windows, finals, strict=True):
        demo = encode_demonstration(tok, row, "test", max_length=1000, append_eos=False)
        assert len(turns) == info["turns"] and demo.prompt_len == len(turns[0][0])
        for window, first_token in turns:
            assert demo.input_ids[: len(window)] == window  # the SFT context is the env's window
            assert tok.decode(demo.input_ids[: len(window)]) == tok.decode(window)
            assert demo.input_ids[len(window)] == first_token  # and the target is the guess the env got


# ---- native vector env ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED])
def test_native_vector_env_equals_sync_vector_env(mode):
    n = 8
    options = {"max_turns": 4}
    native = gym.make_vec("GuessNumber-v0", num_envs=n, vectorization_mode="vector_entry_point",
                          autoreset_mode=mode, **options)
    sync = gym.make_vec("GuessNumber-v0", num_envs=n, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode},
                        **options)
    assert native.observation_space == sync.observation_space and native.action_space == sync.action_space
    assert_same(native.reset(seed=3), sync.reset(seed=3))
    tok = guess_number_tokenizer()
    digits = np.array(tok.convert_tokens_to_ids(list("0123456789")))
    newline = tok.convert_tokens_to_ids("\n")
    rng = np.random.default_rng(0)
    done = np.zeros(n, dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the window holds every turn: no truncation warning
        for step in range(120):
            if mode == AutoresetMode.DISABLED and done.any():
                reset = {"reset_mask": done.copy(), "game_seed": step}  # the restarted games all hide one secret
                assert_same(native.reset(options=dict(reset)), sync.reset(options=dict(reset)), f"reset@{step}")
            actions = rng.choice(digits, n)  # mostly digits, some newlines, some anything
            actions[rng.random(n) < 0.35] = newline
            wild = rng.random(n) < 0.1
            actions[wild] = rng.integers(0, native.single_action_space.n, wild.sum())
            out_native, out_sync = native.step(actions), sync.step(actions)
            assert_same(out_native, out_sync, f"step {step}")
            done = out_native[2] | out_native[3]
    native.close()
    sync.close()


# ---- bad input ---------------------------------------------------------------------------------------
def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"low=5, high=5; need 0 <= low < high"):
        gym.make("GuessNumber-v0", low=5, high=5)
    with pytest.raises(ValueError, match="0 <= low < high"):
        make_guess_number_env(low=-3)
    with pytest.raises(ValueError, match=r"max_turns=0 must be >= 1"):
        make_guess_number_env(max_turns=0)
    with pytest.raises(TypeError, match="high=10.5 must be an integer"):
        make_guess_number_env(high=10.5)
    with pytest.raises(ValueError, match="must be finite"):
        make_guess_number_env(turn_cost=float("nan"))


def test_builder_command_help_and_usage_errors(capsys):
    from rlhf_gym.cli import main

    with pytest.raises(SystemExit) as e:
        main(["guess-number-policy", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "rlhf-gym guess-number-policy" in out and "--games" in out and "--max-turns" in out
    assert main(["guess-number-policy", "--low", "9", "--high", "3", "--out", "/nonexistent/x"]) == 2
    assert main(["guess-number-policy", "--games", "0", "--out", "/nonexistent/x"]) == 2


# ---- the default policy ------------------------------------------------------------------------------
def test_shipped_policy_solves_some_held_out_games_but_not_all():
    if not (GUESS_NUMBER_POLICY / POLICY_META_FILE).is_file():
        pytest.skip("no shipped GuessNumber policy")
    meta = json.loads((GUESS_NUMBER_POLICY / POLICY_META_FILE).read_text())
    games = meta["games"]
    assert games["bisection"]["solve_rate"] == 1.0 and games["bisection"]["mean_turns"] < 7
    assert 0.2 < games["policy_sampled"]["solve_rate"] < 0.95
    assert games["policy_sampled"]["mean_turns"] > games["bisection"]["mean_turns"]  # room for RL
    seeds = range(EVAL_SEED + 10_000, EVAL_SEED + 10_040)  # not the games policy.json measured
    task = make_guess_number_env().task
    assert task.default_policy == str(GUESS_NUMBER_POLICY)  # what agents load when given no policy
    model = load_model(None, torch.device("cpu"), task)
    summary = game_summary(play_policy(model, seeds, OPTIONS, seed=0))
    assert 0.2 < summary["solve_rate"] < 0.95
    assert sum(p.stat().st_size for p in GUESS_NUMBER_POLICY.iterdir()) < 3e6


def test_builder_end_to_end(tmp_path):
    from rlhf_gym.build.guess_number_policy import cli

    out = tmp_path / "policy"
    flags = ["--out", str(out), "--work", str(tmp_path / "work"), "--games", "40", "--val-games", "4",
             "--eval-games", "4", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--num-train-epochs", "1",
             "--batch-size", "8", "--num-threads", "1", "--no-progress"]
    assert cli(flags) == 0
    meta = json.loads((out / POLICY_META_FILE).read_text())
    assert set(meta["games"]) == {"policy_sampled", "demonstrator", "bisection"}
    assert meta["games"]["bisection"]["solve_rate"] == 1.0 and meta["games"]["policy_sampled"]["games"] == 4
    assert meta["sft"]["steps"] == 5 and meta["sft"]["demonstrations"] == 40
    assert not {"out", "work"} & set(meta["config"])
    for name in ("model.safetensors", "tokenizer.json", "MODEL_CARD.md"):
        assert (out / name).is_file()
    assert "| bisection | 100.0% |" in (out / "MODEL_CARD.md").read_text()
