// Resource attacks against a running livequery, measured from outside (BENCHMARKS.md,
// "Hostile clients"). Not a test: it prints figures.
//
//   cargo build --release -p livequery-server && node tests/bench/attacks.mjs
//
// Attack 6 — memory: one socket sends 40 subscribes, each a `$in` of 500,000 integers in a
// frame under 1 MiB; then the same within the operand cap (40 × 10,000 distinct integers),
// on one socket and on 20 sockets. RSS before and after, and whether the server still
// serves a canary subscriber.
// Attack 7 — CPU: `{tags: {$nin: [100,000 numbers]}}` (the operand cap raised to allow it),
// then objects with 5,000-element `tags` arrays, each followed in the same batch by a
// canary object for another subscriber, on one dispatcher: the canary's publish-to-receipt
// latency is the delay the attack imposes on other objects.
//
// The server runs on the embedded source, pinned to one core (CPU 1 when there are two).
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const WebSocket = createRequire(path.join(root, 'tests/conformance/package.json'))('ws');
const bin = process.env.LIVEQUERY_BIN ?? path.join(root, 'target', 'release', 'livequery');
const CPU = os.availableParallelism() > 1 ? '1' : '0';
const MASTER_KEY = 'attack-bench-master-key';

const log = (...parts) => console.error('[attacks]', ...parts);

async function startServer(extraEnv = {}) {
  const child = spawn('taskset', ['-c', CPU, bin], {
    env: {
      ...process.env,
      RUST_LOG: '',
      LIVEQUERY__SERVER__LISTEN: '127.0.0.1:0',
      LIVEQUERY__PARSE__MASTER_KEY: MASTER_KEY,
      LIVEQUERY__LOG__FORMAT: 'json',
      LIVEQUERY__LOG__LEVEL: 'warn,livequery_server=info',
      LIVEQUERY__DISPATCH__WORKERS: '1',
      // stop() waits for the exit: no gradual drain.
      LIVEQUERY__SERVER__DRAIN_PERIOD: '0s',
      ...extraEnv,
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines = readline.createInterface({ input: child.stdout });
  const listen = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('livequery did not start')), 20_000);
    lines.on('line', (line) => {
      try {
        const record = JSON.parse(line);
        if (record.message === 'livequery is serving') {
          clearTimeout(timer);
          resolve(record.listen);
        }
      } catch { /* not JSON */ }
    });
  });
  // taskset execs the server: the child's pid is the server's.
  return {
    pid: child.pid,
    url: `ws://${listen}`,
    http: `http://${listen}`,
    async stop() {
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
    },
  };
}

function rssMiB(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
  return kb / 1024;
}

async function publish(server, messages) {
  const response = await fetch(`${server.http}/livequery/v1/publish/afterSave`, {
    method: 'POST',
    headers: { 'X-Parse-Master-Key': MASTER_KEY, 'Content-Type': 'application/json' },
    body: JSON.stringify(messages.map((object) => ({ currentParseObject: object }))),
  });
  if (!response.ok) throw new Error(`publish: ${response.status} ${await response.text()}`);
}

class Client {
  static async open(server) {
    const ws = new WebSocket(server.url, { maxPayload: 64 * 1024 * 1024 });
    await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
    const client = new Client(ws);
    client.send({ op: 'connect', applicationId: 'bench' });
    await client.next((f) => f.op === 'connected');
    return client;
  }

  constructor(ws) {
    this.ws = ws;
    this.frames = [];
    this.waiters = [];
    ws.on('message', (data) => {
      const frame = JSON.parse(data.toString());
      frame.receivedAt = performance.now();
      const waiter = this.waiters.findIndex((w) => w.match(frame));
      if (waiter >= 0) {
        const [{ resolve }] = this.waiters.splice(waiter, 1);
        resolve(frame);
      } else {
        this.frames.push(frame);
      }
    });
  }

  send(frame) {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
  }

  next(match, timeoutMs = 30_000) {
    const queued = this.frames.findIndex(match);
    if (queued >= 0) return Promise.resolve(this.frames.splice(queued, 1)[0]);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('timed out waiting for a frame')), timeoutMs);
      this.waiters.push({ match, resolve: (f) => { clearTimeout(timer); resolve(f); } });
    });
  }

  close() {
    this.ws.terminate();
  }
}

/// Subscribes and returns the reply frame (subscribed or error).
async function subscribeRaw(client, requestId, text) {
  client.send(text);
  return client.next((f) => f.requestId === requestId && (f.op === 'subscribed' || f.op === 'error'));
}

async function stillServes(server) {
  const canary = await Client.open(server);
  await subscribeRaw(canary, 1, JSON.stringify({ op: 'subscribe', requestId: 1, query: { className: 'Canary', where: {} } }));
  const sent = performance.now();
  await publish(server, [{ className: 'Canary', objectId: `c${Date.now()}` }]);
  const frame = await canary.next((f) => f.op === 'create', 10_000);
  canary.close();
  return frame.receivedAt - sent;
}

