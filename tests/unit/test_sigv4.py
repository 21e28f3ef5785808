"""SigV4 against AWS's published vectors: the Signature Version 4 test suite (service `service`) and the
worked examples of the S3 API reference (header-based auth and a presigned URL)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from ffrtmp.storage import sigv4

pytestmark = pytest.mark.unit

SUITE_CREDENTIALS = sigv4.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SUITE_TIME = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)
SUITE_HOST = {"host": "example.amazonaws.com", "x-amz-date": "20150830T123600Z"}
S3_CREDENTIALS = sigv4.Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
S3_TIME = datetime(2013, 5, 24, tzinfo=UTC)
S3_HOST = "examplebucket.s3.amazonaws.com"
FORM = "Param1=value1"
UNRESERVED = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# (name, method, path, query, extra headers, body, signature) from the Signature Version 4 test suite.
SUITE = [
    ("get-vanilla", "GET", "/", [], {}, "", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("get-vanilla-empty-query-key", "GET", "/", [("Param1", "value1")], {}, "",
     "a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb"),
    ("get-vanilla-query-order-key-case", "GET", "/", [("Param2", "value2"), ("Param1", "value1")], {}, "",
     "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
    ("get-vanilla-query-unreserved", "GET", "/", [(UNRESERVED, UNRESERVED)], {}, "",
     "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"),
    ("get-vanilla-utf8-query", "GET", "/", [("\u1234", "bar")], {}, "",
     "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"),
    ("get-unreserved", "GET", "/" + UNRESERVED, [], {}, "",
     "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"),
    ("get-utf8", "GET", "/\u1234", [], {}, "", "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
    ("get-header-key-duplicate", "GET", "/", [], {"My-Header1": "value2,value2,value1"}, "",
     "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"),
    ("get-header-value-order", "GET", "/", [], {"My-Header1": "value4,value1,value3,value2"}, "",
     "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01"),
    ("get-header-value-trim", "GET", "/", [], {"My-Header1": " value1", "My-Header2": ' "a   b   c"'}, "",
     "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"),
    ("post-vanilla", "POST", "/", [], {}, "", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    ("post-header-key-sort", "POST", "/", [], {"My-Header1": "value1"}, "",
     "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"),
    ("post-header-value-case", "POST", "/", [], {"My-Header1": "VALUE1"}, "",
     "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d"),
    ("post-vanilla-query", "POST", "/", [("Param1", "value1")], {}, "",
     "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"),
    ("post-x-www-form-urlencoded", "POST", "/", [], {"Content-Type": "application/x-www-form-urlencoded"}, FORM,
     "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
    ("post-x-www-form-urlencoded-parameters", "POST", "/", [],
     {"Content-Type": "application/x-www-form-urlencoded; charset=utf8"}, FORM,
     "1a72ec8f64bd914b0e42e42607c7fbce7fb2c7465f63e3092b3b0d39fa77a6fe"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "method", "path", "query", "headers", "body", "expected"), SUITE)
def test_signature_v4_test_suite(
    name: str, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str], body: str, expected: str
) -> None:
    all_headers = {**SUITE_HOST, **headers}
    payload = hashlib.sha256(body.encode()).hexdigest()
    header = sigv4.authorization(
        SUITE_CREDENTIALS, SUITE_TIME, "us-east-1", "service", method, path, query, all_headers, payload
    )
    signed = ";".join(sorted(h.lower() for h in all_headers))
    assert header == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        f"SignedHeaders={signed}, Signature={expected}"
    ), name


def s3_headers(**extra: str) -> dict[str, str]:
    return {"Host": S3_HOST, "x-amz-date": "20130524T000000Z", **extra}


# (name, method, path, query, headers, signature) from the S3 API reference's SigV4 header examples.
S3_EXAMPLES = [
    ("get-object", "GET", "/test.txt", [],
     s3_headers(Range="bytes=0-9", **{"x-amz-content-sha256": sigv4.EMPTY_SHA256}),
     "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
    ("put-object", "PUT", "/test$file.text", [],
     s3_headers(Date="Fri, 24 May 2013 00:00:00 GMT", **{
         "x-amz-storage-class": "REDUCED_REDUNDANCY",
         "x-amz-content-sha256": hashlib.sha256(b"Welcome to Amazon S3.").hexdigest()}),
     "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"),
    ("get-bucket-lifecycle", "GET", "/", [("lifecycle", "")],
     s3_headers(**{"x-amz-content-sha256": sigv4.EMPTY_SHA256}),
     "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
    ("list-objects", "GET", "/", [("max-keys", "2"), ("prefix", "J")],
     s3_headers(**{"x-amz-content-sha256": sigv4.EMPTY_SHA256}),
     "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "method", "path", "query", "headers", "expected"), S3_EXAMPLES)
def test_s3_header_examples(
    name: str, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str], expected: str
) -> None:
    header = sigv4.authorization(
        S3_CREDENTIALS, S3_TIME, "us-east-1", "s3", method, path, query, headers, headers["x-amz-content-sha256"]
    )
    assert header.endswith(f", Signature={expected}"), name
    assert header.startswith("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, ")


def test_s3_presigned_url_example() -> None:
    query = sigv4.presigned_query(S3_CREDENTIALS, S3_TIME, "us-east-1", "s3", "GET", S3_HOST, "/test.txt", 86400)
    assert query == [
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Credential", "AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"),
        ("X-Amz-Date", "20130524T000000Z"),
        ("X-Amz-Expires", "86400"),
        ("X-Amz-SignedHeaders", "host"),
        ("X-Amz-Signature", "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"),
    ]


def test_presigned_urls_live_at_most_a_week_and_carry_a_session_token() -> None:
    with pytest.raises(ValueError, match="7 days"):
        sigv4.presigned_query(S3_CREDENTIALS, S3_TIME, "us-east-1", "s3", "GET", S3_HOST, "/a", 7 * 86400 + 1)
    temporary = sigv4.Credentials("ASIAEXAMPLE", "secret", "token/with+chars")
    query = dict(sigv4.presigned_query(temporary, S3_TIME, "us-east-1", "s3", "GET", S3_HOST, "/a", 60))
    assert query["X-Amz-Security-Token"] == "token/with+chars"


def test_keys_are_encoded_once_and_never_normalised() -> None:
    request, _ = sigv4.canonical_request(
        "GET", "/bucket/a b/../c+d/\u00e9.mp4", [], {"host": "h"}, sigv4.UNSIGNED_PAYLOAD
    )
    assert request.splitlines()[1] == "/bucket/a%20b/../c%2Bd/%C3%A9.mp4"


def test_secrets_stay_out_of_repr() -> None:
    text = repr(sigv4.Credentials("AKID", "very-secret", "session-secret"))
    assert "AKID" in text and "very-secret" not in text and "session-secret" not in text
