"""The errors a user fixes, at the very bottom so every module (config and metrics alike) can raise them."""


class ConfigError(Exception):
    """A configuration problem the user must fix; the message says where and what."""
