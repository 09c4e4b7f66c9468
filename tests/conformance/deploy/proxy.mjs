// The shipped nginx configuration (deploy/nginx/livequery.conf.template) in front of
// parse-server and three livequery nodes on one Redis, with the real Parse JS SDK:
//   - an app that only sets `Parse.serverURL = 'https://…/parse'` gets its LiveQuery events
//     over wss:// on parse-server's own host and path (TLS terminated by nginx);
//   - plain ws:// on parse-server's host, and the dedicated LiveQuery host over wss://;
//   - clients spread over every node all receive every event (an upstream member answering
//     503, like a draining node, is passed over); one node is killed (SIGKILL), its clients
//     reconnect through nginx to the others and resubscribe, the clients of the other nodes
//     see no close, and events after that reach everyone.
// Registered by deploy.test.mjs (one real stack for the deployment tests), run by run.mjs, which
// makes the certificate and passes it to Node through NODE_EXTRA_CA_CERTS (this process then
// trusts it, on top of the usual CAs).
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';

import Parse from 'parse/node';

import { nginxBinary, startNginx } from './nginx.mjs';

const CLIENTS = 6;
const EVENT_MS = 8000;
const tlsDir = process.env.DEPLOY_TLS_DIR;
const missing = !nginxBinary() ? 'nginx is not installed' : null;
/** Why these tests are skipped (nginx missing and not required), or false. */
export const proxySkip = missing && !process.env.LIVEQUERY_TEST_REQUIRE_DEPLOY ? `skipped: ${missing}` : false;

let stack;
let nginx;
let draining;
let appLiveQueryURL;
const clients = [];

/** Collects a subscription's events and lets a test wait for one. */
function collect(subscription) {
  const events = [];
  let wake = () => {};
  for (const op of ['create', 'enter', 'update', 'leave', 'delete']) {
    subscription.on(op, (object) => { events.push({ op, id: object.id, object }); wake(); });
  }
  return {
    events,
    async waitFor(predicate, what, ms = EVENT_MS) {
      const deadline = Date.now() + ms;
      for (;;) {
        const found = events.find(predicate);
        if (found) return found;
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`no ${what} within ${ms} ms (got ${events.map((e) => e.op).join(',') || 'nothing'})`);
        await new Promise((resolve) => { const t = setTimeout(resolve, left); wake = () => { clearTimeout(t); resolve(); }; });
      }
    },
  };
}

