"""Drive every chapter notebook in real JupyterLab, in headless Chromium.

The test starts one JupyterLab from this interpreter (so the kernel is this venv, with ``accel`` importable) on a
temporary copy of the notebooks, and for each chapter, in the smoke profile: opens it in a fresh workspace, runs every
cell from the "Run" menu, checks that no cell raised, then moves the first slider of the chapter's explorer widget
(``.accel-explorer``) and checks that its live readout (``.accel-explorer-readout``) changes, and shuts its kernel
down.  A screenshot goes to ``build/browser/<notebook>.png`` (and the explorer alone to
``build/browser/<notebook>_explorer.png``).

Chromium is Debian's (``/usr/bin/chromium``, installed by ``make setup`` when run as root); Playwright drives it, and
never downloads a browser.  Missing Chromium, Playwright or notebook is a failure, never a skip.  The time limits
below guard against a hang (a lab that never answers); they are generous so that a busy machine passes.

``ACCEL_BROWSER_NOTEBOOK=/path/to/some.ipynb`` points the test at one other notebook (for development).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
NOTEBOOK_ENV = "ACCEL_BROWSER_NOTEBOOK"
SHOT_DIR = REPO / "build" / "browser"

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

SERVER_START_S = 180
RUN_ALL_S = 600
READOUT_CHANGE_S = 60

EXPLORER = ".accel-explorer"
READOUT = ".accel-explorer-readout"
SLIDER_HANDLE = ".noUi-handle"

# Settings for the throwaway JupyterLab: every cell attached to the DOM (so prompts and outputs can be read
# without scrolling), and no news or update checks (the network is closed).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def notebooks_under_test() -> list[Path]:
    value = os.environ.get(NOTEBOOK_ENV)
    return [Path(value).expanduser().resolve()] if value else NOTEBOOKS


def ensure_chromium() -> Path:
    """Return Debian's Chromium; fail (never skip) in one line saying how to install it when it is missing. Installing
    system packages is the Makefile's set-up step (``make setup`` as root), never this test's."""
    if not CHROMIUM.exists():
        pytest.fail(f"The browser test needs Debian's Chromium at {CHROMIUM}: as root, `make setup` installs it "
                    "(or `apt-get install --no-install-recommends chromium`).", pytrace=False)
    return CHROMIUM


def import_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # a failure, not a skip: CI must notice a missing dev dependency
        pytest.fail(f"The browser test needs the `playwright` package (pip install -e '.[dev]'): {exc}", pytrace=False)
    return sync_playwright


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class Lab:
    """A running JupyterLab server."""

    def __init__(self, proc: subprocess.Popen, port: int, token: str, log: Path, root: Path):
        self.proc, self.port, self.token, self.log, self.root = proc, port, token, log, root
        self.staged: dict[Path, Path] = {}  # notebook under test -> its staged copy, relative to root

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}{sep}token={self.token}"

    def log_tail(self) -> str:
        return tail(self.log)


def stage_notebook(notebook: Path, root: Path) -> Path:
    """Copy the notebook (with its folder when it is the book's notebooks/, once) under root; return its relative path.

    The copy loses its outputs, execution counts and saved widget state (so that what the test sees comes from
    this run, and a stale saved widget view cannot stand in for the live one), and is pointed at the `python3`
    kernel of this interpreter (so no kernel-picker dialog can block the run).
    """
    if notebook.parent == NOTEBOOK_DIR:
        folder = root / notebook.parent.name
        if not folder.exists():
            shutil.copytree(notebook.parent, folder,
                            ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", ".*.ipynb"))
    else:
        folder = root / "notebooks"
        folder.mkdir(parents=True, exist_ok=True)
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb.setdefault("metadata", {}).pop("widgets", None)
    nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    (folder / notebook.name).write_text(json.dumps(nb, indent=1), encoding="utf-8")
    return (folder / notebook.name).relative_to(root)


def start_lab(tmp: Path, root: Path) -> Lab:
    """Start JupyterLab on root with every Jupyter/IPython directory in tmp; wait until /api/status answers."""
    dirs = {
        "JUPYTER_CONFIG_DIR": tmp / "config",
        "JUPYTER_DATA_DIR": tmp / "data",
        "JUPYTER_RUNTIME_DIR": tmp / "runtime",
        "JUPYTERLAB_SETTINGS_DIR": tmp / "lab-settings",
        "JUPYTERLAB_WORKSPACES_DIR": tmp / "lab-workspaces",
        "IPYTHONDIR": tmp / "ipython",
        "MPLCONFIGDIR": tmp / "matplotlib",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for name, settings in LAB_SETTINGS.items():
        path = dirs["JUPYTERLAB_SETTINGS_DIR"] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    env = {**os.environ, **{k: str(v) for k, v in dirs.items()}, "ACCEL_PROFILE": "smoke", "PYTHONUNBUFFERED": "1"}
    env.pop("JUPYTER_TOKEN", None)
    # The kernel runs in a temporary folder: make this checkout's `accel` importable even without `pip install -e`.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)

    port, token = free_port(), secrets.token_hex(16)
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--expose-app-in-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log = tmp / "jupyterlab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    lab = Lab(proc, port, token, log, root)

    deadline = time.monotonic() + SERVER_START_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode} before answering:\n{lab.log_tail()}", pytrace=False)
        try:
            with urllib.request.urlopen(lab.url("api/status"), timeout=2) as resp:
                if resp.status == 200:
                    return lab
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_lab(lab)
            pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n{lab.log_tail()}", pytrace=False)
        time.sleep(0.25)


def stop_lab(lab: Lab) -> None:
    if lab.proc.poll() is None:
        lab.proc.terminate()  # SIGTERM: the server shuts its kernels down and exits
        try:
            lab.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            lab.proc.kill()
            lab.proc.wait(timeout=5)


# JavaScript run in the page, against the app that --expose-app-in-browser puts on window.jupyterapp.
JS_NOTEBOOK_STATE = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    if (!panel || !panel.content || !panel.sessionContext) return null;
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    const cells = [];
    const model = panel.content.model;
    for (let i = 0; model && i < model.cells.length; i++) {
        const cell = model.cells.get(i);
        if (cell.type !== 'code') continue;
        const errors = [];
        for (let j = 0; j < cell.outputs.length; j++) {
            const out = cell.outputs.get(j).toJSON();
            if (out.output_type === 'error') errors.push(out.ename + ': ' + out.evalue);
        }
        cells.push({index: i, count: cell.executionCount, errors: errors,
                    source: cell.sharedModel.getSource().slice(0, 120)});
    }
    return {kernel: kernel ? kernel.status : null, cells: cells};
}"""


# ---------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def chromium() -> Path:
    return ensure_chromium()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, chromium):
    tmp = tmp_path_factory.mktemp("jupyterlab")
    root = tmp / "root"
    root.mkdir()
    staged = {notebook: stage_notebook(notebook, root) for notebook in notebooks_under_test() if notebook.is_file()}
    lab = start_lab(tmp, root)
    lab.staged = staged
    try:
        yield lab
    finally:
        stop_lab(lab)


