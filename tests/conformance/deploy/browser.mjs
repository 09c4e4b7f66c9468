// The Parse JS SDK's browser bundle (parse/dist/parse.min.js) in headless Chromium against
// livequery on the real stack: the page saves through parse-server's REST API (CORS) and
// receives its events from livequery — create/update/enter/leave/delete, `select`, `watch`,
// unsubscribe, a logged-in user's ACL-restricted object, and a reconnect after livequery is
// restarted. Debian's chromium driven by playwright-core (no browser download).
//
// Registered by deploy.test.mjs (one real stack for the deployment tests): the page talks to
// its first livequery node directly. The page calls Parse.Object.disableSingleInstance(): in
// browsers the SDK otherwise keeps one shared state per object id, so the `original` of an
// update shows the new values and a `select`ed event object shows fields that were not sent
// (README.md, "In browsers").
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const CHROMIUM = '/usr/bin/chromium';
const EVENT_MS = 8000;
const BUNDLE = path.join(path.dirname(fileURLToPath(import.meta.url)), '../node_modules/parse/dist/parse.min.js');
const missing = !fs.existsSync(CHROMIUM) ? `${CHROMIUM} is not installed` : null;
/** Why these tests are skipped (chromium missing and not required), or false. */
export const browserSkip = missing && !process.env.LIVEQUERY_TEST_REQUIRE_DEPLOY ? `skipped: ${missing}` : false;

let stack;
let server;
let context;
let page;
const consoleLines = [];

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>livequery browser conformance</title>
<script src="/parse.min.js"></script>
<script>
  // Events per subscription name, as plain JSON, for the test to read.
  window.events = {};
  window.subscriptions = {};
  window.record = (name, subscription) => {
    window.events[name] = [];
    window.subscriptions[name] = subscription;
    subscription.opens = 0;
    subscription.on('open', () => { subscription.opens++; });
    for (const op of ['create', 'enter', 'update', 'leave', 'delete']) {
      subscription.on(op, (object, original) => {
        window.events[name].push({
          op,
          object: object.toJSON(),
          original: original && original.toJSON ? original.toJSON() : null,
        });
      });
    }
    return new Promise((resolve) => subscription.on('open', resolve));
  };
