// Event ops and payloads through the real stack (protocol-spec/frames.md).
import { after, before } from 'node:test';

import { Parse, closeAll, assert, conformance, newUser, save, setupParse, subscribe, tag } from './lib.mjs';

before(setupParse);
after(closeAll);

conformance('create, update, enter, leave and delete carry the right objects', async () => {
  const t = tag();
  const sub = await subscribe(new Parse.Query('LQMessage').equalTo('tag', t).greaterThan('score', 10));
  const a = await save('LQMessage', { tag: t, score: 20, text: 'a' });
  let event = await sub.next();
  assert.equal(event.op, 'create');
  assert.equal(event.object.id, a.id);
  assert.equal(event.object.get('text'), 'a');
  assert.equal(event.original, undefined);

  const b = await save('LQMessage', { tag: t, score: 1 });
  await a.save({ score: 21 }, { useMasterKey: true });
  event = await sub.next();
  assert.deepEqual([event.op, event.object.get('score'), event.original.get('score')], ['update', 21, 20]);

  await b.save({ score: 50 }, { useMasterKey: true });
  event = await sub.next();
  assert.deepEqual([event.op, event.object.id, event.object.get('score'), event.original.get('score')], ['enter', b.id, 50, 1]);

  await a.save({ score: 0 }, { useMasterKey: true });
  event = await sub.next();
  assert.deepEqual([event.op, event.object.id, event.object.get('score'), event.original.get('score')], ['leave', a.id, 0, 21]);

  await b.destroy({ useMasterKey: true });
  event = await sub.next();
  assert.deepEqual([event.op, event.object.id, event.object.get('score')], ['delete', b.id, 50]);

  await a.destroy({ useMasterKey: true }); // does not match: no event
  await sub.quiet();
});

conformance('field types arrive in Parse JSON and atomic operations as their results', async () => {
  const t = tag();
  const sub = await subscribe(new Parse.Query('LQTyped').equalTo('tag', t));
  const other = await save('LQOther', { name: 'target' });
  const when = new Date('2030-01-02T03:04:05.678Z');
  const typed = await save('LQTyped', {
    tag: t, when, count: 1, tags: ['x'], ptr: other, loc: new Parse.GeoPoint(10, 20), obj: { a: { b: 1 } },
  });
  let event = await sub.next();
  assert.equal(event.op, 'create');
  const o = event.object;
  assert.ok(o.get('when') instanceof Date);
  assert.equal(o.get('when').toISOString(), when.toISOString());
  assert.ok(o.get('ptr') instanceof Parse.Object);
  assert.equal(o.get('ptr').id, other.id);
  assert.ok(o.get('loc') instanceof Parse.GeoPoint);
  assert.deepEqual([o.get('loc').latitude, o.get('loc').longitude], [10, 20]);
  assert.deepEqual(o.get('obj'), { a: { b: 1 } });
  assert.ok(o.createdAt instanceof Date);

  typed.increment('count', 5);
  typed.addUnique('tags', 'y');
  await typed.save(null, { useMasterKey: true });
  event = await sub.next();
  assert.deepEqual([event.op, event.object.get('count'), event.object.get('tags')], ['update', 6, ['x', 'y']]);
  typed.unset('tags');
  await typed.save(null, { useMasterKey: true });
  event = await sub.next();
  assert.equal(event.object.get('tags'), undefined, 'an unset field is absent');
  assert.deepEqual(event.original.get('tags'), ['x', 'y']);
});

conformance('select() limits the fields sent; watch() suppresses unrelated changes', async () => {
  const t = tag();
  const selected = await subscribe(new Parse.Query('LQMessage').equalTo('tag', t).select('score'));
  const watched = await subscribe(new Parse.Query('LQMessage').equalTo('tag', t).watch('score'));
  const o = await save('LQMessage', { tag: t, score: 1, text: 'hidden' });
  const created = await selected.next();
  assert.equal(created.object.get('score'), 1);
  assert.equal(created.object.get('text'), undefined);
  assert.equal((await watched.next()).op, 'create', 'a create with the watched field is sent');

  await o.save({ text: 'changed' }, { useMasterKey: true });
  await o.save({ score: 2 }, { useMasterKey: true });
  const update = await watched.next();
  assert.deepEqual([update.op, update.object.get('score')], ['update', 2], 'the text-only change was suppressed');
  assert.equal((await selected.next()).object.get('text'), undefined);
});

conformance('ACL changes: the newly allowed get enter without original, the excluded get leave with the old state', async () => {
  const t = tag();
  const owner = await newUser();
  const anonymous = await subscribe(new Parse.Query('LQMessage').equalTo('tag', t));
  const ownerSub = await subscribe(new Parse.Query('LQMessage').equalTo('tag', t), owner.token);
  const ownerOnly = new Parse.ACL(owner.user);
  const o = await save('LQMessage', { tag: t, v: 1 }, ownerOnly);
  assert.equal((await ownerSub.next()).op, 'create');

  const open = new Parse.ACL();
  open.setPublicReadAccess(true);
  open.setReadAccess(owner.user, true);
  o.setACL(open);
  await o.save(null, { useMasterKey: true });
  const entered = await anonymous.next();
  assert.equal(entered.op, 'enter');
  assert.equal(entered.original, undefined, 'the private state is not disclosed');
  const updated = await ownerSub.next();
  assert.equal(updated.op, 'update');

  o.setACL(ownerOnly);
  await o.save({ v: 2 }, { useMasterKey: true });
  const left = await anonymous.next();
  assert.equal(left.op, 'leave');
  assert.equal(left.object.get('v'), 1, 'the leaving subscriber sees the last state it could read');
  assert.equal((await ownerSub.next()).object.get('v'), 2);
});

conformance('one client, two subscriptions: leave one and enter the other in one update', async () => {
  const t = tag();
  const open = await subscribe(new Parse.Query('LQMessage').equalTo('tag', t).equalTo('state', 'open'));
  const closed = await subscribe(new Parse.Query('LQMessage').equalTo('tag', t).equalTo('state', 'closed'));
  const o = await save('LQMessage', { tag: t, state: 'open' });
  assert.equal((await open.next()).op, 'create');
  await o.save({ state: 'closed' }, { useMasterKey: true });
  const [left, entered] = [await open.next(), await closed.next()];
  assert.deepEqual([left.op, left.object.get('state'), left.original.get('state')], ['leave', 'closed', 'open']);
  assert.deepEqual([entered.op, entered.object.get('state'), entered.original.get('state')], ['enter', 'closed', 'open']);
});
