// Shared helpers of the real-stack conformance suite. Every file runs with the environment
// stack.mjs exports: the real parse-server (REST) and the LiveQuery server under test.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import Parse from 'parse/node';
import WebSocket from 'ws';

export const env = process.env;
export const TARGET = env.TARGET ?? 'livequery';
export const CACHE_TIMEOUT_MS = Number(env.CACHE_TIMEOUT_MS ?? 1000);
/** How long an event may take through parse-server → Redis → LiveQuery → SDK. */
export const EVENT_TIMEOUT_MS = 5000;
/** How long "nothing arrives" is watched for, after a sentinel proved the pipeline flows. */
export const QUIET_MS = 400;

/**
 * Configures the SDK. The default LiveQuery client takes the master key from the SDK's
 * configuration when it is first created, so it is created before the master key (which the
 * tests use only to set data up through REST) is configured: `query.subscribe()` is then an
 * ordinary client, as in an app.
 */
export async function setupParse() {
  Parse.initialize(env.APP_ID, env.JS_KEY);
  Parse.serverURL = env.PARSE_SERVER_URL;
  Parse.liveQueryServerURL = env.LQ_URL;
  await Parse.LiveQuery.open();
  Parse.masterKey = env.MASTER_KEY;
  return Parse;
}

/**
 * A conformance test. `deviation` names the entry of protocol-spec/deviations.md where
 * livequery intentionally differs from parse-server's LiveQuery server: against the
 * reference, such a test must fail (it asserts livequery's behaviour) — if it passes, the
 * deviation list is wrong and the run reports it.
 */
export function conformance(name, fn, { deviation, unsafeForReference } = {}) {
  const options = { timeout: 60_000 };
  if (TARGET === 'reference' && unsafeForReference) {
    test(`${name} [reference differs: ${deviation}]`, { skip: unsafeForReference }, () => {});
  } else if (TARGET === 'reference' && deviation) {
    test(`${name} [reference differs: ${deviation}]`, options, async () => {
      let failed = false;
      try {
        await fn();
      } catch {
        failed = true;
      }
      assert.ok(failed, `documented deviation ${deviation}, but the reference behaved like livequery`);
    });
  } else {
    test(name, options, fn);
  }
}

/** A tag unique to one test, to keep tests' objects apart. */
export function tag() {
  return `t${randomUUID().replaceAll('-', '').slice(0, 12)}`;
}

/** Records every event of a subscription. */
export function record(subscription) {
  const events = [];
  const waiters = [];
  for (const op of ['create', 'enter', 'update', 'leave', 'delete']) {
    // The SDK emits (object, original, response), or (object, response) when there is no
    // original (create, delete, and an enter whose original is withheld).
    subscription.on(op, (object, original) => {
      const event = { op, object, original: original instanceof Parse.Object ? original : undefined };
      events.push(event);
      for (const waiter of [...waiters]) waiter();
    });
  }
  const errors = [];
  subscription.on('error', (error) => errors.push(error));
  return {
    events,
    errors,
    /** The next event (in order of arrival) not yet taken. */
    async next(ms = EVENT_TIMEOUT_MS) {
      const deadline = Date.now() + ms;
      while (this.taken >= events.length) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`no event within ${ms} ms (got ${events.length}: ${events.map((e) => e.op).join(',')})`);
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, left);
          waiters.push(() => { clearTimeout(timer); resolve(); });
        });
      }
      return events[this.taken++];
    },
    taken: 0,
    /** The next event satisfying `predicate`, skipping others (e.g. late events of set-up writes). */
    async nextWhere(predicate, ms = EVENT_TIMEOUT_MS) {
      const deadline = Date.now() + ms;
      for (;;) {
        const event = await this.next(Math.max(1, deadline - Date.now()));
        if (predicate(event)) return event;
      }
    },
    /** Asserts that nothing more arrives for a while. */
    async quiet(ms = QUIET_MS) {
      await new Promise((r) => setTimeout(r, ms));
      assert.equal(events.length, this.taken, `unexpected events: ${events.slice(this.taken).map((e) => `${e.op} ${e.object.id}`).join(', ')}`);
    },
  };
}

/** Subscribes (optionally with a session token) and records its events. */
export async function subscribe(query, sessionToken) {
  const subscription = await query.subscribe(sessionToken);
  const recorder = record(subscription);
  recorder.subscription = subscription;
  return recorder;
}

const openClients = new Set();

/** Closes the default LiveQuery client and every client a test opened (use in `after`). */
export async function closeAll() {
  const defaultClient = await Parse.CoreManager.getLiveQueryController().getDefaultLiveQueryClient();
  for (const lqClient of [...openClients, defaultClient]) {
    // The SDK's close() leaves a pending reconnect timer running (after an error frame with
    // reconnect: true, e.g. the reference rejecting `query`).
    if (lqClient.reconnectHandle) clearTimeout(lqClient.reconnectHandle);
    lqClient.close();
  }
  openClients.clear();
}

/** A LiveQuery client of its own (its own socket), e.g. with a connect-level token or master key. */
export async function client({ sessionToken, masterKey, javascriptKey = env.JS_KEY } = {}) {
  const client = new Parse.LiveQueryClient({
    applicationId: env.APP_ID,
    serverURL: env.LQ_URL,
    javascriptKey,
    masterKey,
    sessionToken,
  });
  openClients.add(client);
  client.open();
  await client.connectPromise;
  return client;
}

export async function subscribeWith(lqClient, query, sessionToken) {
  const subscription = lqClient.subscribe(query, sessionToken);
  await subscription.subscribePromise;
  const recorder = record(subscription);
  recorder.subscription = subscription;
  return recorder;
}

/** A raw WebSocket speaking the protocol by hand (for frames the SDK never sends). */
export async function raw() {
  const ws = new WebSocket(env.LQ_URL);
  openClients.add({ close: () => ws.terminate() });
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  const frames = [];
  const waiters = [];
  ws.on('message', (data) => {
    frames.push(JSON.parse(data.toString()));
    for (const waiter of waiters.splice(0)) waiter();
  });
  return {
    ws,
    send: (frame) => ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame)),
    async next(ms = EVENT_TIMEOUT_MS) {
      const deadline = Date.now() + ms;
      while (frames.length === 0) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`no frame within ${ms} ms`);
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, left);
          waiters.push(() => { clearTimeout(timer); resolve(); });
        });
      }
      return frames.shift();
    },
    async connect(extra = {}) {
      this.send({ op: 'connect', applicationId: env.APP_ID, javascriptKey: env.JS_KEY, ...extra });
      const reply = await this.next();
      assert.equal(reply.op, 'connected', JSON.stringify(reply));
      return reply;
    },
    close: () => ws.close(),
  };
}

/** Signs up a fresh user; returns it with its session token. */
export async function newUser(prefix = 'u') {
  const user = new Parse.User();
  const name = `${prefix}${randomUUID().slice(0, 10)}`;
  user.set('username', name);
  user.set('password', 'pw-' + name);
  user.set('email', `${name}@example.com`);
  await user.signUp(null, { useMasterKey: false });
  const token = user.getSessionToken();
  return { user, token, id: user.id, name };
}

/** Saves an object of `className` with `fields` (and optional ACL) as master. */
export async function save(className, fields, acl) {
  const object = new Parse.Object(className);
  if (acl) object.setACL(acl);
  await object.save(fields, { useMasterKey: true });
  return object;
}

export { assert, Parse };
