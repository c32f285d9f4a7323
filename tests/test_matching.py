"""Meta's customer-information rules: normalization, hashing, fbc (connector.matching)."""

from __future__ import annotations

import hashlib
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import phonenumbers
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from connector.events import HASHED_KEYS, PLAIN_KEYS, UserData
from connector.matching import (
    FromAddress,
    build_fbc,
    fbclid_from_url,
    hash_value,
    is_hashed,
    normalize,
    normalize_user_data,
    user_data,
    violations,
)

ALL_KEYS = (*HASHED_KEYS, *PLAIN_KEYS)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- Meta's own worked examples -----------------------------------------------------


@pytest.mark.parametrize(
    ("field", "raw", "country", "normalized", "digest"),
    [
        pytest.param(
            "em",
            "John_Smith@gmail.com",
            None,
            "john_smith@gmail.com",
            "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
            id="email",
        ),
        pytest.param(
            "ph",
            "(650)555-1212",
            "us",
            "16505551212",
            "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176",
            id="us-phone",
        ),
        pytest.param(
            "fn",
            "Mary",
            None,
            "mary",
            "6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec",
            id="first-name",
        ),
        pytest.param(
            "fn",
            "정",
            None,
            "정",
            "8fa8cd9c440be61d0151429310034083132b35975c4bea67fdd74158eb51db14",
            id="korean-name",
        ),
        pytest.param(
            "fn",
            "Valéry",
            None,
            "valéry",
            "08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c",
            id="accented-name",
        ),
        pytest.param(
            "db",
            "2/16/1997",
            None,
            "19970216",
            "01acdbf6ec7b4f478a225f1a246e5d6767eeab1a7ffa17f025265b5b94f40f0c",
            id="birth-date",
        ),
        pytest.param(
            "country",
            "United States",
            None,
            "us",
            "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621",
            id="country-name",
        ),
    ],
)
def test_meta_page_examples(
    field: str, raw: str, country: str | None, normalized: str, digest: str
) -> None:
    """Every worked example on Meta's customer-information page normalizes and hashes as shown."""
    assert normalized == normalize(field, raw, country=country)
    assert digest == hash_value(normalized)


@pytest.mark.parametrize(
    ("field", "raw", "normalized"),
    [
        pytest.param("ct", "Paris", "paris", id="ct-paris"),
        pytest.param("ct", "London", "london", id="ct-london"),
        pytest.param("ct", "New York", "newyork", id="ct-newyork"),
        pytest.param("st", "AZ", "az", id="st-az"),
        pytest.param("st", "CA", "ca", id="st-ca"),
        pytest.param("ge", "f", "f", id="ge-f"),
        pytest.param("ge", "m", "m", id="ge-m"),
    ],
)
def test_meta_page_normalized_forms(field: str, raw: str, normalized: str) -> None:
    """The normalized forms Meta's page lists for city, state and gender come out as listed."""
    assert normalized == normalize(field, raw)


# --- em -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("Person@Example.com", "person@example.com", id="mixed-case"),
        pytest.param("  person@example.com\t\n", "person@example.com", id="padded"),
        pytest.param(" PERSON@EXAMPLE.COM ", "person@example.com", id="upper-padded"),
        pytest.param(
            "o'brien+shop@mail.example.ie",
            "o'brien+shop@mail.example.ie",
            id="rfc-local-part",
        ),
        pytest.param("josé@exämple.de", "josé@exämple.de", id="unicode"),
        pytest.param(
            unicodedata.normalize("NFD", "JOSÉ@example.de"),
            "josé@example.de",
            id="nfd-composes",
        ),
        pytest.param("person.example.com", None, id="no-at"),
        pytest.param("person@", None, id="no-domain"),
        pytest.param("@example.com", None, id="no-local-part"),
        pytest.param("person@localhost", None, id="domain-without-dot"),
        pytest.param("per son@example.com", None, id="inner-space"),
        pytest.param("a@b@example.com", None, id="two-ats"),
        pytest.param("person@example..com", None, id="empty-label"),
        pytest.param(".person@example.com", None, id="local-starts-with-dot"),
        pytest.param("per..son@example.com", None, id="local-double-dot"),
        pytest.param("person@-example.com", None, id="label-starts-with-hyphen"),
        pytest.param("person@example-.com", None, id="label-ends-with-hyphen"),
        pytest.param("person@exa_mple.com", None, id="underscore-in-domain"),
        pytest.param("person@1.2", None, id="numeric-tld"),
        pytest.param("person<x>@example.com", None, id="angle-brackets"),
        pytest.param("person@example.com.", None, id="trailing-dot"),
        pytest.param("a" * 65 + "@example.com", None, id="local-part-over-64"),
        pytest.param("   ", None, id="blank"),
    ],
)
def test_email(raw: str, expected: str | None) -> None:
    """Emails are trimmed and lower-cased; what cannot be an address is dropped."""
    assert expected == normalize("em", raw)


