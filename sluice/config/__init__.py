"""Configuration: defaults < profile (SLUICE_ENV) < SLUICE_PROFILE_FILE < environment."""

from sluice.config.masking import mask_secrets, mask_urls, remember_secrets
from sluice.config.settings import (
    PROFILES,
    ROLES,
    ConfigError,
    Settings,
    is_webhook_secret,
    load_settings,
    load_settings_with_origins,
)

__all__ = [
    "PROFILES",
    "ROLES",
    "ConfigError",
    "Settings",
    "is_webhook_secret",
    "load_settings",
    "load_settings_with_origins",
    "mask_secrets",
    "mask_urls",
    "remember_secrets",
]
