"""Streamlit-facing helpers: the app runtime, sign-in, UI helpers, the screens too large for a
page file, demo jobs."""
