"""Reads an OpenMetrics text page on stdin with the Prometheus project's own
parser and prints its families as JSON:
{"name": {"type": "...", "samples": [[name, {labels}, value], ...]}, ...}.
Exits non-zero, with the parser's error on stderr, if the page does not parse.
"""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main():
    page = sys.stdin.read()
    families = {}
    for family in text_string_to_metric_families(page):
        if family.name in families:
            sys.exit(f"family {family.name} appears twice")
        families[family.name] = {
            "type": family.type,
            "samples": [[s.name, s.labels, s.value] for s in family.samples],
        }
    json.dump(families, sys.stdout)


if __name__ == "__main__":
    main()