# --- ph -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "country", "expected"),
    [
        pytest.param("(613) 555-0135", "us", "16135550135", id="us-order-national"),
        pytest.param("613.555.0135", "US", "16135550135", id="us-dots-upper-region"),
        pytest.param(
            "+1 613-555-0135", "de", "16135550135", id="own-code-wins-over-region"
        ),
        pytest.param("1 (613) 555-0135", "us", "16135550135", id="us-with-trunk-1"),
        pytest.param(
            "+1 (650) 555-1212 ext. 42", None, "16505551212", id="extension-dropped"
        ),
        pytest.param("030 1234567", "de", "49301234567", id="de-trunk-zero"),
        pytest.param(
            "+49 (0)30 1234567", None, "49301234567", id="de-bracketed-trunk-zero"
        ),
        pytest.param("0049 30 1234567", "us", "49301234567", id="double-zero-prefix"),
        pytest.param("(+44) 7911 123456", "us", "447911123456", id="bracketed-plus"),
        pytest.param(
            "\u0660\u0667\u0669\u0661\u0661 123456",
            "gb",
            "447911123456",
            id="arabic-indic-digits",
        ),
        pytest.param("+49 1234567890123456", None, None, id="longer-than-e164"),
        pytest.param("07911 123456", "gb", "447911123456", id="gb-mobile"),
        pytest.param("+44 844 412 4653", None, "448444124653", id="gb-international"),
        pytest.param("090-1234-5678", "jp", "819012345678", id="jp-mobile"),
        pytest.param("03-1234-5678", "jp", "81312345678", id="jp-tokyo"),
        pytest.param("(416) 555-0199", "ca", "14165550199", id="ca-toronto"),
        pytest.param("06 1234 5678", "it", "390612345678", id="it-keeps-leading-zero"),
        pytest.param("16505551212", None, "16505551212", id="already-normalized"),
        pytest.param(
            "447911123456", "us", "447911123456", id="normalized-foreign-number"
        ),
        pytest.param("(650) 555-1212", None, None, id="national-without-country"),
        pytest.param("12345", "us", None, id="too-short"),
        pytest.param("call me", "us", None, id="no-digits"),
        pytest.param("", "us", None, id="empty"),
    ],
)
def test_phone(raw: str, country: str | None, expected: str | None) -> None:
    """Phones become E.164 digits with their country code, the order's country filling in a missing one."""
    assert expected == normalize("ph", raw, country=country)


#: Every region with phone numbers that is also an ISO 3166-1 country (phonenumbers also
#: knows Ascension "AC", Tristan da Cunha "TA" and Kosovo "XK", which are not).
PHONE_REGIONS = sorted(set(phonenumbers.SUPPORTED_REGIONS) - {"AC", "TA", "XK"})
PHONE_FORMATS = (
    phonenumbers.PhoneNumberFormat.NATIONAL,
    phonenumbers.PhoneNumberFormat.INTERNATIONAL,
    phonenumbers.PhoneNumberFormat.E164,
    phonenumbers.PhoneNumberFormat.RFC3966,
)


@pytest.mark.parametrize("region", PHONE_REGIONS)
def test_every_country_phone_in_every_format(region: str) -> None:
    """A country's example numbers, written any usual way, all hash as the same E.164 digits."""
    examples = [
        phonenumbers.example_number_for_type(region, kind)
        for kind in (
            phonenumbers.PhoneNumberType.FIXED_LINE,
            phonenumbers.PhoneNumberType.MOBILE,
        )
    ]
    numbers = [n for n in examples if n is not None]
    assert numbers
    for number in numbers:
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[
            1:
        ]
        for fmt in PHONE_FORMATS:
            written = phonenumbers.format_number(number, fmt)
            assert e164 == normalize("ph", written, country=region.lower()), written
        assert e164 == normalize("ph", e164), "Meta's normalized form needs no region"


def test_sdk_phone_rule_loses_the_country_code() -> None:
    """The Business SDK only strips symbols, so a national number hashes without its country code; Meta's page requires the code."""
    sdk_style = "6135550135"  # what the SDK sends for "(613) 555-0135"
    assert sdk_style != normalize("ph", "(613) 555-0135", country="us")
    assert sha256("16135550135") == hash_value(
        normalize("ph", "(613) 555-0135", country="us") or ""
    )


# --- fn / ln / ct ---------------------------------------------------------------


NFD_VALERY = unicodedata.normalize("NFD", "Valéry")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("  Mary ", "mary", id="padded"),
        pytest.param(NFD_VALERY, "valéry", id="nfd-input-composes"),
        pytest.param("O'Brien", "obrien", id="apostrophe"),
        pytest.param("Jean-Luc", "jeanluc", id="hyphen"),
        pytest.param("Mary Ann", "maryann", id="inner-space"),
        pytest.param("Dr. J.R.R.", "drjrr", id="periods"),
        pytest.param("Müller", "müller", id="umlaut"),
        pytest.param("ÅSE", "åse", id="upper-nordic"),
        pytest.param("Σωκράτης", "σωκράτης", id="greek"),
        pytest.param("Иван", "иван", id="cyrillic"),
        pytest.param("山田", "山田", id="cjk"),
        pytest.param("José 🎉", "josé", id="emoji"),
        pytest.param("Jose.\u0301", "josé", id="accent-meets-its-letter"),
        pytest.param("...", None, id="punctuation-only"),
        pytest.param("", None, id="empty"),
    ],
)
@pytest.mark.parametrize("field", ["fn", "ln"])
def test_names(field: str, raw: str, expected: str | None) -> None:
    """Names are NFC, lower-cased, without spaces or punctuation, in any script."""
    assert expected == normalize(field, raw)


