"""Puts the answers that ``scripts/api_examples.sh`` printed into the examples of docs/api.md.

    scripts/api_examples.sh | python scripts/readme_examples.py [README.md]

Each ```console block of the README that starts with a ``$ curl`` line takes the answer printed
after the same command, in order (a command asked twice, such as a GET before and after a
DELETE, takes its answers in turn). The embedding is cut to its first four numbers, as the
file shows it. A command of the file that the output lacks stops the script with an error,
before anything is written.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def parse_output(text: str) -> list[tuple[str, list[str]]]:
    """(command line, answer lines up to and with the ``(HTTP nnn)`` line) for each example."""
    examples: list[tuple[str, list[str]]] = []
    open_ = False  # an answer is being read: after its command, before its status line
    for line in text.splitlines():
        if line.startswith("$ curl"):
            examples.append((line, []))
            open_ = True
        elif open_ and line.strip():
            examples[-1][1].append(line)
            open_ = not line.startswith("(HTTP")
    return examples


def shorten(line: str) -> str:
    """An embedding cut to its first four numbers."""
    return re.sub(r'("embeddings?":\[\[?)((?:[^,\]]+,){4})[^\]]*\]', r"\1\2...]", line)


def update(readme: str, examples: list[tuple[str, list[str]]]) -> str:
    lines = readme.splitlines()
    out: list[str] = []
    i = 0
    remaining = list(examples)
    while i < len(lines):
        out.append(lines[i])
        if lines[i] == "```console" and i + 1 < len(lines) and lines[i + 1].startswith("$ curl"):
            command = lines[i + 1]
            found = next((k for k, (cmd, _) in enumerate(remaining) if cmd == command), None)
            if found is None:
                raise SystemExit(f"no answer printed for: {command}")
            _, answer = remaining.pop(found)
            out.append(command)
            out.extend(shorten(a) for a in answer)
            i += 2
            while lines[i] != "```":
                i += 1
            continue
        i += 1
    return "\n".join(out) + "\n"


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/api.md")
    path.write_text(update(path.read_text(), parse_output(sys.stdin.read())))


if __name__ == "__main__":
    main()
