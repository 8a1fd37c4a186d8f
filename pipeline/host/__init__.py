"""This machine: the home and its folders, limits, the disk, devices, atomic writes, child processes, exit codes."""
