"""Read passes, as Cloud CDN signs and checks them, and the settings that configure them.

The expected cookie of the first test is computed here from Cloud CDN's documented
format, independently of app/auth/passes.py; the rest try every way a pass can be
wrong, and hypothesis feeds the cookie parser any header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.auth.passes import (
    COOKIE_NAME,
    MAX_HEADER_CHARS,
    MAX_VALUE_CHARS,
    SKEW_SECONDS,
    InvalidPass,
    ReadPasses,
    parse_keys,
    pass_value,
)
from app.settings import Settings, SettingsError, check_access
from tests.fuzz.budget import EXAMPLES

KEY = bytes(range(16))
OTHER_KEY = bytes(range(16, 32))
URL = "https://records.example.com"
PREFIX = "/systems/orders/v1/"
NOW = 1_800_000_000.5


def b64(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def passes(seconds: int = 600, **keys: bytes) -> ReadPasses:
    return ReadPasses(keys or {"k1": KEY}, URL, seconds)


def value_of(cookie: str) -> str:
    name, _, value = cookie.partition("=")
    assert name == COOKIE_NAME
    return value


def test_a_pass_is_cloud_cdns_signed_cookie() -> None:
    issued = passes().issue(PREFIX, NOW)
    url_prefix = base64.urlsafe_b64encode(f"{URL}{PREFIX}".encode()).decode()
    policy = f"URLPrefix={url_prefix}:Expires=1800000600:KeyName=k1"
    mac = hmac.new(KEY, policy.encode(), hashlib.sha1).digest()
    signature = base64.urlsafe_b64encode(mac).decode()
    assert issued.cookie == f"Cloud-CDN-Cookie={policy}:Signature={signature}"
    assert issued.url_prefix == "https://records.example.com/systems/orders/v1/"
    assert issued.expires == 1_800_000_600


def test_a_pass_is_honoured_until_it_expires() -> None:
    checker = passes()
    value = value_of(checker.issue(PREFIX, NOW).cookie)
    assert checker.verify(value, PREFIX, NOW) == 1_800_000_600
    assert checker.verify(value, PREFIX, NOW + 599) == 1_800_000_600
    with pytest.raises(InvalidPass, match="expired"):
        checker.verify(value, PREFIX, 1_800_000_600)


def test_the_first_key_signs_and_every_key_verifies() -> None:
    old = ReadPasses({"old": KEY}, URL, 600)
    rotated = ReadPasses({"new": OTHER_KEY, "old": KEY}, URL, 600)
    assert ":KeyName=new:" in rotated.issue(PREFIX, NOW).cookie
    rotated.verify(value_of(old.issue(PREFIX, NOW).cookie), PREFIX, NOW)
    # Once the old key is removed, its passes are refused.
    with pytest.raises(InvalidPass, match="unknown key 'new'"):
        old.verify(value_of(rotated.issue(PREFIX, NOW).cookie), PREFIX, NOW)


def test_a_pass_opens_its_own_prefix_only() -> None:
    checker = passes()
    value = value_of(checker.issue(PREFIX, NOW).cookie)
    for other in ("/systems/payments/v1/", "/systems/orders/", "/v1/", "/systems/orders/v1/x/"):
        with pytest.raises(InvalidPass, match="another URL prefix"):
            checker.verify(value, other, NOW)
    elsewhere = ReadPasses({"k1": KEY}, "https://other.example.com", 600)
    with pytest.raises(InvalidPass, match="another URL prefix"):
        elsewhere.verify(value, PREFIX, NOW)


def test_a_wrong_signature_is_refused() -> None:
    checker = passes()
    value = value_of(checker.issue(PREFIX, NOW).cookie)
    forged = value_of(ReadPasses({"k1": OTHER_KEY}, URL, 600).issue(PREFIX, NOW).cookie)
    with pytest.raises(InvalidPass, match="wrong signature"):
        checker.verify(forged, PREFIX, NOW)
    # A later expiry, with the signature of the earlier one.
    longer = value.replace("Expires=1800000600", "Expires=1800000610")
    with pytest.raises(InvalidPass, match="wrong signature"):
        checker.verify(longer, PREFIX, NOW)
    # Another prefix, with the signature of this one.
    other = base64.urlsafe_b64encode(f"{URL}/v1/".encode()).decode()
    moved = f"URLPrefix={other}:" + value.partition(":")[2]
    with pytest.raises(InvalidPass, match="wrong signature"):
        checker.verify(moved, "/v1/", NOW)


def test_a_pass_expiring_later_than_any_issued_is_refused() -> None:
    # Signed with a key of ours (a key leaked, or a lifetime since shortened).
    long_lived = passes(seconds=3600).issue(PREFIX, NOW)
    checker = passes(seconds=600)
    with pytest.raises(InvalidPass, match="later than any"):
        checker.verify(value_of(long_lived.cookie), PREFIX, NOW)
    # Another instance's clock a little ahead is no reason to refuse.
    ahead = checker.issue(PREFIX, NOW + SKEW_SECONDS - 1)
    assert checker.verify(value_of(ahead.cookie), PREFIX, NOW) == ahead.expires


@pytest.mark.parametrize(
    "value",
    [
        "",
        "URLPrefix=",
        "Expires=1:KeyName=k1:Signature=AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        # The fields in another order.
        "Expires=1800000600:URLPrefix=aHR0cHM6Ly9h:KeyName=k1:Signature="
        "AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        # Quoted, as some clients send cookie values.
        '"URLPrefix=aHR0cHM6Ly9h:Expires=1800000600:KeyName=k1:Signature='
        'AAAAAAAAAAAAAAAAAAAAAAAAAAA="',
        # A signature of the wrong length, a key name that is no RFC 1035 label.
        "URLPrefix=aHR0cHM6Ly9h:Expires=1800000600:KeyName=k1:Signature=AAAA",
        "URLPrefix=aHR0cHM6Ly9h:Expires=1800000600:KeyName=K1:Signature="
        "AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        # An expiry no clock reaches.
        "URLPrefix=aHR0cHM6Ly9h:Expires=1" + "0" * 40 + ":KeyName=k1:Signature="
        "AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        # Trailing text.
        "URLPrefix=aHR0cHM6Ly9h:Expires=1800000600:KeyName=k1:Signature="
        "AAAAAAAAAAAAAAAAAAAAAAAAAAA=:x",
    ],
)
def test_a_malformed_pass_is_refused(value: str) -> None:
    with pytest.raises(InvalidPass, match="malformed"):
        passes().verify(value, PREFIX, NOW)


def test_an_oversized_pass_is_refused_before_it_is_parsed() -> None:
    value = value_of(passes().issue(PREFIX, NOW).cookie)
    with pytest.raises(InvalidPass, match="longer than"):
        passes().verify(value + "A" * MAX_VALUE_CHARS, PREFIX, NOW)
    with pytest.raises(InvalidPass, match="longer than"):
        pass_value([f"{COOKIE_NAME}={value}; junk={'x' * MAX_HEADER_CHARS}"])


def test_the_pass_is_found_among_other_cookies() -> None:
    cookie = passes().issue(PREFIX, NOW).cookie
    value = value_of(cookie)
    assert pass_value([]) is None
    assert pass_value(["session=abc; theme=dark"]) is None
    assert pass_value([f"session=abc; {cookie}; theme=dark"]) == value
    assert pass_value([cookie]) == value
    # HTTP/2 may split the Cookie header; the pass is in one of them.
    assert pass_value(["session=abc", cookie]) == value
    with pytest.raises(InvalidPass, match="2 Cloud-CDN-Cookie cookies"):
        pass_value([cookie, cookie])
    # A cookie whose name merely contains the pass's is not it.
    assert pass_value([f"x{cookie}"]) is None


@settings(max_examples=EXAMPLES * 8, deadline=None)
@given(
    header=st.one_of(
        st.text(max_size=300),
        st.builds(
            lambda head, tail: f"{head}{COOKIE_NAME}={tail}",
            st.text(max_size=20),
            st.text(max_size=200),
        ),
        # A valid pass, then a character or more changed, dropped or added.
        st.builds(
            lambda cut, text: (lambda cookie: cookie[:cut] + text + cookie[cut + len(text) % 3 :])(
                ReadPasses({"k1": KEY}, URL, 600).issue(PREFIX, NOW).cookie
            ),
            st.integers(0, 200),
            st.text(max_size=3),
        ),
    )
)
@example(header=f"{COOKIE_NAME}=URLPrefix=\udcff:Expires=1:KeyName=k1:Signature=")
@example(header=f"{COOKIE_NAME}=URLPrefix=====:Expires=1:KeyName=k1:Signature=")
def test_any_cookie_header_is_a_pass_or_refused(header: str) -> None:
    checker = passes()
    try:
        value = pass_value([header])
        if value is not None:
            expires = checker.verify(value, PREFIX, NOW)
    except InvalidPass:
        return
    if value is not None:
        # Honoured only as issued: the one valid pass, unchanged.
        assert f"{COOKIE_NAME}={value}" == checker.issue(PREFIX, NOW).cookie
        assert expires == 1_800_000_600


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("k1", "entry 1 is not `name:key`"),
        ("k1:" + b64(KEY) + ",Bad:" + b64(KEY), "entry 2 is not `name:key`"),
        ("k1:" + b64(KEY) + ",k1:" + b64(OTHER_KEY), "'k1' is given twice"),
        ("k1:" + b64(KEY[:15]), "'k1' is not 16 bytes"),
        ("k1:" + b64(KEY + b"x"), "'k1' is not 16 bytes"),
        ("k1:not*base64", "'k1' is not 16 bytes"),
        ("k-:" + b64(KEY), "entry 1 is not `name:key`"),
    ],
)
def test_keys_that_cannot_be_used_are_refused_without_showing_them(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as refused:
        parse_keys(text)
    assert b64(KEY) not in str(refused.value)


def test_keys_are_read_padded_or_not_in_their_order() -> None:
    keys = parse_keys(f"new:{b64(OTHER_KEY).rstrip('=')}, old:{b64(KEY)}")
    assert keys == {"new": OTHER_KEY, "old": KEY}
    assert list(keys) == ["new", "old"]


GOOD = {
    "RECORDLINE_STORE": "memory:",
    "RECORDLINE_READ_AUDIENCE": "recordline-read",
    "RECORDLINE_READ_PRINCIPALS": "reader@example.com",
    "RECORDLINE_READ_PASS_KEYS": f"k1:{b64(KEY)}",
    "RECORDLINE_READ_PASS_URL": URL + "/",
}


def test_the_settings_configure_passes() -> None:
    configured = Settings.load(GOOD)
    check_access(configured)
    built = ReadPasses.from_settings(configured)
    assert built is not None
    assert (built.url, built.seconds) == (URL, 600)
    assert ReadPasses.from_settings(Settings.load({"RECORDLINE_STORE": "memory:"})) is None
    longer = Settings.load({**GOOD, "RECORDLINE_READ_PASS_SECONDS": "3600"})
    assert longer.auth.read_pass_seconds == 3600


@pytest.mark.parametrize(
    ("changes", "var", "reason"),
    [
        ({"RECORDLINE_READ_PASS_URL": ""}, "RECORDLINE_READ_PASS_URL", "work together"),
        ({"RECORDLINE_READ_PASS_KEYS": ""}, "RECORDLINE_READ_PASS_KEYS", "work together"),
        (
            {"RECORDLINE_READ_AUDIENCE": "", "RECORDLINE_READ_PRINCIPALS": ""},
            "RECORDLINE_READ_PASS_KEYS",
            "needs RECORDLINE_READ_AUDIENCE",
        ),
        (
            {"RECORDLINE_TRUST_CLOUD_RUN_IAM": "true"},
            "RECORDLINE_TRUST_CLOUD_RUN_IAM",
            "cannot work together",
        ),
    ],
)
def test_settings_that_would_leave_passes_unsafe_are_refused(
    changes: dict[str, str], var: str, reason: str
) -> None:
    with pytest.raises(SettingsError, match=reason) as refused:
        check_access(Settings.load({**GOOD, **changes}))
    assert refused.value.var == var


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("RECORDLINE_READ_PASS_SECONDS", "3601"),
        ("RECORDLINE_READ_PASS_SECONDS", "59"),
        ("RECORDLINE_READ_PASS_URL", "https://records.example.com/v1/"),
        ("RECORDLINE_READ_PASS_URL", "records.example.com"),
        ("RECORDLINE_READ_PASS_KEYS", "k1=" + b64(KEY)),
    ],
)
def test_a_bad_value_is_refused_when_read(var: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{var}=") as refused:
        Settings.load({**GOOD, var: value})
    assert b64(KEY) not in str(refused.value)


def test_a_key_that_cannot_be_used_is_refused_naming_its_variable() -> None:
    short = Settings.load({**GOOD, "RECORDLINE_READ_PASS_KEYS": f"k1:{b64(KEY[:8])}"})
    with pytest.raises(SettingsError, match=r"^RECORDLINE_READ_PASS_KEYS: the key 'k1'") as refused:
        ReadPasses.from_settings(short)
    assert refused.value.var == "RECORDLINE_READ_PASS_KEYS"


# GOOD, on a service bound beyond loopback with everything such a service needs.
BEYOND = {
    **GOOD,
    "RECORDLINE_HOST": "0.0.0.0",
    "RECORDLINE_PUSH_AUDIENCE": "recordline-push",
    "RECORDLINE_PUSH_SERVICE_ACCOUNTS": "pusher@project.iam.gserviceaccount.com",
    "RECORDLINE_PAGE_TOKEN_SECRET": "p" * 64,
}


def test_passes_for_a_plain_http_origin_are_refused_beyond_loopback() -> None:
    check_access(Settings.load(BEYOND))
    plain = {"RECORDLINE_READ_PASS_URL": "http://records.example.com"}
    with pytest.raises(SettingsError, match="https://") as refused:
        check_access(Settings.load({**BEYOND, **plain}))
    assert refused.value.var == "RECORDLINE_READ_PASS_URL"
    # On loopback, a local stand-in for the CDN serves plain http.
    check_access(Settings.load({**GOOD, **plain}))
