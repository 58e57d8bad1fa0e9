"""Snakemake's HTML report of the tiny DAG, read in headless Chromium as a reader reads it.

The report is a React app: the landing page shows the front page (workflow/report/workflow.rst) and
the rule graph, the menu lists the categories; a category lists its files, and a file's information
button shows its caption, its eye button shows a figure. Nothing may be fetched: the page is whole.
"""
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run_tool, write_config
from segbench.report.files import TABLE_EXTENSIONS, report_files

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGUMENTS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                      "--disable-background-networking", "--disable-component-update", "--disable-sync",
                      "--no-first-run")
WINDOW = (1400, 1000)  # a laptop screen
WAIT_SECONDS = 30


@pytest.fixture
def browser(tmp_path):
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        reason = f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver, as .ci/run does)"
        if os.environ.get("SEGBENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"SEGBENCH_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in CHROMIUM_ARGUMENTS + (f"--user-data-dir={tmp_path / 'chromium-profile'}",):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_window_size(*WINDOW)
    yield driver
    driver.quit()


class Reader:
    """Clicks through the report as a person would, and keeps what the browser's console said."""

    def __init__(self, driver):
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.by, self.console = driver, By, []
        self.wait = WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.1,
                                  ignored_exceptions=(StaleElementReferenceException,))

    def open(self, page: Path) -> None:
        self.driver.get(page.as_uri())
        self.wait.until(lambda d: d.execute_script(
            "return document.getElementById('loading-screen').style.display === 'none'"
            " && document.querySelector('#app nav') !== null"))
        self.read_console()

    def read_console(self) -> None:
        self.console += self.driver.get_log("browser")

    def menu_categories(self) -> list[str]:
        """The entries below RESULTS in the landing menu."""
        items = [item.text for item in self.driver.find_elements(self.by.CSS_SELECTOR, "#app nav li")]
        return items[items.index("RESULTS") + 1:]

    def click(self, xpath: str) -> None:
        """Click the element once it stands still: the menu slides when its width changes between views,
        and a click during the slide lands beside the element."""
        last_box = [None]

        def standing(driver):
            found = driver.find_elements(self.by.XPATH, xpath)
            box = found[0].rect if found else None
            still, last_box[0] = box is not None and box == last_box[0], box
            return found[0] if still else False

        self.wait.until(standing).click()

    def open_category(self, category: str) -> list[str]:
        """Click the category in the menu; returns the files it lists."""
        self.click(f"//nav//a[normalize-space()='{category}']")
        self.wait.until(lambda d: d.find_elements(self.by.CSS_SELECTOR, "nav table tbody tr"))
        cells = self.driver.find_elements(self.by.CSS_SELECTOR, "nav table tbody tr td:first-child")
        return [cell.text for cell in cells]

    def caption_of(self, path: str, category: str) -> str:
        """Click the file's information button, read the description, and go back to the category."""
        self.click(f"//nav//tr[td[normalize-space()='{path}']]//a[@iconname='information-circle']")
        self.wait.until(lambda d: "DESCRIPTION" in d.find_element(self.by.TAG_NAME, "nav").text)
        text = self.driver.find_element(self.by.TAG_NAME, "nav").text
        self.click(f"//nav//nav//a[normalize-space()='{category}']")
        return " ".join(text.split("DESCRIPTION", 1)[1].split("SIZE", 1)[0].split())

    def show_figure(self, path: str) -> dict:
        """Click the file's eye button; returns how the figure lies in the window."""
        self.click(f"//nav//tr[td[normalize-space()='{path}']]//a[@iconname='eye']")
        self.wait.until(lambda d: d.execute_script(  # results: the report's own table of its files
            "const image = document.querySelector('#app > div > div:last-child img');"
            " return image !== null && image.complete && image.src === results[arguments[0]].data_uri", path))
        return self.driver.execute_script(
            "const image = document.querySelector('#app > div > div:last-child img');"
            " const box = image.getBoundingClientRect();"
            " return {width: image.naturalWidth, top: box.top, bottom: box.bottom, left: box.left, right: box.right,"
            " window_width: window.innerWidth, window_height: window.innerHeight}")

    def back_to_menu(self) -> None:
        self.click("//nav//nav//a[normalize-space()='Results']")

    def first_text_on_screen(self) -> str:
        """The first line of the content pane a reader sees without scrolling."""
        return self.driver.execute_script(
            "for (const block of document.querySelectorAll('#app .prose :is(h1, p, li)')) {"
            "  if (block.getBoundingClientRect().bottom > 0) return block.innerText.split('\\n')[0];"
            "} return '';")

    def fetched(self) -> list[str]:
        """Every resource the page asked for beyond itself (data: URIs are not requests)."""
        return self.driver.execute_script(
            "return performance.getEntriesByType('resource').map(entry => entry.name)"
            ".filter(name => !name.startsWith('data:'))")


