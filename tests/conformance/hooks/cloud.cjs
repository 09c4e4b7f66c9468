// Cloud Code of the hooks conformance tests: the example app's Cloud Code
// (examples/cloud-code/main.js) as it ships, plus what the tests need beyond it.
require('../../../examples/cloud-code/main.js');

// A deliberate rejection by a plain Error (no Parse.Error code): parse-server turns it into
// code 141 (SCRIPT_FAILED), for its own trigger as for a Cloud Function.
const refusePlain = () => {
  throw new Error('Plain refusal');
};
Parse.Cloud.beforeSubscribe('LQHookPlain', refusePlain);
Parse.Cloud.define('lqTestPlain', refusePlain, { requireMaster: true });

// Answers after 1.5 s, longer than the timeout hooks.toml gives it (livequery only: the
// failure policies).
Parse.Cloud.define('lqTestSlow', async () => {
  await new Promise((resolve) => setTimeout(resolve, 1500));
  return { sendEvent: false };
}, { requireMaster: true });


// Echoes the recipient's installationId into the object: parse-server's trigger runs once per
// recipient and knows it; livequery's hook runs once per identity, where it is null.
// Also echoes the user the hook was called for (both servers: the recipient's user).
Parse.Cloud.afterLiveQueryEvent('LQHookEcho', (request) => {
  request.object.set('installationIdSeen', request.installationId ?? null);
  request.object.set('userSeen', request.user ? request.user.id : null);
});
Parse.Cloud.define('lqTestEcho', (request) => ({
  object: {
    ...request.params.object,
    installationIdSeen: request.params.installationId ?? null,
    userSeen: request.params.user ? request.params.user.objectId : null,
  },
}), { requireMaster: true });

// Refuses with the names of the user's fields the hook was given: parse-server's trigger gets
// the whole user, livequery's hook its objectId only.
const userFields = (user) => Object.keys(user || {}).filter((key) => key !== '__type' && key !== 'className').sort().join(',');
Parse.Cloud.beforeSubscribe('LQHookWho', (request) => {
  throw new Parse.Error(Parse.Error.SCRIPT_FAILED, `user fields: ${userFields(request.user && request.user.toJSON())}`);
});
Parse.Cloud.define('lqTestWho', (request) => {
  throw new Parse.Error(Parse.Error.SCRIPT_FAILED, `user fields: ${userFields(request.params.user)}`);
}, { requireMaster: true });
