"""node/mgmt/views.jsonable: AMQP field values as strict JSON (an AMQP double may be NaN
or Infinity, which JSON has no words for: a listing with one was invalid JSON for every
user who could see it)."""

from __future__ import annotations

import decimal
import json

from node.mgmt.views import jsonable


def test_non_finite_numbers_become_null_and_the_rest_stays() -> None:
    value = {"nan": float("nan"), "inf": float("-inf"), "dec": decimal.Decimal("NaN"),
             "ok": 1.5, "nested": [float("inf"), {"b": b"x"}], "n": 3}
    out = jsonable(value)
    assert out == {"nan": None, "inf": None, "dec": None, "ok": 1.5,
                   "nested": [None, {"b": "x"}], "n": 3}
    json.dumps(out, allow_nan=False)  # strict JSON
