"""Signed webhooks: SLUICE_WEBHOOK_SECRETS, the verifier's verdicts, and the signer."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from sluice.config import ConfigError, load_settings
from sluice.signing import TOLERANCE, Signer, WebhookSignatures


def secret(seed: int) -> str:
    return "whsec_" + base64.b64encode(bytes([seed]) * 24).decode()


FB, FB_NEXT, TT = secret(1), secret(2), secret(3)
BODY = b'{"eventId": "e-1", "source": "facebook"}'


def signed(secret: str, body: bytes = BODY, *, at: float | None = None, msg_id: str = "msg_1"):
    """(webhook-id, webhook-timestamp, webhook-signature) as the library signs them."""
    when = int(time.time() if at is None else at)
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(when, UTC), body)
    return msg_id, str(when), signature


# --------------------------------------------------------------------------- settings


def test_secrets_are_read_per_source_comma_or_space_separated_and_masked() -> None:
    settings = load_settings(
        {"SLUICE_WEBHOOK_SECRETS": f"facebook={FB}, tiktok={TT}\nfacebook={FB_NEXT}"}
    )
    assert settings.webhook_secrets == (("facebook", FB), ("tiktok", TT), ("facebook", FB_NEXT))
    shown = settings.masked()["SLUICE_WEBHOOK_SECRETS"]
    assert shown == "facebook=whsec_***,tiktok=whsec_***,facebook=whsec_***"
    assert load_settings({}).webhook_secrets == ()
    assert load_settings({}).masked()["SLUICE_WEBHOOK_SECRETS"] == ""


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (f"myspace={FB}", "unknown source 'myspace'"),
        ("facebook=whsec_%%%notbase64", "the one for 'facebook' does not"),
        ("facebook=c2VjcmV0c2VjcmV0", "the one for 'facebook' does not"),  # no whsec_
        ("facebook=whsec_", "the one for 'facebook' does not"),
        (FB, "entry 1 is not"),
    ],
)
def test_a_bad_entry_is_a_config_error_naming_it_but_never_the_secret(
    value: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"SLUICE_WEBHOOK_SECRETS": value})
    message = str(info.value)
    assert "SLUICE_WEBHOOK_SECRETS" in message and words in message
    assert FB.removeprefix("whsec_") not in message and "notbase64" not in message


def test_an_unknown_source_is_one_not_configured() -> None:
    with pytest.raises(ConfigError, match="unknown source 'tiktok'"):
        load_settings({"SLUICE_SOURCES": "facebook", "SLUICE_WEBHOOK_SECRETS": f"tiktok={TT}"})


# --------------------------------------------------------------------------- verifier


@pytest.fixture
def signatures() -> WebhookSignatures:
    return WebhookSignatures([("facebook", FB), ("tiktok", TT), ("facebook", FB_NEXT)])


def test_a_route_source_with_a_secret_takes_a_valid_signature(
    signatures: WebhookSignatures,
) -> None:
    verdict = signatures.check("facebook", BODY, *signed(FB))
    assert verdict.error is None and verdict.unsigned is None


def test_during_a_rotation_either_secret_is_taken(signatures: WebhookSignatures) -> None:
    assert signatures.check("facebook", BODY, *signed(FB_NEXT)).error is None
    assert signatures.check("facebook", BODY, *signed(FB)).error is None
    # Another source's secret is not one of facebook's.
    verdict = signatures.check("facebook", BODY, *signed(TT))
    assert verdict.error == "no webhook-signature matches a facebook webhook secret"


def test_a_signature_over_other_bytes_or_another_id_does_not_match(
    signatures: WebhookSignatures,
) -> None:
    msg_id, timestamp, signature = signed(FB)
    assert signatures.check("facebook", BODY + b" ", msg_id, timestamp, signature).error
    assert signatures.check("facebook", BODY, "msg_2", timestamp, signature).error
    assert signatures.check("facebook", BODY, msg_id, str(int(timestamp) - 1), signature).error
    garbage = "v1," + base64.b64encode(b"x" * 32).decode()
    assert signatures.check("facebook", BODY, msg_id, timestamp, garbage).error


def test_a_signature_among_several_is_enough(signatures: WebhookSignatures) -> None:
    msg_id, timestamp, signature = signed(FB)
    other = signed(secret(9))[2]
    verdict = signatures.check("facebook", BODY, msg_id, timestamp, f"{other} {signature}")
    assert verdict.error is None


@pytest.mark.parametrize(
    ("offset", "words"),
    [
        (-(TOLERANCE + 60), "webhook-timestamp too old"),
        (TOLERANCE + 60, "webhook-timestamp too new"),
    ],
)
def test_a_timestamp_beyond_the_tolerance_is_refused_even_when_signed(
    signatures: WebhookSignatures, offset: int, words: str
) -> None:
    verdict = signatures.check("facebook", BODY, *signed(FB, at=time.time() + offset))
    assert verdict.error is not None and verdict.error.startswith(words)


def test_a_timestamp_within_the_tolerance_is_taken(signatures: WebhookSignatures) -> None:
    for offset in (-(TOLERANCE - 30), TOLERANCE - 30):
        assert (
            signatures.check("facebook", BODY, *signed(FB, at=time.time() + offset)).error is None
        )


def test_missing_headers_are_named(signatures: WebhookSignatures) -> None:
    verdict = signatures.check("facebook", BODY, None, None, None)
    assert verdict.error is not None
    assert verdict.error.startswith("missing webhook-id, webhook-timestamp, webhook-signature")
    msg_id, timestamp, _ = signed(FB)
    verdict = signatures.check("facebook", BODY, msg_id, timestamp, None)
    assert verdict.error is not None and verdict.error.startswith("missing webhook-signature:")
    verdict = signatures.check("facebook", BODY, msg_id, "soon", "v1,x")
    assert verdict.error == "webhook-timestamp must be a Unix time in whole seconds"


def test_a_source_without_a_secret_is_unaffected() -> None:
    only_facebook = WebhookSignatures([("facebook", FB)])
    assert only_facebook.check("tiktok", BODY, None, None, None).error is None
    assert only_facebook.check("tiktok", BODY, "msg_1", "0", "v1,bad").error is None


def test_unsigned_requests_to_webhook_leave_out_the_sources_with_secrets(
    signatures: WebhookSignatures,
) -> None:
    verdict = signatures.check(None, BODY, None, None, None)
    assert verdict.error is None and verdict.unsigned == {"facebook", "tiktok"}


def test_signed_requests_to_webhook_cover_the_sources_of_the_secret_that_signed(
    signatures: WebhookSignatures,
) -> None:
    verdict = signatures.check(None, BODY, *signed(FB_NEXT))
    assert verdict.error is None and verdict.unsigned == {"tiktok"}
    verdict = signatures.check(None, BODY, *signed(TT))
    assert verdict.error is None and verdict.unsigned == {"facebook"}


def test_a_signature_sent_to_webhook_must_match_some_secret(
    signatures: WebhookSignatures,
) -> None:
    verdict = signatures.check(None, BODY, *signed(secret(9)))
    assert verdict.error == "no webhook-signature matches a configured webhook secret"
    old = signatures.check(None, BODY, *signed(FB, at=time.time() - TOLERANCE - 60))
    assert old.error is not None and old.error.startswith("webhook-timestamp too old")
    partial = signatures.check(None, BODY, "msg_1", None, None)
    assert partial.error is not None and partial.error.startswith("missing webhook-timestamp")


def test_one_secret_shared_by_two_sources_signs_for_both() -> None:
    shared = WebhookSignatures([("facebook", FB), ("tiktok", FB), ("generic", TT)])
    verdict = shared.check(None, BODY, *signed(FB))
    assert verdict.error is None and verdict.unsigned == {"generic"}


# --------------------------------------------------------------------------- signer


def test_the_signer_signs_as_the_library_verifies() -> None:
    signer = Signer([FB])
    msg_id = signer.new_id()
    headers = signer.headers(msg_id, BODY)
    assert headers["webhook-id"] == msg_id
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    Webhook(FB).verify(BODY, headers, json_parse=False)  # raises when wrong
    assert signer.new_id() != msg_id


def test_with_two_secrets_each_request_carries_both_signatures() -> None:
    headers = Signer([FB, FB_NEXT]).headers("msg_7", BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(FB).verify(BODY, headers, json_parse=False)
    Webhook(FB_NEXT).verify(BODY, headers, json_parse=False)


def test_the_signer_uses_its_clock() -> None:
    headers = Signer([FB], clock=lambda: 1_700_000_000.9).headers("msg_1", BODY)
    assert headers["webhook-timestamp"] == "1700000000"


def test_the_verdict_agrees_with_the_librarys_own_verify() -> None:
    """The check compares signatures itself (cheaper than Webhook.verify): on the same
    headers, it must pass exactly when the library's verify does."""
    signatures = WebhookSignatures([("facebook", FB)])
    now = int(time.time())
    good = signed(FB, msg_id="msg_ok", at=now)[2]
    good_b64 = good.removeprefix("v1,")
    bodies = [BODY, b"\xff\xfe not utf-8", b""]
    cases = [
        ("msg_ok", str(now), good),
        ("msg_ok", str(now), f"v1,AAAA {good}"),
        ("msg_ok", str(now), f"{good} {good}"),
        ("msg_ok", str(now), f"v2,{good_b64}"),
        ("msg_ok", str(now), good_b64),
        ("msg_ok", str(now), f" {good}"),
        ("msg_ok", str(now), good.lower()),
        ("msg_ok", f"0{now}", good),
        ("msg_ok", str(now + 1), good),
        ("msg_ok", str(now - TOLERANCE - 10), good),
        ("msg_other", str(now), good),
        ("msg_é", str(now), signed(FB, msg_id="msg_é", at=now)[2]),
    ]
    checked = 0
    for body in bodies:
        for msg_id, timestamp, signature in cases:
            headers = {
                "webhook-id": msg_id,
                "webhook-timestamp": timestamp,
                "webhook-signature": signature,
            }
            try:
                Webhook(FB).verify(body, headers, json_parse=False)
                library = True
            except Exception:
                library = False
            ours = signatures.check("facebook", body, msg_id, timestamp, signature).error is None
            assert ours == library, (body, msg_id, timestamp, signature)
            checked += library
    assert checked >= 3  # some cases do pass


def test_only_the_secrets_are_remembered_for_masking_never_the_source_names() -> None:
    settings = load_settings({"SLUICE_WEBHOOK_SECRETS": f"facebook={FB} tiktok={TT}"})
    assert sorted(settings.secrets()) == sorted([FB, TT])
