"""Configuration: defaults < environment."""

from sluice.config.settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "load_settings"]
