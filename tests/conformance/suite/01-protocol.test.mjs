// Connection, keys, subscription lifecycle and error frames (protocol-spec/frames.md, protocol-spec/errors.md).
import { after, before } from 'node:test';

import { Parse, closeAll, assert, client, conformance, env, raw, save, setupParse, subscribe, subscribeWith, tag } from './lib.mjs';

before(setupParse);
after(closeAll);

conformance('connect: a wrong key gets code 4, the right key connects, the app id is not checked', async () => {
  const socket = await raw();
  socket.send({ op: 'connect', applicationId: env.APP_ID, javascriptKey: 'wrong' });
  assert.deepEqual(await socket.next(), { op: 'error', error: 'Key in request is not valid', code: 4, reconnect: true, requestId: null });
  socket.send({ op: 'connect', applicationId: 'someOtherApp', javascriptKey: env.JS_KEY, installationId: 'inst-1' });
  const connected = await socket.next();
  assert.equal(connected.op, 'connected');
  assert.match(connected.clientId, /^[0-9a-f-]{36}$/);
  assert.equal(connected.installationId, 'inst-1');
  socket.close();
});

conformance('connect and subscribe frames are validated like the reference', async () => {
  const socket = await raw();
  const schemaError = (error) => ({ op: 'error', error, code: 1, reconnect: true, requestId: null });
  socket.send('{}');
  assert.deepEqual(await socket.next(), schemaError('Missing required property: op'));
  socket.send({ op: 'connect', applicationId: env.APP_ID, foo: 1 });
  assert.deepEqual(await socket.next(), schemaError('Additional properties not allowed'));
  socket.send({ op: 'subscribe', requestId: 1, query: { className: 'LQItem', where: {} } });
  assert.deepEqual(await socket.next(), {
    op: 'error', error: 'Can not find this client, make sure you connect to server before subscribing', code: 2, reconnect: true, requestId: null,
  });
  await socket.connect();
  socket.send({ op: 'subscribe', requestId: 1, query: { className: 'LQItem', where: {}, limit: 5 } });
  assert.deepEqual(await socket.next(), schemaError('Additional properties not allowed'));
  socket.send({ op: 'subscribe', requestId: 'x', query: { className: 'LQItem', where: {} } });
  assert.deepEqual(await socket.next(), schemaError('Invalid type: string (expected number)'));
  socket.close();
});

conformance('the JS SDK subscribes and unsubscribes; no events after unsubscribe', async () => {
  const t = tag();
  const sub = await subscribe(new Parse.Query('LQItem').equalTo('tag', t));
  await save('LQItem', { tag: t, n: 1 });
  assert.equal((await sub.next()).op, 'create');
  await sub.subscription.unsubscribe();
  await save('LQItem', { tag: t, n: 2 });
  await sub.quiet();
});

conformance('update replaces a subscription\'s query and replies subscribed', async () => {
  const t = tag();
  const socket = await raw();
  const { clientId } = await socket.connect();
  socket.send({ op: 'subscribe', requestId: 5, query: { className: 'LQItem', where: { tag: t, room: 'A' } } });
  assert.deepEqual(await socket.next(), { op: 'subscribed', clientId, requestId: 5 });
  socket.send({ op: 'update', requestId: 5, query: { className: 'LQItem', where: { tag: t, room: 'B' }, keys: ['room'] } });
  assert.deepEqual(await socket.next(), { op: 'subscribed', clientId, requestId: 5 });
  await save('LQItem', { tag: t, room: 'A', text: 'x' });
  const b = await save('LQItem', { tag: t, room: 'B', text: 'x' });
  const event = await socket.next();
  assert.equal(event.op, 'create');
  assert.equal(event.object.objectId, b.id);
  assert.equal(event.object.text, undefined, 'keys of the update apply');
  socket.send({ op: 'unsubscribe', requestId: 99 });
  assert.deepEqual(await socket.next(), {
    op: 'error',
    error: `Cannot find subscription with clientId ${clientId} subscriptionId 99. Make sure you subscribe to live query server before unsubscribing.`,
    code: 2, reconnect: true, requestId: null,
  });
  socket.close();
});

conformance('an invalid regular expression is rejected with code 102', async () => {
  await assert.rejects(new Parse.Query('LQItem').matches('name', '(').subscribe(), (error) => {
    assert.equal(error.code, 102);
    assert.equal(error.message, 'Invalid regular expression: Invalid regular expression: /(/: Unterminated group');
    return true;
  });
});

conformance('a master-key client sees objects nobody else may read', async () => {
  const t = tag();
  const master = await client({ masterKey: env.MASTER_KEY });
  const anonymous = await subscribe(new Parse.Query('LQItem').equalTo('tag', t));
  const privileged = await subscribeWith(master, new Parse.Query('LQItem').equalTo('tag', t));
  const hidden = await save('LQItem', { tag: t, text: 'secret' }, new Parse.ACL());
  assert.equal((await privileged.next()).object.id, hidden.id);
  const visible = await save('LQItem', { tag: t, text: 'public' });
  assert.equal((await anonymous.next()).object.id, visible.id, 'the anonymous subscriber skipped the private object');
  master.close();
});

conformance('duplicate requestIds replace the subscription (requestId 0, -3 and 1.5 echoed)', async () => {
  const t = tag();
  const socket = await raw();
  await socket.connect();
  for (const requestId of [0, -3, 1.5]) {
    socket.send({ op: 'subscribe', requestId, query: { className: 'LQItem', where: { tag: t } } });
    const reply = await socket.next();
    assert.equal(reply.op, 'subscribed');
    assert.equal(reply.requestId, requestId);
  }
  socket.send({ op: 'subscribe', requestId: 1.5, query: { className: 'LQItem', where: { tag: t, n: 2 } } });
  assert.equal((await socket.next()).requestId, 1.5);
  await save('LQItem', { tag: t, n: 1 });
  const seen = [await socket.next(), await socket.next()].map((f) => f.requestId).sort();
  assert.deepEqual(seen, [-3, 0], 'requestId 1.5 now watches n = 2 only');
  socket.close();
});
