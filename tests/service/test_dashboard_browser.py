"""The dashboard in a real browser: Debian's headless Chromium driven by selenium through Debian's
chromedriver (nothing downloads a browser), against the service run by uvicorn on 127.0.0.1.

A reviewer logs in, sees the trader's order of about 1.2M held for review, approves it, and sees it sent
and, after the clock steps a bar, filled. A viewer sees the queue without approve buttons, and forged
POSTs (a viewer's session with its valid CSRF token; a reviewer's session without a token) are refused
with 403 and change nothing. Screenshots go to the test's tmp folder and /tmp/quantlm_dashboard*.png.
Skipped with a message when Chromium, chromedriver or selenium is missing.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.service.conftest import REPLAY_END, REPLAY_START

pytestmark = pytest.mark.browser

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS = Path("/tmp")
WAIT_S = 15.0


def _missing() -> str:
    if not Path(CHROMIUM).exists():
        return f"headless Chromium not installed ({CHROMIUM}; apt-get install chromium chromium-driver)"
    if not Path(CHROMEDRIVER).exists():
        return f"chromedriver not installed ({CHROMEDRIVER}; apt-get install chromium-driver)"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(market, keys, tmp_path_factory):
    """The service (its own config: the strategy invests half the cash in orders under the review
    threshold, so it trades and leaves cash for the manual order)
    under uvicorn in a background thread on a free localhost port; yields (base URL, out folder)."""
    if _missing():
        pytest.skip(_missing())
    import uvicorn

    from quantlm.data.store import Store
    from quantlm.live.config import LiveConfig
    from quantlm.service.app import create_app
    from quantlm.service.state import LiveService

    cfg = LiveConfig(cash=10_000_000.0, history_days=40,
                     primary={"signals": str(market / "scores.csv"), "name": "signals"},
                     strategy={"topk": 10, "n_drop": 2, "risk_degree": 0.5},
                     risk={"review_threshold": 1_000_000.0, "review_mode": "hold", "max_position_fraction": 0.5,
                           "max_order_shares": 1_000_000, "pause_move": None, "market_pause_move": None})
    out = tmp_path_factory.mktemp("browser-out")
    svc = LiveService(cfg, Store(market / "store"), out, mode="replay", start=REPLAY_START, end=REPLAY_END)
    app = create_app(svc, keys.path, secret=b"browser-test-secret")
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, name="uvicorn-dashboard-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the service did not start under uvicorn")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", out
    srv.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def driver(server, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", "--window-size=1400,1100",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(30)
    yield d
    d.quit()


def _api(base: str, keys, role: str, method: str, path: str, **kw) -> dict | list:
    r = httpx.request(method, f"{base}/api/v1{path}", headers=keys.headers(role), timeout=30, **kw)
    assert r.status_code in (200, 201), (path, r.status_code, r.text)
    return r.json()


def _big_order(base: str, keys, market, value: float = 1_200_000.0) -> dict:
    """As the trader, a buy worth about `value` (whole lots at the last close) in the symbol with the most
    volume on the next bar (the paper exchange fills it there); the API's answer (held for review)."""
    from quantlm.data.store import Store

    status = _api(base, keys, "viewer", "GET", "/status")
    last, nxt = np.datetime64(status["last_bar"]), np.datetime64(status["next_bar"])
    bars = Store(market / "store").bars()
    syms = {s["symbol"] for s in _api(base, keys, "viewer", "GET", "/signals", params={"limit": 1000})["scores"]}
    now = bars[(bars["ts"] == last) & bars["symbol"].isin(syms)].set_index("symbol")
    after = bars[(bars["ts"] == nxt) & bars["symbol"].isin(now.index)].set_index("symbol")
    move = (after["open"] / now["close"] - 1).abs()
    sym = after[move < 0.04]["volume"].idxmax()
    shares = int(math.ceil(value / now.loc[sym, "close"] / 100)) * 100
    body = _api(base, keys, "trader", "POST", "/orders", json={"symbol": sym, "side": "buy", "shares": shares})
    assert body["order"]["status"] == "held", body
    return body["order"]


