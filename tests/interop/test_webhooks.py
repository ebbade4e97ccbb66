"""Webhooks signed by each library's own signing code, through the sidecar to the shop."""

import json
import time
import urllib.error
import urllib.request

import pytest
import stripe
from Adyen import util as adyen_util

from conftest import ADYEN_KEY, ADYEN_OLD_KEY, STRIPE_OLD_SECRET, STRIPE_SECRET


def post(url, body, headers):
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def stripe_header(payload, secret, t=None):
    """A Stripe-Signature header computed by the library's own code."""
    t = int(time.time()) if t is None else t
    sig = stripe.WebhookSignature._compute_signature(f"{t}.{payload}", secret)
    return f"t={t},{stripe.WebhookSignature.EXPECTED_SCHEME}={sig}"


def test_stripe_valid_forged_stale_rotated_duplicate(env):
    url = env["sidecar"].base + "/webhooks/stripe"
    shop = env["shop"]
    payload = json.dumps({"id": "evt_interop_1", "object": "event", "type": "payment_intent.succeeded"})
    header = stripe_header(payload, STRIPE_SECRET)
    status, _ = post(url, payload.encode(), {"stripe-signature": header, "content-type": "application/json"})
    assert status == 200
    got = shop.events("/stripe")
    assert len(got) == 1
    # What the shop got verifies with the library, as the shop's own code would check it.
    event = stripe.Webhook.construct_event(got[0][1].decode(), got[0][0]["stripe-signature"], STRIPE_SECRET)
    assert event.id == "evt_interop_1"

    # Duplicate: accepted, not forwarded again.
    status, _ = post(url, payload.encode(), {"stripe-signature": header})
    assert status == 200 and len(shop.events("/stripe")) == 1

    # Forged: signed with a secret the sidecar does not hold.
    forged = json.dumps({"id": "evt_interop_2", "object": "event"})
    status, _ = post(url, forged.encode(), {"stripe-signature": stripe_header(forged, "whsec_forged")})
    assert status == 401

    # Stale: signed ten minutes ago.
    stale = json.dumps({"id": "evt_interop_3", "object": "event"})
    status, _ = post(url, stale.encode(), {"stripe-signature": stripe_header(stale, STRIPE_SECRET, int(time.time()) - 600)})
    assert status == 401
    with pytest.raises(stripe.error.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(stale, stripe_header(stale, STRIPE_SECRET, int(time.time()) - 600), STRIPE_SECRET, 300)

    # Rotated: the previous secret still verifies during the rotation.
    rotated = json.dumps({"id": "evt_interop_4", "object": "event"})
    status, _ = post(url, rotated.encode(), {"stripe-signature": stripe_header(rotated, STRIPE_OLD_SECRET)})
    assert status == 200
    assert len(shop.events("/stripe")) == 2


def adyen_item(psp, key, event="AUTHORISATION"):
    item = {
        "pspReference": psp,
        "merchantAccountCode": "InteropShop",
        "merchantReference": "order-w1",
        "amount": {"value": 1130, "currency": "EUR"},
        "eventCode": event,
        "success": "true",
        "additionalData": {},
    }
    item["additionalData"]["hmacSignature"] = adyen_util.generate_notification_sig(item, key).decode()
    return {"NotificationRequestItem": item}


def test_adyen_valid_forged_rotated_duplicate_and_partly_known_batch(env):
    url = env["sidecar"].base + "/webhooks/adyen"
    shop = env["shop"]
    auth = {"authorization": "Basic aW50ZXJvcDpzZWNyZXQ=", "content-type": "application/json"}
    first = adyen_item("8800000000000001", ADYEN_KEY)
    body = json.dumps({"live": "false", "notificationItems": [first]}).encode()
    status, answer = post(url, body, auth)
    assert (status, answer) == (200, b"[accepted]")
    headers, sent = shop.events("/adyen")[-1]
    assert headers["authorization"] == auth["authorization"]
    sent_item = json.loads(sent)["notificationItems"][0]["NotificationRequestItem"]
    assert adyen_util.is_valid_hmac_notification(sent_item, ADYEN_KEY)

    # Duplicate.
    assert post(url, body, auth) == (200, b"[accepted]")
    assert len(shop.events("/adyen")) == 1

    # Forged: the amount changed after signing.
    forged = adyen_item("8800000000000002", ADYEN_KEY)
    forged["NotificationRequestItem"]["amount"]["value"] = 99999
    status, _ = post(url, json.dumps({"live": "false", "notificationItems": [forged]}).encode(), auth)
    assert status == 401

    # Rotated key, in a batch with the known item: only the new item reaches the shop.
    rotated = adyen_item("8800000000000003", ADYEN_OLD_KEY)
    batch = json.dumps({"live": "false", "notificationItems": [first, rotated]}).encode()
    assert post(url, batch, auth) == (200, b"[accepted]")
    _, sent = shop.events("/adyen")[-1]
    items = json.loads(sent)["notificationItems"]
    assert [i["NotificationRequestItem"]["pspReference"] for i in items] == ["8800000000000003"]
    assert len(shop.events("/adyen")) == 2