@pytest.fixture(scope="module")
def page(lab, chromium):
    sync_playwright = import_playwright()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1100})
            pg = context.new_page()
            pg.set_default_timeout(30_000)
            yield pg
        finally:
            browser.close()


# ---------------------------------------------------------------------------------------------------------------
# The test


def wait_for_run_all(page, lab: Lab) -> dict:
    """Wait until every code cell has an execution count and the kernel is idle; return the notebook state."""
    deadline = time.monotonic() + RUN_ALL_S
    state = None
    while time.monotonic() < deadline:
        state = page.evaluate(JS_NOTEBOOK_STATE)
        if (
            state
            and state["kernel"] == "idle"
            and state["cells"]
            and all(c["count"] is not None for c in state["cells"])
        ):
            return state
        if state and any(c["errors"] for c in state["cells"]):
            return state  # Run All stops at the first error: no point waiting for the rest
        time.sleep(0.5)
    pending = [c for c in (state or {}).get("cells", []) if c["count"] is None]
    pytest.fail(
        f"Run All did not finish within {RUN_ALL_S} s; kernel {state and state['kernel']}; "
        f"{len(pending)} code cells without an execution count, first: {pending[:1]}\n"
        f"JupyterLab log:\n{lab.log_tail()}",
        pytrace=False,
    )


def assert_no_traceback_shown(page) -> None:
    """JupyterLab 4 renders error outputs like stderr (data-mime-type application/vnd.jupyter.stderr), so the
    page alone cannot tell an error from a warning; the model check is the real one, this catches a traceback
    printed some other way."""
    shown = page.locator(".jp-OutputArea-output:has-text('Traceback (most recent call last)')")
    assert shown.count() == 0, "a traceback is shown:\n" + shown.first.inner_text()[:2000]