def test_nfd_and_nfc_names_hash_alike() -> None:
    """An NFD "é" (e + combining accent) hashes exactly like the NFC "é" of Meta's example."""
    assert NFD_VALERY != "Valéry"
    assert hash_value(normalize("fn", NFD_VALERY) or "") == (
        "08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c"
    )


def test_sdk_keeps_punctuation_in_names() -> None:
    """The Business SDK only lower-cases and trims names; Meta's page says no punctuation, so "O'Brien" is "obrien"."""
    sdk_style = "O'Brien".lower().strip()
    assert sdk_style != normalize("ln", "O'Brien")
    assert "obrien" == normalize("ln", "O'Brien")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("New York", "newyork", id="space"),
        pytest.param("St. John's", "stjohns", id="punctuation"),
        pytest.param("Saint-Étienne", "saintétienne", id="accent"),
        pytest.param(unicodedata.normalize("NFD", "Zürich"), "zürich", id="nfd"),
        pytest.param("東京", "東京", id="non-latin-kept"),
        pytest.param(" - ", None, id="nothing-left"),
    ],
)
def test_city(raw: str, expected: str | None) -> None:
    """Cities are lower-cased without spaces or punctuation; letters of other scripts stay (UTF-8, as Meta allows)."""
    assert expected == normalize("ct", raw)


def test_sdk_keeps_apostrophes_in_cities() -> None:
    """The Business SDK strips only digits, spaces, dots, dashes and brackets, leaving "stjohn's"; Meta's page says no punctuation."""
    assert "stjohns" == normalize("ct", "St. John's")


def test_param_builder_drops_non_latin_cities() -> None:
    """The param builder strips every non-Latin letter, which leaves nothing of "東京"; Meta's page accepts UTF-8 text, so it stays."""
    assert "東京" == normalize("ct", "東京")


# --- ge / db --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("F", "f", id="upper-f"),
        pytest.param(" female ", "f", id="female-word"),
        pytest.param("Woman", "f", id="woman"),
        pytest.param("M", "m", id="upper-m"),
        pytest.param("Male", "m", id="male-word"),
        pytest.param("männlich", "m", id="german"),
        pytest.param("non-binary", None, id="no-meta-code"),
        pytest.param("x", None, id="unknown-letter"),
        pytest.param("", None, id="empty"),
    ],
)
def test_gender(raw: str, expected: str | None) -> None:
    """Gender is Meta's lowercase initial, f or m; anything else is left out."""
    assert expected == normalize("ge", raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("1997-02-16", "19970216", id="iso"),
        pytest.param("1997-02-16T00:00:00Z", "19970216", id="iso-datetime"),
        pytest.param("19970216", "19970216", id="compact"),
        pytest.param("02/16/1997", "19970216", id="us-order"),
        pytest.param("16.02.1997", "19970216", id="day-first-when-unambiguous"),
        pytest.param("03/04/1997", "19970304", id="ambiguous-reads-us-order"),
        pytest.param("16 February 1997", "19970216", id="month-name"),
        pytest.param("Feb 16, 1997", "19970216", id="month-abbreviation-first"),
        pytest.param("2000-02-29", "20000229", id="leap-day"),
        pytest.param("1999-02-29", None, id="no-such-leap-day"),
        pytest.param("1997-02-30", None, id="february-30"),
        pytest.param("1997-13-01", None, id="month-13"),
        pytest.param("1899-12-31", None, id="before-1900"),
        pytest.param("2/16/97", None, id="two-digit-year"),
        pytest.param("1997", None, id="year-only"),
        pytest.param("yesterday", None, id="words"),
    ],
)
def test_birth_date(raw: str, expected: str | None) -> None:
    """Dates of birth become YYYYMMDD; impossible dates and years before 1900 are dropped."""
    assert expected == normalize("db", raw)


# --- st / zp / country ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "country", "expected"),
    [
        pytest.param("California", "us", "ca", id="us-full-name"),
        pytest.param("new york", "us", "ny", id="us-lower-name"),
        pytest.param(" TX ", "us", "tx", id="us-code"),
        pytest.param("US-WA", "us", "wa", id="iso-3166-2"),
        pytest.param("us-wa", None, "wa", id="iso-3166-2-names-its-country"),
        pytest.param("DE-BY", "de", "by", id="iso-3166-2-elsewhere"),
        pytest.param("ab-cd", None, "abcd", id="not-a-subdivision"),
        pytest.param("District of Columbia", "us", "dc", id="dc"),
        pytest.param("Narnia", "us", None, id="us-unknown"),
        pytest.param("Ontario", "ca", "on", id="ca-province-name"),
        pytest.param("Québec", "ca", "qc", id="ca-accented-name"),
        pytest.param("BC", "ca", "bc", id="ca-code"),
        pytest.param("Baden-Württemberg", "de", "badenwürttemberg", id="de-name"),
        pytest.param("Île-de-France", "fr", "îledefrance", id="fr-name"),
        pytest.param("東京都", "jp", "東京都", id="jp-name"),
        pytest.param("Texas", None, "tx", id="no-country-us-name"),
        pytest.param("Bavaria", None, "bavaria", id="no-country-other"),
        pytest.param("Washington", "United States", "wa", id="country-hint-as-name"),
    ],
)
def test_state(raw: str, country: str | None, expected: str | None) -> None:
    """US and Canadian states become their 2-letter code; other regions are lower-cased without spaces or punctuation."""
    assert expected == normalize("st", raw, country=country)


