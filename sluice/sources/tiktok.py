"""tiktok: video and profile events (docs/events.md, "tiktok")."""

from decimal import Decimal
from typing import Literal

import msgspec

from ._common import (
    Data,
    EventBase,
    Id,
    Int8,
    NonNegative,
    RowFields,
    SourceSchema,
    Text,
    check_amount,
)


class User(msgspec.Struct, rename="camel", gc=False):
    user_id: Id
    username: Text
    followers: Int8


class TopEngagement(msgspec.Struct, rename="camel", gc=False):
    watch_time: NonNegative
    percentage_watched: NonNegative
    device: Literal["Android", "iOS", "Desktop"]
    country: Id
    video_id: Id


class BottomEngagement(msgspec.Struct, rename="camel", gc=False):
    action_time: Text
    profile_id: Id | None
    purchased_item: Text | None
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


def _zero_float(engagement: TopEngagement) -> bool:
    # msgspec reads 1e-99999 as 0.0; jsonb refuses it: read a zero as written.
    return engagement.watch_time == 0 or engagement.percentage_watched == 0


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
    may_hide_numbers={"top": _zero_float},
)
