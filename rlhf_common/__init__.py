"""Helpers below every package: file I/O, config-to-CLI and exit codes, the one training infrastructure.

:mod:`rlhf_common.io`, :mod:`rlhf_common.config_cli` and :mod:`rlhf_common.training`. It imports
none of ``reward_models``, ``text_env``, ``agents`` or ``rlhf_gym``; they all import it.
"""
