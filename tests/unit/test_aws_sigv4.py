"""SigV4 against AWS's published test suite (aws-sig-v4-test-suite, the 2015-08-30 vectors: access
key AKIDEXAMPLE, region us-east-1, service "service"), as the AWS SDK for JavaScript's
signature-v4 package carries them (its suite.fixture); and the properties a signature must have."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidescale.sources.aws_sqs._sigv4 import AwsCredentials, amz_date, sign

SUITE_KEY = AwsCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SUITE_TIME = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)
HOST = "example.amazonaws.com"
STS_TOKEN = (
    "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8"
    "YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6"
    "fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabI"
    "Qwj2ICCR/oLxBA=="
)

# (name, method, path, query, extra headers, body, signed headers, signature)
VECTORS = [
    ("get-vanilla", "GET", "/", [], {}, b"", "host;x-amz-date",
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("get-vanilla-query-order-key-case", "GET", "/", [("Param2", "value2"), ("Param1", "value1")], {}, b"",
     "host;x-amz-date", "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
    ("get-vanilla-query-unreserved", "GET", "/",
     [("-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
       "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")], {}, b"",
     "host;x-amz-date", "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"),
    ("get-vanilla-utf8-query", "GET", "/", [("\u1234", "bar")], {}, b"", "host;x-amz-date",
     "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"),
    ("get-unreserved", "GET", "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", [], {},
     b"",
     "host;x-amz-date", "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"),
    ("get-utf8", "GET", "/\u1234", [], {}, b"", "host;x-amz-date",
     "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
    ("get-header-value-trim", "GET", "/", [], {"My-Header1": "value1", "My-Header2": '"a   b   c"'}, b"",
     "host;my-header1;my-header2;x-amz-date",
     "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"),
    ("get-header-value-order", "GET", "/", [], {"My-Header1": "value4,value1,value3,value2"}, b"",
     "host;my-header1;x-amz-date", "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01"),
    ("post-vanilla", "POST", "/", [], {}, b"", "host;x-amz-date",
     "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    ("post-vanilla-query", "POST", "/", [("Param1", "value1")], {}, b"", "host;x-amz-date",
     "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"),
    ("post-vanilla-query-nonunreserved", "POST", "/", [("@#$%^", ""), ("+", '/,?><`";:\\|][{}')], {}, b"",
     "host;x-amz-date", "66c82657c86e26fb25238d0e69f011edc4c6df5ae71119d7cb98ed9b87393c1e"),
    ("post-header-key-sort", "POST", "/", [], {"My-Header1": "value1"}, b"", "host;my-header1;x-amz-date",
     "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"),
    ("post-header-value-case", "POST", "/", [], {"My-Header1": "VALUE1"}, b"", "host;my-header1;x-amz-date",
     "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d"),
    ("post-x-www-form-urlencoded", "POST", "/", [], {"Content-Type": "application/x-www-form-urlencoded"},
     b"Param1=value1", "content-type;host;x-amz-date",
     "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
    ("post-x-www-form-urlencoded-parameters", "POST", "/", [],
     {"Content-Type": "application/x-www-form-urlencoded; charset=utf8"}, b"Param1=value1",
     "content-type;host;x-amz-date", "1a72ec8f64bd914b0e42e42607c7fbce7fb2c7465f63e3092b3b0d39fa77a6fe"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "body", "signed_headers", "signature"),
    [pytest.param(*vector[1:], id=vector[0]) for vector in VECTORS],
)
def test_the_signature_matches_the_aws_test_suite(
    method: str,
    path: str,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    body: bytes,
    signed_headers: str,
    signature: str,
) -> None:
    signed = sign(
        method=method,
        host=HOST,
        path=path,
        query=query,
        headers=headers,
        body=body,
        credentials=SUITE_KEY,
        region="us-east-1",
        service="service",
        now=SUITE_TIME,
    )
    assert signed.headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )


def test_a_session_token_is_signed_as_x_amz_security_token_as_in_post_sts_header_before() -> None:
    signed = sign(
        method="POST",
        host=HOST,
        path="/",
        credentials=AwsCredentials(SUITE_KEY.access_key_id, SUITE_KEY.secret_access_key, STS_TOKEN),
        region="us-east-1",
        service="service",
        now=SUITE_TIME,
    )
    assert signed.headers["x-amz-security-token"] == STS_TOKEN
    assert signed.headers["authorization"].endswith(
        "SignedHeaders=host;x-amz-date;x-amz-security-token, "
        "Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"
    )


def test_the_canonical_request_of_post_x_www_form_urlencoded_is_the_suites() -> None:
    signed = sign(
        method="POST",
        host=HOST,
        path="/",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        body=b"Param1=value1",
        credentials=SUITE_KEY,
        region="us-east-1",
        service="service",
        now=SUITE_TIME,
    )
    assert signed.canonical_request == (
        "POST\n/\n\ncontent-type:application/x-www-form-urlencoded\nhost:example.amazonaws.com\n"
        "x-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n"
        "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e"
    )
    assert signed.string_to_sign.splitlines()[:3] == [
        "AWS4-HMAC-SHA256",
        "20150830T123600Z",
        "20150830/us-east-1/service/aws4_request",
    ]


def test_the_credentials_repr_shows_no_secret_or_token() -> None:
    shown = repr(AwsCredentials("AKID", "the-secret", "the-token"))
    assert "the-secret" not in shown
    assert "the-token" not in shown
    assert "AKID" in shown


def test_amz_date_is_the_compact_utc_form() -> None:
    assert amz_date(SUITE_TIME) == "20150830T123600Z"


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


@given(body=st.binary(max_size=64), other=st.binary(max_size=64), secret=_text, region=_text)
def test_the_signature_changes_with_the_body_and_only_then(
    body: bytes, other: bytes, secret: str, region: str
) -> None:
    def signature_of(payload: bytes) -> str:
        signed = sign(
            method="POST",
            host=HOST,
            path="/",
            body=payload,
            credentials=AwsCredentials("AKID", secret),
            region=region,
            service="sqs",
            now=SUITE_TIME,
        )
        return signed.headers["authorization"].rsplit("Signature=", 1)[1]

    assert signature_of(body) == signature_of(body)
    assert (signature_of(body) == signature_of(other)) == (body == other)


@given(query=st.lists(st.tuples(_text, _text), max_size=5))
def test_the_order_of_query_parameters_does_not_change_the_signature(query: list[tuple[str, str]]) -> None:
    def signature_of(pairs: list[tuple[str, str]]) -> str:
        return sign(
            method="GET",
            host=HOST,
            path="/",
            query=pairs,
            credentials=SUITE_KEY,
            region="us-east-1",
            service="service",
            now=SUITE_TIME,
        ).headers["authorization"]

    assert signature_of(query) == signature_of(list(reversed(query)))


_region = st.from_regex(r"[a-z]{2}-[a-z]{4,9}-[1-9]", fullmatch=True)
_host = st.sampled_from(
    ["sqs.eu-west-1.amazonaws.com", "10.213.1.1:9324", "vpce-1.sqs.us-east-1.vpce.amazonaws.com"]
)


@given(
    body=st.binary(max_size=256),
    region=_region,
    host=_host,
    token=st.none() | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
    target=st.sampled_from(["AmazonSQS.GetQueueAttributes", "AmazonSQS.ListQueues"]),
)
def test_the_get_queue_attributes_request_is_signed_as_botocore_signs_it(
    body: bytes, region: str, host: str, token: str | None, target: str
) -> None:
    """The SDK's own signer (botocore, a development dependency) on the exact request the source
    sends: POST / with the JSON protocol's headers, at a fixed time."""
    from unittest import mock

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    headers = {"content-type": "application/x-amz-json-1.0", "x-amz-target": target}
    ours = sign(
        method="POST",
        host=host,
        path="/",
        headers=headers,
        body=body,
        credentials=AwsCredentials(SUITE_KEY.access_key_id, SUITE_KEY.secret_access_key, token),
        region=region,
        service="sqs",
        now=SUITE_TIME,
    )
    request = AWSRequest(method="POST", url=f"https://{host}/", data=body, headers=dict(headers))
    signer = SigV4Auth(
        BotoCredentials(SUITE_KEY.access_key_id, SUITE_KEY.secret_access_key, token), "sqs", region
    )
    with mock.patch("botocore.auth.get_current_datetime", return_value=SUITE_TIME.replace(tzinfo=None)):
        signer.add_auth(request)
    assert ours.headers["authorization"] == request.headers["Authorization"]
