"""Small helpers shared by the UI tests (imported as ``pagekit``: tests/ui is on sys.path)."""

from __future__ import annotations

import contextlib
import socket

import numpy as np
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic", "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip
# Gradio renders a Group as two nested divs carrying the same class: take the outer one.
ENTRY = ".stack-entry:not(.stack-entry .stack-entry)"


@contextlib.contextmanager
def studio_page(browser, url: str, *, height: int = 1100, **context_options):
    """A fresh browser context on the studio at ``url``, once its page has drawn; closed afterwards."""
    context = browser.new_context(viewport={"width": 1500, "height": height}, **context_options)
    try:
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#render")
        yield page
    finally:
        context.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_not_blank(path) -> None:
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert pixels.std() > 10, f"{path} looks blank"


def choose(page, dropdown: str, option_prefix: str) -> None:
    """Pick the option of a Gradio dropdown (``#elem-id``) whose text starts with ``option_prefix``."""
    import re

    page.click(f"{dropdown} input")
    page.get_by_role("option", name=re.compile(rf"^{re.escape(option_prefix)}")).click()


# --------------------------------------------------------------------------- the library table
# Gradio's Dataframe draws its rows as a virtual list: only the rows in view exist, each a
# ``.virtual-row`` (``data-index`` = its place in the shown order) of ``[role=gridcell]`` cells.
LIBRARY_ROWS = "#library-table .virtual-row"
_NAMES = """() => [...document.querySelectorAll('#library-table .virtual-row')]
  .sort((a, b) => Number(a.dataset.index) - Number(b.dataset.index))
  .map(r => r.querySelector('[role=gridcell][data-col="0"]').innerText.trim())"""


def library_names(page) -> list[str]:
    """The Name column of the library table's rows in view, in the order shown."""
    return page.evaluate(_NAMES)


def library_row(page, name: str):
    import re

    cell = page.locator('[role=gridcell][data-col="0"]', has_text=re.compile(rf"^\s*{re.escape(name)}\s*$"))
    return page.locator(LIBRARY_ROWS).filter(has=cell)


def pick_in_library_table(page, name: str) -> None:
    """Click the library table's row named ``name``; the library dropdown then holds that LoRA."""
    library_row(page, name).locator("[role=gridcell]").first.click()
    page.wait_for_function(
        "name => (document.querySelector('#library input')?.value || '').startsWith(name + ' · ')", arg=name
    )


# --------------------------------------------------------------------------- what an error looks like
RED_TEXT = """() => {
  const found = [];
  for (const el of document.querySelectorAll('body *')) {
    const style = getComputedStyle(el);
    if (!el.getClientRects().length || style.visibility === 'hidden') continue;
    const own = [...el.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent.trim()).join(' ').trim();
    if (own) {
      const [r, g, b] = style.color.match(/[0-9.]+/g).map(Number);
      const max = Math.max(r, g, b), min = Math.min(r, g, b);
      // red: hue within 12° of pure red, saturated (orange accents, ~20°, are not errors)
      const hue = max === min ? 0 : max === r ? (60 * (g - b) / (max - min) + 360) % 360 : -1;
      if (max > 100 && (max - min) / max > 0.45 && hue >= 0 && (hue < 12 || hue > 345))
        found.push(own.slice(0, 100));
    }
  }
  for (const el of document.querySelectorAll('.studio-status-error, .toast-body.error, .error'))
    if (el.getClientRects().length) found.push('error box: ' + el.textContent.trim().slice(0, 100));
  return found;
}"""


def red_texts(page) -> list[str]:
    """Visible text drawn in red, and visible error boxes (empty when the page shows no error)."""
    return page.evaluate(RED_TEXT)
