"""Host concerns: this machine's devices and what each child process is given."""
