// Cloud Code LiveQuery hooks through the real stack, with the example app's Cloud Code
// (examples/cloud-code/main.js): parse-server's LiveQuery server runs it as triggers, livequery
// calls the same rules as Cloud Functions (examples/cloud-code/livequery.toml). The common tests
// assert what a Parse JS SDK client sees, identical for both servers; the failure-policy tests
// are livequery's own (hooks.toml) and are skipped against the reference.
import { after, before, test } from 'node:test';

import {
  assert, client, closeAll, conformance, EVENT_TIMEOUT_MS, env, newUser, Parse, raw, save, setupParse, subscribeWith, tag, TARGET,
} from '../suite/lib.mjs';

/** protocol-spec/deviations.md: afterLiveQueryEvent hooks see installationId (and sessionToken) null. */
const HOOK_INSTALLATION_ID = 'H2';
/** protocol-spec/deviations.md: a hook request's user is the _User's objectId only. */
const HOOK_USER_ID_ONLY = 'H3';

before(setupParse);
after(closeAll);

/** A test of livequery's failure policies (on_failure), which the reference does not have. */
function livequeryOnly(name, fn) {
  test(name, { timeout: 60_000, skip: TARGET === 'reference' ? 'livequery only: hook failure policies' : false }, fn);
}

/** A signed-up user of `tenant`, with a LiveQuery client of its own (session token at connect). */
async function member(tenant) {
  const account = await newUser('m');
  if (tenant !== undefined) {
    account.user.set('tenant', tenant);
    await account.user.save(null, { useMasterKey: true });
  }
  account.lq = await client({ sessionToken: account.token });
  return account;
}

/** Subscribes `account` to the Messages of `room` (where: room = <room> and nothing else). */
function follow(account, room) {
  return subscribeWith(account.lq, new Parse.Query('Message').equalTo('room', room), account.token);
}

function message(fields) {
  return save('Message', fields);
}

/** The next frame of a raw socket, which must be an error. */
async function errorFrame(socket) {
  const frame = await socket.next();
  assert.equal(frame.op, 'error', JSON.stringify(frame));
  return frame;
}

conformance('beforeConnect: a banned installation gets an error frame instead of connected (raw frames)', async () => {
  const installationId = `inst-${tag()}`;
  await save('LiveQueryBan', { installationId, reason: 'spam' });
  const socket = await raw();
  socket.send({ op: 'connect', applicationId: env.APP_ID, javascriptKey: env.JS_KEY, installationId });
  assert.deepEqual(await errorFrame(socket), { op: 'error', code: 119, error: 'Banned: spam', reconnect: false, requestId: null });
  // Another installation is not banned.
  const other = await raw();
  await other.connect({ installationId: `inst-${tag()}` });
});

conformance('beforeConnect: the SDK reports the ban as an error event and a rejected connect', async () => {
  const installationId = `inst-${tag()}`;
  await save('LiveQueryBan', { installationId, reason: 'abuse' });
  const lq = new Parse.LiveQueryClient({ applicationId: env.APP_ID, serverURL: env.LQ_URL, javascriptKey: env.JS_KEY, installationId });
  const errors = [];
  lq.on('error', (error) => errors.push(error));
  lq.open();
  try {
    await assert.rejects(lq.connectPromise, (error) => error instanceof Parse.Error && error.code === 119 && error.message === 'Banned: abuse');
    assert.deepEqual(errors, ['Banned: abuse']);
  } finally {
    lq.close();
  }
});

conformance('beforeConnect: a banned user is refused, with the token given at connect', async () => {
  const banned = await newUser('b');
  await save('LiveQueryBan', { userId: banned.id, reason: 'banned user' });
  const socket = await raw();
  socket.send({ op: 'connect', applicationId: env.APP_ID, javascriptKey: env.JS_KEY, sessionToken: banned.token });
  assert.deepEqual(await errorFrame(socket), { op: 'error', code: 119, error: 'Banned: banned user', reconnect: false, requestId: null });
});

