"""The official Stripe Python library against the sidecar and its Stripe-like sandbox.

Every proxy-made answer must raise the library's own typed exception, with the switchyard headers
readable (`e.headers`), exactly as a shop's code would see it. The library fills `e.code` only for
InvalidRequestError and CardError; `e.error.code` carries it for every type.
"""

import threading
import time

import pytest
import stripe


@pytest.fixture
def sdk(env):
    stripe.api_key = "sk_test_interop"
    stripe.api_base = env["sidecar"].base
    stripe.max_network_retries = 0
    yield env
    stripe.api_base = env["sidecar"].base
    stripe.max_network_retries = 0


def headers(e):
    return {k.lower(): v for k, v in (e.headers or {}).items()}


def test_payment_lifecycle_with_real_object_types(sdk):
    customer = stripe.Customer.create(email="shop@example.test")
    assert customer.object == "customer"
    pi = stripe.PaymentIntent.create(
        amount=2000, currency="eur", customer=customer.id,
        payment_method="pm_card_visa", capture_method="manual",
    )
    assert pi.object == "payment_intent" and pi.status == "requires_confirmation"
    pi = stripe.PaymentIntent.confirm(pi.id)
    assert pi.status == "requires_capture"
    pi = stripe.PaymentIntent.capture(pi.id)
    assert pi.status == "succeeded" and pi.amount_received == 2000
    assert stripe.PaymentIntent.retrieve(pi.id).status == "succeeded"
    refund = stripe.Refund.create(payment_intent=pi.id, amount=500)
    assert refund.object == "refund" and refund.payment_intent == pi.id
    assert stripe.Refund.retrieve(refund.id).amount == 500
    listed = stripe.PaymentIntent.list(limit=3)
    assert listed.object == "list" and pi.id in [p.id for p in listed.data]
    other = stripe.PaymentIntent.create(amount=100, currency="eur", confirm=False)
    assert stripe.PaymentIntent.cancel(other.id).status == "canceled"


def test_a_decline_is_a_card_error(sdk):
    with pytest.raises(stripe.error.CardError) as caught:
        stripe.PaymentIntent.create(
            amount=100, currency="eur", confirm=True, payment_method="pm_card_chargeDeclinedInsufficientFunds"
        )
    assert caught.value.code == "card_declined"
    assert caught.value.error.decline_code == "insufficient_funds"
    assert caught.value.http_status == 402


def test_a_replay_returns_the_same_payment_and_charges_once(sdk):
    before = sdk["primary"].stats()["charges"] + sdk["backup"].stats()["charges"]
    first = stripe.PaymentIntent.create(amount=700, currency="eur", idempotency_key="interop-replay-1")
    again = stripe.PaymentIntent.create(amount=700, currency="eur", idempotency_key="interop-replay-1")
    assert again.id == first.id
    assert again.last_response.headers.get("Idempotent-Replayed") == "true"
    after = sdk["primary"].stats()["charges"] + sdk["backup"].stats()["charges"]
    assert after - before == 1


def test_failover_to_the_backup_when_the_primary_is_down(sdk):
    sdk["primary"].mode("down")
    time.sleep(0.3)  # the sidecar's pooled connections see the close
    pi = stripe.PaymentIntent.create(amount=900, currency="eur", idempotency_key="interop-failover-1")
    assert pi.status == "succeeded"
    assert pi.last_response.headers.get("x-switchyard-provider") == "psp-backup"
    assert sdk["backup"].stats()["charges_by_key"].get("interop-failover-1") == 1


def test_a_reused_key_is_an_idempotency_error(sdk):
    stripe.PaymentIntent.create(amount=100, currency="eur", idempotency_key="interop-reuse-1")
    with pytest.raises(stripe.error.IdempotencyError) as caught:
        stripe.PaymentIntent.create(amount=200, currency="eur", idempotency_key="interop-reuse-1")
    h = headers(caught.value)
    assert h["x-switchyard-error"] == "idempotency_mismatch"
    assert h["stripe-should-retry"] == "false"
    assert caught.value.error.code == "idempotency_mismatch"


