// Parity details (protocol-spec/deviations.md, frames.md, matching.md): the handshake's
// subprotocol, empty and too-deep frames, the dates of event objects, the fallback of an
// invalid subscription token, and matcher cases where the reference and Parse REST differ.
import { after, before } from 'node:test';
import { createClient } from 'redis';
import WebSocket from 'ws';

import { Parse, assert, client, closeAll, conformance, env, newUser, raw, save, setupParse, subscribe, subscribeWith, tag } from './lib.mjs';

before(setupParse);
after(closeAll);

/** Publishes a message on parse-server's Redis feed, as parse-server would. */
async function publish(channel, message) {
  const redis = createClient({ url: env.REDIS_URL });
  await redis.connect();
  try {
    await redis.publish(`${env.APP_ID}${channel}`, JSON.stringify(message));
  } finally {
    await redis.quit();
  }
}

const OPEN_CLP = { find: { '*': true }, get: { '*': true }, count: { '*': true }, create: { '*': true }, update: { '*': true }, delete: { '*': true }, addField: { '*': true }, protectedFields: { '*': [] } };

conformance('a browser offering subprotocols gets the first one selected', async () => {
  const ws = new WebSocket(env.LQ_URL, ['x', 'y']);
  try {
    await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
    assert.equal(ws.protocol, 'x');
    const reply = new Promise((resolve) => ws.once('message', (data) => resolve(JSON.parse(data.toString()))));
    ws.send(JSON.stringify({ op: 'connect', applicationId: env.APP_ID, javascriptKey: env.JS_KEY }));
    assert.equal((await reply).op, 'connected');
  } finally {
    ws.terminate();
  }
});

conformance('an empty text frame gets "Missing required property: op"', async () => {
  const socket = await raw();
  socket.send('');
  assert.deepEqual(await socket.next(), { op: 'error', error: 'Missing required property: op', code: 1, reconnect: true, requestId: null });
  await socket.connect();
  socket.close();
});

conformance('a where nested 1,000 levels deep gets an error frame', async () => {
  const socket = await raw();
  await socket.connect();
  const where = `${'{"$or":['.repeat(1000)}{"a":1}${']}'.repeat(1000)}`;
  socket.send(`{"op":"subscribe","requestId":1,"query":{"className":"LQParity","where":${where}}}`);
  assert.deepEqual(await socket.next(), { op: 'error', error: 'Query nested too deeply: JSON deeper than 127 levels', code: 102, reconnect: false, requestId: 1 });
  socket.close();
}, { deviation: 'P7' });

conformance('event dates are re-encoded: milliseconds in UTC, updatedAt from createdAt', async () => {
  const t = tag();
  const sub = await subscribe(new Parse.Query('LQParity').equalTo('tag', t));
  const socket = await raw();
  await socket.connect();
  socket.send({ op: 'subscribe', requestId: 1, query: { className: 'LQParity', where: { tag: t } } });
  assert.equal((await socket.next()).op, 'subscribed');
  await publish('afterSave', {
    currentParseObject: {
      tag: t, createdAt: '2024-01-02T03:04:05Z',
      when: { __type: 'Date', iso: '2024-01-02T05:04:05.500+02:00' },
      list: [{ __type: 'Date', iso: '2024-01-02T03:04:05.123456Z' }],
      objectId: `o${t}`, __type: 'Object', className: 'LQParity',
    },
    classLevelPermissions: OPEN_CLP,
  });
  const frame = await socket.next();
  assert.equal(frame.op, 'create');
  assert.equal(frame.object.createdAt, '2024-01-02T03:04:05.000Z');
  assert.equal(frame.object.updatedAt, '2024-01-02T03:04:05.000Z');
  assert.deepEqual(frame.object.when, { __type: 'Date', iso: '2024-01-02T03:04:05.500Z' });
  assert.deepEqual(frame.object.list, [{ __type: 'Date', iso: '2024-01-02T03:04:05.123Z' }]);
  const event = await sub.next();
  assert.equal(event.object.updatedAt.toISOString(), '2024-01-02T03:04:05.000Z');
  socket.close();
});

conformance('a createdAt with an offset is brought to UTC', async () => {
  const t = tag();
  const socket = await raw();
  await socket.connect();
  socket.send({ op: 'subscribe', requestId: 1, query: { className: 'LQParity', where: { tag: t } } });
  assert.equal((await socket.next()).op, 'subscribed');
  await publish('afterSave', {
    currentParseObject: { tag: t, createdAt: '2024-01-02T04:04:05.678+01:00', objectId: `o${t}`, __type: 'Object', className: 'LQParity' },
    classLevelPermissions: OPEN_CLP,
  });
  const frame = await socket.next();
  assert.equal(frame.object.createdAt, '2024-01-02T03:04:05.678Z');
  assert.equal(frame.object.updatedAt, '2024-01-02T03:04:05.678Z');
  socket.close();
}, { deviation: 'P6', unsafeForReference: 'a createdAt with an offset crashes the reference LiveQuery process (TypeError in Parse.Object toJSON)' });

