"""Schemathesis hooks for order-engine (loaded through SCHEMATHESIS_HOOKS by fuzz.sh).

What JSON Schema cannot say about our API, said here:

* `format: "order-id"`: 28 digits whose last one is a Damm check digit over
  the first 27, with a valid layout version and UTC time (see
  src/domain/order_id.rs and the order id layout in the README). A `pattern` cannot
  express the check digit, so the document pairs `pattern: ^[0-9]{28}$` with
  this format and we teach Schemathesis to generate real ids.
* `format: "order-cursor"`: the `?cursor=` of a user's order list,
  `<created_at ms in hex>.<order id>` (pattern `^[0-9a-f]{1,15}\.[0-9]{28}$`),
  valid when its order id is.
* `POST /admin/units`, `PATCH /admin/units/{id}` and
  `POST /admin/units/{id}/failover` open the database their body names (creating a SQLite file at any path, connecting to any host):
  the fuzzer's URLs are replaced by ones on a closed loopback port (the
  replicas' each its own, and named in one field), so that
  a schema-valid add or repoint is answered `503 unit_not_started` and
  nothing is created or contacted. Malformed URLs (400), units that join
  and units that move are tested in tests/api/routing_table.rs and
  tests/api/repoint.rs.
* A stricter check than the built-in `unsupported_method` (which lets a 404
  pass on paths with generated parameters): an undeclared method is 405 with
  an exact `Allow` header.

The engine reads a request body as JSON whatever its `Content-Type` (a plain
`curl -d` works, and no caller relies on anything else), so there is no
check that other media types are refused.
"""

from __future__ import annotations

import re
from datetime import datetime

import schemathesis
from hypothesis import strategies as st

# ---------------------------------------------------------------------------
# Order ids
# ---------------------------------------------------------------------------

# The standard order-10 Damm quasigroup (src/domain/order_id.rs).
DAMM = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)

ORDER_ID_FORMAT = "order-id"
TWENTY_EIGHT_DIGITS = re.compile(r"[0-9]{28}")


def damm(digits: str) -> int:
    interim = 0
    for d in digits:
        interim = DAMM[interim][ord(d) - 48]
    return interim


def order_id(unit: int, created: datetime, sequence: int) -> str:
    """`V UUUU yyMMddHHmmss SSSSSSSSSS C`, as the engine writes it."""
    body = f"1{unit:04d}{created:%y%m%d%H%M%S}{sequence:010d}"
    return body + str(damm(body))


# Mostly the units the harness engine runs (1-4), so the call reaches a unit
# and its storage (and answers 404); sometimes any unit (404 without a unit).
units = st.one_of(st.integers(1, 4), st.integers(1, 4), st.integers(0, 9999))
# Small sequences are what a fresh unit hands out; any 10-digit one is valid too.
sequences = st.one_of(st.integers(0, 5000), st.integers(0, 9_999_999_999))
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59, 59)
)
order_ids = st.builds(order_id, units, times, sequences)

schemathesis.openapi.format(ORDER_ID_FORMAT, order_ids)

ORDER_CURSOR_FORMAT = "order-cursor"
CURSOR = re.compile(r"([0-9a-f]{1,15})\.([0-9]{28})")
cursors = st.builds(
    "{:x}.{}".format, st.integers(946_684_800_000, 4_102_444_799_999), order_ids
)
schemathesis.openapi.format(ORDER_CURSOR_FORMAT, cursors)


def _valid_time(field: str) -> str:
    try:
        datetime.strptime("20" + field, "%Y%m%d%H%M%S")
        return field
    except ValueError:
        # A fixed time, not the current one: a seed must replay the same requests.
        return "000101000000"


def repair_order_id(value: object) -> object:
    """Turns a 28-digit string into a valid order id; leaves anything else alone.

    The coverage phase may build a value from `pattern` alone, bypassing the
    format generator (it sent the cursor `0.0000000000000000000000000000`),
    which the document calls valid but whose check digit is wrong. Fixing
    version, time and check digit just before the call makes every
    schema-valid id a valid one; values outside the pattern (the negative
    cases) are sent as they are.
    """
    if not isinstance(value, str) or not TWENTY_EIGHT_DIGITS.fullmatch(value):
        return value
    body = "1" + value[1:5] + _valid_time(value[5:17]) + value[17:27]
    return body + str(damm(body))


