// Cloud Code of a chat app whose clients follow `Message` objects over LiveQuery.
//
// Three rules, each written once and exposed twice:
// - as parse-server LiveQuery triggers (Parse.Cloud.beforeConnect / beforeSubscribe /
//   afterLiveQueryEvent), which parse-server's own LiveQuery server runs in its process;
// - as Cloud Functions (lqBeforeConnect / lqBeforeSubscribe / lqAfterEvent) that livequery
//   calls over REST with the master key (see livequery.toml and protocol-spec/hooks.md):
//   `request.params` is livequery's hook request, the function's result is its answer.
//
// Load it as parse-server's `cloud` file (`cloud: 'examples/cloud-code/main.js'`) in every
// process that runs Cloud Code: parse-server itself and, if you use it, parse-server's
// LiveQuery server.

const { refuseBanned, tenantRestriction, presentMessage } = require('./rules.js');

// ---------------------------------------------------------------------------------------------
// parse-server's LiveQuery server: the rules as triggers.

Parse.Cloud.beforeConnect(async (request) => {
  await refuseBanned(request.installationId, request.user && request.user.id);
});

Parse.Cloud.beforeSubscribe('Message', (request) => {
  request.query.equalTo('tenant', tenantRestriction(request.user));
});

Parse.Cloud.afterLiveQueryEvent('Message', async (request) => {
  request.sendEvent = await presentMessage(request.object, request.original);
});

// ---------------------------------------------------------------------------------------------
// livequery: the same rules as Cloud Functions. Only the master key may call them (livequery
// sends it); a client calling them is refused by parse-server.

const livequeryOnly = { requireMaster: true };

/**
 * A Parse object of a hook request (`object`, `original`: Parse JSON, or null) as a
 * Parse.Object. parse-server has already decoded the pointers and dates inside `request.params`
 * (into Parse.Object pointers and Dates) but not the objects themselves: encode it back to Parse
 * JSON, then decode the whole.
 */
function objectOf(json) {
  return json ? Parse.Object.fromJSON(Parse._encode(json)) : undefined;
}

/** Parse JSON of an object with its included objects in full (not as pointers). */
function withIncludes(object) {
  const json = { ...object.toJSON(), __type: 'Object', className: object.className };
  for (const [key, value] of Object.entries(object.attributes)) {
    if (value instanceof Parse.Object && value.isDataAvailable()) {
      json[key] = { ...value.toJSON(), __type: 'Object', className: value.className };
    }
  }
  return json;
}

/**
 * The whole `_User` of a hook request, or undefined. livequery sends the user's objectId only
 * (protocol-spec/hooks.md), where parse-server's trigger gets the whole user: fetch it.
 */
async function userOf(params) {
  if (!params.user) return undefined;
  return new Parse.Query(Parse.User).get(params.user.objectId, { useMasterKey: true });
}

Parse.Cloud.define('lqBeforeConnect', async (request) => {
  // The ban list needs only the user's objectId: no fetch.
  await refuseBanned(request.params.installationId, request.params.user && request.params.user.objectId);
  return null;
}, livequeryOnly);

Parse.Cloud.define('lqBeforeSubscribe', async (request) => {
  const tenant = tenantRestriction(await userOf(request.params));
  const where = { ...(request.params.query && request.params.query.where), tenant };
  return { query: { where } };
}, livequeryOnly);

Parse.Cloud.define('lqAfterEvent', async (request) => {
  const object = objectOf(request.params.object);
  const original = objectOf(request.params.original);
  if (!(await presentMessage(object, original))) return { sendEvent: false };
  const answer = {};
  if (object) answer.object = withIncludes(object);
  if (original) answer.original = withIncludes(original);
  return answer;
}, livequeryOnly);
