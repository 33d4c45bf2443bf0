"""Configuration: defaults < profile (SLUICE_ENV) < SLUICE_PROFILE_FILE < environment."""

from sluice.config.settings import (
    PROFILES,
    ROLES,
    ConfigError,
    Settings,
    is_webhook_secret,
    load_settings,
    load_settings_with_origins,
    mask_urls,
)

__all__ = [
    "PROFILES",
    "ROLES",
    "ConfigError",
    "Settings",
    "is_webhook_secret",
    "load_settings",
    "load_settings_with_origins",
    "mask_urls",
]
