// The real Parse JS SDK (8.6) against livequery on its embedded default source.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import Parse from 'parse/node';

import { next, parseObject, startLivequery } from './lib/livequery.mjs';

let server;

before(async () => {
  server = await startLivequery({ env: { LIVEQUERY__PARSE__KEY_PAIRS__JAVASCRIPTKEY: 'jsKey' } });
  Parse.initialize(server.appId, 'jsKey');
  // No REST traffic happens in this file; LiveQuery goes to livequery.
  Parse.serverURL = 'http://127.0.0.1:9/parse';
  Parse.liveQueryServerURL = server.wsUrl;
});

after(async () => {
  await Parse.LiveQuery.close();
  await server.stop();
});

test('the SDK receives create, update, enter, leave and delete with Parse objects', async () => {
  const room = `room-${Date.now()}`;
  const query = new Parse.Query('Message').equalTo('room', room).greaterThan('score', 10);
  const subscription = await query.subscribe();
  await next(subscription, 'open');

  const a = parseObject('Message', { room, score: 20, text: 'a' });
  let created = next(subscription, 'create');
  await server.publish('afterSave', { currentParseObject: a });
  const [object] = await created;
  assert.ok(object instanceof Parse.Object);
  assert.equal(object.id, a.objectId);
  assert.equal(object.get('text'), 'a');
  assert.equal(object.createdAt.toISOString(), a.createdAt);

  const a2 = { ...a, score: 21, updatedAt: new Date(Date.parse(a.updatedAt) + 1000).toISOString() };
  const updated = next(subscription, 'update');
  await server.publish('afterSave', { currentParseObject: a2, originalParseObject: a });
  const [now, original] = await updated;
  assert.equal(now.get('score'), 21);
  assert.equal(original.get('score'), 20);

  const b = parseObject('Message', { room, score: 1 });
  await server.publish('afterSave', { currentParseObject: b });
  const b2 = { ...b, score: 50 };
  const entered = next(subscription, 'enter');
  await server.publish('afterSave', { currentParseObject: b2, originalParseObject: b });
  const [enteredObject, enteredOriginal] = await entered;
  assert.equal(enteredObject.get('score'), 50);
  assert.equal(enteredOriginal.get('score'), 1);

  const a3 = { ...a2, score: 0 };
  const left = next(subscription, 'leave');
  await server.publish('afterSave', { currentParseObject: a3, originalParseObject: a2 });
  const [leftObject] = await left;
  assert.equal(leftObject.get('score'), 0);

  const deleted = next(subscription, 'delete');
  await server.publish('afterDelete', { currentParseObject: b2 });
  const [deletedObject] = await deleted;
  assert.equal(deletedObject.id, b.objectId);

  const closed = next(subscription, 'close');
  await subscription.unsubscribe();
  await closed;
});

test('select() becomes keys and watch() suppresses other changes', async () => {
  const room = `keys-${Date.now()}`;
  const query = new Parse.Query('Message').equalTo('room', room).select('score').watch('score');
  const subscription = await query.subscribe();
  await next(subscription, 'open');
  const o = parseObject('Message', { room, score: 1, text: 'hidden' });
  const created = next(subscription, 'create');
  await server.publish('afterSave', { currentParseObject: o });
  const [object] = await created;
  assert.equal(object.get('score'), 1);
  assert.equal(object.get('text'), undefined, 'text is not selected');

  // A change of an unwatched field sends nothing; the next update is the score change.
  await server.publish('afterSave', { currentParseObject: { ...o, text: 'changed' }, originalParseObject: o });
  const updated = next(subscription, 'update');
  await server.publish('afterSave', { currentParseObject: { ...o, text: 'changed', score: 2 }, originalParseObject: { ...o, text: 'changed' } });
  const [now] = await updated;
  assert.equal(now.get('score'), 2);
  await subscription.unsubscribe();
});

test('a session token passed to subscribe() grants its ACL', async () => {
  const token = `r:${Date.now()}`;
  await server.session(token, 'user1');
  const room = `acl-${Date.now()}`;
  const anonymous = await new Parse.Query('Message').equalTo('room', room).subscribe();
  const user = await new Parse.Query('Message').equalTo('room', room).subscribe(token);
  await Promise.all([next(anonymous, 'open'), next(user, 'open')]);
  const privateObject = parseObject('Message', { room, ACL: { user1: { read: true } } });
  const publicObject = parseObject('Message', { room, ACL: { '*': { read: true } } });
  const userGot = next(user, 'create');
  const anonymousGot = next(anonymous, 'create');
  await server.publish('afterSave', { currentParseObject: privateObject });
  await server.publish('afterSave', { currentParseObject: publicObject });
  assert.equal((await userGot)[0].id, privateObject.objectId);
  assert.equal((await anonymousGot)[0].id, publicObject.objectId, 'the anonymous subscription skips the private object');
  await Promise.all([anonymous.unsubscribe(), user.unsubscribe()]);
});

test('an invalid query rejects subscribe() with the Parse error', async () => {
  const query = new Parse.Query('Message').matches('text', '(');
  await assert.rejects(query.subscribe(), (error) => {
    assert.equal(error.code, Parse.Error.INVALID_QUERY);
    assert.match(error.message, /Invalid regular expression: .*Unterminated group/);
    return true;
  });
});

test('find() on the embedded source reports that current state is unavailable', async () => {
  const subscription = await new Parse.Query('Message').equalTo('room', 'find').subscribe();
  await next(subscription, 'open');
  const failed = next(subscription, 'error');
  subscription.find();
  const [error] = await failed;
  assert.equal(error, 'The configured source cannot read current objects');
  await subscription.unsubscribe();
});
