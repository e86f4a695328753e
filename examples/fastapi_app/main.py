"""A FastAPI app with martd mounted at /martd, publishing in process.

Run it (from the repository root):

    .venv/bin/uvicorn --app-dir examples/fastapi_app main:app

then open http://127.0.0.1:8000/ and post a message from the form, or:

    curl -d 'hello' http://127.0.0.1:8000/notify
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from martd_asgi import create_app

# Settings come from MARTD_* variables; keywords given here win over them.
martd_app = create_app()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # A mounted app gets no lifespan events of its own: run martd's here, so
    # its backend starts before the first request and its streams end cleanly
    # on shutdown.
    async with martd_app.lifespan():
        yield


app = FastAPI(lifespan=lifespan)
app.mount("/martd", martd_app)

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>FastAPI + martd</title>
<h1>News</h1>
<ul id="news"></ul>
<form id="form"><input name="text" value="hello" autofocus> <button>Publish</button></form>
<script src="/martd/client.js"></script>
<script>
martd.sub("news", function (data) {
  var item = document.createElement("li");
  item.textContent = JSON.parse(data).text;
  document.getElementById("news").appendChild(item);
});
document.getElementById("form").onsubmit = function (event) {
  event.preventDefault();
  fetch("/notify", {method: "POST", body: this.text.value});
};
</script>
"""


@app.get("/", response_class=HTMLResponse)
async def index() -> str:
    return PAGE


@app.post("/notify")
async def notify(request: Request) -> dict[str, str]:
    """Publish the request body on the "news" channel; every open page shows it."""
    text = (await request.body()).decode("utf-8", "replace")
    # Whatever your app decides to push: here a JSON object, as text.
    etag = await martd_app.publish("news", json.dumps({"text": text}), size=50)
    return {"channel": "news", "etag": etag}
