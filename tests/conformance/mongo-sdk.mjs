// The real Parse JS SDK against livequery on its MongoDB change-stream source, fed by the
// simulated replica set of the Rust test suite. Run by `crates/server/tests/it/mongo_sdk.rs`,
// which starts the server and the database and hands over LIVEQUERY_WS_URL; every write is a
// JSON line on stdout that the Rust side applies to the database, acknowledging with a line
// on stdin. Exits non-zero on the first failed assertion.
import assert from 'node:assert/strict';
import readline from 'node:readline';
import Parse from 'parse/node';

import { next } from './lib/livequery.mjs';

const acks = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** Applies one write to the database; resolves once it is in the oplog. */
async function db(command) {
  process.stdout.write(`${JSON.stringify(command)}\n`);
  const { value, done } = await acks.next();
  if (done || value !== 'ok') throw new Error(`the database refused ${JSON.stringify(command)}: ${value}`);
}

const at = (iso) => ({ $date: iso });
const stored = (id, fields) => ({
  _id: id, _rperm: ['*'], _wperm: [], _created_at: at('2026-11-22T09:00:00.000Z'), _updated_at: at('2026-11-22T09:00:00.000Z'), ...fields,
});

Parse.initialize('lqApp');
Parse.serverURL = 'http://127.0.0.1:9/parse';
Parse.liveQueryServerURL = process.env.LIVEQUERY_WS_URL;

try {
  const query = new Parse.Query('Message').equalTo('room', 'r1');
  const subscription = await query.subscribe();
  await next(subscription, 'open');

  // A write made straight to MongoDB (no parse-server involved) reaches the SDK.
  const created = next(subscription, 'create');
  await db({ op: 'insert', collection: 'Message', document: stored('m1', { room: 'r1', score: 1, _p_author: '_User$u1' }) });
  const [object] = await created;
  assert.ok(object instanceof Parse.Object);
  assert.equal(object.id, 'm1');
  assert.equal(object.get('score'), 1);
  assert.equal(object.get('author').id, 'u1');
  assert.ok(object.createdAt instanceof Date);
  assert.equal(object.createdAt.toISOString(), '2026-11-22T09:00:00.000Z');

  const updated = next(subscription, 'update');
  await db({ op: 'update', collection: 'Message', id: 'm1', set: { score: 2, _updated_at: at('2026-11-22T09:01:00.000Z') } });
  const [now, original] = await updated;
  assert.equal(now.get('score'), 2);
  assert.equal(original.get('score'), 1, 'exact original from the pre-image');

  // subscription.find(): current objects read from MongoDB.
  // Every listener is attached before its write: the frame may arrive before the write's ack.
  const createdSecond = next(subscription, 'create');
  await db({ op: 'insert', collection: 'Message', document: stored('m2', { room: 'r1', score: 7 }) });
  await createdSecond;
  const results = next(subscription, 'result');
  subscription.find();
  const [objects] = await results;
  assert.deepEqual(objects.map((o) => o.id).sort(), ['m1', 'm2']);
  assert.equal(objects.find((o) => o.id === 'm1').get('score'), 2);

  const left = next(subscription, 'leave');
  await db({ op: 'update', collection: 'Message', id: 'm2', set: { room: 'elsewhere' } });
  assert.equal((await left)[0].id, 'm2');

  // The oplog rolls over: events were lost. The SDK is told (error, reconnect: true), the
  // server closes the socket, and the SDK reconnects and subscribes again by itself.
  const client = await Parse.CoreManager.getLiveQueryController().getDefaultLiveQueryClient();
  const told = next(client, 'error', 10_000);
  const reopened = next(subscription, 'open', 15_000);
  await db({ op: 'lose_history' });
  const [error] = await told;
  assert.match(String(error), /Events may have been lost/);
  await reopened;

  const again = next(subscription, 'create', 10_000);
  await db({ op: 'insert', collection: 'Message', document: stored('m3', { room: 'r1' }) });
  assert.equal((await again)[0].id, 'm3', 'events flow again after the resubscription');

  await Parse.LiveQuery.close();
  process.stdout.write(`${JSON.stringify({ op: 'done' })}\n`);
  process.exit(0);
} catch (error) {
  console.error(error);
  process.exit(1);
}
