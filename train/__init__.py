"""The jrt-jax trainer: `jrt train [--config FILE] [key=value ...]`. See `train.config` for every option."""
