"""The agents the pipeline can train, by name: class, config class, label and pipeline settings.

``rlhf-gym pipeline --agents ppo_kl,rloo,sb3_ppo`` looks each name up in :data:`AGENTS` and
builds every agent the same way (:func:`build_config`), so adding an agent is one
:func:`register_agent` call and never an edit of the pipeline:

    >>> register_agent(AgentSpec("my_agent", "My agent", "my_package.agent:MyAgent",  # doctest: +SKIP
    ...                          "my_package.agent:MyAgentConfig", {"learning_rate": 1e-4}))

A spec names its classes as ``"module:Class"`` (imported on first use, so an agent whose
dependencies are not installed costs nothing until it is chosen) or gives the classes themselves.
An agent class takes ``(task, policy_path, config)`` and has ``learn(total_timesteps, resume=,
progress_bar=)``, ``policy``, ``num_timesteps``, ``num_episodes``, ``train_seconds`` and ``checkpoint_dir``.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any

from rlhf_common.config_cli import parse_field

__all__ = ["AGENTS", "AgentSpec", "build_config", "get_agent", "parse_agent_settings",
           "register_agent"]

BUDGET = "timesteps"
"""The pseudo-setting that overrides an agent's token budget (``--agent-settings sb3_ppo.timesteps=12288``)."""


@dataclass(frozen=True)
class AgentSpec:
    """One trainable agent: what to build and how the pipeline sets it up."""

    name: str
    """Registry key and ``--agents`` name, e.g. ``"ppo_kl"``; also the agent's log folder in a run."""
    label: str
    """Display name in tables and plots."""
    agent: type | str
    """The agent class, or ``"module:Class"`` to import it on first use."""
    config: type | str
    """Its config dataclass, or ``"module:Class"``."""
    pipeline_settings: dict[str, Any] = field(default_factory=dict)
    """Config fields the pipeline comparison sets on top of the common ones (``build_config``)."""
    budget_share: float = 1.0
    """Its token budget in the pipeline as a share of the pipeline's ``--timesteps`` (SB3 PPO, whose tokens
    cost ~19x more, takes a small one); ``--agent-settings NAME.timesteps=N`` sets it in tokens."""
    color: str | None = None
    """Matplotlib colour in the report's plots; None picks one from the default cycle."""

    @property
    def cls(self) -> type:
        """The agent class."""
        return _resolve(self.agent)

    @property
    def config_class(self) -> type:
        """The config dataclass."""
        return _resolve(self.config)


def _resolve(target: type | str) -> type:
    if isinstance(target, type):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


AGENTS: dict[str, AgentSpec] = {}
"""Every registered agent by name, in registration order (the pipeline's default order)."""


def register_agent(spec: AgentSpec) -> AgentSpec:
    """Add ``spec`` to :data:`AGENTS` (replacing one of the same name) and return it."""
    if not spec.name.isidentifier():
        raise ValueError(f"agent name {spec.name!r} must be an identifier (letters, digits, _), e.g. 'my_agent'.")
    AGENTS[spec.name] = spec
    return spec


def get_agent(name: str) -> AgentSpec:
    """The spec registered as ``name``; a ValueError lists the registered names."""
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; registered agents: {', '.join(AGENTS)} "
                         "(add one with agents.registry.register_agent).")
    return AGENTS[name]


def build_config(spec: AgentSpec, common: dict[str, Any], overrides: dict[str, Any] | None = None) -> Any:
    """``spec``'s config: the ``common`` fields it has, then its pipeline settings, then ``overrides``.

    ``common`` holds what every agent of a comparison shares (batch_size, beta, seed, log_dir,
    save_steps, num_generations); a field the config class lacks is left out.
    """
    names = {f.name for f in dataclasses.fields(spec.config_class) if f.init}
    shared = {k: v for k, v in common.items() if k in names}
    return spec.config_class(**{**shared, **spec.pipeline_settings, **(overrides or {})})


