"""``ChessGame-v0``: play a game, or N moves, against Stockfish, one character per step.

The multi-turn chess task (text_env/turns.py): an episode starts from a position with the
agent to move; the agent writes a UCI move one character per step (legal-move masks as in
``ChessMoveCritic-v0``); the critic scores the move; the opponent (:class:`StockfishOpponent`,
the task's turn rule) plays Stockfish's answer, and the agent sees the new position's FEN alone
as a fresh prompt: exactly the prompts of ``ChessMoveCritic-v0``, on which the default chess
policy was trained. The game ends at checkmate, stalemate or another draw, at an illegal move
(a forfeit) or after ``max_turns`` agent moves, where Stockfish adjudicates it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import chess
import chess.engine
import numpy as np
from gymnasium.vector import AutoresetMode

from reward_models import RewardModel
from text_env.chess.critics import UNSCORED
from text_env.chess.engine import (
    CP_CLIP,
    EngineProcess,
    analyse_position,
    clipped_cp,
    find_stockfish,
    softmax_weights,
    top_moves,
)
from text_env.chess.env import chess_task
from text_env.chess.moves import is_legal_move
from text_env.chess.positions import parse_position
from text_env.env import TextGenerationEnv
from text_env.task import Task
from text_env.turns import Reply
from text_env.vector_env import TextGenerationVectorEnv

WIN, DRAW, LOSS = 1.0, 0.0, -1.0
"""Game results from the agent's side (``info["result"]``)."""
ILLEGAL_MOVE = "illegal_move"
"""``info["result_reason"]`` of a game the agent forfeited with an illegal or unparseable move."""
ADJUDICATED = "adjudicated"
"""``info["result_reason"]`` of a game that reached the turn limit and was judged by Stockfish."""
FULL_STRENGTH = {"Skill Level": 20}
"""UCI options of the adjudicating search: Stockfish at full strength, whatever the opponent's skill."""