def test_sdk_keeps_full_us_state_names() -> None:
    """The Business SDK hashes "california" for California; Meta's page asks for the ANSI code "ca"."""
    assert "ca" == normalize("st", "California", country="us")


def test_param_builder_truncates_foreign_states() -> None:
    """The param builder cuts every state to 2 letters ("bavaria" -> "ba"); Meta's page asks only non-US states to lose spaces and punctuation."""
    assert "bavaria" == normalize("st", "Bavaria", country="de")


@pytest.mark.parametrize(
    ("raw", "country", "expected"),
    [
        pytest.param("94035", "us", "94035", id="us"),
        pytest.param("94035-1234", "us", "94035", id="us-zip-plus-4"),
        pytest.param("940351234", "us", "94035", id="us-zip-plus-4-no-dash"),
        pytest.param("94035-1234", None, "94035", id="zip-plus-4-without-country"),
        pytest.param("9403", "us", None, id="us-too-short"),
        pytest.param("M1 1AE", "gb", "m11ae", id="gb-meta-example"),
        pytest.param("sw1a 1aa", "gb", "sw1a1aa", id="gb-lower"),
        pytest.param("EC1A1BB", "gb", "ec1a1bb", id="gb-no-space"),
        pytest.param("12345", "gb", None, id="gb-not-a-postcode"),
        pytest.param("10115", "de", "10115", id="de"),
        pytest.param("1011", "de", None, id="de-four-digits"),
        pytest.param("K1A 0B1", "ca", "k1a0b1", id="ca"),
        pytest.param("K1A-0B1", "ca", "k1a0b1", id="ca-dash"),
        pytest.param("100-0001", "jp", "1000001", id="jp"),
        pytest.param(
            "\u3012\uff11\uff10\uff10\uff0d\uff10\uff10\uff10\uff11",
            "jp",
            "1000001",
            id="jp-full-width",
        ),
        pytest.param("1987", "au", "1987", id="au-meta-example"),
        pytest.param("75018", "fr", "75018", id="fr-meta-example"),
        pytest.param("00-950", "pl", "00950", id="pl-dash-removed"),
        pytest.param("1000-001", None, "1000001", id="pt-dash-removed"),
        pytest.param("-", None, None, id="nothing-left"),
    ],
)
def test_zip(raw: str, country: str | None, expected: str | None) -> None:
    """Postcodes are lowercase without spaces or dashes; US keeps 5 digits; GB, DE, CA and JP must fit their format."""
    assert expected == normalize("zp", raw, country=country)


def test_sdk_keeps_nine_digit_zip() -> None:
    """The Business SDK only cuts at a dash, so "940351234" stays 9 digits; Meta's page says the first 5 digits for the US."""
    assert "94035" == normalize("zp", "940351234", country="us")


def test_uk_postcode_is_kept_whole() -> None:
    """Meta's page says "area, district, and sector" for the UK but its example is the whole postcode "m11ae": the example is followed, spaces removed (the param builder would keep "m1 1ae")."""
    assert "m11ae" == normalize("zp", "M1 1AE", country="gb")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("US", "us", id="upper-code"),
        pytest.param(" de ", "de", id="padded-code"),
        pytest.param("United States of America", "us", id="long-name"),
        pytest.param("USA", "us", id="usa"),
        pytest.param("UK", "gb", id="uk-alias"),
        pytest.param("United Kingdom", "gb", id="gb-name"),
        pytest.param("Deutschland", "de", id="endonym"),
        pytest.param("Côte d'Ivoire", "ci", id="accented-name"),
        pytest.param("Åland Islands", "ax", id="nordic-name"),
        pytest.param("XX", None, id="unassigned-code"),
        pytest.param("ZZ", None, id="user-assigned-code"),
        pytest.param("Atlantis", None, id="unknown-name"),
        pytest.param("", None, id="empty"),
    ],
)
def test_country(raw: str, expected: str | None) -> None:
    """Countries are ISO 3166-1 alpha-2 in lowercase; unknown codes and names are dropped."""
    assert expected == normalize("country", raw)


@pytest.mark.parametrize(
    "code", [*PHONE_REGIONS, "AQ", "BV", "GS", "HM", "PN", "TF", "UM"]
)
def test_every_iso_country_code_is_known(code: str) -> None:
    """All 249 ISO 3166-1 alpha-2 codes are accepted: the phone regions plus the seven territories without phones."""
    assert code.lower() == normalize("country", code)


@pytest.mark.parametrize("code", ["AC", "TA", "XK", "EU", "UN"])
def test_codes_outside_iso_3166_1_are_refused(code: str) -> None:
    """Phone-only regions and other reserved codes are not countries Meta can match on."""
    assert normalize("country", code) is None


