"""The one exception type users see.

Library code raises :class:`OccfeatError` with a one-line message that says what is wrong and what to
do; the CLI prints it as ``error: <message>`` and exits with status 2. Anything else is a bug.
"""


class OccfeatError(Exception):
    """A user-facing, one-line error: what is wrong and what to do about it."""

