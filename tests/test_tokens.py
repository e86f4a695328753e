"""Signed tokens: minting, verifying, patterns, and every way a token can be forged."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from martd_asgi.tokens import (
    ALGORITHM,
    Grants,
    InvalidToken,
    Pattern,
    mint_token,
    verify_token,
)

SECRET = "t" * 40


def b64(data: dict[str, object]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_tokens_round_trip_grants() -> None:
    token = mint_token(SECRET, publish=["user.42.*"], subscribe=["room.*", "lobby"])
    grants = verify_token(SECRET, token)
    assert isinstance(grants, Grants)
    assert grants.may_publish("user.42.inbox")
    assert not grants.may_publish("user.43.inbox")
    assert not grants.may_publish("room.1")
    assert grants.may_subscribe("room.1")
    assert grants.may_subscribe("lobby")
    assert not grants.may_subscribe("lobby2")
    assert grants.may_subscribe("user.42.inbox"), "a publisher may read its own channels"
    assert grants.expires is not None and grants.expires > time.time() + 3500


def test_tokens_claims_have_the_documented_shape() -> None:
    token = mint_token(SECRET, publish=["a"], ttl=60, sub="user-42")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["martd"] == {"publish": ["a"], "subscribe": []}
    assert claims["sub"] == "user-42"
    assert time.time() + 55 < claims["exp"] <= time.time() + 62
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_tokens_without_ttl_never_expire() -> None:
    token = mint_token(SECRET, subscribe=["x"], ttl=None)
    assert "exp" not in jwt.decode(token, SECRET, algorithms=["HS256"])
    assert verify_token(SECRET, token).may_subscribe("x")


def test_tokens_expired_is_refused() -> None:
    token = mint_token(SECRET, publish=["a"], exp=int(time.time()) - 60)
    with pytest.raises(InvalidToken, match="expired") as caught:
        verify_token(SECRET, token)
    assert caught.value.status == 401


def test_tokens_expiry_has_a_small_leeway() -> None:
    token = mint_token(SECRET, publish=["a"], exp=int(time.time()) - 2)
    assert verify_token(SECRET, token).may_publish("a")


def test_tokens_wrong_secret_is_refused() -> None:
    token = mint_token("other-secret-" + "x" * 30, publish=["a"])
    with pytest.raises(InvalidToken, match="signature"):
        verify_token(SECRET, token)


def test_tokens_tampered_claims_are_refused() -> None:
    token = mint_token(SECRET, publish=["user.42.*"])
    head, _, sig = token.split(".")
    forged = f"{head}.{b64({'martd': {'publish': ['*']}})}.{sig}"
    with pytest.raises(InvalidToken):
        verify_token(SECRET, forged)


def test_tokens_alg_none_is_refused() -> None:
    claims = {"martd": {"publish": ["*"], "subscribe": ["*"]}, "exp": int(time.time()) + 60}
    for alg in ("none", "None", "NONE"):
        unsigned = f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(claims)}."
        with pytest.raises(InvalidToken):
            verify_token(SECRET, unsigned)


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_tokens_other_algorithms_are_refused(alg: str) -> None:
    token = jwt.encode({"martd": {"publish": ["*"]}}, SECRET + "x" * 30, algorithm=alg)
    with pytest.raises(InvalidToken, match="algorithm"):
        verify_token(SECRET + "x" * 30, token)


def test_tokens_malformed_are_refused() -> None:
    for bad in ("", "x", "a.b.c", "é.é.é", "a" * 9000, SECRET):
        with pytest.raises(InvalidToken) as caught:
            verify_token(SECRET, bad)
        if bad:
            assert bad not in caught.value.message


def test_tokens_bad_martd_claim_is_refused() -> None:
    for claim in ("everything", {"publish": "a(b"}, {"publish": [1]}, {"subscribe": ["a b"]}):
        token = jwt.encode({"martd": claim}, SECRET, algorithm=ALGORITHM)
        with pytest.raises(InvalidToken, match="martd"):
            verify_token(SECRET, token)


def test_tokens_without_martd_claim_grant_nothing() -> None:
    token = jwt.encode({"sub": "x"}, SECRET, algorithm=ALGORITHM)
    grants = verify_token(SECRET, token)
    assert not grants.may_publish("x") and not grants.may_subscribe("x")


def test_tokens_no_secret_means_no_tokens() -> None:
    with pytest.raises(InvalidToken, match="not enabled"):
        verify_token("", mint_token(SECRET, publish=["a"]))


def test_tokens_short_secret_works_without_warnings() -> None:
    token = mint_token("short", publish=["a"])  # pytest turns warnings into errors
    assert verify_token("short", token).may_publish("a")


def test_tokens_mint_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="secret"):
        mint_token("", publish=["a"])
    with pytest.raises(ValueError, match="pattern"):
        mint_token(SECRET, publish=["not a channel"])
    with pytest.raises(ValueError, match="ttl"):
        mint_token(SECRET, publish=["a"], ttl=0)
    with pytest.raises(TypeError, match="martd"):
        mint_token(SECRET, martd={"publish": ["*"]})


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("room", "room", True),
        ("room", "room2", False),
        ("room.*", "room.1", True),
        ("room.*", "room.", True),
        ("room.*", "roomX1", False),
        ("*", "anything", True),
        ("user.*.inbox", "user.42.inbox", True),
        ("user.*.inbox", "user.42.outbox", False),
        ("a*b*c", "abc", True),
        ("a*b*c", "acb", False),
        ("ab*ba", "aba", False),
        ("x**y", "xy", True),
        ("a:b@c~d-e_f", "a:b@c~d-e_f", True),
    ],
)
def test_pattern_matches_globs_only(pattern: str, name: str, expected: bool) -> None:
    assert Pattern(pattern).matches(name) is expected


def test_pattern_has_no_regex_meaning_and_no_backtracking() -> None:
    assert not Pattern("a.c").matches("abc")
    hostile = Pattern("*a" * 40 + "*b")
    started = time.perf_counter()
    assert not hostile.matches("a" * 128)
    assert time.perf_counter() - started < 0.05
    for bad in ("a(b", "a[b]", "a+", "a b", "", "x" * 300):
        with pytest.raises(ValueError):
            Pattern(bad)


def test_tokens_settings_never_show_secrets() -> None:
    from martd_asgi.config import Settings

    settings = Settings.from_env({}, secret="bearer-" + "b" * 30, token_secret="tok-" + "t" * 30)
    assert settings.signing_secret == "tok-" + "t" * 30
    assert "b" * 30 not in repr(settings) and "t" * 30 not in repr(settings)
    assert Settings.from_env({"MARTD_SECRET": "only"}).signing_secret == "only"
    assert Settings.from_env({"MARTD_TOKEN_SECRET": ""}).signing_secret is None
