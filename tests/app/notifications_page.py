"""A page holding only the Alerts page's "Notifications" section, for its AppTest
(test_alert_notifications.py): the runtime comes from the session, as app.py leaves it."""

import streamlit as st

from cqrs_core.app.screens.alert_deliveries import render_notifications

render_notifications(st.session_state["runtime"], actor="olga")
