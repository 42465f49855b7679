"""Streamlit-facing helpers: the app runtime, sign-in, UI helpers, demo jobs."""
