"""Backend Services client: SMART client assertions, and tokens cached until a minute before expiry."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from connector import backend
from connector.backend import BackendAuthError, BackendCredentials, BackendTokens, client_assertion, fetch_token
from prm.errors import ConfigError

TOKEN_URL = "https://ehr.example/oauth/token"


def credentials(key: RSAKey | ECKey, alg: str, token_endpoint: str = TOKEN_URL) -> BackendCredentials:
    return BackendCredentials(client_id="prm-backend", token_endpoint=token_endpoint, auth="private_key_jwt", alg=alg,
                              kid=key.thumbprint(), private_key_pem=key.as_pem(private=True).decode())


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_the_assertion_carries_what_smart_backend_services_requires(alg: str) -> None:
    key: RSAKey | ECKey = RSAKey.generate_key(2048, private=True) if alg == "RS384" else ECKey.generate_key(
        "P-384", private=True)
    creds = credentials(key, alg)
    first = jwt.decode(client_assertion(creds, now=1_000_000), KeySet.import_key_set(
        {"keys": [{**key.as_dict(private=False), "kid": key.thumbprint()}]}), algorithms=[alg])
    second = jwt.decode(client_assertion(creds, now=1_000_000), KeySet.import_key_set(
        {"keys": [key.as_dict(private=False)]}), algorithms=[alg])
    assert first.header["alg"] == alg and first.header["kid"] == key.thumbprint() and first.header["typ"] == "JWT"
    claims = first.claims
    assert claims["iss"] == claims["sub"] == "prm-backend" and claims["aud"] == TOKEN_URL
    assert 0 < claims["exp"] - claims["iat"] <= 300 and claims["iat"] == 1_000_000
    assert claims["jti"] != second.claims["jti"]


def test_a_signing_key_is_parsed_once_a_process_and_a_rotated_one_anew() -> None:
    """Parsing checks an RSA key (~50 ms); a token fetch used to parse it twice, on every fetch."""
    from connector import backend

    first, rotated = (credentials(RSAKey.generate_key(2048, private=True), "RS384") for _ in range(2))
    before = backend._import_key.cache_info()
    client_assertion(first)
    client_assertion(first)
    client_assertion(rotated)
    after = backend._import_key.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (2, 1)


def test_a_missing_or_mismatched_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="has no signing key"):
        client_assertion(BackendCredentials(client_id="c", token_endpoint=TOKEN_URL, auth="private_key_jwt"))
    rsa = RSAKey.generate_key(2048, private=True)
    with pytest.raises(ConfigError, match="does not fit ES384"):
        client_assertion(credentials(rsa, "ES384"))


class TokenEndpoint:
    """A real HTTP token endpoint on a free port that counts requests and checks the assertion."""

    def __init__(self, key: RSAKey, expires_in: int = 3600, error: str | None = None) -> None:
        self.key, self.expires_in, self.error = key, expires_in, error
        self.requests: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/token"

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        form = dict(Request(environ).form)
        with self.lock:
            self.requests.append(form)
            n = len(self.requests)
        time.sleep(0.05)  # long enough for racing threads to pile up
        if self.error:
            body: dict[str, Any] = {"error": self.error, "error_description": "no such client"}
            return Response(json.dumps(body), 401, mimetype="application/json")(environ, start_response)
        claims = jwt.decode(form["client_assertion"], self.key, algorithms=["RS384"]).claims
        assert claims["aud"] == self.url and form["grant_type"] == "client_credentials"
        body = {"access_token": f"token-{n}", "token_type": "Bearer", "expires_in": self.expires_in,
                "scope": form["scope"]}
        return Response(json.dumps(body), mimetype="application/json")(environ, start_response)


@pytest.fixture
def key() -> RSAKey:
    return RSAKey.generate_key(2048, private=True)


@pytest.fixture
def endpoint(key: RSAKey) -> Iterator[TokenEndpoint]:
    server = TokenEndpoint(key)
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.server.shutdown()


def test_tokens_are_cached_per_scope_and_fetched_once_under_contention(endpoint: TokenEndpoint, key: RSAKey) -> None:
    creds = credentials(key, "RS384", endpoint.url)
    tokens = BackendTokens()
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(tokens.get(creds, "system/Patient.rs", 5).access_token))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(results) == {"token-1"} and len(endpoint.requests) == 1
    assert tokens.get(creds, "system/Task.crus", 5).access_token == "token-2"  # another scope, another token
    tokens.invalidate(creds, "system/Patient.rs")  # after a 401
    assert tokens.get(creds, "system/Patient.rs", 5).access_token == "token-3"
    assert tokens.get(creds, "system/Patient.rs", 5).access_token == "token-3"


@pytest.mark.parametrize(("lifetime_s", "reused_until_s"), [(30, 22.5), (3600, 3540.0)])
def test_a_token_is_reused_until_near_its_expiry_then_replaced(endpoint: TokenEndpoint, key: RSAKey,
                                                               monkeypatch: pytest.MonkeyPatch, lifetime_s: int,
                                                               reused_until_s: float) -> None:
    """Replaced a minute before it expires, or a quarter of its life before where that is sooner: a 30 s token
    (shorter than the minute) is used for 22.5 s, not fetched again for every request."""
    endpoint.expires_in = lifetime_s
    now = [1000.0]
    monkeypatch.setattr(backend.time, "time", lambda: now[0])
    creds = credentials(key, "RS384", endpoint.url)
    tokens = BackendTokens()
    assert tokens.get(creds, "system/Patient.rs", 5).access_token == "token-1"
    now[0] = 1000.0 + reused_until_s - 0.1
    assert tokens.get(creds, "system/Patient.rs", 5).access_token == "token-1"
    now[0] = 1000.0 + reused_until_s + 0.1
    assert tokens.get(creds, "system/Patient.rs", 5).access_token == "token-2"


def test_a_refusal_names_the_client_and_the_oauth_error(endpoint: TokenEndpoint, key: RSAKey) -> None:
    endpoint.error = "invalid_client"
    with pytest.raises(BackendAuthError, match="'prm-backend': invalid_client: no such client") as caught:
        fetch_token(credentials(key, "RS384", endpoint.url), "system/Patient.rs", 5)
    assert caught.value.error == "invalid_client"
    assert "token-" not in repr(credentials(key, "RS384")) and "PRIVATE" not in repr(credentials(key, "RS384"))
