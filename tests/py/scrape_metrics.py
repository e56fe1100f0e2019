#!/usr/bin/env python3
"""Scrapes a metrics endpoint and parses it with the Prometheus client
library's own parser (OpenMetrics text, which the agent serves).

    scrape_metrics.py URL

Prints one JSON object: {"sample_name": {"label=value,...": value}}, where
the label key is "" for unlabelled samples. Exits non-zero when the text
does not parse.
"""
import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    ctype = r.headers.get("Content-Type", "")
    text = r.read().decode()
if not ctype.startswith("application/openmetrics-text"):
    sys.exit("unexpected content type %r" % ctype)
out = {}
for family in text_string_to_metric_families(text):
    for s in family.samples:
        key = ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
        out.setdefault(s.name, {})[key] = s.value
print(json.dumps(out))
