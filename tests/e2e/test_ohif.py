"""The prebuilt OHIF viewer (npm @ohif/app) against Radpipe's DICOMweb, in headless Chromium.

OHIF is served from its own origin (so CORS preflights are exercised) and the bearer token is
added to its requests by the browser context, as a reverse proxy or OIDC would in production.
"""

from __future__ import annotations

import functools
import io
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radpipe.common.context import Context

from ..servers import IN_CI, require_tool
from ..unit.test_stages import stable_study
from .test_portal_browser import ARTIFACTS, CHROMIUM_FLAGS

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / ".cache" / "ohif" / "package" / "dist"

APP_CONFIG = """window.config = {
  routerBasename: '/', extensions: [], modes: [], showStudyList: true,
  showWarningMessageForCrossOrigin: false, showCPUFallbackMessage: false,
  defaultDataSourceName: 'radpipe',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'radpipe',
    configuration: {
      friendlyName: 'Radpipe', name: 'radpipe',
      wadoUriRoot: '%(root)s', qidoRoot: '%(root)s', wadoRoot: '%(root)s',
      qidoSupportsIncludeField: true, supportsReject: false, imageRendering: 'wadors',
      thumbnailRendering: 'wadors', enableStudyLazyLoad: true, supportsFuzzyMatching: false,
      supportsWildcard: true, staticWado: false, singlepart: 'bulkdata,video',
      bulkDataURI: { enabled: true }, omitQuotationForMultipartRequest: true,
    },
  }],
};
"""


class _SpaHandler(SimpleHTTPRequestHandler):
    """Static files, with index.html for the single-page app's own routes."""

    def send_head(self):  # type: ignore[no-untyped-def]
        path = Path(self.translate_path(self.path))
        if not path.exists():
            self.path = "/index.html"
        return super().send_head()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def ohif_url(tmp_path: Path, live_url: str) -> Iterator[str]:
    if not (DIST / "index.html").exists():
        message = "the OHIF viewer is not unpacked: run `make ohif` (npm pack @ohif/app)"
        if IN_CI:
            pytest.fail(message + " (CI=true: a missing tool is a failure)")
        pytest.skip(message)
    site = tmp_path / "ohif"
    shutil.copytree(DIST, site)
    (site / "app-config.js").write_text(APP_CONFIG % {"root": f"{live_url}/dicom-web"})
    handler = functools.partial(_SpaHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_ohif_lists_the_study_and_renders_an_image(
    ctx: Context, ohif_url: str, tokens: dict[str, str]
) -> None:
    chromium = require_tool("chromium", "apt-get install chromium")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    from radpipe.deid.service import deidentify_study

    from ..dicom import ct_series

    study_id = stable_study(ctx, ct_series(seed=61))
    deidentify_study(ctx, study_id)
    study_uid = ctx.studies.get(study_id)["deid"]["study_uid"]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=[*CHROMIUM_FLAGS, "--use-gl=swiftshader"]
        )
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_extra_http_headers({"Authorization": f"Bearer {tokens['radiologist']}"})
        page = context.new_page()
        page.goto(ohif_url + "/", wait_until="domcontentloaded")
        patient = ctx.documents.collection("dicom_index").find_one({})["attributes"]["PatientID"]
        page.wait_for_selector(f"text={patient}", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "ohif-study-list.png"))
        page.goto(f"{ohif_url}/viewer?StudyInstanceUIDs={study_uid}", wait_until="domcontentloaded")
        page.wait_for_selector("canvas", timeout=60_000)
        page.wait_for_timeout(8_000)  # let cornerstone fetch and draw the first frame
        shot = page.locator("canvas").first.screenshot()
        page.screenshot(path=str(ARTIFACTS / "ohif-viewer.png"))
        browser.close()
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("L"))
    assert pixels.std() > 5, "the viewport stayed blank: no image was rendered"
