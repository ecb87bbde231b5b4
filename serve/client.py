"""Python client for the Serve app's HTTP API (what `speechguide generate --url` uses).

Only httpx: calling a running app needs neither Ray nor torch on the client's machine.
"""

from __future__ import annotations

import os
import time
from typing import Optional

import httpx

from serve.auth import TOKEN_ENV

RESENDS = 2  # times a request whose answer was lost is sent again
RESEND_PAUSE_S = 1.0


def lost_answer(response: httpx.Response) -> bool:
    """True for a 5xx that carries no JSON `detail`: not the app's answer but the HTTP proxy's bare
    "Internal Server Error" for a request whose ingress replica died mid-request (its state died with it;
    Serve's proxy does not resend, since it cannot know the request is safe to repeat). Every error the
    app itself answers is JSON with a `detail`."""
    if response.status_code < 500:
        return False
    try:
        body = response.json()
    except ValueError:
        return True
    return not (isinstance(body, dict) and "detail" in body)


def auth_headers(token: Optional[str] = None) -> dict:
    """`Authorization: Bearer` for `token`, else for $SPEECHGUIDE_API_TOKEN when set; {} without either."""
    token = (token if token is not None else os.environ.get(TOKEN_ENV, "")).strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def generate_remote(url: str, payload: dict, timeout: float = 300, token: Optional[str] = None, resends: int = RESENDS) -> dict:
    """POST `payload` to URL/v1/generate and return the JSON response.

    `token` (default: $SPEECHGUIDE_API_TOKEN) is sent as `Authorization: Bearer <token>`; an app that
    wants one answers 401 without it, which raises `ValueError` like any 4xx.

    The JSON form is always requested (Accept: application/json), so the answer carries every
    sample with its scores, the models and the profile used. A 4xx raises `ValueError` with the
    server's `detail` (the client's request is wrong, retrying will not help); 5xx and transport
    errors raise `httpx.HTTPError` subclasses (the server may recover; 503s carry Retry-After), a
    5xx with the server's `detail` in its message.

    A request whose answer was lost (see `lost_answer`: the ingress replica serving it died) is sent
    again, up to `resends` times, a second apart: generating has no side effects, and the same seed
    gives the same audio.
    """
    endpoint = url.rstrip("/") + "/v1/generate"
    headers = {"Accept": "application/json", **auth_headers(token)}
    for attempt in range(resends + 1):
        try:
            response = httpx.post(endpoint, json=payload, headers=headers, timeout=timeout)
        except (httpx.NetworkError, httpx.RemoteProtocolError):  # dropped, not timed out: nothing came back
            if attempt == resends:
                raise
            time.sleep(RESEND_PAUSE_S)
            continue
        if attempt == resends or not lost_answer(response):
            break
        time.sleep(RESEND_PAUSE_S)
    if 400 <= response.status_code < 500:
        raise ValueError(f"{endpoint} refused the request ({response.status_code}): {_detail(response)}")
    if response.status_code >= 500:  # the server's detail (e.g. the step where sampling went NaN) is the useful part
        raise httpx.HTTPStatusError(
            f"{endpoint} failed ({response.status_code}): {_detail(response)}", request=response.request, response=response
        )
    response.raise_for_status()
    return response.json()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)[:500]