def shown_caption(item) -> str:
    """The caption Snakemake shows: a table's file shares one caption file, without the format sentence."""
    form = TABLE_EXTENSIONS.get(item.path.rsplit(".", 1)[1])
    return item.caption.removesuffix(f" {form}.") if form else item.caption


def keep_screenshots(paths: list[Path]) -> None:
    print("\n" + "\n".join(f"screenshot: {path}" for path in paths))
    target = os.environ.get("SEGBENCH_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for path in paths:
            shutil.copy(path, Path(target) / path.name)


def test_a_reader_finds_every_table_and_figure_with_its_caption(project_copy, browser, tmp_path):
    config = write_config(project_copy / "tiny.yaml")
    run_tool([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(config)], project_copy)
    page = project_copy / "reports" / "report.html"
    run_tool([sys.executable, "-m", "snakemake", "--configfile", str(config), "--report", str(page)], project_copy)
    print(f"\nreport of the tiny DAG: {page} ({page.stat().st_size / 2**20:.1f} MiB)")
    cfg = yaml.safe_load((project_copy / "results" / "run_config.yaml").read_text())  # the config the rules saw
    # the rule leaves PDFs out of the report: their PNG twins show the same figures
    shown = [item for item in report_files(cfg) if not item.path.endswith(".pdf")]
    categories = sorted({item.category for item in shown})

    reader = Reader(browser)
    reader.open(page)
    front_page = browser.find_element(reader.by.CSS_SELECTOR, "#app .prose h1").get_attribute("textContent")
    assert front_page == f"segbench: {cfg['run_name']}"
    assert reader.menu_categories() == categories
    # the front page is kept short: Snakemake centres a taller one and cuts off its top (snakemake#3906)
    assert reader.first_text_on_screen() == f"segbench: {cfg['run_name']}"
    print(f"landing page, first line on screen: {reader.first_text_on_screen()!r}")
    landing = tmp_path / "report_landing.png"
    browser.save_screenshot(str(landing))

    results = None
    for category in categories:
        expected = {f"reports/{item.path}": item for item in shown if item.category == category}
        assert sorted(reader.open_category(category)) == sorted(expected), category
        for path, item in expected.items():
            assert reader.caption_of(path, category) == " ".join(shown_caption(item).split()), path
        for path in [path for path in expected if path.endswith(".png")]:
            figure = reader.show_figure(path)
            assert figure["width"] > 0, f"{path} does not load"
            assert figure["top"] >= 0 and figure["bottom"] <= figure["window_height"] \
                and figure["right"] <= figure["window_width"], f"{path} is cut at the window's edge: {figure}"
            if results is None:
                results = tmp_path / "report_results.png"
                browser.save_screenshot(str(results))
        reader.back_to_menu()
        reader.read_console()
    keep_screenshots([landing, results])

    assert [entry for entry in reader.console if entry["level"] == "SEVERE"] == []
    assert reader.fetched() == []
