"""Serving a run's export bundle to the browser without copying it anywhere: Streamlit's component file server.

``components.declare_component(name, path=FOLDER)`` makes Streamlit serve FOLDER's files read-only at
``component/<module>.<name>/...`` (relative to the app's base URL). The Try page uses it to show the bundle's
own web demo (``web/index.html``, which loads ``../tfjs/`` and ``../labels.txt``) from the run folder. It is
declared here, in an importable module, because Streamlit names a component after the module that declares
it, and a page run by ``st.navigation`` has none.
"""

from __future__ import annotations

from pathlib import Path


def demo_url(run_id: str, bundle: Path, fragment: str = "", *, webcam: bool = False) -> str:
    """The relative URL of the bundle's web demo, embedded: the result only, with ``#fragment`` when given; or, with
    ``webcam``, the webcam classified continuously (its Pause button and its result)."""
    import streamlit.components.v1 as components

    served = components.declare_component(f"bundle_{run_id}", path=str(bundle))
    mode = "webcam" if webcam else "1"
    return f"component/{served.name}/web/index.html?embedded={mode}" + (f"#{fragment}" if fragment else "")
