"""The error every config check raises: its message starts with the dotted key at fault."""


class ConfigError(ValueError):
    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
