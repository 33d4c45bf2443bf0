"""facebook: ad and page events (docs/events.md, "facebook")."""

from decimal import Decimal
from typing import Literal

import msgspec

from ._common import Data, EventBase, Id, Int4, RowFields, SourceSchema, Text, check_amount


class Location(msgspec.Struct, gc=False):
    country: Id
    city: Id


class User(msgspec.Struct, rename="camel", gc=False):
    user_id: Id
    name: Text
    age: Int4
    gender: Literal["male", "female", "non-binary"]
    location: Location


class TopEngagement(msgspec.Struct, rename="camel", gc=False):
    action_time: Text
    referrer: Literal["newsfeed", "marketplace", "groups"]
    video_id: Id | None


class BottomEngagement(msgspec.Struct, rename="camel", gc=False):
    ad_id: Id
    campaign_id: Id
    click_position: Literal["top_left", "bottom_right", "center"]
    device: Literal["mobile", "desktop"]
    browser: Literal["Chrome", "Firefox", "Safari"]
    purchase_amount: Decimal | None

    def __post_init__(self) -> None:
        check_amount(self.purchase_amount)


class FacebookData(Data, gc=False):
    user: User


class FacebookEvent(EventBase, tag="facebook"):
    data: FacebookData


def _row(event: FacebookEvent, engagement: TopEngagement | BottomEngagement) -> RowFields:
    user = event.data.user
    location = user.location
    if isinstance(engagement, BottomEngagement):
        return RowFields(
            user.user_id,
            location.country,
            engagement.campaign_id,
            engagement.purchase_amount,
            age=user.age,
            gender=user.gender,
            city=location.city,
        )
    return RowFields(
        user.user_id,
        location.country,
        None,
        None,
        age=user.age,
        gender=user.gender,
        city=location.city,
        video_id=engagement.video_id,
    )


SCHEMA = SourceSchema(
    name="facebook",
    event=FacebookEvent,
    engagement={"top": TopEngagement, "bottom": BottomEngagement},
    event_types={
        "top": frozenset({"ad.view", "page.like", "comment", "video.view"}),
        "bottom": frozenset({"ad.click", "form.submission", "checkout.complete"}),
    },
    row=_row,
    revenue_types=frozenset({"checkout.complete"}),
)
