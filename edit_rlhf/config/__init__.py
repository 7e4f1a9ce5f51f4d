"""Typed, validated configuration (OmegaConf structured dataclasses)."""
from edit_rlhf.config.load import ConfigError, flatten, load_config, to_dict, to_yaml  # noqa: F401
from edit_rlhf.config.schema import GRPOConfig  # noqa: F401
