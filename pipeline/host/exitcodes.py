"""Exit codes of every command (``python -m pipeline``, ``python -m export``, the training child): one table,
and the one family of errors a user can act on (each command turns them into ``error: ...`` and exit 2).

=====  ======================================================================================
0      done
1      an unexpected error (the traceback is in the log; a bug to report)
2      a user-caused failure (bad input, config, data, run folder); the message says what to do
3      cancelled (CANCEL file or SIGTERM); the last finished epoch is kept, run again to resume
4      ``python -m export``: a verification gate failed
130    interrupted (Ctrl-C)
=====  ======================================================================================
"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_CANCELLED = 3
EXIT_GATE_FAILED = 4
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """The base of every error a user can act on: bad input, config, data, run folder, job, export request.

    The message is one sentence naming the file, field or id and what to do. The CLIs print it as
    ``error: <message>`` and exit with ``exit_code``; the app shows it as text. Anything else is a bug (exit 1).
    """

    exit_code = EXIT_USER_ERROR