class StockfishOpponent:
    """ChessGame-v0's turn rule: Stockfish plays the other side of every episode's game.

    ``opponent(fen, rng)`` starts a :class:`ChessGame` from ``fen`` with the agent to move. All
    games of an env (every sub-env of a vector env) share this object's one engine process,
    started at the first reply and ended by :meth:`close` (``env.close()`` calls it through
    ``Task.close``), garbage collection or interpreter exit. Every search starts from a cleared hash.

    How it picks a move, weakest first:
    * ``temperature_cp`` (default 150): it samples one of its ``multipv`` best moves at ``depth``
      with probability ``softmax(centipawns / temperature_cp)``, drawing from the env's RNG, so a
      seed fixes the game. With the defaults (depth 2, 6 moves, 150 cp) this is the weak engine
      whose moves the default chess policy imitates (rlhf_gym/build/chess_policy.py).
    * ``skill_level`` 0-19 (with ``temperature_cp=None``): Stockfish's own weakening (UCI "Skill
      Level": it picks among its best lines at random), drawn from Stockfish's clock-seeded
      generator, so those replies are not reproducible by the env's seed.
    * neither: Stockfish's best move at ``depth``; the same position always gets the same reply.

    Args:
        depth: the opponent's search depth in plies.
        temperature_cp: the softmax temperature of its pick in centipawns (higher: weaker); None: no sampling.
        multipv: how many of its best moves it samples from.
        skill_level: UCI "Skill Level" 0-20 of the opponent (needs ``temperature_cp=None``); None: 20.
        max_turns: the agent's moves per game; after the last one the opponent does not answer and
            the game is adjudicated. Must equal the task's ``max_turns`` (:func:`chess_game_task` sets both).
        result_weight: the game's result (win +1, draw 0, loss -1) times this is added to the reward of
            the agent's last move.
        adjudicate_cp: a game at the turn limit is a win (loss) for the agent when Stockfish, at full
            strength and ``adjudicate_depth``, rates the position this many centipawns or more for
            (against) it, else a draw.
        adjudicate_depth: depth of the adjudicating search.
        stockfish_path: engine binary; default ``$STOCKFISH_PATH``, ``stockfish`` on PATH, or
            ``/usr/games/stockfish``.
        time_limit: seconds a search may take at most (a cap the depths above never reach).
        timeout: extra seconds an engine call may take beyond ``time_limit`` before it fails.
        hash_mb: engine hash table size.
    """

    def __init__(
        self,
        depth: int = 2,
        temperature_cp: float | None = 150.0,
        multipv: int = 6,
        skill_level: int | None = None,
        max_turns: int = 4,
        result_weight: float = 1.0,
        adjudicate_cp: int = 200,
        adjudicate_depth: int = 8,
        stockfish_path: str | os.PathLike[str] | None = None,
        time_limit: float = 1.0,
        timeout: float = 10.0,
        hash_mb: int = 16,
    ) -> None:
        if min(depth, multipv, adjudicate_depth, max_turns, adjudicate_cp) < 1 or min(time_limit, timeout) <= 0:
            raise ValueError(
                f"ChessGame-v0: opponent_depth={depth}, multipv={multipv}, adjudicate_depth={adjudicate_depth}, "
                f"max_turns={max_turns}, adjudicate_cp={adjudicate_cp}, time_limit={time_limit} and "
                f"timeout={timeout} must be positive."
            )
        if temperature_cp is not None and not temperature_cp > 0:
            raise ValueError(f"ChessGame-v0: temperature_cp={temperature_cp} must be > 0, or None for no sampling.")
        if skill_level is not None and not 0 <= skill_level <= 20:
            raise ValueError(f"ChessGame-v0: skill_level={skill_level} must be in 0..20 (UCI Skill Level) or None.")
        if skill_level is not None and temperature_cp is not None:
            raise ValueError(
                f"ChessGame-v0: skill_level={skill_level} and temperature_cp={temperature_cp} are two ways to weaken "
                "the opponent; pass temperature_cp=None to use Stockfish's Skill Level."
            )
        if not math.isfinite(result_weight):
            raise ValueError(f"ChessGame-v0: result_weight={result_weight} must be finite.")
        self.path = find_stockfish(stockfish_path, needed_by="ChessGame-v0's opponent", instead="")
        self.limit = chess.engine.Limit(depth=depth, time=time_limit)
        self.judge_limit = chess.engine.Limit(depth=adjudicate_depth, time=time_limit)
        self.options = {"Skill Level": 20 if skill_level is None else skill_level}
        self.temperature_cp = temperature_cp
        self.multipv = multipv
        self.max_turns = max_turns
        self.result_weight = float(result_weight)
        self.adjudicate_cp = adjudicate_cp
        self._process = EngineProcess(self.path, timeout=timeout, hash_mb=hash_mb)

    def __call__(self, prompt: str, rng: np.random.Generator) -> ChessGame:
        """A new game from ``prompt`` (a FEN); the opponent's sampled moves draw from ``rng`` (the env's)."""
        return ChessGame(self, prompt, rng)

    def move(self, board: chess.Board, rng: np.random.Generator) -> chess.Move:
        """The opponent's move for the side to move in ``board`` (a sampled one drawn from ``rng``)."""
        what = f"to move in {board.fen()!r} at depth {self.limit.depth}"
        if self.temperature_cp is not None:
            scored = self._process.run(  # top_moves: mates as 10,000 cp, as the demonstrator's
                lambda engine: top_moves(engine, board, self.limit.depth, self.multipv, 10_000), what
            )
            weights = np.array(softmax_weights(scored, self.temperature_cp))
            return scored[int(rng.choice(len(scored), p=weights / weights.sum()))][1]
        result = self._process.run(
            lambda engine: engine.play(board, self.limit, game=object(), options=self.options),  # fresh hash
            what,
        )
        if result.move is None:
            raise RuntimeError(f"Stockfish returned no move for {board.fen()!r}.")
        return result.move

    def evaluate(self, board: chess.Board) -> int:
        """Full-strength evaluation of ``board`` in centipawns for the side to move, clipped to +-``CP_CLIP``."""
        info = analyse_position(self._process, board, self.judge_limit, options=FULL_STRENGTH)
        return clipped_cp(info["score"].relative)

    def close(self) -> None:
        """End the engine process now (a later game starts a new one)."""
        self._process.close()

    @property
    def pid(self) -> int | None:
        """Process id of the running engine, or None when none runs."""
        return self._process.pid

    def __repr__(self) -> str:
        return f"StockfishOpponent(path={self.path!r}, limit={self.limit}, options={self.options})"