def _login(driver, base: str, keys, role: str, page: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(f"{base}{page}")
    assert "/login" in driver.current_url  # not logged in: the page sends us to the login form
    driver.find_element(By.ID, "name").send_keys(keys.name[role])
    driver.find_element(By.ID, "key").send_keys(keys.key[role])
    driver.find_element(By.ID, "login-submit").click()
    _wait(lambda: driver.current_url.endswith(page) and _has(driver, "user-role"), f"login as {role}")
    assert driver.find_element(By.ID, "user-role").text.lower() == role  # shown in capitals by the CSS


def _has(driver, element_id: str) -> bool:
    from selenium.webdriver.common.by import By

    return bool(driver.find_elements(By.ID, element_id))


def _wait(cond, what, timeout: float = WAIT_S) -> None:
    """Poll `cond` until true; fail with `what` (a text, or a function giving one) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for: {what() if callable(what) else what}")
        time.sleep(0.1)


def _row_status(driver, cid: str) -> str | None:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f'#orders tr[data-client-id="{cid}"]')
    return rows[0].get_attribute("data-status") if rows else None


def _forged_post(driver, url: str, token: str | None) -> int:
    """A POST made by page script from the current session (with `token` as csrf_token, or none)."""
    return driver.execute_async_script(
        "const [url, token, done] = arguments; const body = new URLSearchParams();"
        "if (token !== null) body.append('csrf_token', token);"
        "fetch(url, {method: 'POST', body, redirect: 'manual', credentials: 'same-origin'})"
        ".then(r => done(r.status)).catch(e => done(-1));", url, token)


def _shot(driver, path: Path, height: int) -> Path:
    from PIL import Image

    driver.set_window_size(1400, height)
    driver.save_screenshot(str(path))
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert image.shape[1] >= 1000 and len(np.unique(image.reshape(-1, 3), axis=0)) > 50, f"{path} looks blank"
    return path


def test_reviewer_approves_a_held_order_and_sees_it_filled(server, driver, keys, market, tmp_path):
    from selenium.webdriver.common.by import By

    base, _ = server
    _api(base, keys, "admin", "POST", "/clock/step", json={"n": 12})  # some trading history for the charts
    order = _big_order(base, keys, market)
    cid = order["client_id"]

    _login(driver, base, keys, "reviewer", "/review")
    row = driver.find_element(By.CSS_SELECTOR, f'#review-queue tr[data-client-id="{cid}"]')
    assert order["symbol"] in row.text and "1,2" in row.text  # a value of about 1.2M, held
    approve = driver.find_element(By.ID, f"approve-{cid}")
    assert approve.is_displayed() and driver.find_element(By.ID, f"reject-{cid}").is_displayed()
    shutil.copy(_shot(driver, tmp_path / "review.png", 900), SHOTS / "quantlm_dashboard.png")

    # a forged POST from the reviewer's own session without the CSRF token is refused
    assert _forged_post(driver, f"{base}/review/{cid}/approve", None) == 403
    approve.click()
    _wait(lambda: _has(driver, "flash"), "the approval message")
    assert f"Order {cid} approved" in driver.find_element(By.ID, "flash").text
    assert not driver.find_elements(By.ID, f"approve-{cid}")

    driver.get(f"{base}/orders")
    assert _row_status(driver, cid) == "sent"
    _api(base, keys, "admin", "POST", "/clock/step", json={"n": 1})
    driver.refresh()
    _wait(lambda: _row_status(driver, cid) == "filled",
          lambda: f"the order filled on the orders page (row: {_row_status(driver, cid)}, journal: "
                  f"{[o for o in _api(base, keys, 'viewer', 'GET', '/orders') if o['client_id'] == cid]})")
    assert driver.find_elements(By.CSS_SELECTOR, f'#fills tr[data-client-id="{cid}"]')
    shutil.copy(_shot(driver, tmp_path / "orders.png", 1100), SHOTS / "quantlm_dashboard_orders.png")

    driver.get(f"{base}/")
    _wait(lambda: driver.execute_script("return !!document.querySelector('#fig-equity .main-svg')"),
          "the equity chart drawn by plotly")
    shutil.copy(_shot(driver, tmp_path / "overview.png", 1250), SHOTS / "quantlm_dashboard_overview.png")


def test_viewer_sees_no_buttons_and_forged_posts_are_refused(server, driver, keys, market):
    from selenium.webdriver.common.by import By

    base, _ = server
    cid = _big_order(base, keys, market)["client_id"]
    _login(driver, base, keys, "viewer", "/review")
    assert driver.find_elements(By.CSS_SELECTOR, f'#review-queue tr[data-client-id="{cid}"]')
    assert not driver.find_elements(By.CSS_SELECTOR, "button.approve, button.reject")
    token = driver.find_element(By.CSS_SELECTOR, 'meta[name="csrf-token"]').get_attribute("content")
    assert token  # the viewer's own valid token does not make the viewer a reviewer
    assert _forged_post(driver, f"{base}/review/{cid}/approve", token) == 403
    assert _forged_post(driver, f"{base}/risk/kill", token) == 403
    driver.get(f"{base}/risk")
    assert not driver.find_elements(By.ID, "risk-kill")
    held = _api(base, keys, "viewer", "GET", "/review")
    assert cid in {o["client_id"] for o in held}
    assert _api(base, keys, "viewer", "GET", "/risk")["state"] == "active"
