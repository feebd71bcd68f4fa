"""ChessMoveCritic-v0: write one chess move for a position, scored by a critic; ChessGame-v0: play a game.

The chess task on the generic text interface: the prompt is a FEN, the response a UCI
move written one character per step, and the reward model a move critic: Stockfish, the
shipped learned critic (a reward model trained on Stockfish-labelled move rankings), or
any :class:`~reward_models.RewardModel`. Legal-move action masks come from a trie over
the position's legal moves.

Modules: :mod:`~text_env.chess.positions` (the shipped assets, FEN prompts),
:mod:`~text_env.chess.moves` (UCI moves, the tokenizer, legal-move masks),
:mod:`~text_env.chess.engine` (the Stockfish process, Lichess's formulas),
:mod:`~text_env.chess.features` (how the learned critic sees a move),
:mod:`~text_env.chess.critics` (the move critics), :mod:`~text_env.chess.env` (the task
and the registered env factories), :mod:`~text_env.chess.game` (ChessGame-v0: the same task
with Stockfish answering each move) and :mod:`~text_env.chess.grading` (grading policies
with Stockfish). The shipped assets are rebuilt by ``rlhf-gym chess-positions``,
``rlhf-gym chess-tactics``, ``rlhf-gym chess-critic`` and ``rlhf-gym chess-policy`` (:mod:`rlhf_gym.build`).
"""

from text_env.chess.critics import ILLEGAL_SCORE, UNSCORED, LearnedCritic, StockfishCritic, make_critic
from text_env.chess.engine import (
    CP_CLIP,
    LICHESS_WIN_SLOPE,
    EngineProcess,
    clipped_cp,
    close_engine,
    find_stockfish,
    move_accuracy,
    open_engine,
    softmax_weights,
    top_moves,
    win_probability,
)
from text_env.chess.env import chess_task, make_chess_env, make_chess_vector_env
from text_env.chess.game import (
    ChessGame,
    StockfishOpponent,
    chess_game_task,
    make_chess_game_env,
    make_chess_game_vector_env,
)
from text_env.chess.grading import (
    Agreement,
    GameGrades,
    MoveGrades,
    critic_agreement,
    grade_games,
    grade_moves,
    illegal_rate,
    play_episode,
    play_games,
    play_moves,
)
from text_env.chess.moves import (
    CHESS_ALPHABET,
    MAX_FEN_TOKENS,
    MAX_MOVE_CHARS,
    MOVE_CHARS,
    LegalMoveMask,
    chess_tokenizer,
    is_legal_move,
    legal_moves,
    move_info,
)
from text_env.chess.positions import (
    ASSETS,
    CHESS_POLICY,
    CRITIC_META_FILE,
    EVAL_POSITIONS,
    EVAL_TACTICAL_POSITIONS,
    LEARNED_CRITIC,
    POLICY_META_FILE,
    TACTICAL_POSITIONS,
    TRAIN_POSITIONS,
    load_positions,
    parse_position,
)

__all__ = [
    "ASSETS",
    "CHESS_ALPHABET",
    "CHESS_POLICY",
    "CP_CLIP",
    "CRITIC_META_FILE",
    "EVAL_POSITIONS",
    "EVAL_TACTICAL_POSITIONS",
    "ILLEGAL_SCORE",
    "LEARNED_CRITIC",
    "LICHESS_WIN_SLOPE",
    "MAX_FEN_TOKENS",
    "MAX_MOVE_CHARS",
    "MOVE_CHARS",
    "POLICY_META_FILE",
    "TACTICAL_POSITIONS",
    "TRAIN_POSITIONS",
    "UNSCORED",
    "Agreement",
    "ChessGame",
    "EngineProcess",
    "GameGrades",
    "LearnedCritic",
    "LegalMoveMask",
    "MoveGrades",
    "StockfishCritic",
    "StockfishOpponent",
    "chess_game_task",
    "chess_task",
    "chess_tokenizer",
    "clipped_cp",
    "close_engine",
    "critic_agreement",
    "find_stockfish",
    "grade_games",
    "grade_moves",
    "illegal_rate",
    "is_legal_move",
    "legal_moves",
    "load_positions",
    "make_chess_env",
    "make_chess_game_env",
    "make_chess_game_vector_env",
    "make_chess_vector_env",
    "make_critic",
    "move_accuracy",
    "move_info",
    "open_engine",
    "parse_position",
    "play_episode",
    "play_games",
    "play_moves",
    "softmax_weights",
    "top_moves",
    "win_probability",
]
