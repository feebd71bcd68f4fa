"""``ChessMoveCritic-v0``: the chess task on the generic text env, and its registered entry points."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from gymnasium.vector import AutoresetMode

from reward_models import RewardModel
from text_env.chess.critics import make_critic
from text_env.chess.moves import MAX_FEN_TOKENS, MAX_MOVE_CHARS, LegalMoveMask, chess_tokenizer, move_info
from text_env.chess.positions import CHESS_POLICY, load_positions
from text_env.env import TextGenerationEnv
from text_env.factory import prepare_worker
from text_env.task import Task
from text_env.turns import TurnRule
from text_env.vector_env import TextGenerationVectorEnv


def chess_task(
    critic: str | RewardModel = "learned",
    mask_illegal: bool = True,
    positions: Sequence[str] | str | os.PathLike[str] | None = None,
    turn_rule: TurnRule | None = None,
    max_turns: int = 8,
    **critic_options: Any,
) -> Task:
    """The chess-move task: FEN prompts, UCI responses, a move critic, legal-move masks.

    ``critic_options`` go to the critic (e.g. ``depth=6``, ``stockfish_path=...``). With a
    ``turn_rule`` (ChessGame-v0's opponent, :mod:`text_env.chess.game`) an episode is up to
    ``max_turns`` moves, and after each reply the agent sees the new position's FEN alone as a
    fresh prompt (``next_observation="state"``), so every move is written for a FEN as here.
    """
    prepare_worker()
    tokenizer = chess_tokenizer()
    return Task(
        prompts=load_positions(positions),
        tokenizer=tokenizer,
        reward_model=make_critic(critic, **critic_options),
        max_new_tokens=MAX_MOVE_CHARS,
        max_prompt_tokens=MAX_FEN_TOKENS,
        long_prompt="error",  # a cut FEN is a different position
        missing_eos_penalty=0.0,  # a promotion fills all 5 characters and needs no EOS
        action_mask=LegalMoveMask(tokenizer) if mask_illegal else None,
        enforce_action_mask=False,  # an off-mask move is just illegal: the critic prices it (check_env passes)
        info_fn=move_info,
        turn_rule=turn_rule,
        max_turns=max_turns,
        next_observation="state",
        default_policy=str(CHESS_POLICY),
        name="chess",
    )


def make_chess_env(
    critic: str | RewardModel = "learned",
    mask_illegal: bool = True,
    positions: Sequence[str] | str | os.PathLike[str] | None = None,
    render_mode: str | None = None,
    **critic_options: Any,
) -> TextGenerationEnv:
    """``ChessMoveCritic-v0``: write a chess move for a position, one character per step.

    ## Description
    The prompt is a chess position in FEN (side to move included); the response is
    one move in UCI notation (``e2e4``, ``e1g1`` for castling, ``e7e8q`` for a
    promotion), written one character per step. A critic scores the move when the
    response ends. This is the generic :class:`~text_env.TextGenerationEnv` with a
    chess :class:`~text_env.Task`: any agent for the text environments works here.

    ## Action Space
    `Discrete(37)` over the character tokenizer of `chess_tokenizer()`: pad, bos, eos,
    unk and the 33 FEN/UCI characters. With `mask_illegal=True` (default)
    `info["action_mask"]` and `action_masks()` allow only characters that continue
    some legal move, and EOS only after a complete legal move. Masks are advice, as in
    Gymnasium's Taxi: a masked-out character is taken, the move can then no longer be
    legal (the mask allows only EOS from there) and scores `illegal_score`.

    ## Observation Space
    `Dict(input_ids=Box(int64, (101,)), attention_mask=Box(int64, (101,)))`: BOS, the
    FEN and the move so far, right-aligned and left-padded (`max_prompt_tokens=96`,
    `max_new_tokens=5`).

    ## Rewards
    0 on every step but the last; there, the critic's score of the move (`info["score"]`):
    * `"stockfish"`: Lichess's move accuracy `max(0, 1 - 1.031668 * (1 - exp(-4.354 * loss)))`
      with `loss = W(best) - W(move)` (clipped at 0) and `W` the win probability
      `1 / (1 + exp(-0.00368208 * cp))` of Stockfish's evaluation (mate: 1 or 0). The
      engine's best move scores 1, a lost piece ~0.3, a lost queen ~0.1.
    * `"learned"` (default): the shipped reward model's estimate of that score, in (0, 1);
      it agrees with Stockfish on 82% of held-out move pairs and picks Stockfish's best move in 73% of
      held-out tactical positions (`critic.json`).
    * An illegal or unparseable move (only possible with `mask_illegal=False`) scores
      `illegal_score`, default -1: one below the worst legal move.

    ## Starting State
    A position drawn uniformly, with the env's RNG, from `positions` (default: the
    shipped training set `text_env/assets/chess/positions.jsonl`, ~3,000 positions
    from the gnuchess opening book, ECO opening lines and short Stockfish self-play);
    `reset(options={"prompt": fen})` starts from a given position.

    ## Episode End
    `terminated` at EOS or after 5 characters (the longest move); the final `info`
    holds `prompt` (FEN), `response` (move), `score`, `end_reason`, `response_length`
    and `legal` (whether the response is a legal move; False gets `illegal_score`).
    `env.close()` ends the Stockfish critic's engine process.

    ## Arguments
    * `critic`: `"learned"` (default, no engine needed), `"stockfish"` (needs the engine:
      `apt-get install stockfish`), or any `RewardModel` scoring (FENs, moves).
    * `mask_illegal`: legal-move action masks (default True).
    * `positions`: FEN list or JSONL path of `{"fen": ...}` rows (default: shipped train set;
      `text_env.chess.EVAL_POSITIONS` is the held-out set).
    * `render_mode`: `None` or `"ansi"` (FEN followed by the move so far).
    * `critic_options`: for Stockfish, `stockfish_path`, `depth` (8), `time_limit` (1.0 s),
      `timeout` (10 s), `hash_mb` (16), `illegal_score` (-1), `cache_size` (see
      :class:`~text_env.chess.StockfishCritic`); for the learned critic, `path`, `device`, `batch_size`,
      `illegal_score` (see :class:`~text_env.chess.LearnedCritic`).

    ```python
    env = gym.make("ChessMoveCritic-v0", critic="stockfish", depth=8)
    ```

    ## Version History
    * v0: initial version.
    """
    task = chess_task(critic, mask_illegal=mask_illegal, positions=positions, **critic_options)
    return TextGenerationEnv(task, render_mode=render_mode)


def make_chess_vector_env(
    num_envs: int,
    critic: str | RewardModel = "learned",
    mask_illegal: bool = True,
    positions: Sequence[str] | str | os.PathLike[str] | None = None,
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    render_mode: str | None = None,
    **critic_options: Any,
) -> TextGenerationVectorEnv:
    """``num_envs`` chess episodes stepped together, sharing one critic (one engine process)."""
    task = chess_task(critic, mask_illegal=mask_illegal, positions=positions, **critic_options)
    return TextGenerationVectorEnv(task, num_envs, autoreset_mode=autoreset_mode, render_mode=render_mode)
