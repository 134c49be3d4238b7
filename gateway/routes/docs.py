"""The API's page for people (/docs): Swagger UI over /openapi.json, where researchers paste bearer tokens.

The page loads one exact release of swagger-ui-dist from jsDelivr, each file held to its Subresource
Integrity hash (a file the CDN changed is not run), and its Content-Security-Policy allows scripts and
styles from that release only, the page's one inline script by its hash, and requests to this gateway
only. No favicon, font or validator badge is fetched from elsewhere, and no Referer leaves the page. There
is no ReDoc page.

To move to another release: take its files from the npm registry (`npm pack swagger-ui-dist@<version>`,
whose integrity npm checks) and put each file's `sha384-` + base64 of its SHA-384 digest below.
"""

from __future__ import annotations

import base64
import hashlib
import html
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

SWAGGER_UI_VERSION: Final = "5.36.0"
SWAGGER_UI: Final = f"https://cdn.jsdelivr.net/npm/swagger-ui-dist@{SWAGGER_UI_VERSION}/"
SWAGGER_UI_JS: Final = (
    SWAGGER_UI + "swagger-ui-bundle.js",
    "sha384-fUpRgC19yPykTqzdrUbdAg8NTiu16NEKf9U12J+IJWCg8/1mEI8f2+PEIz60Wyd+",
)
SWAGGER_UI_CSS: Final = (
    SWAGGER_UI + "swagger-ui.css",
    "sha384-z/AtSaOHGn5MJ5auAHXUypohywlIWLBZo1jeGmhdpVIbCnFhxAH92cwdV41oyINc",
)
# The page's own script. The spec's URL is relative to the page, so the page works under a path prefix; no
# validator badge (it would send the spec's URL to validator.swagger.io); tokens are not kept in storage.
INIT_SCRIPT: Final = (
    "SwaggerUIBundle({"
    'url: "./openapi.json", dom_id: "#swagger-ui", layout: "BaseLayout", deepLinking: true, '
    "showExtensions: true, showCommonExtensions: true, validatorUrl: null, persistAuthorization: false, "
    "presets: [SwaggerUIBundle.presets.apis]"
    "});"
)
_INIT_HASH: Final = base64.b64encode(hashlib.sha256(INIT_SCRIPT.encode()).digest()).decode()

CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'none'",
        f"script-src {SWAGGER_UI} 'sha256-{_INIT_HASH}'",
        f"style-src {SWAGGER_UI}",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def page(title: str) -> str:
    """The page's HTML, titled `title` (escaped)."""
    (js, js_integrity), (css, css_integrity) = SWAGGER_UI_JS, SWAGGER_UI_CSS
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<meta name="referrer" content="no-referrer">
<title>{html.escape(title)} - API</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{css}" integrity="{css_integrity}" crossorigin="anonymous">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{js}" integrity="{js_integrity}" crossorigin="anonymous"></script>
<script>{INIT_SCRIPT}</script>
</body>
</html>
"""


@router.get("/docs")
async def docs(request: Request) -> HTMLResponse:
    return HTMLResponse(page(request.app.title), headers=HEADERS)