def parse_agent_settings(text: str, flag: str = "--agent-settings") -> dict[str, dict[str, Any]]:
    """``"rloo.learning_rate=3e-4,sb3_ppo.timesteps=12288"`` as ``{agent: {field: typed value}}``.

    Each field is checked against the agent's config class (``timesteps`` is the agent's
    budget); ``log_dir`` belongs to the run folder and cannot be set here.
    """
    settings: dict[str, dict[str, Any]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        agent, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ValueError(f"{flag} {part!r}: write AGENT.FIELD=VALUE, e.g. rloo.learning_rate=3e-4.")
        spec = get_agent(agent)
        fields = [f.name for f in dataclasses.fields(spec.config_class) if f.init and f.name != "log_dir"]
        if name != BUDGET and name not in fields:
            raise ValueError(f"{flag} {part!r}: {spec.config_class.__name__} of agent {agent!r} has no field "
                             f"{name!r}; valid fields: {', '.join([BUDGET, *fields])}.")
        value, where = value.strip(), f"{flag} {part!r}"
        if name == BUDGET:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{where}: {BUDGET} is a whole number of tokens >= 1.")
            settings.setdefault(agent, {})[name] = int(value)
        else:
            settings.setdefault(agent, {})[name] = parse_field(spec.config_class, name, value, where)
    return settings


register_agent(AgentSpec("ppo_kl", "PPOKL", "agents.ppo_kl:PPOKL", "agents.ppo_kl:PPOKLConfig", color="tab:red"))
register_agent(AgentSpec("rloo", "RLOO", "agents.rloo:RLOO", "agents.rloo:RLOOConfig", {"learning_rate": 3e-4},
                         color="tab:green"))
# SB3 on a sixteenth of the tokens (12,288): its update re-encodes the whole window for every token,
# about 19x PPOKL's cost per token (bench/sb3_vs_ppokl.py).
register_agent(AgentSpec("sb3_ppo", "SB3 PPO + KL wrapper", "agents.sb3_ppo:SB3PPO", "agents.sb3_ppo:SB3PPOConfig",
                         budget_share=1 / 16, color="tab:purple"))
# vBoN: beta is 1/(n-1), not the comparison's shared beta (None: derived from n).
register_agent(AgentSpec("vbon", "vBoN (distilled best-of-n)", "agents.vbon:VBoN", "agents.vbon:VBoNConfig",
                         {"beta": None, "n": 16, "reference_samples": 32}, color="tab:orange"))
register_agent(AgentSpec("grpo", "GRPO", "agents.grpo:GRPO", "agents.grpo:GRPOConfig", {"learning_rate": 3e-4},
                         color="teal"))  # tab:blue is best-of-n's in the report
register_agent(AgentSpec("reinforce_pp", "REINFORCE++", "agents.reinforce_pp:ReinforcePP",
                         "agents.reinforce_pp:ReinforcePPConfig", {"num_generations": 1}, color="tab:brown"))
register_agent(AgentSpec("reinforce_pp_baseline", "REINFORCE++-baseline", "agents.reinforce_pp:ReinforcePP",
                         "agents.reinforce_pp:ReinforcePPConfig", {"baseline": True}, color="tab:pink"))
# DPO, IPO and online DPO keep TRL's beta 0.1 (the implicit reward's scale), not the comparison's KL penalty.
register_agent(AgentSpec("dpo", "DPO", "agents.dpo:DPO", "agents.dpo:DPOConfig", {"beta": 0.1, "learning_rate": 5e-5},
                         color="tab:olive"))
register_agent(AgentSpec("ipo", "IPO", "agents.dpo:DPO", "agents.dpo:DPOConfig", {"loss_type": "ipo", "beta": 0.1,
                                                                     "learning_rate": 5e-5},
                         color="tab:cyan"))
register_agent(AgentSpec("online_dpo", "Online DPO", "agents.online_dpo:OnlineDPO",
                         "agents.online_dpo:OnlineDPOConfig", {"beta": 0.1}, color="tab:gray"))