conformance('beforeSubscribe: a subscription without a user is refused (code and message from Cloud Code)', async () => {
  const socket = await raw();
  await socket.connect();
  socket.send({ op: 'subscribe', requestId: 1, query: { className: 'Message', where: { room: tag() } } });
  assert.deepEqual(await errorFrame(socket), { op: 'error', code: 119, error: 'Log in to follow messages', reconnect: false, requestId: 1 });
  // Through the SDK: the subscription's promise is rejected with the same Parse.Error.
  const lq = await client();
  const subscription = lq.subscribe(new Parse.Query('Message').equalTo('room', tag()));
  await assert.rejects(subscription.subscribePromise, (error) => error.code === 119 && error.message === 'Log in to follow messages');
});

conformance('beforeSubscribe: a user without a tenant is refused', async () => {
  const account = await member(undefined);
  const subscription = account.lq.subscribe(new Parse.Query('Message').equalTo('room', tag()), account.token);
  await assert.rejects(subscription.subscribePromise, (error) => error.code === 119 && error.message === 'Your account belongs to no tenant');
});

conformance('beforeSubscribe: a plain Error thrown by Cloud Code is code 141 with its message', async () => {
  const socket = await raw();
  await socket.connect();
  socket.send({ op: 'subscribe', requestId: 7, query: { className: 'LQHookPlain', where: {} } });
  assert.deepEqual(await errorFrame(socket), { op: 'error', code: 141, error: 'Plain refusal', reconnect: false, requestId: 7 });
});

conformance('beforeSubscribe: the where is rewritten to the user\'s tenant', async () => {
  const room = tag();
  const alice = await member(`ta-${room}`);
  const bob = await member(`tb-${room}`);
  const aliceEvents = await follow(alice, room);
  const bobEvents = await follow(bob, room);
  // Asking for the other tenant's messages does not widen anything: the tenant is replaced.
  const sneaky = await subscribeWith(alice.lq, new Parse.Query('Message').equalTo('room', room).equalTo('tenant', `tb-${room}`), alice.token);
  const forBob = await message({ room, tenant: `tb-${room}`, text: 'for b' });
  const forAlice = await message({ room, tenant: `ta-${room}`, text: 'for a' });
  const a = await aliceEvents.next();
  assert.equal(a.op, 'create');
  assert.equal(a.object.id, forAlice.id);
  const b = await bobEvents.next();
  assert.equal(b.object.id, forBob.id);
  assert.equal((await sneaky.next()).object.id, forAlice.id);
  await aliceEvents.quiet();
  await bobEvents.quiet();
  await sneaky.quiet();
});

conformance('afterLiveQueryEvent: the author is included (username only) in create and update events', async () => {
  const room = tag();
  const alice = await member(`ta-${room}`);
  const events = await follow(alice, room);
  const posted = await message({ room, tenant: `ta-${room}`, text: 'hello', author: alice.user.toPointer() });
  const created = await events.next();
  assert.equal(created.op, 'create');
  assert.equal(created.object.id, posted.id);
  assert.equal(created.object.get('text'), 'hello');
  const author = created.object.get('author');
  assert.ok(author instanceof Parse.Object, 'author is an object');
  assert.equal(author.id, alice.id);
  assert.equal(author.get('username'), alice.name);
  assert.equal(author.get('email'), undefined, 'only the public profile is included');
  assert.equal(author.get('tenant'), undefined, 'only the public profile is included');

  posted.set('text', 'edited');
  await posted.save(null, { useMasterKey: true });
  const updated = await events.next();
  assert.equal(updated.op, 'update');
  assert.equal(updated.object.get('text'), 'edited');
  assert.equal(updated.object.get('author').get('username'), alice.name);
  assert.equal(updated.original.get('text'), 'hello');
  assert.equal(updated.original.get('author').get('username'), alice.name);
});

