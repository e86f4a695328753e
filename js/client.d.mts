/**
 * Types of the martd browser client (contract v1.1), for `client.mjs`
 * (`import { martd } from "martd-client"`) and for the classic script, which
 * defines the global `martd` (`<script src=".../martd/client.js">`).
 */

/** How the client reaches the server; it picks one on its own unless told. */
export type Transport = "sse" | "websocket" | "longpoll" | "jsonp";

/** The shared connection's state, as told to `on("state", ...)`. */
export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting";

/**
 * Where a subscription starts:
 * - omitted (or `null`): where this tab last left the channel (kept across page
 *   loads of the tab), else `"0"`;
 * - `"0"`: every message the channel retains, then new ones;
 * - `false`: only messages pushed from now on;
 * - an etag: every retained message pushed after it, then new ones.
 */
export type Start = "0" | (string & {}) | false | null;

/** What a message carries besides its payload (v1.1): set when its push named them. */
export interface MessageInfo {
  /** The event name given with `?event=` on the push. */
  event?: string;
  /** The push's content type. */
  type?: string;
}

/** Called with each message of a channel, in order. */
export type MessageCallback = (payload: string, etag: string, info: MessageInfo) => void;

/** A subscription, as `sub` returns it. */
export interface Subscription {
  readonly channel: string;
  /** Stop receiving on this subscription (the page's others go on). */
  cancel(): void;
}

/** The attributes a push may give (`martd.pub`'s fourth argument). */
export interface PushAttributes {
  /** Messages the channel keeps, 1..10000. */
  size?: number;
  /** Seconds a message is kept, 1..2592000. */
  life?: number;
  /** At most one subscriber. */
  one2one?: boolean;
  /** Tell subscribers who joins and leaves. */
  presence?: boolean;
  /** The message's event name. */
  event?: string;
}

/** martd's answer to a push. */
export interface PushAnswer {
  channel: string;
  etag: string;
  subscribers: number;
  messages: number;
  /** `false` for an empty push: stored with an etag, delivered to nobody. */
  delivered?: false;
}

/** A refused push: the Promise of `pub` rejects with it. */
export interface PushError extends Error {
  /** The HTTP status (0 when the connection closed before an answer). */
  status: number;
}

export type PushCallback = (error: PushError | null, answer?: PushAnswer) => void;

/** A channel the server refused (401, 403, 409, 410), or a failure on the way. */
export interface ErrorDetail {
  channel?: string;
  status?: number;
  error?: string;
}

export interface ChannelDetail {
  channel: string;
}

export interface StateDetail {
  state: ConnectionState;
  transport: Transport | null;
}

/** Someone (a `cid`) began (`join`) or stopped (`leave`) subscribing to a channel with presence. */
export interface PresenceEvent {
  channel: string;
  cid: string;
  user: string | null;
}

/** One subscriber of a channel, as `presence` lists them. */
export interface PresenceClient {
  cid: string;
  user: string | null;
  transport: Transport;
}

export interface EventDetails {
  error: ErrorDetail;
  missed: ChannelDetail;
  kicked: ChannelDetail;
  deleted: ChannelDetail;
  state: StateDetail;
  join: PresenceEvent;
  leave: PresenceEvent;
}

export type EventName = keyof EventDetails;

export interface Config {
  /** Where martd is mounted, e.g. `"https://example.com/martd"`; found from the script's `src` when loaded by a tag. */
  url: string;
  /** A forced list of transports, in the order to try them; `null`: choose. */
  transports: Transport[] | null;
  /** One connection for all tabs of this origin. */
  share: boolean;
  /** Milliseconds a stream may take to open before the next transport is tried. */
  stall: number;
  /** Milliseconds without any WebSocket frame after which it counts as dead. */
  idle: number;
  /** A signed token: grants for private channels and pushes. */
  token: string | null;
  /** Send cookies to martd on another origin (EventSource and XHR `withCredentials`). */
  credentials: boolean;
  /** Seconds a long-poll waits. */
  timeout: number;
  /** Milliseconds before the first reconnect; doubles up to `maxRetry`. */
  retry: number;
  maxRetry: number;
}

export interface ConfigOptions extends Partial<Config> {
  /** Force one transport (`null`: choose again). */
  transport?: Transport | null;
}

export interface Martd {
  /** The client's version. */
  readonly version: string;
  /** A random id made on each page load; a client's reconnects carry it. */
  readonly cid: string;
  readonly state: ConnectionState;
  readonly transport: Transport | null;

  /** Receive each message of `channel`, from `start` on (see `Start`). */
  sub(channel: string, cb: MessageCallback, start?: Start): Subscription;
  /**
   * Push into `channel` with its key (`null` for none: a page that is a server).
   * A string is sent as it is, anything else as JSON. `done`, if given, is
   * called node-style as well (browsers without `Promise` get `null` back).
   */
  pub(
    channel: string,
    key: string | null,
    data: unknown,
    attrs?: PushAttributes | null,
    done?: PushCallback,
  ): Promise<PushAnswer>;
  pub(channel: string, key: string | null, data: unknown, done: PushCallback): Promise<PushAnswer>;
  /** Who subscribes to `channel` now; rejects with an Error whose `status` is the answer (403 without server rights on it). */
  presence(channel: string): Promise<PresenceClient[]>;

  on<K extends EventName>(name: K, fn: (detail: EventDetails[K]) => void): Martd;
  off<K extends EventName>(name: K, fn: (detail: EventDetails[K]) => void): Martd;

  /** The current settings. */
  config(): Config;
  /** Change settings; the connection restarts when needed. */
  config(options: ConfigOptions): Martd;

  /** The channels the shared connection carries. */
  channels(): string[];
}

export declare const martd: Martd;
export default martd;
export declare const sub: Martd["sub"];
export declare const pub: Martd["pub"];
export declare const on: Martd["on"];

declare global {
  /** The classic script's global. */
  var martd: Martd;
}
