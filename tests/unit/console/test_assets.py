"""The console's shipped files keep to the rules the CSP relies on: no markup sinks in the JS, no
inline script, style or event handler in the HTML, nothing loaded from another origin; and only
allow-listed files are served."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from gateway.console.assets import CONSOLE_CSP, console_file
from gateway.errors import NotFound

STATIC = resources.files("gateway.console").joinpath("static")
FILES = sorted(p.name for p in STATIC.iterdir() if p.is_file())
# Sinks that parse strings as markup or code: API text must never reach one.
SINKS = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|srcdoc")


def test_the_csp_allows_nothing_inline_and_no_framing() -> None:
    assert "unsafe-inline" not in CONSOLE_CSP and "unsafe-eval" not in CONSOLE_CSP
    assert "frame-ancestors 'none'" in CONSOLE_CSP and "script-src 'self'" in CONSOLE_CSP
    assert "default-src 'none'" in CONSOLE_CSP


@pytest.mark.parametrize("name", [n for n in FILES if n.endswith(".js")])
def test_no_script_uses_a_markup_or_code_sink(name: str) -> None:
    code = "\n".join(
        line for line in STATIC.joinpath(name).read_text().splitlines() if not line.lstrip().startswith("//")
    )
    assert not SINKS.search(code), name
    code = code.replace('"http://www.w3.org/2000/svg"', "")  # the SVG namespace is a name, not a fetch
    assert "http://" not in code and "https://" not in code, name


def test_the_page_has_no_inline_script_style_or_handler() -> None:
    html = STATIC.joinpath("index.html").read_text()
    assert re.findall(r"<script[^>]*>", html) == ['<script type="module" src="main.js">']
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+\s*=", html)
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # nothing from another origin


@pytest.mark.parametrize("name", ["../assets.py", "__init__.py", "index.html/", "INDEX.HTML", ".hidden.js"])
def test_only_the_allow_listed_files_are_served(name: str) -> None:
    with pytest.raises(NotFound):
        console_file(name)
    body, content_type = console_file("main.js")
    assert content_type.startswith("text/javascript") and body
