"""`python -m jrt_jax.generate ...`: the `jrt generate` command (see `jrt_jax.generate.cli`)."""

import sys

from jrt_jax.generate.cli import main

sys.exit(main())
