"""Write a benchmark's results: a JSON file under bench/results/ and its section of docs/benchmarks.md."""

from __future__ import annotations

import json
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\nEach section is rewritten by the command shown in it (`make bench` runs them all).\n"
)


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_result(name: str, results: dict, markdown: str) -> None:
    """Save ``results`` as bench/results/<name>.json and put ``markdown`` in the doc between markers."""
    command = "python " + " ".join(sys.argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": name,
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
    }
    payload["results"] = results
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")

    section = (
        f"<!-- bench:{name} -->\n## {name}\n\n"
        f"Command: `{command}` — {payload['date']}, {payload['machine']}\n\n"
        f"{markdown.strip()}\n<!-- /bench:{name} -->"
    )
    text = DOC.read_text() if DOC.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + section + "\n"
    )
    DOC.write_text(text)
    print(section)