function once(emitter, name, ms = EVENT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${name} within ${ms} ms`)), ms);
    // The SDK's subscriptions and clients expose on/emit over an inner `emitter`.
    (emitter.emitter ?? emitter).once(name, (...args) => { clearTimeout(timer); resolve(args); });
  });
}

/** Saves through REST with the master key (set-up only, not what clients see). */
async function save(className, fields, object = new Parse.Object(className)) {
  object.set(fields);
  return object.save(null, { useMasterKey: true });
}

const escape = (text) => text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

/** A line of nginx's access log (tests/conformance/deploy/nginx.mjs sets its format). */
function logLine(scheme, host, request, status, upstreams) {
  // A request the draining stub answered first lists it before the node that served it.
  const triedFirst = draining ? `(${escape(draining.address)}, )?` : '';
  return new RegExp(`^${escape(scheme)} ${escape(host)} "${escape(request)}" ${status} upstream=${triedFirst}(${upstreams.map(escape).join('|')})$`, 'm');
}

/**
 * A fourth member of nginx's livequery upstream that answers every WebSocket upgrade with HTTP
 * 503, as a livequery node does while it drains (or at limits.max_connections). nginx must
 * pass such an upgrade on to another node (`proxy_next_upstream … http_503`), not to the client.
 */
async function startDrainingNode() {
  const server = http.createServer((request, response) => response.writeHead(503).end());
  const stub = { upgrades: 0 };
  server.on('upgrade', (request, socket) => {
    stub.upgrades++;
    socket.end('HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  stub.address = `127.0.0.1:${server.address().port}`;
  stub.close = () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); });
  return stub;
}

const livequeryNodes = () => stack.nodes.map((node) => `127.0.0.1:${node.port}`);

/** Waits until nginx's access log has a line matching `pattern` (nginx logs a WebSocket when it closes). */
async function accessLogWith(pattern, message, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!pattern.test(nginx.accessLog()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const log = nginx.accessLog();
  assert.match(log, pattern, message);
  return log;
}

function liveQueryClient(serverURL) {
  const client = new Parse.LiveQueryClient({
    applicationId: stack.env.APP_ID,
    serverURL,
    javascriptKey: stack.env.JS_KEY,
  });
  clients.push(client);
  return client;
}

/** Registers the tests; `shared.stack` is the real stack, started before they run. */
export function proxyTests(shared) {
  before(async () => {
    if (missing) throw new Error(`${missing} (LIVEQUERY_TEST_REQUIRE_DEPLOY is set)`);
    if (!tlsDir || !process.env.NODE_EXTRA_CA_CERTS) throw new Error('run through tests/conformance/deploy/run.mjs (scripts/deploy-test)');
    stack = shared.stack;
    const parseServer = new URL(stack.env.PARSE_SERVER_URL).host;
    draining = await startDrainingNode();
    nginx = await startNginx({
      dir: path.join(stack.dir, 'nginx'),
      cert: path.join(tlsDir, 'cert.pem'),
      key: path.join(tlsDir, 'key.pem'),
      parseServers: [parseServer],
      livequeryServers: [...stack.nodes.map((node) => `127.0.0.1:${node.port}`), draining.address],
    });
    // The app of the first test: it sets only serverURL, through nginx over TLS. The default
    // LiveQuery client takes the master key from the SDK's configuration when it is created, so
    // it is created first; the master key only sets data up through REST.
    Parse.initialize(stack.env.APP_ID, stack.env.JS_KEY);
    Parse.serverURL = `https://127.0.0.1:${nginx.httpsPort}/parse`;
    appLiveQueryURL = Parse.liveQueryServerURL;
    await Parse.LiveQuery.open();
    Parse.masterKey = stack.env.MASTER_KEY;
  });

  after(async () => {
    for (const client of clients) await client.close().catch(() => {});
    await Parse.LiveQuery?.close?.().catch(() => {});
    await nginx?.stop();
    await draining?.close();
  });

  test('an app that sets only serverURL (https) gets its events over wss:// on parse-server\'s host and path', { timeout: 60_000 }, async () => {
    assert.ok(!appLiveQueryURL, 'the app does not set liveQueryServerURL');
    const className = `LQDeploy${randomUUID().slice(0, 8)}`;
    const tag = randomUUID();
    // Everything below goes through nginx: REST to parse-server, the WebSocket to livequery.
    const subscription = await new Parse.Query(className).equalTo('tag', tag).subscribe();
    const liveQuery = await Parse.CoreManager.getLiveQueryController().getDefaultLiveQueryClient();
    assert.equal(liveQuery.serverURL, `wss://127.0.0.1:${nginx.httpsPort}/parse`, 'the SDK derives the LiveQuery URL from serverURL');
    await once(subscription, 'open');
    const seen = collect(subscription);

    const object = await save(className, { tag, n: 1 });
    assert.equal((await seen.waitFor((e) => e.op === 'create', 'create')).id, object.id);
    await save(className, { n: 2 }, object);
    assert.equal((await seen.waitFor((e) => e.op === 'update', 'update')).object.get('n'), 2);
    await object.destroy({ useMasterKey: true });
    assert.equal((await seen.waitFor((e) => e.op === 'delete', 'delete')).id, object.id);

    await Parse.LiveQuery.close();
    // nginx logs a WebSocket once it has closed: the upgrade (101) on /parse over TLS, and the
    // REST calls passed on to parse-server.
    const log = await accessLogWith(logLine('https', '127.0.0.1', 'GET /parse HTTP/1.1', 101, livequeryNodes()), 'the WebSocket upgrade on /parse went over TLS to a livequery node');
    const parseServer = new URL(stack.env.PARSE_SERVER_URL).host;
    assert.match(log, logLine('https', '127.0.0.1', `POST /parse/classes/${className} HTTP/1.1`, 201, [parseServer]), 'the save went over TLS to parse-server');
  });

  test('ws:// on parse-server\'s host and wss:// on the LiveQuery host reach livequery', { timeout: 60_000 }, async () => {
    const className = `LQDeploy${randomUUID().slice(0, 8)}`;
    const tag = randomUUID();
    const plain = liveQueryClient(`ws://127.0.0.1:${nginx.httpPort}/parse`);
    const dedicated = liveQueryClient(`wss://localhost:${nginx.httpsPort}`);
    const recorders = [];
    for (const client of [plain, dedicated]) {
      client.open();
      const subscription = client.subscribe(new Parse.Query(className).equalTo('tag', tag));
      await once(subscription, 'open');
      recorders.push(collect(subscription));
    }
    const object = await save(className, { tag });
    for (const seen of recorders) assert.equal((await seen.waitFor((e) => e.op === 'create', 'create')).id, object.id);
    // The LiveQuery host serves WebSockets only; plain requests on parse-server's path reach parse-server.
    assert.equal((await fetch(`https://localhost:${nginx.httpsPort}/health`)).status, 404);
    const health = await fetch(`http://127.0.0.1:${nginx.httpPort}/parse/health`);
    assert.deepEqual(await health.json(), { status: 'ok' }, 'parse-server answers its own /parse/health');
    assert.equal((await fetch(`http://127.0.0.1:${nginx.httpPort}/`)).status, 404, 'other paths of parse-server\'s host are the operator\'s to route');
    for (const client of [plain, dedicated]) await client.close();
    await accessLogWith(logLine('http', '127.0.0.1', 'GET /parse HTTP/1.1', 101, livequeryNodes()), 'ws:// on parse-server\'s host reached a livequery node');
    await accessLogWith(logLine('https', 'localhost', 'GET / HTTP/1.1', 101, livequeryNodes()), 'wss:// on the LiveQuery host reached a livequery node');
  });

  test('several nodes on one Redis: every client gets every event; a killed node\'s clients move to the others', { timeout: 120_000 }, async () => {
    const className = `LQDeploy${randomUUID().slice(0, 8)}`;
    const tag = randomUUID();
    const url = `ws://127.0.0.1:${nginx.httpPort}/parse`;
    const members = [];
    // Sockets other tests left open (only when those failed) are not counted.
    const baseline = (await Promise.all(stack.nodes.map((node) => node.health())));
    for (let i = 0; i < CLIENTS; i++) {
      const client = liveQueryClient(url);
      const member = { client, closes: 0, errors: 0, opens: [] };
      client.on('close', () => { member.closes++; });
      client.on('error', () => { member.errors++; });
      client.open();
      member.subscription = client.subscribe(new Parse.Query(className).equalTo('tag', tag));
      member.subscription.on('open', () => member.opens.push(Date.now()));
      await once(member.subscription, 'open');
      member.seen = collect(member.subscription);
      members.push(member);
    }
    // least_conn spread the sockets over every node.
    const spread = await Promise.all(stack.nodes.map((node) => node.health()));
    const counts = spread.map((h, i) => h.connections - baseline[i].connections);
    assert.equal(counts.reduce((a, b) => a + b, 0), CLIENTS, `connections per node: ${counts}`);
    for (const [i, count] of counts.entries()) assert.ok(count >= 1, `node ${i + 1} holds no client (per node: ${counts})`);
    for (const [i, h] of spread.entries()) assert.equal(h.subscriptions - baseline[i].subscriptions, counts[i], 'one subscription per client');
    console.log(`# ${CLIENTS} clients through nginx (least_conn) over ${stack.nodes.length} nodes: ${counts.join(' / ')}`);
    // least_conn sends a socket to the draining stub (it never holds one) before any node has
    // two: its 503 was passed on to a node, and every client above is connected.
    assert.ok(draining.upgrades >= 1, 'nginx never tried the draining node');
    for (const member of members) assert.deepEqual([member.errors, member.closes], [0, 0], 'a client saw an error or a close while connecting');

    const object = await save(className, { tag, n: 1 });
    for (const member of members) assert.equal((await member.seen.waitFor((e) => e.op === 'create', 'create')).id, object.id);

    // Kill the busiest node without warning.
    const victim = counts.indexOf(Math.max(...counts));
    const killedAt = Date.now();
    await stack.nodes[victim].kill('SIGKILL');
    const moved = () => members.filter((m) => m.closes > 0);
    const deadline = Date.now() + 30_000;
    while (moved().length < counts[victim] || moved().some((m) => m.opens.at(-1) < killedAt)) {
      assert.ok(Date.now() < deadline, `after 30 s, ${moved().filter((m) => m.opens.at(-1) > killedAt).length} of ${counts[victim]} clients of the killed node had resubscribed`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const reconnectMs = moved().map((m) => m.opens.at(-1) - killedAt);
    console.log(`# reconnect (SIGKILL -> resubscribed through nginx) of ${reconnectMs.length} clients: ` +
      `max ${Math.max(...reconnectMs)} ms, each ${reconnectMs.join(', ')} ms ` +
      '(includes the SDK\'s random first backoff of up to 1 s and its 200 ms delay before "open")');

    assert.equal(moved().length, counts[victim], 'exactly the killed node\'s clients saw a close');
    for (const member of members) if (member.closes === 0) assert.equal(member.opens.length, 1, 'a client of a surviving node resubscribed');
    const survivors = stack.nodes.filter((_, i) => i !== victim);
    const afterKill = await Promise.all(survivors.map((node) => node.health()));
    const before = baseline.filter((_, i) => i !== victim).reduce((sum, h) => sum + h.connections, 0);
    assert.equal(afterKill.reduce((sum, h) => sum + h.connections, 0) - before, CLIENTS, 'every client is on a surviving node');

    await save(className, { n: 2 }, object);
    for (const member of members) assert.equal((await member.seen.waitFor((e) => e.op === 'update', 'update after the kill')).object.get('n'), 2);
    await object.destroy({ useMasterKey: true });
    for (const member of members) await member.seen.waitFor((e) => e.op === 'delete', 'delete after the kill');
    for (const member of members) {
      assert.deepEqual(member.seen.events.map((e) => e.op), ['create', 'update', 'delete'], 'each client saw each event once');
    }
  });
}
