"""Research Workflow Console: the Streamlit entry point.

Opens the one process-wide runtime (database, migrations), hands it to the pages through
`st.session_state.runtime`, draws the shared sidebar and runs the selected page.
"""

from __future__ import annotations

import logging

import streamlit as st

from cqrs_core.app_runtime import AppRuntime, open_runtime
from cqrs_core.config import SettingsError, get_settings
from cqrs_core.errors import CQRSError
from cqrs_core.health import HealthReport

log = logging.getLogger("cqrs_console.app")

st.set_page_config(page_title="Research Workflow Console", page_icon=":material/science:", layout="wide")

STATUS_BADGES = {
    "healthy": ":green-badge[:material/check_circle: Healthy]",
    "degraded": ":orange-badge[:material/warning: Degraded]",
    "unhealthy": ":red-badge[:material/error: Unhealthy]",
}


@st.cache_resource(show_spinner="Starting the database and applying migrations…", on_release=AppRuntime.close)
def runtime() -> AppRuntime:
    return open_runtime(get_settings())


def open_or_explain() -> AppRuntime:
    """The runtime, or one sentence saying why there is none (the traceback goes to the log)."""
    try:
        return runtime()
    except SettingsError as exc:
        st.error(str(exc), icon=":material/settings:")
    except CQRSError as exc:
        log.warning("runtime did not open: %s", exc.context, exc_info=True)
        st.error(exc.user_message, icon=":material/database:")
    except Exception:
        log.exception("runtime did not open")
        st.error("The database could not be opened; the server log has the details.", icon=":material/database:")
    st.stop()


def draw_sidebar(rt: AppRuntime, report: HealthReport) -> None:
    with st.sidebar:
        st.markdown("**Connection**")
        st.caption(rt.connection_label)
        st.markdown("**Health**")
        latency = f" · {report.database_latency_ms:.1f} ms" if report.database_latency_ms is not None else ""
        st.markdown(STATUS_BADGES[report.status] + latency)
        for component in report.components:
            if component.status != "healthy":
                st.caption(f"{component.name}: {component.detail}")


rt = open_or_explain()
st.session_state["runtime"] = rt

page = st.navigation(
    {
        "Overview": [
            st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
        ],
    }
)
draw_sidebar(rt, rt.health())
page.run()
