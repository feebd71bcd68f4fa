"""The ``rlhf-gym`` command line and end-to-end pipeline, composing text_env, reward_models and agents."""
