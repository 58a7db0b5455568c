"""Validate the emulator's responses against the OpenAPI 3.0 description of the real API.

OpenAPI 3.0 schemas are almost JSON Schema draft 4; the one difference that
matters here is ``nullable: true``, which this module rewrites into an explicit
``anyOf`` with the null type. References stay ``$ref``s into the converted
document, so shared components are converted once.
"""

import json
import re

import jsonschema
from referencing import Registry
from referencing.jsonschema import DRAFT4

BASE_URI = "urn:fakecloud:openapi"
METHODS = ("get", "put", "post", "delete", "patch")


def convert(node):
    """Turn an OpenAPI 3.0 document (or part) into JSON Schema draft 4."""
    if isinstance(node, list):
        return [convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: convert(value) for key, value in node.items()}
    if converted.pop("nullable", False) is True:
        return {"anyOf": [{"type": "null"}, converted]}
    return converted


def _pointer(*parts):
    return "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


class Operation:
    def __init__(self, method, template, responses):
        self.method = method.upper()
        self.template = template
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        self.regex = re.compile(f"^{pattern}$")
        self.responses = responses

    def response_key(self, status):
        """The spec's entry for this status: exact code, then 4XX-style range, then default."""
        for key in (str(status), f"{str(status)[0]}xx", f"{str(status)[0]}XX", "default"):
            if key in self.responses:
                return key
        return None


class Validator:
    def __init__(self, path):
        with open(path, encoding="utf-8") as handle:
            spec = json.load(handle)
        self.document = convert(spec)
        resource = DRAFT4.create_resource(self.document)
        self.registry = Registry().with_resource(BASE_URI, resource)
        self.operations = [
            Operation(method, template, entry.get("responses", {}))
            for template, item in spec["paths"].items()
            for method, entry in item.items()
            if method in METHODS
        ]
        # Literal segments beat {id}: /servers/actions is not /servers/{id}.
        self.operations.sort(key=lambda op: op.template.count("{"))
        self._validators = {}

    def find(self, method, path):
        for operation in self.operations:
            if operation.method == method and operation.regex.match(path):
                return operation
        return None

    def check(self, method, path, status, body):
        """Problems with one response (an empty list when it matches the spec).

        ``path`` is the API path without the /v1 prefix; ``body`` the decoded
        JSON or None for an empty body.
        """
        operation = self.find(method, path)
        if operation is None:
            return [f"{method} {path} is not an operation of the spec"]
        key = operation.response_key(status)
        if key is None:
            return [f"status {status} is not documented for {method} {operation.template}"]
        content = operation.responses[key].get("content", {}).get("application/json")
        if content is None or "schema" not in content:
            return [] if body is None else [f"status {status} must have an empty body"]
        if body is None:
            return [f"status {status} must have a JSON body"]
        validator = self._validator(operation, key)
        return [
            f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in validator.iter_errors(body)
        ]

    def _validator(self, operation, key):
        cache_key = (operation.method, operation.template, key)
        if cache_key not in self._validators:
            pointer = _pointer(
                "paths",
                operation.template,
                operation.method.lower(),
                "responses",
                key,
                "content",
                "application/json",
                "schema",
            )
            schema = {"$ref": f"{BASE_URI}#/{pointer}"}
            self._validators[cache_key] = jsonschema.Draft4Validator(schema, registry=self.registry)
        return self._validators[cache_key]
