"""generic: product activity events from any publisher (docs/events.md, "generic").

A batch is a JSON array of `{event_id, account_id, user_id, type, timestamp, metadata}`
posted to POST /webhook/generic: the route names the source, the events carry no `source`
field and no funnel stage, and any `type` is allowed. On POST /webhook an event is read as
generic only when it says `"source": "generic"`.
"""

from typing import Any

import msgspec

from ._common import NonEmptyId, RoutedEvent, RowFields, SourceSchema


class GenericEvent(RoutedEvent, gc=False):
    account_id: NonEmptyId
    user_id: NonEmptyId
    metadata: dict[str, Any]
    event_type: NonEmptyId = msgspec.field(name="type")


def _row(event: GenericEvent, engagement: None) -> RowFields:
    return RowFields(event.user_id, None, None, None, account_id=event.account_id)


SCHEMA = SourceSchema(name="generic", event=GenericEvent, engagement={}, event_types={}, row=_row)
