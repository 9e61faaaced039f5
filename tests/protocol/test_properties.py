"""Raw property accessors agree with pamqp's full decode."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protocol import properties as P

short = st.text(max_size=20).filter(lambda s: len(s.encode()) <= 255)


@given(
    content_type=st.none() | short,
    content_encoding=st.none() | short,
    headers=st.none() | st.dictionaries(st.text(max_size=5), st.integers(0, 1000), max_size=3),
    delivery_mode=st.none() | st.sampled_from([1, 2]),
    priority=st.none() | st.integers(0, 255),
    correlation_id=st.none() | short,
    expiration=st.none() | st.integers(0, 10**9).map(str),
    message_id=st.none() | short,
)
def test_accessors(**kw: object) -> None:
    given_kw = {k: v for k, v in kw.items() if v not in (None, "", {})}
    raw = P.encode_properties(**given_kw)
    assert P.decode_properties(raw) == given_kw
    assert P.delivery_mode(raw) == (kw["delivery_mode"] or 0)
    assert P.priority(raw) == kw["priority"]
    assert P.expiration(raw) == (kw["expiration"] or None)
    assert P.content_type(raw) == (kw["content_type"] or None)


def test_constants() -> None:
    assert P.delivery_mode(P.EMPTY) == 0
    assert P.delivery_mode(P.PERSISTENT) == 2
    assert P.decode_properties(P.EMPTY) == {}
