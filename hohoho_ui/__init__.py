"""Streamlit helpers shared by ``app.py`` and ``pages/``: settings, cached loaders,
session state and small ``*_ui()`` widget functions.

This is the only package besides the app scripts that imports streamlit; the pure
figure/table helpers live in `hohoho_ui.views` and are tested without a browser.
"""
