#!/usr/bin/env python3
"""Checks every relative link and anchor of the built book (offline): each `href`/`src` that is not an external
URL must name a file of the book, and each `#fragment` an element id of the page it points to. Prints every
broken link with the page it is on; exits 1 if there is any.

    check_book_links.py [BOOK] [--markdown FILE.md ...] [--runbooks RULES.yaml ...]

BOOK is the build directory (default docs/book); mdBook 0.5 writes the HTML there directly with one renderer,
and into BOOK/html when several are configured: both are found. Each --markdown file (the README) has its
relative links checked too: a link into the book's sources (docs/src/X.md#anchor) must name a chapter and an
anchor of the built chapter, any other link a file or directory of the repository. Each --runbooks file (the
Prometheus alert rules) has every `runbook_url:` checked: a page of the book, relative to its root, and an
anchor of that page."""
import html.parser
import os
import re
import sys
import urllib.parse


class Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = set()
        self.links = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("id", "name"):
            if attrs.get(name):
                self.ids.add(attrs[name])
        for name in ("href", "src"):
            if attrs.get(name) is not None:
                self.links.append(attrs[name])


def html_root(root):
    """Where mdBook wrote the HTML: BOOK itself, or BOOK/html when several renderers are configured."""
    if not os.path.exists(os.path.join(root, "index.html")) and os.path.exists(os.path.join(root, "html", "index.html")):
        return os.path.join(root, "html")
    return root


def markdown_links(path):
    """The relative link targets of a markdown file, outside code."""
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text)
            if not urllib.parse.urlsplit(target).scheme and not target.startswith("#")]


def check_markdown(path, root, pages, src="docs/src"):
    broken = []
    base = os.path.dirname(os.path.abspath(path))
    src = os.path.abspath(src)
    for link in markdown_links(path):
        parsed = urllib.parse.urlsplit(link)
        target = os.path.normpath(os.path.join(base, urllib.parse.unquote(parsed.path)))
        if not os.path.exists(target):
            broken.append(f"{path}: {link} (no such file)")
            continue
        if target.startswith(src + os.sep) and target.endswith(".md"):
            page = os.path.normpath(os.path.join(root, os.path.relpath(target, src)[:-3] + ".html"))
            if os.path.basename(target) == "SUMMARY.md":
                page = os.path.normpath(os.path.join(root, "index.html"))
            if page not in pages:
                broken.append(f"{path}: {link} (not a chapter of the book: is it in SUMMARY.md?)")
            elif parsed.fragment and urllib.parse.unquote(parsed.fragment) not in pages[page].ids:
                broken.append(f"{path}: {link} (no anchor #{parsed.fragment} in the built chapter)")
    return broken


def check_runbooks(path, root, pages):
    """Each `runbook_url: page.html#anchor` of an alert rules file must name a page and an anchor of the book."""
    broken, urls = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            match = re.match(r"\s*runbook_url:\s*['\"]?([^'\"\s]+)", line)
            if match:
                urls.append(match.group(1))
    for url in urls:
        parsed = urllib.parse.urlsplit(url)
        page = os.path.normpath(os.path.join(root, parsed.path))
        if parsed.scheme or page not in pages:
            broken.append(f"{path}: runbook_url {url} (not a page of the book, relative to its root)")
        elif not parsed.fragment or urllib.parse.unquote(parsed.fragment) not in pages[page].ids:
            broken.append(f"{path}: runbook_url {url} (no section #{parsed.fragment} on that page)")
    if not urls:
        broken.append(f"{path}: no runbook_url at all")
    return len(urls), broken


def main(root, markdown=(), runbooks=()):
    root = html_root(root)
    pages = {}
    for directory, _, files in os.walk(root):
        for file in files:
            if file.endswith(".html"):
                path = os.path.normpath(os.path.join(directory, file))
                page = Page()
                with open(path, encoding="utf-8") as f:
                    page.feed(f.read())
                pages[path] = page
    broken = []
    for path, page in sorted(pages.items()):
        # The print page repeats every chapter; its links are the chapters' own.
        if os.path.basename(path) in ("print.html", "404.html", "toc.html"):
            continue
        for link in page.links:
            parsed = urllib.parse.urlsplit(link)
            if parsed.scheme or link.startswith("//") or link.startswith("javascript:"):
                continue
            target = path
            if parsed.path:
                target = os.path.normpath(
                    os.path.join(os.path.dirname(path), urllib.parse.unquote(parsed.path))
                )
                if os.path.isdir(target):
                    target = os.path.join(target, "index.html")
                if not os.path.exists(target):
                    broken.append(f"{os.path.relpath(path, root)}: {link} (no such file in the book)")
                    continue
            fragment = urllib.parse.unquote(parsed.fragment)
            if fragment and target.endswith(".html"):
                ids = pages[target].ids if target in pages else set()
                if fragment not in ids:
                    broken.append(f"{os.path.relpath(path, root)}: {link} (no anchor #{fragment} there)")
    checked = sum(len(p.links) for p in pages.values())
    for path in markdown:
        checked += len(markdown_links(path))
        broken += check_markdown(path, root, pages)
    for path in runbooks:
        count, problems = check_runbooks(path, root, pages)
        checked += count
        broken += problems
    if not pages:
        broken.append(f"{root}: no HTML pages (was the book built?)")
    for line in broken:
        print(f"broken link: {line}")
    print(f"checked {checked} links on {len(pages)} pages, {len(markdown)} markdown files and {len(runbooks)} "
          f"alert rule files: {len(broken)} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    files = {"--markdown": [], "--runbooks": []}
    for option, values in files.items():
        while option in args:
            i = args.index(option)
            values.append(args[i + 1])
            del args[i:i + 2]
    sys.exit(main(args[0] if args else "docs/book", files["--markdown"], files["--runbooks"]))
