"""Who may send which command: the one role table."""

from __future__ import annotations

from cqrs_core.infra.errors import AuthorizationError
from cqrs_core.write import commands as c

# The roles each signed-in role acts with (a command's `required_role` must be among them).
ROLE_GRANTS: dict[str, frozenset[str]] = {
    "analyst": frozenset(),
    "researcher": frozenset({"researcher"}),
    "operator": frozenset({"operator"}),
    "admin": frozenset({"researcher", "operator"}),
}


def authorize(command: c.Command) -> None:
    """Raise AuthorizationError unless the command's role grants its `required_role`."""
    if command.required_role not in ROLE_GRANTS.get(command.role, frozenset()):
        raise AuthorizationError(
            f"A {command.role} cannot {_humanize(command.command_type)}; it needs the {command.required_role} role.",
            actor=command.actor,
        )


def _humanize(name: str) -> str:
    return "".join(" " + ch.lower() if ch.isupper() else ch for ch in name).strip()