def move_first_slider(page, explorer, readout, before: str) -> bool:
    """Focus the explorer's first slider handle that can move (a grid of one value cannot) and press arrow keys until
    the readout differs from before.

    noUiSlider (ipywidgets 8) keeps the handle's position in aria-valuenow: a handle that did not move under
    ArrowRight sits at its right end, so ArrowLeft is tried next without waiting for the readout.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    handles = explorer.locator(SLIDER_HANDLE)
    handles.first.wait_for(state="visible")
    movable = [handles.nth(i) for i in range(handles.count())
               if handles.nth(i).get_attribute("aria-valuemin") != handles.nth(i).get_attribute("aria-valuemax")]
    assert movable, "the explorer has no control with more than one value"
    handle = movable[0]
    for key in ("ArrowRight", "ArrowLeft"):
        position = handle.get_attribute("aria-valuenow")
        handle.focus()
        for _ in range(3):
            handle.press(key)
        if position is not None:
            try:
                page.wait_for_function(
                    "([el, position]) => el.getAttribute('aria-valuenow') !== position",
                    arg=[handle.element_handle(), position],
                    timeout=2_000,
                )
            except PlaywrightTimeout:
                continue  # the handle did not move: try the other direction
        try:
            page.wait_for_function(
                "([el, before]) => el.innerText !== before",
                arg=[readout.element_handle(), before],
                timeout=READOUT_CHANGE_S * 1000,
            )
            return True
        except PlaywrightTimeout:
            if position is not None:
                return False  # the slider moved, the readout did not follow
    return False


def wait_until_settled(page, readout, quiet_s: float = 1.0) -> str:
    """Wait until the kernel is idle and the readout has kept one text for quiet_s (each key press is a separate
    update, and the kernel may still be working through them); return that text."""
    deadline = time.monotonic() + READOUT_CHANGE_S
    text, since = readout.inner_text(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = readout.inner_text()
        if now != text:
            text, since = now, time.monotonic()
            continue
        state = page.evaluate(JS_NOTEBOOK_STATE)
        if state and state["kernel"] == "idle" and time.monotonic() - since >= quiet_s:
            break
    return text


def shutdown_kernels(lab: Lab) -> None:
    """Delete every session (and so its kernel) on the server, so that one chapter's kernel does not compete with the
    next chapter's for the CPU."""
    try:
        with urllib.request.urlopen(lab.url("api/sessions"), timeout=10) as resp:
            sessions = json.loads(resp.read())
        for session in sessions:
            request = urllib.request.Request(lab.url(f"api/sessions/{session['id']}"), method="DELETE")
            urllib.request.urlopen(request, timeout=30).close()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"\ncould not shut the kernels down: {exc}")


@pytest.mark.parametrize("notebook", notebooks_under_test(), ids=lambda p: p.stem)
def test_notebook_runs_and_explorer_responds(request, notebook):
    if not notebook.is_file():  # here, not in a fixture, so that it reads as a failure of this test
        pytest.fail(
            f"Notebook to test is missing: {notebook}"
            + ("" if os.environ.get(NOTEBOOK_ENV) else f" (set {NOTEBOOK_ENV} to test another one)"),
            pytrace=False,
        )
    lab = request.getfixturevalue("lab")
    page = request.getfixturevalue("page")
    started = time.monotonic()
    SHOT_DIR.mkdir(parents=True, exist_ok=True)
    shot = SHOT_DIR / f"{notebook.stem}.png"
    explorer = page.locator(EXPLORER).first
    try:
        # A workspace of its own per chapter, so that the previous chapter's tab is not restored beside it.
        page.goto(lab.url(f"lab/workspaces/{notebook.stem}/tree/{quote(lab.staged[notebook].as_posix())}"))

        # The notebook is open and its kernel has started.
        page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=60_000)
        page.wait_for_function(
            "() => { const s = (" + JS_NOTEBOOK_STATE + ")(); return s && s.kernel === 'idle'; }", timeout=60_000
        )

        opened = time.monotonic()

        # Run > Run All Cells, from the menu bar, as a reader would.
        page.locator('.lm-MenuBar-itemLabel:text-is("Run")').click()
        page.locator('.lm-Menu-itemLabel:text-is("Run All Cells")').click()
        state = wait_for_run_all(page, lab)
        ran = time.monotonic()

        failed = [c for c in state["cells"] if c["errors"]]
        assert not failed, f"{notebook.name}: cells raised:\n" + "\n".join(
            f"  cell {c['index']}: {'; '.join(c['errors'])}\n    {c['source']!r}" for c in failed
        )
        assert_no_traceback_shown(page)

        # The explorer: scroll it into view, move its first slider, wait for the readout to change.
        if page.locator(EXPLORER).count() == 0:
            pytest.fail(f"{notebook.name}: no `{EXPLORER}` widget on the page after Run All", pytrace=False)
        explorer.scroll_into_view_if_needed()
        explorer.wait_for(state="visible")
        readout = explorer.locator(READOUT).first
        if readout.count() == 0:
            pytest.fail(f"{notebook.name}: the explorer has no `{READOUT}` widget", pytrace=False)
        page.wait_for_function(
            "el => el.innerText.trim().length > 0", arg=readout.element_handle(), timeout=READOUT_CHANGE_S * 1000
        )
        before = readout.inner_text()
        changed = move_first_slider(page, explorer, readout, before)
        after = wait_until_settled(page, readout)
        assert changed and after != before, (
            f"{notebook.name}: the explorer readout did not change when its first slider moved: {before!r}"
        )
        assert_no_traceback_shown(page)
        explorer.evaluate("el => el.scrollIntoView({block: 'center'})")
        explorer.screenshot(path=str(SHOT_DIR / f"{notebook.stem}_explorer.png"))
        print(f"\nreadout before: {before!r}\nreadout after:  {after!r}")
    finally:
        # Always leave a picture of the page, also (above all) when something failed.
        try:
            page.screenshot(path=str(shot), full_page=True)
            print(f"\nscreenshot: {shot}  ({time.monotonic() - started:.1f} s in the browser)")
        except Exception as exc:  # never hide the real failure behind a failed screenshot
            print(f"\nno screenshot: {exc}")
        shutdown_kernels(lab)
    print(f"open notebook + kernel: {opened - started:.1f} s, run all: {ran - opened:.1f} s")
