"""The one exception type the CLI turns into a one-line error and exit code 2."""


class NexusError(Exception):
    """Bad input or a state the user must fix: the message names the file or flag at fault."""
