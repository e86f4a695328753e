import httpx
import pytest

from .helpers import sse

pytestmark = pytest.mark.anyio


async def test_push_reaches_sse_subscriber(client: httpx.AsyncClient) -> None:
    async with sse(client, "/sub/smoke") as stream:
        answer = await client.post("/pub/smoke", content="hello")
        assert answer.status_code == 201
        event = await stream.next()
        assert event == {"id": answer.json()["etag"], "data": "hello"}
