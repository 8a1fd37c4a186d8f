"""A child for tests/test_launch.py: ``python -m tests.launch_probe MODE``.

``exit``: exits 7 at once. ``parent``: starts ``hold`` as its own child with ``die_with_parent=True``, prints its
pid and sleeps. ``hold``: asks to die with its parent, then sleeps.
"""

import sys
import time
from pathlib import Path

from pipeline.host import launch

if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "exit":
        sys.exit(7)
    if mode == "parent":
        child = launch.start_python("tests.launch_probe", "hold", log=Path(sys.argv[2]), die_with_parent=True)
        print(child.pid, flush=True)
    else:
        launch.die_with_parent()
    time.sleep(120)
