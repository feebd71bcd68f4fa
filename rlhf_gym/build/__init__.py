"""Builders of the shipped assets, each with its ``rlhf-gym`` rebuild command.

* :mod:`rlhf_gym.build.defaults` (``rlhf-gym build-defaults``): the default task's tokenizer,
  policy, prompts and reward model (``text_env/assets/default/``), with
  :mod:`~rlhf_gym.build.corpus` and :mod:`~rlhf_gym.build.model_card`;
* :mod:`rlhf_gym.build.chess_positions` (``rlhf-gym chess-positions``): the chess position sets;
* :mod:`rlhf_gym.build.chess_tactics` (``rlhf-gym chess-tactics``): the tactical chess position sets;
* :mod:`rlhf_gym.build.chess_critic` (``rlhf-gym chess-critic``): the learned chess critic;
* :mod:`rlhf_gym.build.chess_policy` (``rlhf-gym chess-policy``): the default chess policy.

The chess assets live in ``text_env/assets/chess/``.
"""
