// martd as an ES module: `import martd from "https://host/martd/client.mjs"`.
// client.js finds its server from its <script src>; a module has none, so it is told.
import "./client.js";

var martd = globalThis.martd;
martd.config({ url: new URL(".", import.meta.url).href });

export default martd;
export var sub = martd.sub;
export var pub = martd.pub;
export var on = martd.on;
