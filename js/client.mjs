// martd as an ES module: `import { martd } from "https://host/martd/client.mjs"`, or
// `import { martd } from "martd-client"` in a bundle (js/package.json), then
// `martd.config({ url: "https://host/martd" })`. Types: client.d.mts.
import "./client.js";

var martd = globalThis.martd;
// client.js finds its server from its <script src>; a module has none. Loaded from
// martd itself, its own URL says where martd is; inside a bundle it says nothing.
if (/^https?:\/\/[^?#]*\/client\.mjs([?#].*)?$/.test(import.meta.url)) {
  martd.config({ url: new URL(".", import.meta.url).href });
}

export { martd };
export default martd;
export var sub = martd.sub;
export var pub = martd.pub;
export var on = martd.on;
