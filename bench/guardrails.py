"""Micro-benchmark: the per-call cost of guardrails and argument validation, in process.

Usage: python bench/guardrails.py [--repeat N] [--out FILE]

Measures `Guard.apply` (spec "pii:redact,secrets:block", all built-in detectors) on ordinary text
of 10 KiB and 1 MiB, clean and with a few findings sprinkled in, plus `strip_ansi` and
`ArgumentValidator.validate` on a small call. Prints JSON: the best-of-N time per call (µs) and
the throughput (MB/s). Tests never assert timings.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from tollhouse.policies.guardrails import GuardSpec, default_registry, strip_ansi
from tollhouse.policies.validation import ArgumentValidator

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "order",
    "12345",
    "shipped",
    "on",
    "2024-03-15",
    "version",
    "1.2.3",
    "at",
    "$19.99",
    "see",
    "https://example.com/docs/page?id=42",
    "user:",
    "admin,",
    "status",
    "=",
    "ok;",
    "total:",
    "1,234.56",
    "EUR",
    "token",
    "key",
    "commit",
    "9fceb02d",
    "id",
    "3f2504e0-4f89-11d3",
    "price",
    "+20%",
    "call",
    "ext",
    "4512",
]
FINDINGS = [
    "alice@example.org",
    "+44 20 7946 0958",
    "4111 1111 1111 1111",
    "AKIAIOSFODNN7EXAMPLE",
    'api_key="Zx8Qp2Lm9Rt4Vw7Yb3Nc"',
]


def text_of(size: int, with_findings: bool) -> str:
    rng = random.Random(size)
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        if with_findings and rng.random() < 0.002:
            word = rng.choice(FINDINGS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def best_us(call: Callable[[], Any], repeat: int) -> float:
    call()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    guard = GuardSpec.parse("pii:redact,secrets:block").bind(default_registry())
    runs: list[dict[str, Any]] = []
    for size in (10 * 1024, 1024 * 1024):
        repeat = args.repeat if size < 100_000 else max(3, args.repeat // 4)
        for with_findings in (False, True):
            result = {"content": [{"type": "text", "text": text_of(size, with_findings)}]}
            found = guard.apply_result(result)
            us = best_us(lambda r=result: guard.apply_result(r), repeat)  # type: ignore[misc]
            runs.append(
                {
                    "what": "guard.apply_result",
                    "bytes": size,
                    "findings": len(found.findings),
                    "us_per_call": round(us, 1),
                    "mb_per_s": round(size / us, 1),
                }
            )
        dirty = {
            "content": [{"type": "text", "text": text_of(size, False).replace(" ok;", " \x1b[1mok\x1b[0m;")}]
        }
        us = best_us(lambda d=dirty: strip_ansi(d), repeat)  # type: ignore[misc]
        runs.append(
            {
                "what": "strip_ansi",
                "bytes": size,
                "us_per_call": round(us, 1),
                "mb_per_s": round(size / us, 1),
            }
        )
        clean = {"content": [{"type": "text", "text": text_of(size, False)}]}
        us = best_us(lambda c=clean: strip_ansi(c), repeat)  # type: ignore[misc]
        runs.append(
            {
                "what": "strip_ansi (clean)",
                "bytes": size,
                "us_per_call": round(us, 1),
                "mb_per_s": round(size / us, 1),
            }
        )
    small = {"content": [{"type": "text", "text": "Order 100234 shipped to the warehouse on 2024-03-15."}]}
    runs.append(
        {
            "what": "guard.apply_result (60 B)",
            "us_per_call": round(best_us(lambda: guard.apply_result(small), 200), 2),
        }
    )
    schema = {
        "type": "object",
        "properties": {"path": {"type": "string"}, "mode": {"enum": ["r", "w"]}, "n": {"type": "integer"}},
        "required": ["path"],
    }
    validator = ArgumentValidator(schema)
    arguments = {"path": "docs/x.md", "mode": "r", "n": 3}
    runs.append(
        {
            "what": "ArgumentValidator.validate",
            "us_per_call": round(best_us(lambda: validator.validate(arguments), 200), 2),
        }
    )
    runs.append(
        {
            "what": "ArgumentValidator() compile",
            "us_per_call": round(best_us(lambda: ArgumentValidator(schema), 50), 1),
        }
    )
    report = {"python": sys.version.split()[0], "runs": runs}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
