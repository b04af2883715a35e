"""The GraphiQL playground, served from the package (no CDN), loaded in headless Debian Chromium:
it runs a query against this service and shows the result. The screenshot is kept under
tests/artifacts/ (gitignored)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, wait_for
from tests.integration.test_ws import running_web

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = ROOT / "tests" / "artifacts"


def browser(profile: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def test_the_playground_runs_a_query_in_headless_chromium(test_env, db, make_key):
    assert CHROMIUM and CHROMEDRIVER, "chromium and chromium-driver are Debian packages .ci/run installs"
    from selenium.webdriver.common.by import By

    key = make_key("incident:read", "incident:write")
    with running_web() as base:
        created = httpx.post(f"{base}/api/v1/incidents", headers={"X-API-Key": key}, timeout=30,
                             json={"title": "Playground incident", "severity": "P1", "source": "monitoring"}).json()
        page = httpx.get(f"{base}/graphql/playground", params={"token": key}, timeout=30)
        assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
        assert "https://" not in page.text and "http://" not in page.text  # every asset from this service
        for asset in ("graphiql.min.js", "graphiql.min.css", "react.production.min.js", "react-dom.production.min.js"):
            assert httpx.get(f"{base}/graphql/playground/static/{asset}", timeout=30).status_code == 200
        query = "{ incidents(first: 5) { totalCount edges { node { id title severity } } } }"
        profile = tempfile.mkdtemp(prefix="im-chromium-")
        driver = browser(profile)
        try:
            driver.set_page_load_timeout(60)
            driver.get(f"{base}/graphql/playground?" + httpx.QueryParams({"token": key, "query": query}).__str__())
            button = wait_for(lambda: (driver.find_elements(By.CSS_SELECTOR, ".graphiql-execute-button") or [None])[0],
                              60, 0.2, "GraphiQL to render its run button")
            button.click()

            def shown() -> str | None:
                panes = driver.find_elements(By.CSS_SELECTOR, ".result-window")
                text = panes[0].text if panes else ""
                return text if created["id"] in text else None

            text = wait_for(shown, 60, 0.2, "the query's result in the playground")
            assert '"title": "Playground incident"' in text and '"totalCount": 1' in text
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "graphql-playground.png"
            driver.save_screenshot(str(shot))
            assert shot.stat().st_size > 10_000
        finally:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)


def test_the_playground_page_needs_a_credential(client):
    assert client.get("/graphql/playground").status_code == 401
    assert client.get("/graphql/playground?token=im_nope").status_code == 401
    assert Path(ROOT / "api" / "graphql" / "static" / "LICENSES.txt").exists()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
