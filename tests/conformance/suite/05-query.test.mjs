// subscription.find() (Parse JS SDK 8): the current matching objects, filtered for the subscriber.
import { after, before } from 'node:test';

import { Parse, closeAll, assert, conformance, newUser, save, setupParse, tag } from './lib.mjs';

before(setupParse);
after(closeAll);

conformance('find() returns the current matches with the subscription\'s identity and keys', async () => {
  const t = tag();
  const user = await newUser('finder');
  const mine = await save('LQFind', { tag: t, text: 'mine', extra: 1 }, new Parse.ACL(user.user));
  const open = await save('LQFind', { tag: t, text: 'open', extra: 2 });
  await save('LQFind', { tag: t, text: 'private' }, new Parse.ACL());
  await save('LQFind', { tag: `${t}x`, text: 'elsewhere' });
  const subscription = await new Parse.Query('LQFind').equalTo('tag', t).select('text').subscribe(user.token);
  const results = new Promise((resolve, reject) => {
    subscription.on('result', resolve);
    setTimeout(() => reject(new Error('no result within 5 s')), 5000);
  });
  subscription.find();
  const objects = await results;
  const byId = Object.fromEntries(objects.map((o) => [o.id, o]));
  assert.deepEqual(Object.keys(byId).sort(), [mine.id, open.id].sort());
  assert.equal(byId[mine.id].get('text'), 'mine');
  assert.equal(byId[mine.id].get('extra'), undefined, 'keys apply');
}, { deviation: 'P1' });
