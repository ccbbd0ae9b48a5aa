#!/usr/bin/env python3
"""Checks every relative link and anchor of the built book (offline): each `href`/`src` that is not an external
URL must name a file of the book, and each `#fragment` an element id of the page it points to. Prints every
broken link with the page it is on; exits 1 if there is any."""
import html.parser
import os
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


def main(root):
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
    for line in broken:
        print(f"broken link: {line}")
    print(f"checked {sum(len(p.links) for p in pages.values())} links on {len(pages)} pages: {len(broken)} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/book"))