async function attack6() {
  const server = await startServer();
  const results = {};
  try {
    await new Promise((r) => setTimeout(r, 300));
    const before = rssMiB(server.pid);
    // (a) The frames: 500,000 one-digit integers, each frame under 1 MiB.
    const attacker = await Client.open(server);
    const ones = new Array(500_000).fill(1).join(',');
    const replies = {};
    for (let id = 1; id <= 40; id += 1) {
      const text = `{"op":"subscribe","requestId":${id},"query":{"className":"M","where":{"n":{"$in":[${ones}]}}}}`;
      if (id === 1) results.frameBytes = Buffer.byteLength(text);
      const reply = await subscribeRaw(attacker, id, text);
      const key = reply.op === 'error' ? `error ${reply.code}` : reply.op;
      replies[key] = (replies[key] ?? 0) + 1;
    }
    results.hugeOperands = { replies, rssBeforeMiB: before, rssAfterMiB: rssMiB(server.pid) };
    // (b) Within the cap: 40 × 10,000 distinct integers on one socket.
    // Distinct queries on every socket (identical ones would share one compiled query).
    const within = async (client, socket) => {
      const counts = {};
      for (let id = 100; id < 140; id += 1) {
        const items = Array.from({ length: 10_000 }, (_, i) => socket * 10_000_000 + id * 10_000 + i).join(',');
        const text = `{"op":"subscribe","requestId":${id},"query":{"className":"M","where":{"n":{"$in":[${items}]}}}}`;
        const reply = await subscribeRaw(client, id, text);
        const key = reply.op === 'error' ? `error ${reply.code}` : reply.op;
        counts[key] = (counts[key] ?? 0) + 1;
      }
      return counts;
    };
    const beforeWithin = rssMiB(server.pid);
    results.withinCapOneSocket = { replies: await within(attacker, 0), rssBeforeMiB: beforeWithin, rssAfterMiB: rssMiB(server.pid) };
    // (c) The same on 20 more sockets.
    const beforeMany = rssMiB(server.pid);
    const sockets = [];
    let accepted = 0;
    for (let i = 0; i < 20; i += 1) {
      const client = await Client.open(server);
      sockets.push(client);
      accepted += (await within(client, i + 1)).subscribed ?? 0;
    }
    results.withinCapTwentySockets = { accepted, rssBeforeMiB: beforeMany, rssAfterMiB: rssMiB(server.pid) };
    results.canaryLatencyMs = await stillServes(server);
    attacker.close();
    sockets.forEach((s) => s.close());
  } finally {
    await server.stop();
  }
  return results;
}

function percentile(values, p) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function attack7() {
  const server = await startServer({ LIVEQUERY__LIMITS__MAX_OPERAND_ITEMS: '100000', LIVEQUERY__LIMITS__MAX_MESSAGE_BYTES: '4194304' });
  const results = {};
  try {
    const attacker = await Client.open(server);
    const nin = Array.from({ length: 100_000 }, (_, i) => i).join(',');
    const reply = await subscribeRaw(attacker, 1, `{"op":"subscribe","requestId":1,"query":{"className":"Tagged","where":{"tags":{"$nin":[${nin}]}}}}`);
    results.subscribe = reply.op;
    const canary = await Client.open(server);
    await subscribeRaw(canary, 1, JSON.stringify({ op: 'subscribe', requestId: 1, query: { className: 'Canary', where: {} } }));
    const tags = Array.from({ length: 5_000 }, (_, i) => 200_000 + i);
    const latency = async (withAttack, round) => {
      const objects = [];
      if (withAttack) objects.push({ className: 'Tagged', objectId: `t${round}`, tags });
      objects.push({ className: 'Canary', objectId: `c${round}` });
      const sent = performance.now();
      await publish(server, objects);
      const frame = await canary.next((f) => f.op === 'create' && f.object.objectId === `c${round}`);
      let attackMs;
      if (withAttack) {
        const event = await attacker.next((f) => f.op === 'create' && f.object.objectId === `t${round}`);
        attackMs = event.receivedAt - sent;
      }
      return { canaryMs: frame.receivedAt - sent, attackMs };
    };
    const baseline = [];
    for (let i = 0; i < 30; i += 1) baseline.push((await latency(false, `b${i}`)).canaryMs);
    const under = [];
    const attackEvents = [];
    for (let i = 0; i < 30; i += 1) {
      const { canaryMs, attackMs } = await latency(true, `a${i}`);
      under.push(canaryMs);
      attackEvents.push(attackMs);
    }
    results.canaryBaselineMs = { p50: percentile(baseline, 50), max: Math.max(...baseline) };
    results.canaryBehindAttackMs = { p50: percentile(under, 50), max: Math.max(...under) };
    results.attackEventPublishToReceiptMs = { p50: percentile(attackEvents, 50), max: Math.max(...attackEvents) };
    attacker.close();
    canary.close();
  } finally {
    await server.stop();
  }
  return results;
}

const report = { attack6: await attack6(), attack7: await attack7() };
console.log(JSON.stringify(report, null, 2));
