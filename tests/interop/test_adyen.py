"""Adyen's official Python library against the sidecar and its Adyen-like sandbox."""

import threading
import time

import Adyen
import pytest
from Adyen.exceptions import AdyenAPIResponseError, AdyenAPIUnprocessableEntity


@pytest.fixture
def adyen(env):
    client = Adyen.Adyen()
    client.client.xapikey = "interop_api_key"
    client.client.platform = "test"
    base = env["sidecar"].base + "/adyen/v71"
    client.checkout.payments_api.baseUrl = base
    client.checkout.modifications_api.baseUrl = base
    yield client, env


def payment(reference, number="4111111111111111", manual=True):
    return {
        "merchantAccount": "InteropShop",
        "reference": reference,
        "amount": {"value": 1130, "currency": "EUR"},
        "paymentMethod": {"type": "scheme", "number": number},
        "additionalData": {"manualCapture": "true" if manual else "false"},
    }


def test_authorise_capture_and_replay(adyen):
    client, env = adyen
    result = client.checkout.payments_api.payments(payment("order-a1"), idempotency_key="interop-adyen-1")
    assert result.message["resultCode"] == "Authorised"
    psp = result.message["pspReference"]
    again = client.checkout.payments_api.payments(payment("order-a1"), idempotency_key="interop-adyen-1")
    assert again.message["pspReference"] == psp
    capture = client.checkout.modifications_api.capture_authorised_payment(
        {"merchantAccount": "InteropShop", "amount": {"value": 1130, "currency": "EUR"}},
        psp,
        idempotency_key="interop-adyen-cap-1",
    )
    assert capture.status_code == 201
    assert capture.message["paymentPspReference"] == psp
    refused = client.checkout.payments_api.payments(payment("order-a2", number="4000000000009995"))
    assert refused.message["resultCode"] == "Refused"


def test_proxy_errors_are_adyen_errors_with_headers(adyen):
    client, env = adyen
    client.checkout.payments_api.payments(payment("order-b1"), idempotency_key="interop-adyen-2")
    with pytest.raises(AdyenAPIUnprocessableEntity) as caught:
        client.checkout.payments_api.payments(payment("order-b2"), idempotency_key="interop-adyen-2")
    e = caught.value
    assert e.status_code == 422 and e.error_code == "idempotency_mismatch"
    assert e.message["errorType"] == "validation"
    assert {k.lower(): v for k, v in e.headers.items()}["x-switchyard-error"] == "idempotency_mismatch"

    env["primary"].mode("ok", process_ms=1500)
    done = {}
    t = threading.Thread(
        target=lambda: done.setdefault(
            "r", client.checkout.payments_api.payments(payment("order-b3"), idempotency_key="interop-adyen-3")
        )
    )
    t.start()
    time.sleep(0.4)
    with pytest.raises(AdyenAPIResponseError) as caught:
        client.checkout.payments_api.payments(payment("order-b3"), idempotency_key="interop-adyen-3")
    t.join()
    e = caught.value
    h = {k.lower(): v for k, v in e.headers.items()}
    assert e.status_code == 409 and e.error_code == "idempotency_conflict"
    assert int(h["retry-after"]) >= 1
    assert done["r"].message["resultCode"] == "Authorised"
