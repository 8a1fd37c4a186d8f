"""Names are text: class names, file names, run sources and error messages quoting them come from uploads and
links, so they are shown literally, never as Markdown or HTML (an image in a folder name must not make a browser
fetch a URL). A file name is bytes: one that is not UTF-8 is shown with those bytes escaped (readable), and opened
by its real name. Also counts said in words ("1 class", "1,797 images")."""

from __future__ import annotations

import os
import re

import streamlit as st

WORD_JOINER = "\u2060"  # invisible: breaks the autolinks GFM finds after parsing (www., https://, a@b)


_MD_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation mark: CommonMark escapes them all


_AUTOLINK = re.compile(r"(?i)(www)(?=\\\.)|(\\:)(?=\\/\\/)|(?=\\@)")


def count(n: int, one: str, many: str | None = None) -> str:
    """``n`` and the noun in the number it takes: "1 class", "2 classes", "1,797 images"."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def readable(value: object) -> str:
    """``value`` as text every element can show: the bytes of a file name that are not UTF-8 as ``\\xNN``.

    Linux keeps a file name's bytes as they are, and Python holds the ones that are not UTF-8 as lone surrogates
    (``os.fsdecode(b"bad_\\xff.jpg") == "bad_\\udcff.jpg"``), which cannot be encoded as UTF-8: Streamlit cannot
    send such a string to the browser. Shown here as ``bad_\\xff.jpg``; the real name (the path that opens the
    file) is kept where it was. Every helper below passes what it shows through this one.
    """
    words = str(value)
    try:
        words.encode("utf-8")
        return words
    except UnicodeEncodeError:
        pass
    try:
        return words.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name makes (e.g. a \ud800 escape in a JSON file)
        return words.encode("utf-8", "backslashreplace").decode("utf-8")


def fs_key(path: object) -> bytes:
    """A path as bytes, for the argument of a cached function: Streamlit hashes a str argument as UTF-8, which a
    non-UTF-8 file name is not (``os.fsdecode`` gives the path back inside the function)."""
    return os.fsencode(str(path))


def plain(text: object) -> str:
    """``text`` as Markdown that renders exactly as the characters it holds (no link, image, emoji or icon).

    For the Streamlit elements that always parse Markdown (alerts, captions, image captions, metric labels):
    every ASCII punctuation mark is backslash-escaped, and the autolinks GitHub Markdown would still find
    (``www.``, ``scheme://``, ``name@host``) get an invisible word joiner.
    """
    escaped = _MD_PUNCTUATION.sub(r"\\\1", readable(text))
    return _AUTOLINK.sub(lambda m: (m.group(1) or m.group(2) or "") + WORD_JOINER, escaped)


def text(value: object) -> None:
    """Shows a user-controlled string as plain text (``st.text``: no Markdown, no HTML)."""
    st.text(readable(value))


def error(message: object) -> None:
    st.error(plain(message))


def warning(message: object) -> None:
    st.warning(plain(message))


def info(message: object) -> None:
    st.info(plain(message))


def chart_label(value: object) -> str:
    """A label for Plotly, which reads a few HTML tags (links among them) in its text: entities keep it literal."""
    return readable(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
