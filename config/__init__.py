"""Settings for the daemon (see `config.settings`)."""

from config.settings import ConfigError, Settings, VenueSettings, load_settings

__all__ = ["ConfigError", "Settings", "VenueSettings", "load_settings"]
