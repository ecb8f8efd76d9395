"""The replay's HTML report in a real browser: headless Chromium (driven by selenium) opens the page of
a real replay (a dropped column, a changed collation, a dropped index, NOW()) from its file, with the
network unused: no console errors, no request but the page itself, every chart rendered with data
points, the verdict on top, and the tables holding the failing, mismatching and slower digests. The
page `fastproxy traffic report` writes again from the files is the same page."""
from __future__ import annotations

import os
import shutil
import time

import MySQLdb
import pytest

from fastproxy._digest import digest
from fastproxy.report.verdict import VerdictOptions
from fastproxy.scratch_db import ROOT_PASSWORD

from capture_util import run_cli
from conftest import start_proxy, stop_proxy
from replay_util import Capture

webdriver = pytest.importorskip("selenium.webdriver")

pytestmark = pytest.mark.timeout(300)

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
DB = "verdict_html"
SCHEMA = (f"DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB}; USE {DB};"
          "CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(16) COLLATE utf8mb4_general_ci NOT NULL, note VARCHAR(8));"
          "INSERT INTO t SELECT seq, IF(seq % 2, 'abc', 'ABC'), 'n' FROM seq_1_to_20;"
          "CREATE TABLE big (id INT PRIMARY KEY, k INT NOT NULL, pad CHAR(100) NOT NULL, KEY k (k));"
          "INSERT INTO big SELECT seq, seq % 1000, 'x' FROM seq_1_to_100000;")
UPGRADE = (f"USE {DB}; ALTER TABLE t DROP COLUMN note; ALTER TABLE t MODIFY name VARCHAR(16) COLLATE utf8mb4_bin NOT NULL;"
           "ALTER TABLE big DROP KEY k;")
FAIL_SQL = "SELECT note FROM t WHERE id = 1"
CONTENT_SQL = "SELECT COUNT(*) FROM t WHERE name = 'abc'"
SLOW_SQL = "SELECT COUNT(*) FROM big WHERE k = 7"
NOW_SQL = "SELECT NOW(6)"


@pytest.fixture(scope="module")
def report_page(mariadb, mariadb_test, tmp_path_factory):
    mariadb.sql(SCHEMA)
    mariadb_test.sql(SCHEMA + UPGRADE)
    out = str(tmp_path_factory.mktemp("html") / "capture")
    proxy = start_proxy([mariadb])
    try:
        with Capture(proxy, out):
            conn = MySQLdb.connect(host="127.0.0.1", port=proxy.port, user="root", password=ROOT_PASSWORD,
                                   database=DB, autocommit=True)
            cur = conn.cursor()
            for _ in range(15):  # about 3 s, so that the timelines have several seconds
                for sql in (FAIL_SQL, CONTENT_SQL, SLOW_SQL, NOW_SQL):
                    cur.execute(sql)
                    cur.fetchall()
                time.sleep(0.2)
            conn.close()
    finally:
        stop_proxy(proxy)
    import uvloop

    from fastproxy.replay.engine import ReplayOptions
    from fastproxy.replay.job import ReplayRun

    opts = ReplayOptions(host=mariadb_test.host, port=mariadb_test.port, username="root", password=ROOT_PASSWORD,
                         speed=1.0)
    run = ReplayRun(out, opts, None, write_tables=False,
                    verdict_options=VerdictOptions(slower_ratio=3, slower_min_diff_ms=5, slower_min_count=10))
    summary = uvloop.run(run.run())
    return summary


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromium-driver are not installed (scripts/setup.sh installs them)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _requests(driver, page: str) -> list[str]:
    """URLs requested since the last call for the document `page` (not by the browser's own pages)."""
    import json

    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent" and msg["params"].get("documentURL") == page:
            urls.append(msg["params"]["request"]["url"])
    return urls


def _points(d: str) -> int:
    """Vertices of an SVG path (matplotlib writes M/L commands, one per point)."""
    return sum(d.count(c) for c in "ML")


def _check_page(driver, path: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get_log("performance")
    driver.get_log("browser")
    driver.get("file://" + path)
    assert driver.execute_script("return document.readyState") == "complete"
    severe = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert severe == []
    assert _requests(driver, "file://" + path) == ["file://" + path]  # nothing but the page: self-contained
    # the verdict comes first
    verdict = driver.find_element(By.CSS_SELECTOR, ".verdict")
    assert verdict.location["y"] < driver.find_element(By.CSS_SELECTOR, "figure.chart").location["y"]
    assert "Regressions" in verdict.text and "fail" in verdict.text and "different results" in verdict.text
    cards = {c.get_attribute("data-card"): c.find_element(By.CSS_SELECTOR, ".n").text
             for c in driver.find_elements(By.CSS_SELECTOR, ".card")}
    assert cards["new failures"] == "15" and cards["result mismatches"] == "15" and cards["nondeterministic"] == "1"
    # every chart rendered, with data
    charts = driver.find_elements(By.CSS_SELECTOR, "figure.chart")
    names = [c.get_attribute("data-chart") for c in charts]
    assert {"qps", "lag", "latency-all", "p99"} <= set(names), names
    for chart in charts:
        name = chart.get_attribute("data-chart")
        svg = chart.find_element(By.TAG_NAME, "svg")
        assert svg.size["width"] > 200 and svg.size["height"] > 100, name
        series = chart.find_elements(By.CSS_SELECTOR, "g[id*='series-']")
        assert series, f"chart {name}: no data series"
        for g in series:
            paths = g.find_elements(By.TAG_NAME, "path")
            assert paths, f"chart {name}: series {g.get_attribute('id')} drew nothing"
            need = 1 if name == "p99" else 2  # a bar is one rectangle; a line at least two points
            assert max(_points(p.get_attribute("d") or "") for p in paths) >= need, (name, g.get_attribute("id"))
    # the tables hold the expected digests
    def digests(table: str) -> set:
        return {c.get_attribute("data-digest")
                for c in driver.find_elements(By.CSS_SELECTOR, f"table[data-table='{table}'] code[data-digest]")}

    assert digests("failures") == {digest(FAIL_SQL)}
    assert digests("mismatches") == {digest(CONTENT_SQL)}
    assert digest(SLOW_SQL) in digests("latency") and digest(NOW_SQL) in digests("nondeterministic")
    slow_row = [r for r in driver.find_elements(By.CSS_SELECTOR, "table[data-table='latency'] tbody tr")
                if r.find_elements(By.CSS_SELECTOR, f"code[data-digest='{digest(SLOW_SQL)}']")][0]
    assert "full scan of big" in slow_row.text  # its plan, summarized (the JSON is in <details>)


def test_report_opens_in_chromium_with_charts_and_tables(report_page, browser):
    assert report_page["report_html"] and "report_html_error" not in report_page
    _check_page(browser, report_page["report_html"])


def test_traffic_report_writes_the_same_page_again(report_page, browser, tmp_path):
    again = str(tmp_path / "again.html")
    res = run_cli("traffic", "report", os.path.dirname(report_page["report_html"]), "--html", again)
    assert res.returncode == 0, res.stderr
    assert "new failures:        15 commands in 1 statement" in res.stdout and again in res.stdout
    _check_page(browser, again)