# --- external_id and unhashed keys ----------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(" Customer-42 ", "customer-42", id="trim-lower"),
        pytest.param(
            "gid://shopify/Customer/7", "gid://shopify/customer/7", id="shopify-gid"
        ),
        pytest.param("   ", None, id="blank"),
    ],
)
def test_external_id(raw: str, expected: str | None) -> None:
    """external_id is trimmed and lower-cased before hashing, as Meta recommends."""
    assert expected == normalize("external_id", raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(" 168.212.226.204 ", "168.212.226.204", id="ipv4-meta-example"),
        pytest.param(
            "2A03:2880:F12F:0083:FACE:B00C:0000:25DE",
            "2a03:2880:f12f:83:face:b00c:0:25de",
            id="ipv6-compressed",
        ),
        pytest.param("[2a03:2880::1]", "2a03:2880::1", id="ipv6-bracketed"),
        # Meta's own IPv6 example sits in the documentation prefix: never a shopper.
        pytest.param("2001:0db8:85a3:0000:0000:8a2e:0370:7334", None, id="ipv6-doc"),
        pytest.param("999.1.1.1", None, id="ipv4-out-of-range"),
        pytest.param("0.0.0.0", None, id="unspecified"),  # noqa: S104 (an address, not a bind)
        pytest.param("not an ip", None, id="garbage"),
        # A store behind a proxy records the proxy's address, never the browser's.
        pytest.param("127.0.0.1", None, id="loopback"),
        pytest.param("10.0.0.5", None, id="rfc1918-10"),
        pytest.param("172.17.0.1", None, id="docker-bridge"),
        pytest.param("192.168.1.20", None, id="rfc1918-192"),
        pytest.param("::1", None, id="ipv6-loopback"),
        pytest.param("100.64.0.1", None, id="carrier-grade-nat"),
        pytest.param("169.254.10.1", None, id="link-local"),
        pytest.param("fd00::1", None, id="ipv6-unique-local"),
        pytest.param("fe80::1", None, id="ipv6-link-local"),
        pytest.param("203.0.113.9", None, id="documentation-range"),
        pytest.param("224.0.0.1", None, id="multicast"),
        pytest.param("::ffff:10.0.0.1", None, id="ipv4-mapped-private"),
        pytest.param(
            "168.212.226.204, 10.0.0.5", "168.212.226.204", id="forwarded-for-chain"
        ),
        pytest.param(
            "10.0.0.5, 2a03:2880::1", "2a03:2880::1", id="first-public-in-chain"
        ),
        pytest.param("10.0.0.5, 127.0.0.1", None, id="chain-of-proxies"),
    ],
)
def test_client_ip_address(raw: str, expected: str | None) -> None:
    """Only a valid public IPv4 or IPv6 address is sent; IPv6 is kept, never reduced to IPv4."""
    assert expected == normalize("client_ip_address", raw)


@pytest.mark.parametrize(
    ("field", "raw", "expected"),
    [
        pytest.param(
            "fbc",
            " fb.1.1554763741205.AbCdEfGhIjKlMnOpQrStUvWxYz1234567890 ",
            "fb.1.1554763741205.AbCdEfGhIjKlMnOpQrStUvWxYz1234567890",
            id="fbc-case-kept",
        ),
        pytest.param(
            "fbc",
            "fb.2.1554763741205.AbCd.ABcDEFGh",
            "fb.2.1554763741205.AbCd.ABcDEFGh",
            id="fbc-cookie-with-appendix-as-is",
        ),
        pytest.param(
            "fbp",
            "fb.1.1596403881668.1116446470",
            "fb.1.1596403881668.1116446470",
            id="fbp",
        ),
        pytest.param("fbc", "AbCdEf", None, id="bare-fbclid-is-not-fbc"),
        pytest.param(
            "fbc",
            "fb.1.1554763741205.AbC.Ag",
            "fb.1.1554763741205.AbC.Ag",
            id="fbc-legacy-appendix",
        ),
        pytest.param(
            "fbc", "fb.1.1554763741205.AbC.Zz", None, id="fbc-unknown-appendix"
        ),
        pytest.param("fbc", "fb.1.1554763741205.AbC.x.y", None, id="fbc-six-parts"),
        pytest.param("fbc", "fb.1.1554763741205.", None, id="fbc-empty-click-id"),
        pytest.param("fbc", "fb.1.now.AbC", None, id="fbc-time-not-digits"),
        pytest.param("fbc", "fb.12.1554763741205.AbC", None, id="fbc-subdomain-index"),
        pytest.param("fbc", "fb.1.1554763741205.Ab C", None, id="fbc-inner-space"),
        pytest.param(
            "fbp", "fb.1.1596403881668.abc", None, id="fbp-payload-not-digits"
        ),
        pytest.param(
            "fbp",
            "fb.2.1596403881668.1116446470.AQABAQIA",
            "fb.2.1596403881668.1116446470.AQABAQIA",
            id="fbp-param-builder-appendix",
        ),
        pytest.param("fbp", "", None, id="empty"),
        pytest.param(
            "client_user_agent",
            " Mozilla/5.0 (Windows NT 10.0; Win64; x64) ",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
            id="user-agent-trimmed",
        ),
        pytest.param("client_user_agent", " ", None, id="user-agent-blank"),
    ],
)
def test_plain_keys(field: str, raw: str, expected: str | None) -> None:
    """fbc, fbp and the user agent are only trimmed: an _fbc cookie is passed on as it is, never rebuilt."""
    assert expected == normalize(field, raw)


