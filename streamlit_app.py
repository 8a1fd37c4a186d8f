"""Transfer Studio: the Streamlit entry. Routes to thin pages in app_pages/ with st.navigation."""

import streamlit as st

st.set_page_config(page_title="Transfer Studio", page_icon=":material/model_training:", layout="wide")

pages = [
    st.Page("app_pages/data.py", title="Data", icon=":material/photo_library:", default=True),
    st.Page("app_pages/augment.py", title="Augment", icon=":material/auto_fix_high:"),
    st.Page("app_pages/train.py", title="Train", icon=":material/play_circle:"),
    st.Page("app_pages/runs.py", title="Runs", icon=":material/monitoring:"),
    st.Page("app_pages/evaluate.py", title="Evaluate", icon=":material/fact_check:"),
    st.Page("app_pages/export.py", title="Export", icon=":material/download:"),
    st.Page("app_pages/try_model.py", title="Try", icon=":material/photo_camera:"),
]
st.navigation(pages).run()
