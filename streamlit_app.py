"""Transfer Studio: the Streamlit entry. Routes to thin pages in app_pages/ with st.navigation."""

import numpy as np
import streamlit as st
from PIL import Image

from app_pages import access, sources

# The tab icon is drawn here: a ":material/..." page icon makes every visitor's browser fetch it from Google's
# font server, and a shared demo contacts no other host.
_icon = np.full((32, 32, 3), (37, 99, 235), np.uint8)
_icon[8:24, 8:12] = _icon[20:24, 8:24] = 255
st.set_page_config(page_title="Transfer Studio", page_icon=Image.fromarray(_icon), layout="wide")

pages = [
    st.Page("app_pages/data.py", title="Data", icon=":material/photo_library:", default=True),
    st.Page("app_pages/augment.py", title="Augment", icon=":material/auto_fix_high:"),
    st.Page("app_pages/train.py", title="Train", icon=":material/play_circle:"),
    st.Page("app_pages/tune.py", title="Tune", icon=":material/travel_explore:"),
    st.Page("app_pages/runs.py", title="Runs", icon=":material/monitoring:"),
    st.Page("app_pages/evaluate.py", title="Evaluate", icon=":material/fact_check:"),
    st.Page("app_pages/export_page.py", title="Export", icon=":material/download:"),
    st.Page("app_pages/try_model.py", title="Try", icon=":material/photo_camera:"),
    st.Page("app_pages/predict.py", title="Predict", icon=":material/table_view:"),
]
access.remember_visitor()  # the owner key in a cookie: a refresh or a new tab is the same owner
sources.source()  # this visitor's data source: the link's, this session's, or the one kept from their last visit
sources.keep_in_address()  # ?source= on every page, so a reload or a copied address keeps it
st.navigation(pages).run()