def repair_cursor(value: object) -> object:
    """The same for a cursor: its order id part is made valid."""
    match = CURSOR.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return value
    return f"{match[1]}.{repair_order_id(match[2])}"


REPAIRS = {ORDER_ID_FORMAT: repair_order_id, ORDER_CURSOR_FORMAT: repair_cursor}


def _resolve(schema: object, raw: dict) -> dict:
    """Follows one local `$ref` (`#/components/schemas/OrderId`)."""
    if isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        node: object = raw
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node if isinstance(node, dict) else {}
    return schema if isinstance(schema, dict) else {}


def _repaired_parameters(case):
    """(location, name, repair) of every parameter in one of our formats."""
    raw = case.operation.schema.raw_schema
    for parameter in case.operation.iter_parameters():
        definition = parameter.definition
        repair = REPAIRS.get(_resolve(definition.get("schema"), raw).get("format"))
        if repair is not None:
            yield definition.get("in"), definition.get("name"), repair


_CONTAINERS = {"path": "path_parameters", "query": "query", "header": "headers"}


# Nothing listens on port 1: connecting is refused at once.
CLOSED_DATABASE = "mysql://fuzz@127.0.0.1:1/fuzz"
# Replicas are other servers: nothing listens on ports 2-5 either.
CLOSED_REPLICA = "mysql://fuzz@127.0.0.1:{}/fuzz"


@schemathesis.hook
def before_call(context, case, kwargs):
    for location, name, repair in _repaired_parameters(case):
        container = getattr(case, _CONTAINERS.get(location, ""), None)
        if isinstance(container, dict) and name in container:
            container[name] = repair(container[name])
    moves_database = (case.operation.path, case.method.upper()) in {
        ("/admin/units", "POST"),
        ("/admin/units/{id}", "PATCH"),
        ("/admin/units/{id}/failover", "POST"),
    }
    if moves_database and isinstance(case.body, dict):
        for field in ("primary_url", "to"):
            if isinstance(case.body.get(field), str):
                case.body[field] = CLOSED_DATABASE
        # Replicas are other servers than the primary, each named once, in
        # `replica_url` or `replica_urls` but not both (rules the document
        # cannot state).
        if isinstance(case.body.get("replica_url"), str):
            case.body["replica_url"] = CLOSED_REPLICA.format(2)
        urls = case.body.get("replica_urls")
        if isinstance(urls, list):
            case.body.pop("replica_url", None)
            case.body["replica_urls"] = [
                CLOSED_REPLICA.format(2 + i) if isinstance(u, str) else u for i, u in enumerate(urls)
            ]


# ---------------------------------------------------------------------------
# Stricter checks
# ---------------------------------------------------------------------------

from schemathesis.generation.meta import CoveragePhaseData, CoverageScenario  # noqa: E402

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace", "query"}


def _scenario(case):
    meta = case.meta
    if meta is None or not isinstance(meta.phase.data, CoveragePhaseData):
        return None
    return meta.phase.data.scenario


@schemathesis.check
def method_not_allowed_with_allow(ctx, response, case):
    """An undeclared method on a declared path is `405` with `Allow` naming exactly
    the declared methods, whether or not the resource exists (a router answers by
    path template, before any handler looks the id up). OPTIONS may also be 2xx,
    with the same `Allow`."""
    if _scenario(case) != CoverageScenario.UNSPECIFIED_HTTP_METHOD:
        return None
    method = response.request.method
    status = response.status_code
    if status != 405 and not (method == "OPTIONS" and 200 <= status < 300):
        raise AssertionError(
            f"{method} {case.formatted_path} is not declared for this path: "
            f"expected 405 Method Not Allowed, got {status}"
        )
    allow = ", ".join(response.headers.get("allow") or [])
    if not allow:
        raise AssertionError(f"{method} {case.formatted_path} answered {status} without an `Allow` header")
    advertised = {m.strip().lower() for m in allow.split(",") if m.strip()}
    declared = {m.lower() for m in case.operation.schema[case.operation.path]} & HTTP_METHODS
    implicit = {"head", "options"}
    if (advertised - implicit) != (declared - implicit):
        raise AssertionError(
            f"`Allow: {allow}` on {case.operation.path} does not list exactly the "
            f"declared methods ({', '.join(sorted(m.upper() for m in declared))})"
        )
    return None