conformance('an invalid subscription sessionToken falls back to the connect token for ACLs', async () => {
  const t = tag();
  const alice = await newUser('alice');
  const lq = await client({ sessionToken: alice.token });
  const sub = await subscribeWith(lq, new Parse.Query('LQParity').equalTo('tag', t), 'r:not-a-session');
  const acl = new Parse.ACL();
  acl.setReadAccess(alice.id, true);
  const saved = await save('LQParity', { tag: t }, acl);
  const event = await sub.next();
  assert.equal(event.op, 'create');
  assert.equal(event.object.id, saved.id);
});

conformance('$options "u" is accepted', async () => {
  const t = tag();
  const sub = await subscribe(new Parse.Query('LQParity').equalTo('tag', t).matches('name', '^é', 'iu'));
  await save('LQParity', { tag: t, name: 'plain' });
  const match = await save('LQParity', { tag: t, name: 'Écru' });
  const event = await sub.next();
  assert.equal(event.object.id, match.id);
  await sub.quiet();
});

conformance('$containedBy on a missing field sends nothing', async () => {
  const t = tag();
  const sub = await subscribe(new Parse.Query('LQParity').equalTo('tag', t).containedBy('nums', [1, 2]));
  const sentinel = await subscribe(new Parse.Query('LQParity').equalTo('tag', t));
  await save('LQParity', { tag: t });
  await sentinel.next();
  await sub.quiet();
});

/** Subscribes with a raw where (so that the SDK's query builder does not rewrite it). */
async function subscribeWhere(where) {
  const query = Parse.Query.fromJSON('LQParity', { where });
  return subscribe(query);
}

conformance('$or entries that are not clauses are rejected with a clear message', async () => {
  const socket = await raw();
  await socket.connect();
  socket.send({ op: 'subscribe', requestId: 1, query: { className: 'LQParity', where: { $or: [null] } } });
  assert.deepEqual(await socket.next(), { op: 'error', error: '$or entries must be objects (query clauses), found null', code: 102, reconnect: false, requestId: 1 });
  socket.close();
}, { deviation: 'M17' });

conformance('$in flattens array items one level, as Parse REST does', async () => {
  const t = tag();
  const sub = await subscribeWhere({ tag: t, n: { $in: [[1, 2]] } });
  const saved = await save('LQParity', { tag: t, n: 2 });
  assert.equal((await sub.next()).object.id, saved.id);
}, { deviation: 'M22' });

conformance('a dotted path into a GeoPoint designates nothing, as in Parse REST', async () => {
  const t = tag();
  const sub = await subscribeWhere({ tag: t, 'loc.latitude': { $gt: 5 } });
  const sentinel = await subscribe(new Parse.Query('LQParity').equalTo('tag', t));
  await save('LQParity', { tag: t, loc: new Parse.GeoPoint(10, 20) });
  await sentinel.next();
  await sub.quiet();
}, { deviation: 'M23' });

conformance('a pointer operand under $eq matches the pointer', async () => {
  const t = tag();
  const owner = await save('LQParityOwner', { tag: t });
  const sub = await subscribeWhere({ tag: t, owner: { $eq: owner.toPointer() } });
  const saved = await save('LQParity', { tag: t, owner });
  assert.equal((await sub.next()).object.id, saved.id);
}, { deviation: 'M24' });

conformance('null inside $in matches a missing field', async () => {
  const t = tag();
  const sub = await subscribeWhere({ tag: t, missing: { $in: [null, 5] } });
  const saved = await save('LQParity', { tag: t });
  assert.equal((await sub.next()).object.id, saved.id);
}, { deviation: 'M25' });

conformance('$all: [] matches nothing', async () => {
  const t = tag();
  const sub = await subscribeWhere({ tag: t, nums: { $all: [] } });
  const sentinel = await subscribe(new Parse.Query('LQParity').equalTo('tag', t));
  await save('LQParity', { tag: t, nums: [1, 2] });
  await sentinel.next();
  await sub.quiet();
}, { deviation: 'M26' });

conformance('a query the reference cannot evaluate still gets its events (null in $in on a pointer field)', async () => {
  const t = tag();
  const owner = await save('LQParityOwner', { tag: t });
  const sub = await subscribeWhere({ tag: t, owner: { $in: [null, owner.toPointer()] } });
  const saved = await save('LQParity', { tag: t, owner });
  assert.equal((await sub.next()).object.id, saved.id);
}, { deviation: 'M27' });