def test_a_key_in_flight_is_a_409_the_library_retries_and_reads(sdk):
    sdk["primary"].mode("ok", process_ms=1500)
    first = {}

    def create():
        first["pi"] = stripe.PaymentIntent.create(amount=300, currency="eur", idempotency_key="interop-inflight-1")

    t = threading.Thread(target=create)
    t.start()
    time.sleep(0.4)
    with pytest.raises(stripe.error.APIError) as caught:
        stripe.PaymentIntent.create(amount=300, currency="eur", idempotency_key="interop-inflight-1")
    t.join()
    e = caught.value
    assert e.http_status == 409 and e.error.code == "idempotency_key_in_use"
    h = headers(e)
    assert h["x-switchyard-error"] == "idempotency_conflict"
    assert h["stripe-should-retry"] == "true"
    assert int(h["retry-after"]) >= 1
    assert first["pi"].status == "succeeded"
    # With retries on, the library waits and gets the payment, charged once.
    stripe.max_network_retries = 2
    again = stripe.PaymentIntent.create(amount=300, currency="eur", idempotency_key="interop-inflight-1")
    assert again.id == first["pi"].id
    assert sdk["primary"].stats()["charges_by_key"].get("interop-inflight-1") == 1


def test_a_rate_limit_is_a_rate_limit_error(sdk):
    stripe.api_base = sdk["sidecar"].base + "/limited"
    with pytest.raises(stripe.error.RateLimitError) as caught:
        for i in range(5):
            stripe.PaymentIntent.create(amount=100, currency="eur", idempotency_key=f"interop-limit-{i}")
    h = headers(caught.value)
    assert caught.value.error.code == "rate_limit"
    assert h["x-switchyard-error"] == "rate_limited"
    assert int(h["retry-after"]) >= 1


def test_a_body_over_max_body_is_an_invalid_request(sdk):
    stripe.api_base = sdk["sidecar"].base + "/small"
    with pytest.raises(stripe.error.InvalidRequestError) as caught:
        stripe.PaymentIntent.create(amount=100, currency="eur", description="x" * 4000)
    assert caught.value.code == "body_too_large"
    assert headers(caught.value)["x-switchyard-error"] == "body_too_large"
    assert headers(caught.value)["stripe-should-retry"] == "false"


def test_an_unknown_outcome_is_an_api_error_and_the_retry_with_the_key_settles_it(sdk):
    stripe.api_base = sdk["sidecar"].base + "/once"
    sdk["primary"].mode("error500")
    with pytest.raises(stripe.error.APIError) as caught:
        stripe.PaymentIntent.create(amount=400, currency="eur", idempotency_key="interop-unknown-1")
    e = caught.value
    h = headers(e)
    assert e.http_status == 502 and e.error.code == "outcome_unknown"
    assert h["x-switchyard-outcome"] == "unknown"
    assert h["stripe-should-retry"] == "true"
    # The sandbox charged; the library's retry with the same key gets that charge, not a second one.
    stripe.max_network_retries = 2
    pi = stripe.PaymentIntent.create(amount=400, currency="eur", idempotency_key="interop-unknown-1")
    assert pi.status == "succeeded"
    assert sdk["primary"].stats()["charges_by_key"].get("interop-unknown-1") == 1


def test_an_unknown_outcome_is_resolved_by_the_sidecar_and_the_librarys_retry_is_a_replay(sdk):
    import json
    import urllib.request

    stripe.api_base = sdk["sidecar"].base + "/once"
    sdk["primary"].mode("reset")
    with pytest.raises(stripe.error.APIError) as caught:
        stripe.PaymentIntent.create(amount=450, currency="eur", idempotency_key="interop-resolve-1")
    assert headers(caught.value)["x-switchyard-outcome"] == "unknown"
    sdk["primary"].mode("ok")

    def unknown():
        url = sdk["sidecar"].admin + "/admin/operations?state=unknown"
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)["operations"]

    # The sidecar sends the kept request again with the same key; the sandbox answers it from its store.
    deadline = time.monotonic() + 10
    while unknown() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert unknown() == [], "resolved without the shop's retry"
    # The library's retry with the key is a replay of the provider's answer: one charge in all.
    pi = stripe.PaymentIntent.create(amount=450, currency="eur", idempotency_key="interop-resolve-1")
    assert pi.status == "succeeded"
    replayed = {k.lower(): v for k, v in pi.last_response.headers.items()}
    assert replayed["x-switchyard-attempts"] == "0"
    assert replayed["idempotent-replayed"] == "true"
    assert sdk["primary"].stats()["charges_by_key"].get("interop-resolve-1") == 1


def test_no_provider_is_an_api_error_with_the_switchyard_headers(sdk):
    sdk["primary"].mode("down")
    sdk["backup"].mode("down")
    time.sleep(0.3)
    with pytest.raises(stripe.error.APIError) as caught:
        stripe.PaymentIntent.create(amount=100, currency="eur", idempotency_key="interop-none-1")
    e = caught.value
    h = headers(e)
    assert e.http_status in (502, 503)
    assert e.error.type == "api_error"
    assert e.error.code in ("provider_unreachable", "no_healthy_provider")
    assert h["x-switchyard-error"] == e.error.code
    assert h["stripe-should-retry"] == "true"
    assert e.request_id
