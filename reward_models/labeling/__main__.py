"""``python -m reward_models.labeling``: see :func:`reward_models.labeling.cli.cli`."""

import sys

from reward_models.labeling.cli import cli

sys.exit(cli())