conformance('afterLiveQueryEvent: a message without an author, or whose author is gone, is sent as it is', async () => {
  const room = tag();
  const alice = await member(`ta-${room}`);
  const events = await follow(alice, room);
  const plain = await message({ room, tenant: `ta-${room}`, text: 'no author' });
  assert.equal((await events.next()).object.id, plain.id);
  const ghost = new Parse.User();
  ghost.id = 'gone0000ab';
  const orphan = await message({ room, tenant: `ta-${room}`, text: 'orphan', author: ghost.toPointer() });
  const event = await events.next();
  assert.equal(event.object.id, orphan.id);
  assert.equal(event.object.get('author').id, 'gone0000ab');
  assert.equal(event.object.get('author').get('username'), undefined);
});

conformance('afterLiveQueryEvent: a hidden message is not sent (create, then update to hidden)', async () => {
  const room = tag();
  const alice = await member(`ta-${room}`);
  const events = await follow(alice, room);
  await message({ room, tenant: `ta-${room}`, text: 'secret', hidden: true });
  const shown = await message({ room, tenant: `ta-${room}`, text: 'visible' });
  // The hidden message was saved first: were it sent, it would arrive first.
  const first = await events.next();
  assert.equal(first.object.id, shown.id);
  shown.set('hidden', true);
  await shown.save(null, { useMasterKey: true });
  const sentinel = await message({ room, tenant: `ta-${room}`, text: 'after' });
  assert.equal((await events.next()).object.id, sentinel.id);
  await events.quiet();
});

conformance('afterLiveQueryEvent: the hook does not see the recipient\'s installationId (called once per identity)', async () => {
  const installationId = `inst-${tag()}`;
  const lq = new Parse.LiveQueryClient({ applicationId: env.APP_ID, serverURL: env.LQ_URL, javascriptKey: env.JS_KEY, installationId });
  lq.open();
  try {
    await lq.connectPromise;
    const k = tag();
    const subscription = await subscribeWith(lq, new Parse.Query('LQHookEcho').equalTo('k', k));
    const object = await save('LQHookEcho', { k });
    const event = await subscription.next();
    assert.equal(event.object.id, object.id);
    assert.equal(event.object.get('installationIdSeen'), null);
  } finally {
    lq.close();
  }
}, { deviation: HOOK_INSTALLATION_ID });

conformance('afterLiveQueryEvent: the hook is called for each recipient\'s user (anonymous: no user)', async () => {
  const k = tag();
  const alice = await newUser('e');
  const bob = await newUser('e');
  const aliceLq = await client({ sessionToken: alice.token });
  const bobLq = await client({ sessionToken: bob.token });
  const anonymousLq = await client();
  const query = new Parse.Query('LQHookEcho').equalTo('k', k);
  const forAlice = await subscribeWith(aliceLq, query, alice.token);
  const forBob = await subscribeWith(bobLq, query, bob.token);
  const forAnonymous = await subscribeWith(anonymousLq, query);
  const object = await save('LQHookEcho', { k });
  for (const [recorder, userId] of [[forAlice, alice.id], [forBob, bob.id], [forAnonymous, null]]) {
    const event = await recorder.next();
    assert.equal(event.object.id, object.id);
    assert.equal(event.object.get('userSeen'), userId);
  }
});

conformance('beforeSubscribe: the hook is given the user\'s objectId only', async () => {
  const account = await newUser('w');
  const lq = await client({ sessionToken: account.token });
  const subscription = lq.subscribe(new Parse.Query('LQHookWho'), account.token);
  await assert.rejects(subscription.subscribePromise, (error) => {
    assert.equal(error.code, 141);
    assert.equal(error.message, 'user fields: objectId');
    return true;
  });
}, { deviation: HOOK_USER_ID_ONLY });

// ------------------------------------------------------------------------------------------
// The Cloud Functions livequery calls, called here the way livequery does (master key, the
// hook request as params): their answers have the contract's shape (protocol-spec/hooks.md).
// They run in parse-server, whichever LiveQuery server is under test.

