"""The client's models and request options against the server's OpenAPI document: every field
a model declares exists on the schema it mirrors with a type that accepts the server's values,
every field the server always sends is declared, and every option the client sends is one the
server reads. A server change that breaks the client fails here, not in a user's code."""

import inspect

import pytest
from vecnest import Client
from vecnest.client import SEARCH_OPTIONS
from vecnest.models import MIRRORS

from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return create_app(Settings(data_dir=tmp_path_factory.mktemp("drift") / "data")).openapi()


def json_types(schema: dict, components: dict) -> set[str]:
    """The JSON types a schema admits: {"string", "integer", "number", "boolean", "array",
    "object", "null"} ({"any"}: no constraint)."""
    if "$ref" in schema:
        target = components[schema["$ref"].split("/")[-1]]
        return json_types(target, components) if "properties" not in target else {"object"}
    if "anyOf" in schema or "oneOf" in schema:
        return set().union(*(json_types(s, components) for s in schema.get("anyOf", schema.get("oneOf"))))
    if "type" in schema:
        return {schema["type"]} if isinstance(schema["type"], str) else set(schema["type"])
    if "enum" in schema or "const" in schema:
        return {"string"}
    return {"any"}


def accepts(client: set[str], server: set[str]) -> bool:
    if "any" in client:
        return True
    widened = client | ({"integer"} if "number" in client else set())
    return server <= widened


@pytest.mark.parametrize("model", list(MIRRORS), ids=lambda m: m.__name__)
def test_models_mirror_the_server_schemas(spec, model):
    components = spec["components"]["schemas"]
    server = components[MIRRORS[model]]
    client = model.model_json_schema(ref_template="#/$defs/{model}")
    for name, prop in client["properties"].items():
        assert name in server["properties"], f"{model.__name__}.{name} is not in {MIRRORS[model]}"
        if name not in server.get("required", []):  # the server may leave it out
            assert name not in client.get("required", []), f"{model.__name__}.{name} needs a default"
        theirs = json_types(server["properties"][name], components)
        ours = json_types(prop, client.get("$defs", {}))
        assert accepts(ours, theirs), f"{model.__name__}.{name}: client {sorted(ours)} vs server {sorted(theirs)}"
    for name in server.get("required", []):
        assert name in client["properties"], f"{MIRRORS[model]}.{name} is sent always: {model.__name__} lacks it"


def test_search_options_are_what_the_server_reads(spec):
    properties = spec["components"]["schemas"]["SearchRequest"]["properties"]
    assert set(SEARCH_OPTIONS) <= set(properties)
    named = set(inspect.signature(Client.search).parameters) - {"self", "collection", "options"}
    assert named <= set(properties), named - set(properties)


def test_the_client_is_released_with_the_servers_version():
    import tomllib
    from pathlib import Path

    import vecnest

    root = Path(__file__).resolve().parents[2]
    server = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    client = tomllib.loads((root / "clients" / "python" / "pyproject.toml").read_text())["project"]["version"]
    assert server == client == vecnest.__version__
