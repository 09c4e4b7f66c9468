// Cloud Code hooks benchmark: deliveries/s and publish→receipt latency for a class with an
// afterLiveQueryEvent hook — the example app's include-author rule
// (examples/cloud-code/rules.js, presentMessage) — on livequery (which calls the Cloud Function
// lqAfterEvent once per event and identity) and on parse-server's LiveQuery server (which runs
// the same rule as a trigger once per recipient), one after the other in the same run.
//
//   node tests/bench/hooks.mjs [--targets livequery,reference] [--subscribers 1,100,1000]
//                              [--users 0,1000] [--smoke] [--json FILE]
//
// --users U: 0 = every subscriber anonymous; U > 0 = subscribers spread over U signed-up users
// (session token at connect), which livequery cannot batch beyond one call per user. Every
// combination of --subscribers and --users with U ≤ subscribers is run.
// Input: parse-server's own Redis messages (`<appId>afterSave`, as tests/bench's load generator
// publishes them), each object carrying `seq`, `sentAt` and an `author` pointer. Per point:
// (1) a burst of E events → deliveries/s = deliveries / (last receipt − first publish);
// (2) open loop at half the burst's event rate for ~8 s → p50 / p99 publish→receipt (from the
// scheduled publish time). Every delivery must carry the included author's username; missing,
// duplicate and unenriched deliveries and error frames are counted (a run with any is not a
// performance figure). Everything runs on 127.0.0.1 and is stopped afterwards.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { startStack } from '../conformance/stack.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
// The conformance suite's pinned Node packages (scripts/stack-install).
const requireStack = createRequire(path.join(root, 'tests/conformance/package.json'));
const { createClient } = requireStack('redis');
const WebSocket = requireStack('ws');

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const smoke = args.includes('--smoke');
const targets = option('--targets', 'livequery,reference').split(',');
const subscriberCounts = option('--subscribers', smoke ? '1,10' : '1,100,1000').split(',').map(Number);
const userCounts = option('--users', smoke ? '0,2' : '0').split(',').map(Number);
const jsonOut = option('--json', path.join(root, 'target', 'bench', smoke ? 'hooks-smoke.json' : 'hooks.json'));
const livequeryBin = process.env.LIVEQUERY_BIN ?? path.join(root, 'target', smoke ? 'debug' : 'release', 'livequery');
const cpus = os.availableParallelism();
const SUT_CPU = cpus > 1 ? '1' : '0';
const OTHER_CPU = '0';
const CLASS = 'LQBenchHook';
const LATENCY_SECONDS = smoke ? 2 : 8;

