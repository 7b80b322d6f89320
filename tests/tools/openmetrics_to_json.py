#!/usr/bin/env python3
"""Parses an OpenMetrics text exposition (stdin) with the Prometheus project's own
parser, strictly, and prints its families as JSON: {name: {type, samples: [[name,
labels, value], ...]}}. A parse error exits non-zero with the parser's message."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    out[family.name] = {
        "type": family.type,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
json.dump(out, sys.stdout)
