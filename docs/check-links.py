#!/usr/bin/env python3
"""Checks the internal links of the built user guide and of README.md.

    check-links.py BOOK_DIR README.md   every page built from docs/src/*.md:
                                        each relative href or src names a file
                                        that exists, and each #fragment an id
                                        on that page; README's links into the
                                        guide and its own #anchors likewise
    check-links.py --self-test          shows that a broken link and a broken
                                        fragment are both reported

Exit status 1, with one line per broken link, when any is broken.
"""

import html.parser
import os
import re
import sys
import tempfile
import urllib.parse


class Page(html.parser.HTMLParser):
    """The ids a page defines and the relative links it makes."""

    def __init__(self):
        super().__init__()
        self.ids = set()
        self.links = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        for key in ("href", "src"):
            target = attrs.get(key)
            if target and is_internal(target):
                self.links.append(target)


def is_internal(target):
    parsed = urllib.parse.urlparse(target)
    return not parsed.scheme and not target.startswith("//")


def parse(path, cache):
    if path not in cache:
        page = Page()
        with open(path, encoding="utf-8") as f:
            page.feed(f.read())
        cache[path] = page
    return cache[path]


def check_book(book, sources):
    """Broken links of the pages built from `sources` (paths under src/)."""
    broken = []
    cache = {}
    for source in sources:
        page_path = os.path.join(book, re.sub(r"\.md$", ".html", source))
        if not os.path.exists(page_path):
            broken.append(f"{source}: not built ({page_path} missing)")
            continue
        page = parse(page_path, cache)
        for link in page.links:
            url = urllib.parse.urlparse(link)
            path = urllib.parse.unquote(url.path)
            target = (
                os.path.normpath(os.path.join(os.path.dirname(page_path), path))
                if path
                else page_path
            )
            if not os.path.exists(target):
                broken.append(f"{source}: link {link!r}: no such page")
                continue
            if url.fragment and target.endswith(".html"):
                if url.fragment not in parse(target, cache).ids:
                    broken.append(f"{source}: link {link!r}: no #{url.fragment} there")
    return broken


def github_slug(heading):
    text = re.sub(r"[`*_]", lambda m: "_" if m.group(0) == "_" else "", heading)
    text = text.strip().lower()
    return "".join(c if c.isalnum() or c in "-_" else "-" if c == " " else "" for c in text)


def markdown_links(text):
    """(line number, target) of each inline link outside code."""
    fence = False
    for number, line in enumerate(text.split("\n"), 1):
        if line.startswith("```"):
            fence = not fence
            continue
        if fence:
            continue
        line = re.sub(r"`[^`]*`", "", line)
        for match in re.finditer(r"\]\(([^)\s]+)\)", line):
            yield number, match.group(1)


def check_readme(readme, book):
    broken = []
    root = os.path.dirname(os.path.abspath(readme))
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    fence = False
    anchors = set()
    for line in text.split("\n"):
        if line.startswith("```"):
            fence = not fence
        elif not fence and re.match(r"^#+ ", line):
            anchors.add(github_slug(line.lstrip("#")))
    cache = {}
    for number, link in markdown_links(text):
        if not is_internal(link):
            continue
        url = urllib.parse.urlparse(link)
        where = f"{readme}:{number}: link {link!r}"
        if not url.path:
            if url.fragment not in anchors:
                broken.append(f"{where}: no such heading")
            continue
        target = os.path.normpath(os.path.join(root, url.path))
        if not os.path.exists(target):
            broken.append(f"{where}: no such file")
            continue
        src = os.path.join(root, "docs", "src")
        if url.fragment and target.startswith(src + os.sep) and target.endswith(".md"):
            built = os.path.join(book, re.sub(r"\.md$", ".html", os.path.relpath(target, src)))
            if url.fragment not in parse(built, cache).ids:
                broken.append(f"{where}: no #{url.fragment} in the built page")
    return broken


def sources_of(src):
    for dirpath, _, files in os.walk(src):
        for name in files:
            if name.endswith(".md") and name != "SUMMARY.md":
                yield os.path.relpath(os.path.join(dirpath, name), src)


def self_test():
    with tempfile.TemporaryDirectory() as book:
        pages = {
            "a.html": '<h1 id="top">A</h1><a href="b.html#there">ok</a>'
            '<a href="b.html#gone">bad fragment</a><a href="c.html">bad page</a>'
            '<a href="https://example.com/x">external</a><img src="p.png">',
            "b.html": '<h2 id="there">B</h2><a href="#top">bad: not on b</a><a href="a.html#top">ok</a>',
            "p.png": "",
        }
        for name, body in pages.items():
            with open(os.path.join(book, name), "w", encoding="utf-8") as f:
                f.write(body)
        broken = check_book(book, ["a.md", "b.md"])
        expected = [
            "a.md: link 'b.html#gone': no #gone there",
            "a.md: link 'c.html': no such page",
            "b.md: link '#top': no #top there",
        ]
        if broken != expected:
            print(f"self-test failed: {broken} != {expected}", file=sys.stderr)
            return 1
    return 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    book, readme = argv[1], argv[2]
    src = os.path.join(os.path.dirname(os.path.abspath(readme)), "docs", "src")
    broken = check_book(book, sorted(sources_of(src))) + check_readme(readme, book)
    for line in broken:
        print(line, file=sys.stderr)
    if broken:
        print(f"{len(broken)} broken link(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