/** POSTs `params` to the Cloud Function `name` as livequery does; its `result`, or throws a Parse.Error. */
async function run(name, params, { masterKey = true } = {}) {
  const response = await fetch(`${env.PARSE_SERVER_URL}/functions/${name}`, {
    method: 'POST',
    headers: {
      'Content-Type': 'application/json',
      'X-Parse-Application-Id': env.APP_ID,
      ...(masterKey ? { 'X-Parse-Master-Key': env.MASTER_KEY } : { 'X-Parse-Javascript-Key': env.JS_KEY }),
    },
    body: JSON.stringify(params),
  });
  const body = await response.json();
  if (response.status === 200) return body.result;
  assert.equal(response.status, 400, JSON.stringify(body));
  throw new Parse.Error(body.code, body.error);
}
/** `user` as livequery sends it: the objectId only (protocol-spec/hooks.md). */
const userJSON = (account) => ({ __type: 'Object', className: '_User', objectId: account.id });
const base = (triggerName) => ({ triggerName, clients: 1, subscriptions: 1, useMasterKey: false, installationId: null, sessionToken: null, user: null });

conformance('Cloud Functions: lqBeforeConnect answers null, or rejects a banned installation with 119', async () => {
  const installationId = `inst-${tag()}`;
  assert.equal(await run('lqBeforeConnect', { ...base('beforeConnect'), installationId }), null);
  await save('LiveQueryBan', { installationId, reason: 'spam' });
  await assert.rejects(run('lqBeforeConnect', { ...base('beforeConnect'), installationId }), (error) => error.code === 119 && error.message === 'Banned: spam');
});

conformance('Cloud Functions: lqBeforeSubscribe answers the rewritten where, or rejects without a user', async () => {
  const room = tag();
  const alice = await newUser('f');
  alice.user.set('tenant', `ta-${room}`);
  await alice.user.save(null, { useMasterKey: true });
  const query = { className: 'Message', where: { room, tenant: 'other' }, keys: ['text'] };
  const answer = await run('lqBeforeSubscribe', { ...base('beforeSubscribe'), className: 'Message', requestId: 1, query, user: userJSON(alice) });
  assert.deepEqual(answer, { query: { where: { room, tenant: `ta-${room}` } } });
  await assert.rejects(run('lqBeforeSubscribe', { ...base('beforeSubscribe'), className: 'Message', requestId: 1, query }), (error) => error.code === 119);
});

conformance('Cloud Functions: lqAfterEvent answers the object with its author included, or sendEvent false', async () => {
  const alice = await newUser('f');
  const object = {
    __type: 'Object', className: 'Message', objectId: 'msg0000001', text: 'hi', author: alice.user.toPointer(),
    createdAt: { __type: 'Date', iso: '2026-01-01T00:00:00.000Z' }, updatedAt: { __type: 'Date', iso: '2026-01-01T00:00:00.000Z' },
  };
  const answer = await run('lqAfterEvent', { ...base('afterLiveQueryEvent'), className: 'Message', event: 'create', object, original: null });
  assert.deepEqual(Object.keys(answer), ['object']);
  assert.equal(answer.object.objectId, 'msg0000001');
  assert.equal(answer.object.className, 'Message');
  assert.equal(answer.object.text, 'hi');
  assert.equal(answer.object.author.__type, 'Object');
  assert.equal(answer.object.author.className, '_User');
  assert.equal(answer.object.author.objectId, alice.id);
  assert.equal(answer.object.author.username, alice.name);
  assert.equal(answer.object.author.email, undefined);
  const hidden = await run('lqAfterEvent', { ...base('afterLiveQueryEvent'), className: 'Message', event: 'update', object: { ...object, hidden: true }, original: object });
  assert.deepEqual(hidden, { sendEvent: false });
});

