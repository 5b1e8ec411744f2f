"""`python -m jrt_jax.cli COMMAND ...`: the `jrt` command."""

import sys

from jrt_jax.cli import main

sys.exit(main())
