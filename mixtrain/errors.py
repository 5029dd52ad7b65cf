"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into a single line on stderr and exit code 2, with no traceback
(unless ``MIXTRAIN_DEBUG=1``). Anything else that escapes is a bug in mixtrain.
"""

EXIT_USAGE = 2


class MixtrainError(Exception):
    """Bad input: a config value, a dataset, a checkpoint. The message names the fix."""
