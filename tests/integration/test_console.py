"""The web console in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, installed by ``.ci/system-deps``) driven by Selenium opens the
leader's console of three real masters (with volume servers), sees one LEADER and two
FOLLOWERs, enters the admin token, clicks Step Down, confirms, and sees another master
lead; then it follows the leader link to the new leader's console.

Screenshots go to ``artifacts/`` at the top of the work tree (ignored by git), which
CI keeps: ``console-before.png``, ``console-step-down.png``, ``console-new-leader.png``
(and ``console-failure.png`` when the test fails midway)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from procs import DataCluster, Master, http
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
WAIT = 15.0
"""Seconds any one thing may take to show on the page (it refreshes every second)."""

ROLES_JS = """
return Array.from(document.querySelectorAll('#masters tbody tr')).map(
    row => [Number(row.dataset.memberId), row.querySelector('td.role').textContent]);
"""


def _program(name: str) -> str:
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None
    )
    if found is None:
        pytest.fail(
            f"{name} is not installed: the console's browser test needs Debian's chromium and "
            "chromium-driver (`bash .ci/system-deps` as root installs them; `make test` runs it)"
        )
    return found


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = _program("chromium")
    for argument in (
        "--headless=new",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
    ):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root
    driver = webdriver.Chrome(
        options=options, service=Service(executable_path=_program("chromedriver"))
    )
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DataCluster]:
    c = DataCluster(tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def roles(driver: WebDriver) -> dict[int, str]:
    """Member id -> the role word the console shows (read in one go: the table is redrawn)."""
    rows: list[list[Any]] = driver.execute_script(ROLES_JS)
    return {int(member_id): str(role) for member_id, role in rows}


def text(driver: WebDriver, element_id: str) -> str:
    return str(driver.execute_script(f"return document.getElementById('{element_id}').textContent"))


def shown(driver: WebDriver, element_id: str) -> bool:
    return not driver.execute_script(f"return document.getElementById('{element_id}').hidden")


def until(driver: WebDriver, condition: Any, what: str) -> Any:
    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(
        condition, f"the console to show {what}"
    )


def test_step_down_from_the_leaders_console(browser: WebDriver, cluster: DataCluster) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    old = cluster.leader()
    old_id = int(old.status()["id"])
    try:
        run_the_console(browser, cluster, old, old_id)
    except BaseException:
        browser.save_screenshot(str(ARTIFACTS / "console-failure.png"))
        raise


def run_the_console(browser: WebDriver, cluster: DataCluster, old: Master, old_id: int) -> None:
    # The leader reports its lease; the followers know of none.
    statuses = {m.address: m.status() for m in cluster.masters}
    assert isinstance(statuses[old.address]["lease_remaining_ms"], int)
    assert [s["lease_remaining_ms"] for a, s in statuses.items() if a != old.address] == [
        None,
        None,
    ]

    browser.get(f"http://{old.address}/")  # read-only: no token needed
    until(
        browser,
        lambda d: (
            sorted(roles(d).values()) == ["FOLLOWER", "FOLLOWER", "LEADER"]
            and roles(d)[old_id] == "LEADER"
        ),
        "one LEADER (the one it was loaded from) and two FOLLOWERs",
    )
    until(
        browser,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#volumes tbody tr")) == 3,
        "3 volume servers",
    )
    until(browser, lambda d: "ms" in text(d, "lease"), "the leader's lease")
    assert shown(browser, "step-down-panel")
    assert "this master" in text(browser, "leader")
    browser.save_screenshot(str(ARTIFACTS / "console-before.png"))

    token = browser.find_element(By.ID, "admin-token")
    token.clear()
    token.send_keys(old.admin_token())
    browser.find_element(By.ID, "step-down").click()
    confirmation = until(browser, expected_conditions.alert_is_present(), "a confirmation")
    assert f"Step down master {old_id} ({old.address})?" in confirmation.text
    confirmation.accept()

    result = until(
        browser,
        lambda d: re.fullmatch(r"member (\d+) \((\S+)\) leads now", text(d, "action-result")),
        "who leads now",
    )
    new_id, new_address = int(result.group(1)), result.group(2)
    assert new_id != old_id
    until(
        browser,
        lambda d: (
            roles(d).get(new_id) == "LEADER"
            and sorted(roles(d).values()) == ["FOLLOWER", "FOLLOWER", "LEADER"]
        ),
        f"member {new_id} as the LEADER",
    )
    until(browser, lambda d: not shown(d, "step-down-panel"), "no Step Down on a follower")
    assert cluster.leader().address == new_address
    browser.save_screenshot(str(ARTIFACTS / "console-step-down.png"))

    # A follower's console links to the leader's, which offers Step Down.
    until(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, f'#leader a[href="http://{new_address}/"]'),
        "a link to the leader",
    )
    browser.find_element(By.CSS_SELECTOR, "#leader a").click()
    until(browser, lambda d: d.current_url == f"http://{new_address}/", "the new leader's console")
    until(
        browser,
        lambda d: shown(d, "step-down-panel") and roles(d).get(new_id) == "LEADER",
        "Step Down on the new leader",
    )
    assert http("GET", new_address, "/cluster/status")["role"] == "LEADER"
    browser.save_screenshot(str(ARTIFACTS / "console-new-leader.png"))
    print(f"screenshots in {ARTIFACTS}")