conformance('Cloud Functions: only the master key may call them', async () => {
  const params = { ...base('beforeConnect'), installationId: 'x' };
  for (const name of ['lqBeforeConnect', 'lqBeforeSubscribe', 'lqAfterEvent']) {
    await assert.rejects(run(name, params, { masterKey: false }), (error) => error.code === Parse.Error.VALIDATION_ERROR, name);
  }
});

// ------------------------------------------------------------------------------------------
// livequery's failure policies (hooks.toml: lqTestSlow answers after 1.5 s, the hooks wait 300 ms).

livequeryOnly('failure policy reject (beforeSubscribe timed out): error frame 141 "beforeSubscribe hook failed: …"', async () => {
  const socket = await raw();
  await socket.connect();
  socket.send({ op: 'subscribe', requestId: 3, query: { className: 'LQHookSlowReject', where: {} } });
  const frame = await errorFrame(socket);
  assert.equal(frame.code, 141);
  assert.equal(frame.requestId, 3);
  assert.equal(frame.reconnect, false);
  assert.match(frame.error, /^beforeSubscribe hook failed: /);
});

livequeryOnly('failure policy reject (webhook unreachable): the error names no secret of the URL', async () => {
  const socket = await raw();
  await socket.connect();
  socket.send({ op: 'subscribe', requestId: 4, query: { className: 'LQHookDeadWebhook', where: {} } });
  const frame = await errorFrame(socket);
  assert.equal(frame.code, 141);
  assert.match(frame.error, /^beforeSubscribe hook failed: /);
  assert.doesNotMatch(frame.error, /secret|hookuser/);
});

livequeryOnly('failure policy send_unmodified (beforeSubscribe timed out): subscribed unchanged, events flow', async () => {
  const lq = await client();
  const subscription = await subscribeWith(lq, new Parse.Query('LQHookSlowPass').equalTo('k', 'x'));
  const object = await save('LQHookSlowPass', { k: 'x' });
  const event = await subscription.next();
  assert.equal(event.op, 'create');
  assert.equal(event.object.id, object.id);
});

livequeryOnly('failure policy send_unmodified (afterLiveQueryEvent timed out): the event is sent as it is', async () => {
  const lq = await client();
  const subscription = await subscribeWith(lq, new Parse.Query('LQHookSlowSend').equalTo('k', 'x'));
  const object = await save('LQHookSlowSend', { k: 'x', n: 1 });
  const started = Date.now();
  // The slow function would have answered sendEvent: false; the timeout comes first.
  const event = await subscription.next(EVENT_TIMEOUT_MS);
  assert.equal(event.object.id, object.id);
  assert.equal(event.object.get('n'), 1);
  assert.ok(Date.now() - started < 1500, 'sent after the hook timed out, not after the function answered');
});

livequeryOnly('failure policy drop (afterLiveQueryEvent timed out): the event is not sent, no error either', async () => {
  const lq = await client();
  const subscription = await subscribeWith(lq, new Parse.Query('LQHookSlowDrop').equalTo('k', 'x'));
  await save('LQHookSlowDrop', { k: 'x' });
  await subscription.quiet(2500);
  assert.deepEqual(subscription.errors, []);
});

livequeryOnly('failure policy reject (afterLiveQueryEvent timed out): an error frame with the requestId instead of the event', async () => {
  const socket = await raw();
  await socket.connect();
  const k = tag();
  socket.send({ op: 'subscribe', requestId: 5, query: { className: 'LQHookSlowEventReject', where: { k } } });
  const subscribed = await socket.next();
  assert.equal(subscribed.op, 'subscribed', JSON.stringify(subscribed));
  await save('LQHookSlowEventReject', { k });
  const frame = await errorFrame(socket);
  assert.equal(frame.code, 141);
  assert.equal(frame.requestId, 5);
  assert.equal(frame.reconnect, false);
  assert.match(frame.error, /^afterLiveQueryEvent hook failed: /);
  await new Promise((resolve) => setTimeout(resolve, 1500));
  await assert.rejects(socket.next(100), /no frame/, 'no event after the error');
});
