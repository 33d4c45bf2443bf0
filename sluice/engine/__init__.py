"""The engine core: actors, one_for_one supervision, bounded channels, clocks.

Depends only on anyio, so it runs on asyncio and trio alike. The test kit is in
`sluice.engine.testing`.
"""

from ._actor import Actor
from ._channels import open_channel
from ._clock import AnyioClock, Clock
from ._deadline import DrainDeadline
from ._fatal import FatalError
from ._supervisor import (
    ChildSpec,
    Restart,
    RestartBudgetExceeded,
    RestartPolicy,
    Supervisor,
    current_actor,
)

__all__ = [
    "Actor",
    "AnyioClock",
    "ChildSpec",
    "Clock",
    "DrainDeadline",
    "FatalError",
    "Restart",
    "RestartBudgetExceeded",
    "RestartPolicy",
    "Supervisor",
    "current_actor",
    "open_channel",
]
