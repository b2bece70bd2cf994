"""Heartbeats handed on as the tracker does: to the fleet, then to the Manager writer, which reads
a refresh's record from the fleet (``active_record``) when its turn comes."""

from __future__ import annotations

from overseer_operator.fleet import Fleet
from overseer_operator.manager_writer import ManagerWriter
from overseer_operator.model import Heartbeat


def heard(fleet: Fleet, writer: ManagerWriter, heartbeat: Heartbeat) -> None:
    fleet.observe(heartbeat)
    writer.observe_heartbeat(heartbeat)
