"""tiktok: video and profile events (docs/events.md, "tiktok")."""

from decimal import Decimal
from typing import Literal

import msgspec

from ._common import Data, EventBase, RowFields, SourceSchema, check_amount


class User(msgspec.Struct, rename="camel", gc=False):
    user_id: str
    username: str
    followers: int


class TopEngagement(msgspec.Struct, rename="camel", gc=False):
    watch_time: float
    percentage_watched: float
    device: Literal["Android", "iOS", "Desktop"]
    country: str
    video_id: str


class BottomEngagement(msgspec.Struct, rename="camel", gc=False):
    action_time: str
    profile_id: str | None
    purchased_item: str | None
    purchase_amount: Decimal | None

    def __post_init__(self) -> None:
        check_amount(self.purchase_amount)


class TiktokData(Data, gc=False):
    user: User


class TiktokEvent(EventBase, tag="tiktok"):
    data: TiktokData


def _row(event: TiktokEvent, engagement: TopEngagement | BottomEngagement) -> RowFields:
    user = event.data.user
    if isinstance(engagement, TopEngagement):
        return RowFields(
            user.user_id,
            engagement.country,
            None,
            None,
            followers=user.followers,
            device=engagement.device,
            video_id=engagement.video_id,
        )
    return RowFields(user.user_id, None, None, engagement.purchase_amount, followers=user.followers)


SCHEMA = SourceSchema(
    name="tiktok",
    event=TiktokEvent,
    engagement={"top": TopEngagement, "bottom": BottomEngagement},
    event_types={
        "top": frozenset({"video.view", "like", "share", "comment"}),
        "bottom": frozenset({"profile.visit", "purchase", "follow"}),
    },
    row=_row,
    revenue_types=frozenset({"purchase"}),
)
