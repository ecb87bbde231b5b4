"""Python client for the Serve app's HTTP API (what `speechguide generate --url` uses).

Only httpx: calling a running app needs neither Ray nor torch on the client's machine.
"""

from __future__ import annotations

import os
from typing import Optional

import httpx

from serve.auth import TOKEN_ENV


def auth_headers(token: Optional[str] = None) -> dict:
    """`Authorization: Bearer` for `token`, else for $SPEECHGUIDE_API_TOKEN when set; {} without either."""
    token = (token if token is not None else os.environ.get(TOKEN_ENV, "")).strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def generate_remote(url: str, payload: dict, timeout: float = 300, token: Optional[str] = None) -> dict:
    """POST `payload` to URL/v1/generate and return the JSON response.

    `token` (default: $SPEECHGUIDE_API_TOKEN) is sent as `Authorization: Bearer <token>`; an app that
    wants one answers 401 without it, which raises `ValueError` like any 4xx.

    The JSON form is always requested (Accept: application/json), so the answer carries every
    sample with its scores, the models and the profile used. A 4xx raises `ValueError` with the
    server's `detail` (the client's request is wrong, retrying will not help); 5xx and transport
    errors raise `httpx.HTTPError` subclasses (the server may recover; 503s carry Retry-After), a
    5xx with the server's `detail` in its message.
    """
    endpoint = url.rstrip("/") + "/v1/generate"
    headers = {"Accept": "application/json", **auth_headers(token)}
    response = httpx.post(endpoint, json=payload, headers=headers, timeout=timeout)
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
