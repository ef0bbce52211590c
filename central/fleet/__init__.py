"""Fleet trust at central: enrollment by claim, device certificates, signed config and commands.

docs/fleet-trust.md is the design; :class:`central.fleet.service.FleetService` is the one
facade the rest of central (app, dashboard, REST API) uses.
"""

from central.fleet.errors import FleetError
from central.fleet.settings import FleetSection

__all__ = ["FleetError", "FleetSection"]
