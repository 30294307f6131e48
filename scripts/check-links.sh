#!/usr/bin/env bash
# Checks every relative link in the Markdown docs (README.md, CHANGELOG.md, DEVELOPERS.md,
# docs/**/*.md): `[text](path)`, `[text](path#anchor)`, `[text](#anchor)` and `[label]: path`.
# The path must exist (relative to the file, or to the repository root when it starts with
# `/`), and an `#anchor` into a Markdown file must match one of its headings, slugged as GitHub
# does (lowercase, spaces to `-`, punctuation other than `-` and `_` dropped, `-1`, `-2`, … for
# repeated headings) or an explicit `<a name=…>`/`id=…`. http(s), mailto and other schemes
# are skipped, and so is anything inside code spans and fenced code blocks.
# Lists every broken link and exits 1 when there is one. Needs only bash and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

shopt -s globstar nullglob
files=(README.md CHANGELOG.md DEVELOPERS.md docs/**/*.md)

python3 - "${files[@]}" <<'PY'
import os
import re
import sys
import unicodedata
from urllib.parse import unquote

ROOT = os.getcwd()
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s>]*(?:\([^()\s]*\)[^()\s>]*)*)>?(?:\s+[\"'(][^)]*)?\s*\)")
REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)\s*$")
HTML_ANCHOR = re.compile(r"""<a\s[^>]*?(?:name|id)\s*=\s*["']([^"']+)["']|\sid\s*=\s*["']([^"']+)["']""")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def text_lines(path):
    """(line number, text) of the lines outside fenced code blocks, code spans blanked."""
    out = []
    fence = None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            m = FENCE.match(line)
            if fence is None and m:
                fence = m.group(1)
                continue
            if fence is not None:
                if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) \
                        and not line.strip()[len(m.group(1)):].strip():
                    fence = None
                continue
            out.append((number, blank_code_spans(line)))
    return out


def blank_code_spans(line):
    """Replaces `code` (any number of backticks) by spaces, keeping columns."""
    result = []
    i = 0
    while i < len(line):
        if line[i] == "`":
            j = i
            while j < len(line) and line[j] == "`":
                j += 1
            ticks = line[i:j]
            end = line.find(ticks, j)
            while end != -1 and (end + len(ticks) < len(line) and line[end + len(ticks)] == "`"):
                end = line.find(ticks, end + len(ticks) + 1)
            if end == -1:
                result.append(line[i:j])
                i = j
                continue
            result.append(" " * (end + len(ticks) - i))
            i = end + len(ticks)
        else:
            result.append(line[i])
            i += 1
    return "".join(result)


def slug(text):
    """GitHub's heading anchor: inline markup dropped, lowercase, spaces to '-', and every
    character that is not a letter, mark, number, connector (`_`), space or '-' removed."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.replace("`", "")
    text = re.sub(r"(\*{1,3}|_{1,3})(\S(?:.*?\S)?)\1", r"\2", text)  # emphasis
    text = text.strip().lower()
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in " -" or cat[0] in "LMN" or cat == "Pc":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


anchor_cache = {}


def anchors(path):
    if path in anchor_cache:
        return anchor_cache[path]
    found = set()
    seen = {}
    fence = None
    previous = ""
    with open(path, encoding="utf-8") as f:
        lines = [l.rstrip("\n") for l in f]
    for line in lines:
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            previous = ""
            continue
        if fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            continue
        for a, b in HTML_ANCHOR.findall(line):
            found.add(a or b)
        title = None
        h = HEADING.match(line)
        if h:
            title = h.group(2)
        elif SETEXT.match(line) and previous.strip() and not HEADING.match(previous) \
                and not previous.lstrip().startswith(("-", "*", "|", ">")):
            title = previous.strip()
        if title is not None:
            base = slug(title)
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        previous = line
    anchor_cache[path] = found
    return found


def check(path, number, target, broken):
    target = target.strip()
    if not target or SCHEME.match(target) or target.startswith("//"):
        return  # http(s), mailto and other schemes: not ours to check
    file_part, _, anchor = target.partition("#")
    file_part = unquote(file_part)
    if file_part:
        base = ROOT if file_part.startswith("/") else os.path.dirname(os.path.join(ROOT, path))
        resolved = os.path.normpath(os.path.join(base, file_part.lstrip("/")))
        if not os.path.exists(resolved):
            broken.append(f"{path}:{number}: {target}: no such file {os.path.relpath(resolved, ROOT)}")
            return
    else:
        resolved = os.path.join(ROOT, path)
    if anchor and resolved.endswith(".md") and os.path.isfile(resolved):
        if unquote(anchor) not in anchors(resolved):
            broken.append(f"{path}:{number}: {target}: no heading #{anchor} in "
                          f"{os.path.relpath(resolved, ROOT)}")


broken = []
checked = 0
for path in sys.argv[1:]:
    if not os.path.isfile(path):
        broken.append(f"{path}: file to check is missing")
        continue
    for number, line in text_lines(path):
        targets = [m.group(1) for m in INLINE_LINK.finditer(line)]
        ref = REF_DEF.match(line)
        if ref:
            targets.append(ref.group(1))
        for target in targets:
            checked += 1
            check(path, number, target, broken)

if broken:
    print(f"check-links: {len(broken)} broken link(s):", file=sys.stderr)
    for b in broken:
        print("  " + b, file=sys.stderr)
    sys.exit(1)
print(f"check-links: {checked} links in {len(sys.argv) - 1} files, all resolve")
PY
