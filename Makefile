# Set-up is two commands: `make demo` and `make test`. Each builds .venv when missing.
# torch goes in first and pinned to the CPU wheel; the package then only asks for a range,
# so GPU users keep their own CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH_STAMP := $(VENV)/.torch
DEMO_STAMP  := $(VENV)/.installed-demo
TEST_STAMP  := $(VENV)/.installed-test
TORCH  ?= torch==2.13.0
APT_PACKAGES := chromium chromium-driver fortunes stockfish gnuchess-book pgn-extract
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo demo-full leaderboard test test-all lint bench defaults system-deps clean

$(TORCH_STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	@touch $@

# The demo installs the package and what the demo runs (SB3, TensorBoard), not the test tools;
# after `make test` (whose extra includes both) there is nothing left to install.
$(DEMO_STAMP): pyproject.toml | $(TORCH_STAMP)
	@if [ $(TEST_STAMP) -nt pyproject.toml ]; then :; else $(PY) -m pip install -q -e ".[demo]"; fi
	@touch $@

$(TEST_STAMP): pyproject.toml | $(TORCH_STAMP)
	$(PY) -m pip install -q -e ".[test]"
	@touch $@

# Debian packages the tests and the asset build use; installed only when missing.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if ! command -v apt-get >/dev/null; then \
	    echo "Missing system packages:$$missing. Install them with your package manager (Debian/Ubuntu: apt-get install$$missing)."; exit 1; fi; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
	  echo "Installing Debian packages:$$missing"; \
	  $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q $$missing; \
	fi

# The main job: PPOKL against best-of-n on the gold-proxy-KL frontier, under 10 minutes on 2 slow cores.
demo: $(DEMO_STAMP)
	$(VENV)/bin/rlhf-gym pipeline --out runs/demo --agents ppo_kl

# The larger published comparison (README): PPOKL, RLOO and SB3 PPO side by side.
demo-full: $(DEMO_STAMP)
	$(VENV)/bin/rlhf-gym pipeline --out runs/demo-full --agents ppo_kl,rloo,sb3_ppo

# Every registered agent on one frontier, 3 seeds (README, "rlhf-gym leaderboard"): over an hour on 2 cores.
leaderboard: $(DEMO_STAMP)
	$(VENV)/bin/rlhf-gym leaderboard --out runs/leaderboard

test: $(TEST_STAMP) system-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .

test-all: $(TEST_STAMP) system-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m ""

# Rebuild the embedded default assets from scratch (seeded; about 15 minutes on 2 cores).
defaults: $(DEMO_STAMP) system-deps
	$(VENV)/bin/rlhf-gym build-defaults

bench: $(TEST_STAMP)
	$(PY) bench/env_overhead.py
	$(PY) bench/rollout.py
	$(PY) bench/vs_trl.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