def test_unknown_field_is_a_programming_error() -> None:
    """Asking for a key Meta does not have raises instead of silently dropping data."""
    with pytest.raises(ValueError, match="not a user_data key"):
        normalize("email", "a@example.com")


# --- hashing --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(sha256("x"), True, id="lower-hex"),
        pytest.param(sha256("x").upper(), True, id="upper-hex"),
        pytest.param(hashlib.md5(b"x").hexdigest(), False, id="md5-is-not-sha256"),  # noqa: S324
        pytest.param(sha256("x")[:-1] + "g", False, id="non-hex"),
        pytest.param(sha256("x") + "0", False, id="65-chars"),
    ],
)
def test_is_hashed(value: str, expected: bool) -> None:
    """Only a 64-hex SHA-256 digest counts as hashed; the SDK's MD5 pass-through is not Meta's rule."""
    assert expected == is_hashed(value)


def test_hash_value_is_sha256_of_utf8() -> None:
    """hash_value is the lowercase hex SHA-256 of the UTF-8 bytes."""
    assert hashlib.sha256("valéry".encode()).hexdigest() == hash_value("valéry")


# --- normalize_user_data / user_data --------------------------------------------


def test_us_order_phone_takes_the_order_country() -> None:
    """A US order's national phone hashes with its +1: sha256("16135550135")."""
    rv = normalize_user_data({"ph": "(613) 555-0135", "country": "US"})
    assert [sha256("16135550135")] == rv["ph"]
    assert [sha256("us")] == rv["country"]


def test_user_data_object_shape() -> None:
    """Hashed keys are lists of digests, plain keys single strings, invalid values gone."""
    rv = normalize_user_data(
        {
            "em": ["Person@Example.com ", " person@example.com", "not-an-email", None],
            "ph": ["+44 7911 123456", "+1 613-555-0135", "07911 123456"],
            "fn": "Valéry",
            "ln": ["", None],
            "country": ["Atlantis", "gb"],
            "zp": "M1 1AE",
            "external_id": 42,
            "client_ip_address": [
                "bogus",
                "10.0.0.5",
                "2a03:2880::1",
                "168.212.226.204",
            ],
            "client_user_agent": "Mozilla/5.0",
            "fbc": "fb.1.1554763741205.AbC",
            "fbp": None,
        }
    )
    assert {
        "em": [sha256("person@example.com")],
        # GB is the first valid country, so the national GB number folds into the first.
        "ph": [sha256("447911123456"), sha256("16135550135")],
        "fn": [sha256("valéry")],
        "country": [sha256("gb")],
        "zp": [sha256("m11ae")],
        "external_id": [sha256("42")],
        "client_ip_address": "2a03:2880::1",
        "client_user_agent": "Mozilla/5.0",
        "fbc": "fb.1.1554763741205.AbC",
    } == rv


def test_billing_and_shipping_in_different_countries() -> None:
    """A US billing and a Canadian shipping address both count: what US rules refuse is read by Canada's."""
    rv = normalize_user_data(
        {
            "country": ["US", "CA"],
            "st": ["CA", "Ontario"],
            "zp": ["94035-1234", "K1A 0B1"],
            "ph": ["(650) 555-1212", "(416) 555-0199"],
        }
    )
    assert [sha256("us"), sha256("ca")] == rv["country"]
    assert [sha256("ca"), sha256("on")] == rv["st"]
    assert [sha256("94035"), sha256("k1a0b1")] == rv["zp"]
    assert [sha256("16505551212"), sha256("14165550199")] == rv["ph"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            {"country": ["DE", "US"], "ph": [FromAddress("(212) 555-0147", "US")]},
            "12125550147",
            id="shipping-us-billing-de",
        ),
        pytest.param(
            {"country": ["GB", "FR"], "ph": [FromAddress("06 12 34 56 78", "FR")]},
            "33612345678",
            id="shipping-fr-billing-gb",
        ),
        pytest.param(
            {"country": ["GB"], "ph": [FromAddress("06 12 34 56 78", "France")]},
            "33612345678",
            id="country-as-a-name",
        ),
        pytest.param(
            {"country": ["US"], "ph": [FromAddress("(212) 555-0147", "Atlantis")]},
            "12125550147",
            id="unknown-own-country-falls-back-to-the-order",
        ),
        pytest.param(
            {"country": ["US"], "ph": [FromAddress("+33 6 12 34 56 78", "US")]},
            "33612345678",
            id="own-code-wins",
        ),
    ],
)
def test_a_value_from_an_address_is_read_in_its_country(
    raw: dict[str, Any], expected: str
) -> None:
    """A phone handed with its address's country is read with that country, not the order's first."""
    assert [sha256(expected)] == normalize_user_data(raw)["ph"]


