"""Exit codes of every command (``python -m pipeline``, ``python -m export``, the training child): one table.

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
