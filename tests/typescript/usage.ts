// A page written against the types of js/client.d.mts, as a bundler user would.
// tests/test_package.py runs `tsc --noEmit` on it; each @ts-expect-error line is a
// mistake the types must catch (tsc fails if one is not an error).
import martd, { martd as named, on, pub, sub } from "martd-client";
import type { MessageInfo, PresenceClient, PushAnswer, Subscription } from "martd-client";

martd.config({ url: "https://push.example.com/martd", transport: "websocket", share: false });
const url: string = martd.config().url;
const same: boolean = named === martd && window.martd === martd && globalThis.martd === martd;

const handle: Subscription = martd.sub("room.7", (payload: string, etag: string, info: MessageInfo) => {
  const kind: string | undefined = info.event ?? info.type;
  console.log(payload.length, etag, kind);
});
martd.sub("room.7", (payload) => console.log(payload), "0");
martd.sub("room.7", (payload) => console.log(payload), false); // from now on
martd.sub("room.7", (payload) => console.log(payload), null);
sub("room.8", (payload, etag) => console.log(payload, etag), "1700000000000-1");
handle.cancel();
const id: string = martd.cid;

async function push(): Promise<string> {
  const answer: PushAnswer = await martd.pub("room.7", null, { text: "hi" }, { size: 100, life: 600, event: "chat" });
  await pub("room.7", "the-key", "plain text");
  await martd.pub("room.7", null, "x", null, (error, answer) => console.log(error?.status, answer?.etag));
  await martd.pub("room.7", null, "x", (error) => console.log(error === null));
  if (answer.delivered === false) return "stored only";
  return answer.etag;
}

async function who(): Promise<number> {
  const here: PresenceClient[] = await martd.presence("room.7");
  return here.filter((c) => c.user !== null && c.transport === "sse").length;
}

on("error", (e) => console.log(e.channel, e.status));
martd.config({ credentials: true, token: null });
martd
  .on("error", (e) => console.log(e.channel, e.status))
  .on("missed", (e) => console.log(e.channel))
  .on("kicked", (e) => console.log(e.channel))
  .on("deleted", (e) => console.log(e.channel))
  .on("state", (s) => console.log(s.state === "open", s.transport))
  .on("join", (p) => console.log(p.cid, p.user))
  .on("leave", (p) => console.log(p.channel, p.cid));

// @ts-expect-error: a callback gets a string payload, not a number
martd.sub("room.7", (payload: number) => payload);
// @ts-expect-error: pub's attributes are named, not positional
martd.pub("room.7", null, "x", 100);
// @ts-expect-error: no such event
martd.on("message", () => undefined);
// @ts-expect-error: join details have no status
martd.on("join", (p) => p.status);
// @ts-expect-error: presence answers a Promise, not a list
const count: number = martd.presence("room.7").length;
// @ts-expect-error: true is not a start (false starts from now)
martd.sub("room.7", () => undefined, true);
// @ts-expect-error: no such transport
martd.config({ transport: "carrier-pigeon" });

export { count, id, push, same, url, who };