</script></head><body>livequery</body></html>`;

/** Waits until subscription `name` in the page has `count` events, and returns them all. */
async function eventsOf(name, count, ms = EVENT_MS) {
  try {
    await page.waitForFunction(([n, c]) => (window.events[n] ?? []).length >= c, [name, count], { timeout: ms, polling: 25 });
  } catch (error) {
    const got = await page.evaluate((n) => window.events[n], name);
    throw new Error(`subscription ${name}: wanted ${count} events within ${ms} ms, got ${JSON.stringify(got)} (${error.message}); console: ${consoleLines.slice(-5).join(' | ')}`);
  }
  return page.evaluate((n) => window.events[n], name);
}

/** Events that arrive within `ms` after the first `count`: there must be none. */
async function assertNoMore(name, count, ms = 500) {
  await new Promise((r) => setTimeout(r, ms));
  const events = await page.evaluate((n) => window.events[n], name);
  assert.equal(events.length, count, `unexpected events on ${name}: ${JSON.stringify(events.slice(count))}`);
}

/** Registers the tests; `shared.stack` is the real stack, started before they run. */
export function browserTests(shared) {
  before(async () => {
    if (missing) throw new Error(`${missing} (LIVEQUERY_TEST_REQUIRE_DEPLOY is set)`);
    const bundle = fs.readFileSync(BUNDLE);
    stack = shared.stack;
    server = http.createServer((request, response) => {
      if (request.url === '/') {
        response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(PAGE);
      } else if (request.url === '/parse.min.js') {
        response.writeHead(200, { 'content-type': 'text/javascript' }).end(bundle);
      } else {
        response.writeHead(404).end();
      }
    });
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));

    const { chromium } = await import('playwright-core');
    const userDataDir = path.join(stack.dir, 'chromium-profile');
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.on('console', (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
    page.on('pageerror', (error) => consoleLines.push(`pageerror: ${error.message}`));
    await page.goto(`http://127.0.0.1:${server.address().port}/`);
    await page.evaluate(({ APP_ID, JS_KEY, PARSE_SERVER_URL, LQ_URL }) => {
      Parse.initialize(APP_ID, JS_KEY);
      Parse.serverURL = PARSE_SERVER_URL;
      Parse.liveQueryServerURL = LQ_URL;
      Parse.Object.disableSingleInstance();
    }, stack.env);
  });

  after(async () => {
    if (consoleLines.length && process.env.DEPLOY_TEST_VERBOSE) console.log(consoleLines.join('\n'));
    await context?.close();
    await new Promise((resolve) => (server ? server.close(resolve) : resolve()));
  });

  const newClass = () => `LQBrowser${randomUUID().slice(0, 8)}`;

  test('events: create, update (with its original), leave, enter, delete', { timeout: 60_000 }, async () => {
    const className = newClass();
    await page.evaluate(async (className) => {
      await window.record('events', await new Parse.Query(className).greaterThan('score', 10).subscribe());
      const object = new Parse.Object(className);
      await object.save({ score: 20, name: 'a' });
      await object.save({ score: 30 });
      await object.save({ score: 5 });
      await object.save({ score: 15 });
      await object.destroy();
    }, className);
    const events = await eventsOf('events', 5);
    assert.deepEqual(events.map((e) => e.op), ['create', 'update', 'leave', 'enter', 'delete']);
    assert.equal(events[0].object.score, 20);
    assert.equal(events[1].object.score, 30);
    assert.equal(events[1].original.score, 20, 'the original of an update holds the old values');
    assert.equal(events[2].object.score, 5);
    assert.equal(events[3].object.score, 15);
    assert.equal(events[3].original.score, 5);
    assert.equal(events[4].object.objectId, events[0].object.objectId);
  });

  test('select sends only the selected fields; watch fires only on watched fields', { timeout: 60_000 }, async () => {
    const className = newClass();
    await page.evaluate(async (className) => {
      await window.record('select', await new Parse.Query(className).select('score').subscribe());
      await window.record('watch', await new Parse.Query(className).watch('score').subscribe());
      const object = new Parse.Object(className);
      await object.save({ score: 1, name: 'a', secret: 'x' });
      await object.save({ name: 'b' });
      await object.save({ score: 2 });
    }, className);
    const selected = await eventsOf('select', 3);
    assert.deepEqual(selected.map((e) => e.op), ['create', 'update', 'update']);
    for (const event of selected) {
      assert.equal(event.object.name, undefined, `select: name was not selected (${JSON.stringify(event.object)})`);
      assert.equal(event.object.secret, undefined);
      assert.ok('score' in event.object);
    }
    // watch: the create, then only the update that changed `score`.
    const watched = await eventsOf('watch', 2);
    assert.deepEqual(watched.map((e) => [e.op, e.object.score, e.object.name]), [['create', 1, 'a'], ['update', 2, 'b']]);
    await assertNoMore('watch', 2);
  });

  test('unsubscribe stops the events of that subscription only', { timeout: 60_000 }, async () => {
    const className = newClass();
    await page.evaluate(async (className) => {
      await window.record('gone', await new Parse.Query(className).subscribe());
      await window.record('kept', await new Parse.Query(className).subscribe());
      await new Parse.Object(className).save({ n: 1 });
    }, className);
    await eventsOf('gone', 1);
    await eventsOf('kept', 1);
    await page.evaluate(async (className) => {
      await window.subscriptions.gone.unsubscribe();
      await new Parse.Object(className).save({ n: 2 });
    }, className);
    await eventsOf('kept', 2);
    await assertNoMore('gone', 1);
  });

  test('a logged-in user receives its ACL-restricted object; an anonymous client does not', { timeout: 60_000 }, async () => {
    const className = newClass();
    await page.evaluate(async ({ className, env }) => {
      const user = await Parse.User.signUp(`u${Date.now()}`, 'pw-browser-test');
      // query.subscribe() sends the current user's session token.
      await window.record('user', await new Parse.Query(className).subscribe());
      const anonymous = new Parse.LiveQueryClient({ applicationId: env.APP_ID, serverURL: env.LQ_URL, javascriptKey: env.JS_KEY });
      anonymous.open();
      await window.record('anonymous', anonymous.subscribe(new Parse.Query(className)));
      const restricted = new Parse.Object(className);
      restricted.setACL(new Parse.ACL(user));
      await restricted.save({ kind: 'restricted' });
      const open = new Parse.Object(className);
      open.setACL(new Parse.ACL({ '*': { read: true } }));
      await open.save({ kind: 'public' });
    }, { className, env: stack.env });
    const mine = await eventsOf('user', 2);
    assert.deepEqual(mine.map((e) => e.object.kind), ['restricted', 'public']);
    const theirs = await eventsOf('anonymous', 1);
    await assertNoMore('anonymous', 1);
    assert.deepEqual(theirs.map((e) => e.object.kind), ['public']);
  });

  test('after livequery restarts, the page reconnects, resubscribes (session token included) and receives events', { timeout: 90_000 }, async () => {
    const className = newClass();
    await page.evaluate(async (className) => {
      await Parse.User.signUp(`r${Date.now()}`, 'pw-browser-test');
      await window.record('restart', await new Parse.Query(className).subscribe());
    }, className);
    const [node] = stack.nodes;
    await node.kill('SIGTERM');
    await node.start();
    // The SDK reconnects with backoff, then resubscribes every subscription (with the session
    // token it subscribed with): wait for the second 'open'. The new object is readable only by
    // the logged-in user, so its event proves the token came back too.
    await page.waitForFunction(() => window.subscriptions.restart.opens >= 2, null, { timeout: 30_000, polling: 50 });
    await page.evaluate(async (className) => {
      const object = new Parse.Object(className);
      object.setACL(new Parse.ACL(Parse.User.current()));
      await object.save({ after: 'restart' });
    }, className);
    const events = await eventsOf('restart', 1);
    assert.equal(events[0].object.after, 'restart');
  });
}
