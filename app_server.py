"""The app's server: Streamlit's pages (streamlit_app.py) plus the route a large upload streams to disk through.

``make run`` starts it with ``streamlit run app_server.py`` (Streamlit serves the ``st.App`` it finds here, with
every ``--server.*`` flag and ``.streamlit/config.toml`` as usual); ``uvicorn app_server:app`` works too.
``streamlit run streamlit_app.py`` still serves the pages, without the route: uploads then go through
``st.file_uploader``, which holds each file in the server's memory.
"""

import streamlit as st

from app_pages import upload_route

app = st.App("streamlit_app.py", routes=upload_route.routes(), lifespan=upload_route.lifespan)