def test_state_and_postcode_from_an_address_follow_its_country() -> None:
    """A Canadian shipping province and postcode are read with Canada's rules on a US order."""
    rv = normalize_user_data(
        {
            "country": ["US", "CA"],
            "st": [FromAddress("Ontario", "CA")],
            "zp": [FromAddress("K1A 0B1", "CA"), FromAddress("K1A 0B1", "US")],
        }
    )
    assert [sha256("on")] == rv["st"]
    assert [sha256("k1a0b1")] == rv["zp"]


def test_violations_names_each_broken_rule() -> None:
    """The core's invariants: digests, public IPs, cookie shapes, known keys."""
    good = normalize_user_data(
        {"em": "a@example.com", "client_ip_address": "168.212.226.204"}
    )
    assert [] == violations(good)
    bad = {
        "em": ["A" * 64],
        "ph": [],
        "client_ip_address": "10.0.0.5",
        "fbc": "AbC",
        "nope": "x",
    }
    assert 5 == len(violations(bad))


def test_several_values_keep_their_order() -> None:
    """Several emails and names are all sent, deduplicated, first seen first."""
    rv = normalize_user_data(
        {"em": ["b@example.com", "a@example.com", "B@example.com"]}
    )
    assert [sha256("b@example.com"), sha256("a@example.com")] == rv["em"]


def test_already_hashed_values_pass_through() -> None:
    """A SHA-256 digest is passed on lower-cased and never hashed a second time."""
    digest = sha256("person@example.com")
    rv = normalize_user_data(
        {"em": [digest.upper(), "person@example.com"], "ph": digest}
    )
    assert {"em": [digest], "ph": [digest]} == rv


def test_unknown_raw_key_raises() -> None:
    """A misspelt key is a bug in the caller, not something to drop quietly."""
    with pytest.raises(ValueError, match="email"):
        normalize_user_data({"email": "a@example.com"})


def test_non_string_values_raise() -> None:
    """Only strings (and numeric ids) are user data; a dict is a bug in the caller."""
    with pytest.raises(TypeError, match="em"):
        normalize_user_data({"em": {"address": "a@example.com"}})


def test_user_data_builds_the_canonical_dataclass() -> None:
    """user_data() wraps the normalized object in connector.events.UserData."""
    ud = user_data({"em": "A@example.com", "client_user_agent": "UA", "country": "us"})
    assert isinstance(ud, UserData)
    assert (sha256("a@example.com"),) == ud.em
    assert "UA" == ud.client_user_agent
    assert normalize_user_data(
        {"em": "A@example.com", "client_user_agent": "UA", "country": "us"}
    ) == (ud.to_meta())


def test_empty_input_gives_an_empty_object() -> None:
    """No usable value means no key at all, never an empty list or string."""
    assert {} == normalize_user_data({"em": "", "fn": None, "ph": ["x"], "fbc": " "})


# --- fbc ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fbclid", "created_at", "expected"),
    [
        pytest.param(
            "AbCdEfGhIjKlMnOpQrStUvWxYz1234567890",
            datetime(2019, 4, 8, 22, 49, 1, 205000, tzinfo=UTC),
            "fb.1.1554763741205.AbCdEfGhIjKlMnOpQrStUvWxYz1234567890",
            id="meta-example",
        ),
        pytest.param(
            "IwAR2xYz",
            datetime(2019, 4, 9, 0, 49, 1, 205999, tzinfo=timezone(timedelta(hours=2))),
            "fb.1.1554763741205.IwAR2xYz",
            id="other-offset-sub-millisecond",
        ),
    ],
)
def test_build_fbc(fbclid: str, created_at: datetime, expected: str) -> None:
    """fbc is fb.1.<creation time in ms>.<fbclid>, with the fbclid's case untouched."""
    assert expected == build_fbc(fbclid, created_at)


def test_build_fbc_needs_an_aware_time() -> None:
    """A naive time has no single instant, so it is refused rather than guessed."""
    with pytest.raises(ValueError, match="timezone-aware"):
        build_fbc("AbC", datetime(2019, 4, 8))  # noqa: DTZ001


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("/?fbclid=AbC", "AbC", id="shopify-landing-site"),
        pytest.param(
            "/products/mug?utm_source=fb&fbclid=IwAR0xYz_aB",
            "IwAR0xYz_aB",
            id="relative-path",
        ),
        pytest.param(
            "https://shop.example/?fbclid=AbC%2DdE#top", "AbC-dE", id="percent-encoded"
        ),
        pytest.param(
            "/?utm_source=fb&amp;fbclid=AbC", "AbC", id="html-escaped-ampersand"
        ),
        pytest.param("https://shop.example/?fbclid=", None, id="empty-value"),
        pytest.param("https://shop.example/?gclid=AbC", None, id="absent"),
        pytest.param(
            "https://shop.example/#fbclid=AbC", None, id="fragment-is-not-query"
        ),
        pytest.param("http://[::1/?fbclid=AbC", None, id="invalid-url"),
        pytest.param("", None, id="empty"),
    ],
)
def test_fbclid_from_url(url: str, expected: str | None) -> None:
    """The fbclid query parameter is read from full URLs and Shopify's relative landing_site, case kept."""
    assert expected == fbclid_from_url(url)


