"""Fetching the issuer's key documents: OIDC discovery and JWKS, over http(s).

Small on purpose: a GET with a timeout, no redirects (a redirect could leave https or
the issuer's host), a size cap, JSON objects only. Errors are ``FetchError`` with a
message fit for a log line.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kong_cilium_identity.errors import ConfigError
from kong_cilium_identity.token.settings import KeySettings, check_fetch_url

MAX_DOCUMENT_BYTES = 1 << 20


class FetchError(Exception):
    pass


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def fetch_json(url: str, settings: KeySettings) -> Mapping[str, Any]:
    """The JSON object at ``url``; raises FetchError."""
    headers = {"Accept": "application/json"}
    if settings.fetch_token_file:
        headers["Authorization"] = f"Bearer {_read_token(settings.fetch_token_file)}"
    request = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with _opener(url, settings).open(request, timeout=settings.fetch_timeout) as response:
            body = response.read(MAX_DOCUMENT_BYTES + 1)
    except urllib.error.HTTPError as error:
        raise FetchError(f"{url}: HTTP {error.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise FetchError(f"{url}: {getattr(error, 'reason', error)}") from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise FetchError(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        document = json.loads(body)
    except ValueError as error:
        raise FetchError(f"{url}: not JSON ({error})") from None
    if not isinstance(document, Mapping):
        raise FetchError(f"{url}: expected a JSON object")
    return document


def _opener(url: str, settings: KeySettings) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [_NoRedirects()]
    if url.startswith("https:"):
        context = ssl.create_default_context(cafile=settings.ca_file)
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def resolve_jwks_uri(settings: KeySettings) -> str:
    """The JWKS URL: configured, or read from the discovery document whose ``issuer``
    must equal the configured issuer (OpenID Connect Discovery 1.0, section 4.3)."""
    if settings.jwks_uri:
        return settings.jwks_uri
    if not settings.discovery_url:
        raise FetchError("no jwks_uri or discovery_url configured")
    document = fetch_json(settings.discovery_url, settings)
    issuer = document.get("issuer")
    if issuer != settings.issuer:
        raise FetchError(
            f"{settings.discovery_url}: issuer {issuer!r} does not match the configured "
            f"issuer {settings.issuer!r}"
        )
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri:
        raise FetchError(f"{settings.discovery_url}: no jwks_uri in the discovery document")
    try:
        check_fetch_url(jwks_uri, "discovered jwks_uri")
    except ConfigError as error:
        raise FetchError(str(error)) from None
    return jwks_uri


def _read_token(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise FetchError(f"fetch_token_file {path}: {error.strerror or error}") from None