class ChessGame:
    """One episode's game (a :class:`text_env.Game`): the board, the agent's moves, the opponent's answers."""

    def __init__(self, opponent: StockfishOpponent, fen: str, rng: np.random.Generator) -> None:
        self.opponent = opponent
        self.rng = rng  # the env's: a seed fixes the opponent's sampled moves
        self.board = parse_position(fen)
        self.side = self.board.turn  # the agent's colour
        self.positions: list[str] = []  # the FEN before each agent move
        self.agent_moves: list[str] = []  # each agent move as written

    def reply(self, response: str) -> Reply:
        """Play the agent's move, then the opponent's: the new FEN, or the game's end with its result."""
        fen = self.board.fen()
        self.positions.append(fen)
        self.agent_moves.append(response)
        if not is_legal_move(fen, response):
            return self._end(LOSS, ILLEGAL_MOVE)  # a forfeit; the critic has priced the move too
        self.board.push_uci(response)
        info: dict[str, Any] = {}
        if self.board.outcome(claim_draw=True) is None:
            if len(self.agent_moves) >= self.opponent.max_turns:
                cp = -self.opponent.evaluate(self.board)  # the opponent is to move: its evaluation, negated
                limit = self.opponent.adjudicate_cp
                return self._end(WIN if cp >= limit else LOSS if cp <= -limit else DRAW, ADJUDICATED, cp)
            info["engine_move"] = self.opponent.move(self.board, self.rng).uci()
            self.board.push_uci(info["engine_move"])
        outcome = self.board.outcome(claim_draw=True)
        if outcome is not None:
            result = DRAW if outcome.winner is None else WIN if outcome.winner == self.side else LOSS
            return self._end(result, outcome.termination.name.lower(), info=info)
        return Reply(text=self.board.fen(), info=info)

    def _end(self, result: float, reason: str, cp: int | None = None, info: dict[str, Any] | None = None) -> Reply:
        """The game's last reply: no text, the weighted result as reward, and what grading needs in ``info``."""
        return Reply(
            text=None,
            reward=self.opponent.result_weight * result,
            info={
                **(info or {}),
                "result": result,
                "result_reason": reason,
                "final_cp": int(result * CP_CLIP) if cp is None else cp,
                "final_fen": self.board.fen(),
                "moves": [m.uci() for m in self.board.move_stack],
                "positions": list(self.positions),
                "agent_moves": list(self.agent_moves),
            },
        )


def chess_game_task(
    critic: str | RewardModel | None = "learned",
    result_weight: float = 1.0,
    max_turns: int = 4,
    opponent_depth: int = 2,
    temperature_cp: float | None = 150.0,
    multipv: int = 6,
    skill_level: int | None = None,
    adjudicate_cp: int = 200,
    adjudicate_depth: int = 8,
    positions: Sequence[str] | str | os.PathLike[str] | None = None,
    mask_illegal: bool = True,
    stockfish_path: str | os.PathLike[str] | None = None,
    **critic_options: Any,
) -> Task:
    """The ChessGame-v0 task: :func:`~text_env.chess.chess_task` with a :class:`StockfishOpponent` turn rule.

    ``critic=None`` scores every move 0 (the result alone is the reward). ``stockfish_path`` serves
    the opponent and, with ``critic="stockfish"``, the critic; ``critic_options`` go to the critic.
    """
    opponent = StockfishOpponent(
        depth=opponent_depth,
        temperature_cp=temperature_cp,
        multipv=multipv,
        skill_level=skill_level,
        max_turns=max_turns,
        result_weight=result_weight,
        adjudicate_cp=adjudicate_cp,
        adjudicate_depth=adjudicate_depth,
        stockfish_path=stockfish_path,
    )
    if critic == "stockfish" and stockfish_path is not None:
        critic_options.setdefault("stockfish_path", stockfish_path)
    critic = UNSCORED if critic is None else critic
    return chess_task(critic, mask_illegal, positions, turn_rule=opponent, max_turns=max_turns, **critic_options)