# --- properties -----------------------------------------------------------------

padding = st.text(alphabet=" \t\n", max_size=3)
countries = st.sampled_from([None, "us", "gb", "de", "ca", "jp", "fr", "United States"])
fields = st.sampled_from(ALL_KEYS)
IDEMPOTENT_FIELDS = (
    "em",
    "fn",
    "ln",
    "ge",
    "db",
    "ct",
    "st",
    "zp",
    "country",
    "external_id",
    *PLAIN_KEYS,
)


@given(field=fields, value=st.text(), country=countries)
@example(field="ph", value="\x00+", country=None)
@example(field="db", value="0000-00-00", country=None)
@example(field="ph", value="10000000000000", country="de")
@example(field="ph", value="0\u06600000", country="de")
def test_normalize_never_raises(field: str, value: str, country: str | None) -> None:
    """Whatever a store sends, normalization answers with a string or None."""
    rv = normalize(field, value, country=country)
    assert rv is None or (isinstance(rv, str) and rv != "")


@given(field=st.sampled_from(IDEMPOTENT_FIELDS), value=st.text(), country=countries)
@example(field="fn", value="e.\u0301", country=None)
@example(field="ln", value="\u0130", country=None)
@example(field="st", value="US-CA", country=None)
@example(field="zp", value="94035-1234", country=None)
def test_normalize_is_idempotent(field: str, value: str, country: str | None) -> None:
    """Normalizing a normalized value changes nothing."""
    once = normalize(field, value, country=country)
    if once is not None:
        assert once == normalize(field, once, country=country)


@given(
    value=st.one_of(
        st.from_regex(r"\+?[0-9 ()\-]{6,20}", fullmatch=True),
        st.text(alphabet="0123456789", min_size=8, max_size=15),
    )
)
@example(value="0\u06600000")
@example(value="+310000000")
def test_phone_reads_back_from_its_normalized_form(value: str) -> None:
    """A normalized phone, written back with a +, normalizes to itself whatever the region."""
    once = normalize("ph", value, country="us")
    if once is not None:
        assert once == normalize("ph", "+" + once)
        assert once == normalize("ph", "+" + once, country="de")


@given(field=st.sampled_from(["fn", "ln", "ct", "st"]), value=st.text())
def test_unicode_form_never_changes_the_hash(field: str, value: str) -> None:
    """NFD, NFC and mixed input of the same text normalize alike."""
    nfc = normalize(field, unicodedata.normalize("NFC", value))
    assert nfc == normalize(field, unicodedata.normalize("NFD", value))
    assert nfc == normalize(field, value)


@given(
    zip5=st.from_regex(r"[0-9]{5}", fullmatch=True),
    plus4=st.one_of(st.just(""), st.from_regex(r"[ -]?[0-9]{4}", fullmatch=True)),
    left=padding,
    right=padding,
)
def test_us_zip_is_its_first_five_digits(
    zip5: str, plus4: str, left: str, right: str
) -> None:
    """A US ZIP or ZIP+4, however written, is its five-digit ZIP."""
    assert zip5 == normalize("zp", f"{left}{zip5}{plus4}{right}", country="us")


@given(raw=st.emails(), left=padding, right=padding)
def test_email_case_and_padding_do_not_change_the_hash(
    raw: str, left: str, right: str
) -> None:
    """What a shopper types around their address, and its case, must not cost a match."""
    noisy = f"{left}{raw.upper()}{right}"
    assert normalize("em", raw) is not None
    assert normalize_user_data({"em": noisy}) == normalize_user_data({"em": raw})


@given(
    raw=st.dictionaries(
        keys=fields,
        values=st.one_of(
            st.none(), st.text(), st.lists(st.one_of(st.none(), st.text()), max_size=3)
        ),
    )
)
def test_hashed_output_is_always_64_lowercase_hex(raw: dict[str, Any]) -> None:
    """Every hashed key is a list of 64 lowercase hex digests, every plain key a non-empty string."""
    rv = normalize_user_data(raw)
    for key, value in rv.items():
        if key in HASHED_KEYS:
            assert value
            assert all(len(d) == 64 and d == d.lower() and is_hashed(d) for d in value)
            assert len(set(value)) == len(value)
        else:
            assert key in PLAIN_KEYS
            assert isinstance(value, str)
            assert value


@given(
    field=st.sampled_from(HASHED_KEYS),
    digest=st.binary().map(lambda b: hashlib.sha256(b).hexdigest()),
    upper=st.booleans(),
)
def test_already_hashed_passes_through(field: str, digest: str, upper: bool) -> None:
    """A digest in any hashed key comes out exactly once, lower-cased, never re-hashed."""
    value = digest.upper() if upper else digest
    assert {field: [digest]} == normalize_user_data({field: value})


@given(
    fbclid=st.text(
        alphabet=st.characters(categories=["L", "N"]) | st.sampled_from("-_"),
        min_size=1,
    )
)
def test_fbclid_round_trips_through_a_landing_path(fbclid: str) -> None:
    """An fbclid read from a landing path is exactly the one that was clicked, case included."""
    from urllib.parse import quote

    assert fbclid == fbclid_from_url(f"/?utm_source=fb&fbclid={quote(fbclid)}")