function log(...parts) {
  console.error(`[hooks-bench ${new Date().toISOString().slice(11, 19)}]`, ...parts);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const nowMs = () => performance.timeOrigin + performance.now();

/**
 * livequery's hooks: the example's beforeConnect, and the include-author rule on CLASS. The
 * timeout is long enough for a burst's backlog of calls (the reference has no timeout): the
 * burst measures throughput, not the failure policy.
 */
function hooksConfig(dir) {
  const file = path.join(dir, 'hooks-bench.toml');
  fs.writeFileSync(file, `[hooks]
default_timeout = "60s"

[[hooks.hook]]
trigger = "beforeConnect"
function = "lqBeforeConnect"
on_failure = "reject"

[[hooks.hook]]
trigger = "afterLiveQueryEvent"
class_name = "${CLASS}"
function = "lqAfterEvent"
on_failure = "reject"
`);
  return file;
}

async function rest(stack, method, route, body, { asClient = false } = {}) {
  const key = asClient ? { 'X-Parse-Javascript-Key': stack.env.JS_KEY } : { 'X-Parse-Master-Key': stack.env.MASTER_KEY };
  const response = await fetch(`${stack.env.PARSE_SERVER_URL}${route}`, {
    method,
    headers: { 'X-Parse-Application-Id': stack.env.APP_ID, ...key, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${route}: ${response.status} ${text}`);
  return JSON.parse(text);
}

/** Signs up `count` users (a few at a time: password hashing is CPU-bound); their ids and tokens. */
async function signUp(stack, count, prefix) {
  const users = [];
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      const name = `${prefix}-${i}`;
      // As a client: a sign-up with the master key creates no session (no sessionToken).
      const user = await rest(stack, 'POST', '/users', { username: name, password: `pw-${name}` }, { asClient: true });
      if (!user.sessionToken) throw new Error(`sign-up of ${name} returned no session token`);
      users[i] = { id: user.objectId, token: user.sessionToken, name };
    }
  };
  await Promise.all(Array.from({ length: 4 }, worker));
  return users;
}

/** Opens `count` connections, each with one subscription to this run's objects. */
async function openSubscribers(stack, count, users, run, counters) {
  const subscribers = [];
  let next = 0;
  const open = async () => {
    while (next < count) {
      const i = next++;
      const user = users.length > 0 ? users[i % users.length] : undefined;
      const ws = new WebSocket(stack.env.LQ_URL);
      const sub = { ws, seen: new Set() };
      subscribers[i] = sub;
      await new Promise((resolve, reject) => {
        let stage = 'connect';
        ws.once('error', reject);
        ws.on('close', () => { if (!counters.closing) counters.disconnected++; });
        ws.on('message', (data) => {
          const text = data.toString();
          if (stage !== 'ready') {
            const frame = JSON.parse(text);
            if (frame.op === 'connected' && stage === 'connect') {
              stage = 'subscribe';
              ws.send(JSON.stringify({ op: 'subscribe', requestId: 1, query: { className: CLASS, where: { run } }, ...(user ? { sessionToken: user.token } : {}) }));
            } else if (frame.op === 'subscribed') {
              stage = 'ready';
              resolve();
            } else {
              reject(new Error(`subscriber ${i}: ${text}`));
            }
            return;
          }
          receive(sub, text, counters);
        });
        ws.once('open', () => ws.send(JSON.stringify({ op: 'connect', applicationId: stack.env.APP_ID, javascriptKey: stack.env.JS_KEY, ...(user ? { sessionToken: user.token } : {}) })));
      });
    }
  };
  await Promise.all(Array.from({ length: 25 }, open));
  return subscribers;
}

// The hot path: no full JSON parse of every delivery (the client must not be the bottleneck).
const SEQ = /"seq":(\d+)/;
const SENT_AT = /"sentAt":(\d+)/;
function receive(sub, text, counters) {
  const at = nowMs();
  if (!text.startsWith('{"op":"create"') && !text.includes('"op":"create"')) {
    counters.other++;
    if (text.includes('"op":"error"') && counters.errorSamples.length < 3) counters.errorSamples.push(text.slice(0, 300));
    return;
  }
  const seq = Number(SEQ.exec(text)?.[1]);
  if (!(seq >= counters.firstSeq && seq < counters.endSeq)) {
    // A late delivery of the previous phase: not this phase's figure.
    counters.late++;
    return;
  }
  if (sub.seen.has(seq)) {
    counters.duplicate++;
    return;
  }
  sub.seen.add(seq);
  if (!text.includes('"username":"')) counters.unenriched++;
  counters.received++;
  counters.lastReceipt = at;
  // sentAt: the scheduled publish time in µs (an integer: printed alike by every JSON encoder).
  if (counters.latencies) counters.latencies.push(at - Number(SENT_AT.exec(text)[1]) / 1000);
}

function payload(run, seq, sentAt, authorId) {
  const iso = new Date(sentAt).toISOString();
  return JSON.stringify({
    currentParseObject: {
      run, seq, sentAt: Math.round(sentAt * 1000), author: { __type: 'Pointer', className: '_User', objectId: authorId }, body: 'x'.repeat(64),
      createdAt: iso, updatedAt: iso, ACL: { '*': { read: true } }, objectId: `h${run}s${seq}`, __type: 'Object', className: CLASS,
    },
  });
}

/**
 * Publishes `events` events (seq from `firstSeq`) at `rate` per second (0: as fast as possible)
 * and waits until every subscriber has them, or progress stalls. Returns the figures.
 */
async function phase(stack, redis, subscribers, { run, firstSeq, events, rate, authorId, latencies }) {
  const counters = subscribers.counters;
  Object.assign(counters, { errorSamples: [], firstSeq, endSeq: firstSeq + events, received: 0, duplicate: 0, unenriched: 0, other: 0, late: 0, lastReceipt: 0, latencies: latencies ? [] : null });
  const channel = `${stack.env.APP_ID}afterSave`;
  const expected = events * subscribers.length;
  const start = nowMs();
  let unheard = 0;
  for (let i = 0; i < events;) {
    if (rate > 0) {
      const due = start + (i * 1000) / rate;
      const wait = due - nowMs();
      if (wait > 1) {
        await sleep(wait);
        continue;
      }
      // Open loop: the latency counts from the scheduled time, even if publishing lags.
      const heard = await redis.publish(channel, payload(run, firstSeq + i, due, authorId));
      if (heard === 0) unheard++;
      i++;
    } else {
      const batch = Math.min(100, events - i);
      const sentAt = nowMs();
      const multi = redis.multi();
      for (let k = 0; k < batch; k++) multi.publish(channel, payload(run, firstSeq + i + k, sentAt, authorId));
      for (const heard of await multi.exec()) if (heard === 0) unheard++;
      i += batch;
    }
  }
  // Drain: until everything arrived, or nothing arrived for a minute (bounded at 5 minutes).
  let last = counters.received;
  let lastProgress = nowMs();
  const hardStop = nowMs() + 300_000;
  while (counters.received < expected && nowMs() < hardStop) {
    await sleep(100);
    if (counters.received !== last) {
      last = counters.received;
      lastProgress = nowMs();
    } else if (nowMs() - lastProgress > 60_000) {
      break;
    }
  }
  await sleep(200);
  const span = (counters.lastReceipt - start) / 1000;
  const sorted = latencies ? counters.latencies.sort((a, b) => a - b) : [];
  const pct = (p) => (sorted.length ? Number(sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))].toFixed(1)) : null);
  return {
    events, rate, expected, received: counters.received, missing: expected - counters.received, duplicate: counters.duplicate,
    unenriched: counters.unenriched, other_frames: counters.other, late_from_previous_phase: counters.late, complete: counters.received === expected, disconnected: counters.disconnected, unheard, error_samples: [...counters.errorSamples],
    span_seconds: span, delivery_rate: counters.received > 0 ? counters.received / span : 0,
    // Events fully delivered per second (what the steady phase may ask for).
    event_rate: counters.received > 0 ? counters.received / subscribers.length / span : 0,
    latency_ms: latencies ? { count: sorted.length, p50: pct(0.5), p99: pct(0.99), max: sorted.length ? Number(sorted[sorted.length - 1].toFixed(1)) : null } : null,
  };
}

/** Burst sizes: bounded total work; parse-server's LiveQuery server runs the hook per recipient. */
function burstEvents(target, subscribers, users) {
  if (smoke) return 10;
  const perRecipientCalls = target === 'reference' || users > 0;
  const budget = perRecipientCalls ? 3000 : 200_000;
  // At most 1,000: livequery queues up to 1,024 events per hook (QUEUE_EVENTS) and applies the
  // failure policy beyond; a larger burst measures that bound, not throughput.
  return Math.max(5, Math.min(perRecipientCalls ? 300 : 1000, Math.round(budget / subscribers)));
}

async function benchTarget(target) {
  log(`starting the stack for ${target} (LiveQuery server on CPU ${SUT_CPU}, the rest on CPU ${OTHER_CPU})`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'livequery-hooks-bench-'));
  const stack = await startStack({
    target,
    livequeryBin,
    lqCpus: SUT_CPU,
    otherCpus: OTHER_CPU,
    lqLogLevel: 'warn',
    cacheTimeoutMs: 5000,
    cloudCode: path.join(here, 'hooks-cloud.cjs'),
    lqArgs: ['--config', hooksConfig(dir)],
    redisArgs: ['--client-output-buffer-limit', 'pubsub 0 0 0'],
  });
  const results = [];
  // Stop the stack on Ctrl-C / SIGTERM too (its processes would outlive this one).
  const onSignal = () => stack.stop().then(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const redis = createClient({ url: stack.env.REDIS_URL });
  await redis.connect();
  try {
    await rest(stack, 'POST', `/schemas/${CLASS}`, {
      className: CLASS,
      fields: { run: { type: 'String' }, seq: { type: 'Number' }, sentAt: { type: 'Number' }, body: { type: 'String' }, author: { type: 'Pointer', targetClass: '_User' } },
    });
    const [author] = await signUp(stack, 1, 'author');
    const maxUsers = Math.max(0, ...userCounts);
    const allUsers = maxUsers > 0 ? await signUp(stack, maxUsers, 'reader') : [];
    if (maxUsers > 0) log(`${target}: ${maxUsers} users signed up`);
    let runNo = 0;
    for (const users of userCounts) {
      for (const count of subscriberCounts) {
        if (users > count) continue;
        const run = `r${runNo++}`;
        const counters = { disconnected: 0, closing: false, errorSamples: [] };
        const setupStart = nowMs();
        const subscribers = await openSubscribers(stack, count, allUsers.slice(0, users), run, counters);
        subscribers.counters = counters;
        const setupSeconds = (nowMs() - setupStart) / 1000;
        await sleep(500);
        const label = `${count} subscribers, ${users === 0 ? 'anonymous' : `${users} user${users > 1 ? 's' : ''}`}`;
        const events = burstEvents(target, count, users);
        log(`${target} ${label}: burst of ${events} events`);
        const burst = await phase(stack, redis, subscribers, { run, firstSeq: 0, events, rate: 0, authorId: author.id });
        log(`${target} ${label}: ${burst.delivery_rate.toFixed(0)} deliveries/s, ${burst.event_rate.toFixed(1)} events/s, missing ${burst.missing}, other frames ${burst.other_frames} ${burst.error_samples.join(' ')}`);
        if (burst.received === 0) {
          log(`${target} ${label}: nothing delivered; no steady phase`);
          results.push({ target, subscribers: count, users, label, setup_seconds: setupSeconds, burst, steady: null, server_cpu_seconds: cpuSeconds(stack.lqPid) });
          counters.closing = true;
          for (const sub of subscribers) sub.ws.terminate();
          continue;
        }
        const rate = Math.max(0.5, Number((burst.event_rate * 0.5).toPrecision(2)));
        const latencyEvents = Math.max(4, Math.round(rate * LATENCY_SECONDS));
        const steady = await phase(stack, redis, subscribers, { run, firstSeq: events, events: latencyEvents, rate, authorId: author.id, latencies: true });
        log(`${target} ${label}: at ${rate} ev/s p50 ${steady.latency_ms.p50} ms, p99 ${steady.latency_ms.p99} ms, missing ${steady.missing}`);
        const calls = await hookCalls(stack);
        if (calls !== null) log(`${target} ${label}: afterLiveQueryEvent hook calls so far ${calls}`);
        results.push({ target, subscribers: count, users, label, setup_seconds: setupSeconds, burst, steady, hook_calls_so_far: calls, server_cpu_seconds: cpuSeconds(stack.lqPid) });
        counters.closing = true;
        for (const sub of subscribers) sub.ws.terminate();
        await sleep(1000);
      }
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await redis.quit().catch(() => {});
    await stack.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return results;
}

/** livequery's afterLiveQueryEvent hook calls so far (its /metrics), or null (the reference). */
async function hookCalls(stack) {
  if (stack.env.TARGET !== 'livequery') return null;
  const text = await (await fetch(`${stack.env.LQ_HTTP}/metrics`)).text();
  let total = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('livequery_hook_calls_total{') && line.includes('trigger="afterLiveQueryEvent"')) total += Number(line.split(' ').pop());
  }
  return total;
}

function cpuSeconds(pid) {
  try {
    const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return null;
  }
}

function info() {
  const read = (cmd, argv) => {
    try {
      return execFileSync(cmd, argv, { encoding: 'utf8' }).trim();
    } catch {
      return 'unknown';
    }
  };
  const pkg = (name) => JSON.parse(fs.readFileSync(path.join(root, 'tests/conformance/node_modules', name, 'package.json'), 'utf8')).version;
  return {
    commit: read('git', ['-C', root, 'rev-parse', '--short', 'HEAD']),
    cpu: `${cpus} × ${/model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown'}`,
    node: process.version,
    parseServer: pkg('parse-server'),
    loadavg: fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
  };
}

function table(results) {
  const lines = ['| server | subscribers | identities | burst: events | deliveries/s | steady: ev/s | p50 / p99 ms | missing / dup / unenriched / other frames |', '|---|---|---|---|---|---|---|---|'];
  for (const r of results) {
    const b = r.burst;
    const s = r.steady;
    const bad = (p) => (p ? `${p.missing} / ${p.duplicate} / ${p.unenriched} / ${p.other_frames}` : '—');
    const steady = s ? `${s.rate} | ${s.latency_ms.p50} / ${s.latency_ms.p99}` : '— | —';
    lines.push(`| ${r.target === 'livequery' ? 'livequery' : 'parse-server LQ'} | ${r.subscribers} | ${r.users === 0 ? 'anonymous' : `${r.users} users`} | ${b.events} | ${Math.round(b.delivery_rate)} | ${steady} | ${bad(b)}; ${bad(s)} |`);
  }
  return lines.join('\n');
}

const before = info();
log(`load average before the run: ${before.loadavg}`);
const all = [];
for (const target of targets) all.push(...(await benchTarget(target)));
const after = info();
fs.mkdirSync(path.dirname(jsonOut), { recursive: true });
fs.writeFileSync(jsonOut, JSON.stringify({ info: before, loadavg_after: after.loadavg, args, results: all }, null, 2));
console.log(`Measured ${new Date().toISOString()} at commit ${before.commit}: ${before.cpu}, node ${before.node}, parse-server ${before.parseServer}; load average ${before.loadavg} before, ${after.loadavg} after.`);
console.log(`Command: node tests/bench/hooks.mjs ${args.join(' ')}`.trim());
console.log('');
console.log(table(all));
const failed = all.filter((r) => [r.burst, r.steady].some((p) => !p || p.missing || p.duplicate || p.unenriched || p.other_frames || p.disconnected));
for (const r of failed) log(`NOT CLEAN: ${r.target} ${r.label}: ${JSON.stringify({ burst: r.burst, steady: r.steady }).slice(0, 1500)}`);
if (failed.length > 0) process.exit(1);