def make_chess_game_env(render_mode: str | None = None, **options: Any) -> TextGenerationEnv:
    """``ChessGame-v0``: play up to ``max_turns`` moves of a game against Stockfish, one character per step.

    ## Description
    An episode is a game (or its first ``max_turns`` moves for the agent) from a position with the
    agent to move. Each agent move is a response of ``ChessMoveCritic-v0``: a UCI move written one
    character per step and scored by a critic. When it ends, the env plays the agent's move, then
    Stockfish's answer, and the agent sees the new position. This is the generic
    :class:`~text_env.TextGenerationEnv` with a multi-turn chess :class:`~text_env.Task`.

    ## Action Space
    `Discrete(37)`, the chess tokenizer, with the legal-move masks of `ChessMoveCritic-v0`
    (`info["action_mask"]`, `action_masks()`; advice: a masked-out character is taken and makes
    the move illegal, which ends the game).

    ## Observation Space
    `Dict(input_ids=Box(int64, (101,)), attention_mask=Box(int64, (101,)))`: BOS, the current
    position's FEN and the move so far, right-aligned. After Stockfish's answer the window holds
    the new FEN alone (`next_observation="state"`; `info["env_tokens"]` are its tokens and
    `info["restart"]` is True), so every move is written for a FEN, as in `ChessMoveCritic-v0`.

    ## Rewards
    At the end of each agent move, the critic's score of that move (`info["score"]`, as in
    `ChessMoveCritic-v0`: Stockfish's or the learned critic's move accuracy in [0, 1], -1 if illegal;
    0 with `critic=None`). On the last move, plus `result_weight` times the game's result for the
    agent: win +1, draw 0, loss -1 (an illegal move forfeits: a loss).

    ## Starting State
    A position drawn with the env's RNG from `positions` (default: the shipped training set;
    `text_env.chess.EVAL_POSITIONS` is the held-out set), or `reset(options={"prompt": fen})`.

    ## Episode End
    `terminated` when the game ends (checkmate, stalemate, insufficient material, threefold
    repetition or the 50-move rule, claimed at once), when the agent writes an illegal move, or
    after its `max_turns`-th move: then the opponent does not answer and Stockfish, at full
    strength and `adjudicate_depth`, judges the position: a win (loss) for the agent at
    `adjudicate_cp` centipawns or more for (against) it, else a draw. The final `info` has
    `result` (+1.0 / 0.0 / -1.0), `result_reason` (`checkmate`, `stalemate`, ..., `illegal_move`,
    `adjudicated`), `final_cp` (the agent's evaluation at the end: +-1000 for a decided game, 0 for a
    draw), `final_fen`, `moves` (every legal move played, both sides, UCI), `positions` and
    `agent_moves` (the FEN before each agent move and the move it wrote: what grading needs),
    `turns`, `turn_scores` (the critic's score of each move), `score` (their sum) and `return`.
    Each turn that goes on has `engine_move`. `env.close()` ends the engine processes.

    ## Arguments
    * `critic`: `"learned"` (default), `"stockfish"`, any `RewardModel` of (FEN, move), or None.
    * `result_weight` (1.0): weight of the game's result in the last reward; 0 for move rewards only.
    * `max_turns` (4): the agent's moves per game at most (an opening skirmish; 100+ for whole games).
    * `opponent_depth` (2), `temperature_cp` (150), `multipv` (6): the opponent, a weak engine, samples
      one of Stockfish's `multipv` best moves at `opponent_depth` with probability
      `softmax(centipawns / temperature_cp)`, drawn from the env's RNG (the defaults are the weak
      engine the default chess policy imitates); `temperature_cp=None`: its best move.
    * `skill_level` (None): Stockfish's UCI Skill Level 0-20 instead (with `temperature_cp=None`;
      below 20 Stockfish picks at random with its own unseeded generator: not reproducible).
    * `adjudicate_cp` (200), `adjudicate_depth` (8): how a game at the turn limit is judged.
    * `positions`, `mask_illegal`: as `ChessMoveCritic-v0`.
    * `stockfish_path`: the engine (needed by the opponent; also the `stockfish` critic's).
    * `render_mode`: `None` or `"ansi"` (the starting FEN, then each move and the FEN after its answer).
    * `critic_options`: the critic's, as `ChessMoveCritic-v0` (`depth`, ...).

    ```python
    env = gym.make("ChessGame-v0", critic="stockfish", depth=8, max_turns=20, temperature_cp=300)
    ```

    ## Version History
    * v0: initial version.
    """
    return TextGenerationEnv(chess_game_task(**options), render_mode=render_mode)


def make_chess_game_vector_env(
    num_envs: int,
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    render_mode: str | None = None,
    **options: Any,
) -> TextGenerationVectorEnv:
    """``num_envs`` ChessGame-v0 episodes stepped together, sharing one critic and one opponent engine."""
    return TextGenerationVectorEnv(chess_game_task(**options), num_envs, autoreset_mode=autoreset_mode,
                                   render_mode=render_mode)
