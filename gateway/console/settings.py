"""``[console]``: who may use the web console, by IdP group."""

from __future__ import annotations

from gateway.settings_section import Section


class ConsoleSettings(Section):
    #: IdP groups whose members may read the log, agent histories, reports and the chain's status.
    reviewer_groups: tuple[str, ...] = ()
    #: IdP groups whose members may also kill sessions, deprovision agents and retry dead letters.
    admin_groups: tuple[str, ...] = ()
