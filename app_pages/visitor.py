"""Who is looking at the app: the signed-in user, else the owner key this browser keeps in a cookie.

Its own module because both app_pages.access (ownership of runs) and app_pages.state (each visitor's kept
choices) need it, and neither may import the other back.
"""

from __future__ import annotations

import dataclasses
import re

import streamlit as st

OWNER_COOKIE = "ts_owner"
_KEY = re.compile(r"[0-9a-f]{32}")


@dataclasses.dataclass(frozen=True)
class Visitor:
    owner: str  # stored with the jobs this visitor launches
    admin: bool  # the host's admin key was given: sees and controls every run
    signed_in: bool


def visitor() -> Visitor:
    """Who is looking: the signed-in user, else the owner key of this browser (made on the first visit)."""
    import hashlib
    import hmac
    import secrets

    from pipeline.host.limits import Limits

    admin_key = Limits.from_env().admin_key
    given = st.query_params.get("admin")
    if given is not None:
        del st.query_params["admin"]  # out of the address bar at once: a copied link never carries it
        if admin_key and hmac.compare_digest(given, admin_key):
            st.session_state["admin"] = True  # for this session (tab); a refresh asks for ?admin= again
    admin = bool(admin_key) and st.session_state.get("admin", False)
    user = st.user.to_dict()
    if user.get("is_logged_in") and (user.get("email") or user.get("sub")):
        return Visitor(f"user:{user.get('email') or user.get('sub')}", admin, True)
    key = st.session_state.get("owner_key")
    if key is None:
        cookie = st.context.cookies.get(OWNER_COOKIE, "")
        key = cookie if isinstance(cookie, str) and _KEY.fullmatch(cookie) else secrets.token_hex(16)
        st.session_state["owner_key"] = key
    return Visitor(f"key:{hashlib.sha256(key.encode()).hexdigest()[:32]}", admin, False)
