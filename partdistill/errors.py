"""The base of every error a user can fix: launch.py and the CLI print its message, not a traceback."""


class UserError(Exception):
    """A problem with the user's input (config, files, datasets); the message says what and how to fix it."""


class ConfigError(UserError, ValueError):
    """A config value that composes but cannot be run (the message names the key and the fix)."""
