"""A parameter name the app decodes (``%74oken`` is ``token`` to the web framework) is judged
decoded by the log redaction too: its value never reaches a log line."""

from __future__ import annotations

import logging

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from werkzeug.wrappers import Request

from connector.redact import SECRET_PARAMS, RedactSecrets, redact_query


@st.composite
def encoded_names(draw: st.DrawFn) -> tuple[str, str]:
    """A secret parameter's name with some of its characters percent-encoded (any hex case)."""
    name = draw(st.sampled_from(SECRET_PARAMS))
    out = []
    for ch in name:
        if draw(st.booleans()):
            hexed = f"%{ord(ch):02X}"
            out.append(hexed if draw(st.booleans()) else hexed.lower())
        else:
            out.append(ch)
    return name, "".join(out)


VALUES = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~",
    min_size=12,
    max_size=80,
)


@given(named=encoded_names(), value=VALUES, first=st.booleans())
def test_an_encoded_secret_name_is_redacted(
    named: tuple[str, str], value: str, first: bool
) -> None:
    name, spelled = named
    assume(value not in "shop=a.myshopify.com GET /shopify/callback HTTP/1.1")
    query = (
        f"{spelled}={value}&shop=a.myshopify.com"
        if first
        else f"shop=a.myshopify.com&{spelled}={value}"
    )
    # the premise: the web framework reads it under its decoded name
    assert value == Request.from_values(query_string=query).args[name]
    line = redact_query(f'"GET /shopify/callback?{query} HTTP/1.1" 200 0')
    assert value not in line
    assert f"{spelled}=[redacted]" in line
    assert "shop=a.myshopify.com" in line


@pytest.mark.parametrize(
    "query",
    [
        "%74oken=S3CRETVALUE",
        "t%6Fken=S3CRETVALUE",
        "%73tate=S3CRETVALUE",
        "hm%61c=S3CRETVALUE",
        "%54OKEN=S3CRETVALUE",
        "+token=S3CRETVALUE",
    ],
)
def test_a_log_record_never_carries_the_value(query: str) -> None:
    record = logging.LogRecord(
        "connector.web",
        logging.INFO,
        __file__,
        1,
        "GET /meta/connect?%s",
        (query,),
        None,
    )
    RedactSecrets().filter(record)
    assert "S3CRETVALUE" not in record.getMessage()


@pytest.mark.parametrize(
    "text",
    [
        "shop=a.myshopify.com",
        "stat%65s=1",
        "tokens=abc",
        "my_token=abc",
        "x%3Dtoken=abc",
    ],
)
def test_other_names_are_kept(text: str) -> None:
    assert text == redact_query(text)


class Atoms(dict[str, str]):
    """Like gunicorn's access-log atoms: an absent key reads as "-"."""

    def __missing__(self, key: str) -> str:
        return "-"


def test_a_forgiving_atoms_mapping_keeps_forgiving() -> None:
    """The filter rewrites gunicorn's atoms in place: a header atom absent from the request
    still formats as "-", and a secret in the request line is still redacted."""
    atoms = Atoms({"r": "GET /meta/connect?%74oken=S3CRETVALUE HTTP/1.1", "s": "200"})
    record = logging.LogRecord(
        "gunicorn.access",
        logging.INFO,
        __file__,
        1,
        '"%(r)s" %(s)s rid=%({x-request-id}i)s',
        (atoms,),
        None,
    )
    RedactSecrets().filter(record)
    message = record.getMessage()
    assert "S3CRETVALUE" not in message
    assert message.endswith("rid=-")
