"""The API driven from its own OpenAPI schema by a property-based fuzzer (schemathesis) against a real server
process: requests valid and invalid by the schema, with and without a key; no 5xx, answers as documented
(status codes, content types, bodies), a key always required, and not a query billed for a refused
request (every answered one billed exactly). The compatible shapes are fuzzed too: POST /v1/embeddings's
schema holds this API's, OpenAI's and the chat-style bodies, and POST /v2/embed is Cohere's. Hypothesis runs
derandomized: the same examples every run."""

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from conftest import DATABASES, new_database
from encsteal.service.ledger import Ledger
from encsteal.service.server import ServerProcess, ServeSettings

EXAMPLES = 60
"""Per operation: enough to reach every refusal, few enough to keep the test under a minute."""
CHECKS = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
          schemathesis.checks.content_type_conformance, schemathesis.checks.response_schema_conformance,
          schemathesis.checks.negative_data_rejection, schemathesis.checks.ignored_auth]


@pytest.fixture(scope="module", params=DATABASES)
def fuzzed(request, checkpoint):
    """(server, ledger, key) of the account the fuzzer uses (a quota, a price, no rate limit), on each kind of
    database (PostgreSQL enforces column types and lengths that SQLite lets pass)."""
    db = new_database(request.param, request)
    ledger = Ledger(db)
    key = ledger.create_account("fuzzer", quota=40, price="0.001")
    settings_ = ServeSettings(checkpoint=checkpoint, db=db, threads=1, max_batch=16, max_bytes=1 << 20,
                              max_image_pixels=512 * 512, max_request_pixels=1 << 20)
    with ServerProcess(settings_) as server:
        yield server, ledger, key


CONFIG = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {
    "expected-statuses": [400, 401, 403, 404, 409, 413, 415, 422, 429]}}})
"""A request the schema calls invalid must be refused with one of these (413: over a size limit; 404: a model
that is not the served one)."""
OPERATIONS = {("POST", "/v1/embeddings", GenerationMode.POSITIVE): EXAMPLES,
              ("POST", "/v1/embeddings", GenerationMode.NEGATIVE): EXAMPLES,
              ("POST", "/v2/embed", GenerationMode.POSITIVE): EXAMPLES,
              ("POST", "/v2/embed", GenerationMode.NEGATIVE): EXAMPLES,
              ("GET", "/v1/models", GenerationMode.POSITIVE): 5,
              ("GET", "/v1/usage", GenerationMode.POSITIVE): 10, ("GET", "/v1/usage", GenerationMode.NEGATIVE): 10,
              ("GET", "/v1/model", GenerationMode.POSITIVE): 5, ("GET", "/healthz", GenerationMode.POSITIVE): 5}
"""Examples per operation and kind of data (operations without inputs have no invalid requests)."""


@pytest.mark.parametrize("method,path,mode", list(OPERATIONS),
                         ids=[f"{m} {p} {'valid' if g == GenerationMode.POSITIVE else 'invalid'}" for m, p, g in OPERATIONS])
def test_the_api_holds_up_to_its_own_schema(fuzzed, method, path, mode):
    server, ledger, key = fuzzed
    operation = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=CONFIG)[path][method]
    auth = {"Authorization": f"Bearer {key}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=OPERATIONS[method, path, mode], derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def holds_up(case) -> None:
        before = ledger.usage("fuzzer")[0]
        response = case.call(headers=auth, timeout=60)
        case.validate_response(response, checks=CHECKS, headers=auth)
        after = ledger.usage("fuzzer")[0]
        billed = 0
        if response.status_code == 200 and path in ("/v1/embeddings", "/v2/embed"):
            billed = int(response.headers["x-queries-billed"]) if "x-queries-billed" in response.headers \
                else response.json()["queries_billed"]
        assert after.used - before.used == billed, f"{method} {path} answered {response.status_code}"
        assert after.spent_micros - before.spent_micros == billed * 1000

    holds_up()


def test_the_fuzzer_reached_the_endpoints(fuzzed):
    """The schema names every endpoint the fuzzer must drive (a schema that lost one would fuzz nothing)."""
    server, _, _ = fuzzed
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert {"/v1/embeddings", "/v1/model", "/v1/usage", "/healthz", "/v1/models", "/v2/embed"} <= set(paths)
    assert "security" in paths["/v1/embeddings"]["post"] and "security" in paths["/v2/embed"]["post"]
    shapes = paths["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert [shape["title"] for shape in shapes] == ["this API's own", "OpenAI embeddings", "chat-style (vLLM)"]
