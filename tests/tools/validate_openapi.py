#!/usr/bin/env python3
"""Validates an OpenAPI document (JSON on stdin) with openapi-spec-validator, against
the schema of the version it declares; exits non-zero with the first errors."""
import json
import sys

from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

doc = json.load(sys.stdin)
try:
    validate(doc)
except OpenAPIValidationError as e:
    print(f"invalid OpenAPI: {e}", file=sys.stderr)
    sys.exit(1)
print(f"valid OpenAPI {doc.get('openapi')}: {len(doc.get('paths', {}))} paths")
